"""Speed and memory of training, side by side in one run.

    python benchmarks/speed.py --peer PEER     # all sections (about an hour on 2 cores)
    python benchmarks/speed.py --section step  # or several, comma-separated, of: levers, estimate, floor, step,
                                               # memory, accuracy, graph
    python benchmarks/speed.py --smoke         # a minute; checks the script, writes nothing

Sections (each rewrites its own part of benchmarks/RESULTS.md):

* ``levers``: full training steps of DIS on the 10-d Funnel (log-variance loss, batch 2048, 200 steps) for each
  speed lever on its own and combined (threads, ``torch.compile`` of the control network, the two-pass loss,
  glibc's allocator keeping freed memory, a hand-written loop with and without in-place sums), each in a fresh
  process, and, with ``--peer``, the DIS paper's
  reference implementation (github:juliusberner/sde_sampler, built by ``../shared/tools/peer_setup.sh``) side by
  side in alternating rounds: the ratio of the two step times. Without ``--peer`` it says so and reports the ratio
  to the hand-written loop.
* ``estimate``: paths per second of ``estimate_log_z(10_000)``.
* ``floor``: the time of a training step's matrix products alone, at one and at the default threads.
* ``step``: time of one training step of DIS on the 10-d Funnel (batch 2048, 200 steps,
  log-variance loss, the papers' network: Fourier MLP, 4 layers of 64) for the library's chain
  (one pass, and two passes with flat memory), a hand-written loop computing the same
  loss with the same network, and the KL loss with plain backpropagation and with ``sdeint_adjoint``.
  Rounds alternate between the variants and the median is reported, so machine noise hits all alike.
* ``memory``: peak resident memory of one training step against the number of steps
  (100 to 1600): the KL loss by backpropagation and through the adjoint, the log-variance loss in one pass and
  in two passes (``lv_chunk``), each in a fresh subprocess.
* ``graph``: on a CUDA device, training iterations per second eager, with ``torch.compile``, with CUDA-graph
  capture (:mod:`sde_control.cuda_graphs`) and with both; on a machine without one it says so.
* ``accuracy``: time-to-accuracy on GMM and Funnel at the settings of the measured reference
  bar (log-variance loss, batch 512, 200 steps): the log Z error of 10,000 evaluation paths at
  a series of iterations, the training wall time at each (evaluation excluded), and the first
  time the error falls below 0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, target, write_section  # noqa: E402

from sde_control import DIS  # noqa: E402
from sde_control.controls import on_grid  # noqa: E402
from sde_control.losses import kl_loss, log_variance_loss  # noqa: E402
from sde_control.references import time_grid  # noqa: E402
from sde_control.target import checked_log_prob  # noqa: E402


# --------------------------------------------------------------------------- step time
def hand_written_lv_step(sampler: DIS, x0: torch.Tensor, grid: torch.Tensor, in_place: bool = True) -> torch.Tensor:
    """The log-variance loss of the library (without exploration), written as a plain loop of the chain's steps;
    ``in_place=False`` accumulates the running cost out of place (a new tensor per step)."""
    ref, dim = sampler.reference, x0.shape[1]
    kernels = ref.forward_kernels(grid)
    A, B, V = kernels.scale.tolist(), kernels.control.tolist(), kernels.var.tolist()
    control = on_grid(sampler.control, grid.float())
    x, cost, states = x0, torch.zeros(x0.shape[0]), [x0]
    for k in range(len(A)):
        u = control(x, k)
        v, xi, std = u.detach(), torch.randn_like(x), V[k] ** 0.5
        step_cost = B[k] ** 2 / (2 * V[k]) * (u * (u - 2 * v)).sum(-1) - B[k] / std * (u * xi).sum(-1)
        cost = cost.add_(step_cost) if in_place else cost + step_cost
        x = A[k] * x + B[k] * v + std * xi
        states.append(x)
    log_w = checked_log_prob(sampler.target, x) + ref.log_ratio(torch.stack(states), grid) + cost
    return log_w.var()


ADJOINT_NOTE = (" The adjoint rows measure cost on this configuration; `DIS.fit` itself refuses the adjoint (its "
                "gradient is unusable on DIS's drift: see the adjoint table).")


def step_section(batch: int, steps: int, rounds: int) -> str:
    torch.manual_seed(0)
    sampler = DIS(target("funnel"), steps=steps)
    sampler.control.clip = 10.0  # as at the start of training (the clip schedule of the DIS paper)
    grid = time_grid(1.0, steps)
    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "library chain, LV": lambda x0: log_variance_loss(
            sampler.target, sampler.reference, sampler.control, x0, grid).loss,
        "hand-written loop, LV": lambda x0: hand_written_lv_step(sampler, x0, grid),
        "library chain, LV in two passes (chunks of 50 steps)": lambda x0: log_variance_loss(
            sampler.target, sampler.reference, sampler.control, x0, grid, chunk=50).loss,
        "library, KL, backpropagation": lambda x0: kl_loss(
            sampler.target, sampler.reference, sampler.control, x0, grid).loss,
        "library, KL, sdeint_adjoint (euler)": lambda x0: kl_loss(
            sampler.target, sampler.reference, sampler.control, x0, grid, adjoint=True, adjoint_method="euler").loss,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, loss_fn in variants.items():
            x0 = sampler.reference.sample_initial(batch)
            sampler.control.zero_grad()
            started = time.perf_counter()
            loss_fn(x0).backward()
            times[name].append(time.perf_counter() - started)
    hand = statistics.median(times["hand-written loop, LV"])
    rows = [[name, f"{statistics.median(t):.3f}", f"{min(t):.3f}", f"{statistics.median(t) / hand:.2f}"]
            for name, t in times.items()]
    return "\n".join([
        "## Training-step time",
        "",
        f"Command: `python benchmarks/speed.py --section step`. DIS on the 10-d Funnel, batch {batch}, {steps} "
        f"steps, control network of 4 layers of 64 (forward and backward of one loss, no optimiser step); "
        f"{rounds} alternating rounds; the control clipped at 10 as at the start of training. Machine: {machine()}.",
        "",
        markdown_table(["variant", "median s/step", "min s/step", "median / hand-written"], rows),
        "",
        ADJOINT_NOTE.strip(),
    ])


# --------------------------------------------------------------------------- levers and the reference implementation
LEVERS: dict[str, dict[str, Any]] = {
    "library defaults (eager, float32, in-place sums, default threads)": {},
    "one intra-op thread": {"threads": 1},
    "compiled network (torch.compile)": {"compile": True},
    "compiled network, one thread": {"compile": True, "threads": 1},
    "two-pass log-variance loss (lv_chunk=50)": {"lv_chunk": 50},
    "compiled network + two-pass loss": {"compile": True, "lv_chunk": 50},
    "glibc malloc keeps freed memory (GLIBC_TUNABLES)": {"env": {
        "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"}},
    "hand-written loop, in-place sum": {"hand_written": "in-place"},
    "hand-written loop, out-of-place sum": {"hand_written": "out-of-place"},
}
WARM_UP = 2
"""Training steps left out of each timed run: the first step (allocations; with compilation, the compiling) and
the one after it (the clip schedule's first change)."""


def training_child(options: dict[str, Any], batch: int, steps: int, iterations: int) -> None:
    """``iterations`` full training steps (loss, gradient, Adam) of DIS on the 10-d Funnel with the lever
    ``options``, in this fresh process; prints the times of all but the first ``WARM_UP`` steps."""
    if "threads" in options:
        torch.set_num_threads(options["threads"])
    torch.manual_seed(0)
    sampler = DIS(target("funnel"), steps=steps)
    hand = options.get("hand_written")
    if hand is None:
        fit_options = {k: v for k, v in options.items() if k in ("compile", "lv_chunk")}
        history = sampler.fit(iterations, batch_size=batch, loss="lv", progress=False, **fit_options)
        times = [b["time"] - a["time"] for a, b in zip(history, history[1:])][WARM_UP - 1:]
    else:
        grid, optimizer = time_grid(1.0, steps), torch.optim.Adam(sampler.control.parameters(), lr=5e-3)
        times = []
        for _ in range(iterations):
            started = time.perf_counter()
            optimizer.zero_grad()
            hand_written_lv_step(sampler, sampler.reference.sample_initial(batch), grid,
                                 in_place=hand == "in-place").backward()
            optimizer.step()
            times.append(time.perf_counter() - started)
        times = times[WARM_UP:]
    print(json.dumps({"times": times, "threads": torch.get_num_threads()}))


def ours(options: dict[str, Any], batch: int, steps: int, iterations: int) -> tuple[list[float], int]:
    """The step times of :func:`training_child` in a fresh process (its own threads and compilation caches)."""
    child = {k: v for k, v in options.items() if k != "env"}
    out = subprocess.run([sys.executable, __file__, "--training-child", json.dumps(child), str(batch), str(steps),
                          str(iterations)], capture_output=True, text=True, check=True,
                         env={**os.environ, **options.get("env", {})})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["times"], result["threads"]


def reference_times(peer: Path, batch: int, steps: int, iterations: int) -> list[float]:
    """The DIS paper's reference code (github:juliusberner/sde_sampler, built by ``peer_setup.sh``) training DIS on
    its 10-d Funnel with the log-variance loss at ``batch`` and its default 200 steps: its own ``time_per_step``
    of every step but the first ``WARM_UP``, at its default threads."""
    if steps != 200:
        raise ValueError("the reference's DIS configuration has 200 steps")
    command = [str(peer / "venv" / "bin" / "python"), "scripts/main.py", "target=funnel", "solver=dis",
               "wandb.mode=disabled", f"train_steps={iterations}", f"eval_interval={iterations}",
               "eval_batch_size=1000", f"train_batch_size={batch}", "plot_results=False", "eval_init=False",
               "log_interval=1"]
    out = subprocess.run(command, cwd=peer / "sde_sampler", capture_output=True, text=True, check=True)
    times = [float(m) for m in re.findall(r"time_per_step: ([0-9.eE+-]+)", out.stdout + out.stderr)]
    if len(times) != iterations:
        raise RuntimeError(f"expected {iterations} time_per_step lines from the reference, got {len(times)}")
    return times[WARM_UP:]


def matmul_floor(batch: int, steps: int, layers: list[tuple[int, int]], repeats: int = 5) -> tuple[float, float]:
    """The time (s) of a training step's matrix products alone, and their FLOP: per chain step and linear layer
    ``(n_in, n_out)`` the forward product, the weight gradient and (but for the first layer, whose input is the
    detached state) the input gradient, each ``2 batch n_in n_out`` FLOP; timed at this process's threads."""
    products = []
    for i, (n_in, n_out) in enumerate(layers):
        x, w, g = torch.randn(batch, n_in), torch.randn(n_in, n_out), torch.randn(batch, n_out)
        products += [(x, w), (g.T.contiguous(), x)] + ([(g, w.T.contiguous())] if i else [])
    flop = steps * sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in products)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            for a, b in products:
                torch.mm(a, b)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), flop


def levers_section(batch: int, steps: int, iterations: int, rounds: int, peer: Path | None) -> str:
    """Every lever on its own and combined, and the reference implementation, in alternating rounds."""
    has_peer = peer is not None and (peer / "venv" / "bin" / "python").is_file()
    times: dict[str, list[float]] = {name: [] for name in LEVERS}
    if has_peer:
        times["reference implementation (sde_sampler)"] = []
    threads: dict[str, int] = {}
    for _ in range(rounds):
        for name, options in LEVERS.items():
            step_times, threads[name] = ours(options, batch, steps, iterations)
            times[name].append(statistics.median(step_times))
        if has_peer:
            times["reference implementation (sde_sampler)"].append(
                statistics.median(reference_times(peer, batch, steps, iterations)))
    medians = {name: statistics.median(values) for name, values in times.items()}
    default = medians[next(iter(LEVERS))]
    hand = medians["hand-written loop, in-place sum"]
    basis = medians.get("reference implementation (sde_sampler)")
    rows = [[name, str(threads.get(name, "its default")), f"{m:.3f}", f"{m / default:.2f}", f"{m / hand:.2f}"]
            + ([f"{m / basis:.2f}"] if basis else []) for name, m in medians.items()]
    header = ["variant", "threads", "median s/step", "/ library default", "/ hand-written"]
    if basis:
        verdict = (f"**Side by side: the library's training step takes {default:.3f} s, the reference's {basis:.3f} s: "
                   f"ratio {default / basis:.2f}** (goal 0.3).")
    else:
        where = "no --peer folder given" if peer is None else f"no built reference at {peer}"
        verdict = (f"The reference implementation was not measured ({where}: build it with "
                   f"`../shared/tools/peer_setup.sh SNAPSHOT` and pass its folder as --peer); the library's step is "
                   f"{default / hand:.2f}x the hand-written loop's.")
    return "\n".join([
        "## Training step: the levers and the reference implementation",
        "",
        f"Command: `python benchmarks/speed.py --section levers --peer PEER_FOLDER`. DIS on the 10-d Funnel, "
        f"log-variance loss, batch {batch}, {steps} steps: full training steps (loss, gradient, Adam), each variant "
        f"in a fresh process at its threads; the median step of {iterations - WARM_UP} (after {WARM_UP} left out: "
        f"allocation, compilation, the clip schedule's first change), median over {rounds} alternating rounds. The "
        f"library's variants use its defaults (exploration eta = 1 included); the hand-written loop is the same "
        f"loss without exploration. Machine: {machine()}.",
        "",
        markdown_table(header + (["/ reference"] if basis else []), rows),
        "",
        verdict,
    ])


def floor_section(batch: int, steps: int) -> str:
    """The matrix-product floor of the levers' training step at one and at the default threads."""
    dim, width, default_threads = target("funnel").dim, 64, torch.get_num_threads()
    layers = [(dim, width), (width, width), (width, width), (width, dim)]
    rows = []
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        seconds, flop = matmul_floor(batch, steps, layers)
        rows.append([str(threads), f"{flop / 1e9:.1f}", f"{seconds:.3f}", f"{flop / seconds / 1e9:.0f}"])
    torch.set_num_threads(default_threads)
    return "\n".join([
        "## The matrix-product floor of a training step",
        "",
        f"Command: `python benchmarks/speed.py --section floor`. The matrix products of one training step of the "
        f"levers' configuration alone (batch {batch}, {steps} steps; per step and layer of the 4 x {width} network "
        f"the forward product, the weight gradient and, but for the first layer, the input gradient), median of 5. "
        f"Machine: {machine()}.",
        "",
        markdown_table(["threads", "GFLOP per step", "seconds", "GFLOP/s"], rows),
    ])


def estimate_section(samples: int, steps: int, rounds: int) -> str:
    """Paths per second of ``estimate_log_z`` (DIS on the 10-d Funnel, default threads, no gradient)."""
    torch.manual_seed(0)
    sampler = DIS(target("funnel"), steps=steps)
    sampler.estimate_log_z(min(samples, 1000))  # warm-up
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        sampler.estimate_log_z(samples, eubo=False)
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    return "\n".join([
        "## Evaluation: estimate_log_z",
        "",
        f"Command: `python benchmarks/speed.py --section estimate`. `DIS.estimate_log_z({samples})` on the 10-d "
        f"Funnel at {steps} steps (importance-sampled log Z, ELBO and ESS; no EUBO), median of {rounds} calls. "
        f"Machine: {machine()}.",
        "",
        markdown_table(["paths", "median s", "paths / s"], [[str(samples), f"{median:.2f}", f"{samples / median:,.0f}"]]),
    ])


# --------------------------------------------------------------------------- memory
MEMORY_MODES = {"KL, backprop": "backprop", "KL, adjoint": "adjoint", "LV, one pass": "lv",
                "LV, two passes (chunks of 50 steps)": "lv-chunked"}


def memory_child(mode: str, steps: int, batch: int) -> None:
    """One training step (forward and backward) of the loss ``mode``; prints the peak resident memory in MiB."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sampler = DIS(target("funnel"), steps=steps, integrator="exponential")
    sampler.control.clip = 10.0
    grid = time_grid(1.0, steps)
    x0 = sampler.reference.sample_initial(batch)
    if mode.startswith("lv"):
        loss = log_variance_loss(sampler.target, sampler.reference, sampler.control, x0, grid,
                                 chunk=50 if mode == "lv-chunked" else None).loss
    else:
        loss = kl_loss(sampler.target, sampler.reference, sampler.control, x0, grid, adjoint=mode == "adjoint",
                       adjoint_method="euler").loss
    loss.backward()
    print(json.dumps({"peak_mib": peak_resident_mib()}))


def peak_resident_mib() -> float:
    """This process's peak resident set size: ``VmHWM`` of /proc/self/status, which starts afresh
    with the process image (``getrusage``'s ``ru_maxrss`` carries over the parent's across exec)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_section(step_counts: list[int], batch: int) -> str:
    def peak(mode: str, steps: int) -> float:
        out = subprocess.run([sys.executable, __file__, "--memory-child", mode, str(steps), str(batch)],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]

    # Two children at a time: each measures its own peak, so running them side by side changes no number.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: [pool.submit(peak, mode, steps) for steps in step_counts]
                   for name, mode in MEMORY_MODES.items()}
    peaks = {name: [future.result() for future in results] for name, results in futures.items()}
    rows = [[mode] + [f"{p:.0f}" for p in values] + [f"{100 * (values[-1] / values[0] - 1):+.0f} %"]
            for mode, values in peaks.items()]
    return "\n".join([
        "## Peak memory of a training step",
        "",
        f"Command: `python benchmarks/speed.py --section memory`. One training step (forward and backward) of "
        f"DIS (exponential integrator) on the 10-d Funnel, batch {batch}, in a fresh process per cell; peak "
        f"resident set size in MiB (it includes about 300 MiB of Python and torch). \"Flat\" means under 10 % "
        f"growth from the fewest to the most steps; the two-pass log-variance loss stores the states "
        f"(batch x dim floats per step: 10 KiB here) and keeps one chunk's graph. Machine: {machine()}." + ADJOINT_NOTE,
        "",
        markdown_table(["loss, gradient"] + [f"{n} steps" for n in step_counts]
                       + [f"growth {step_counts[0]} to {step_counts[-1]}"],
                       rows),
    ])


# --------------------------------------------------------------------------- time to accuracy
def accuracy_section(iterations: int, every: int, shown: list[int], batch: int, steps: int, eval_samples: int) -> str:
    lines = [
        "## Time to accuracy",
        "",
        f"Command: `python benchmarks/speed.py --section accuracy`. DIS (library defaults), log-variance loss, batch "
        f"{batch}, {steps} steps, one run of {iterations} iterations; every {every} iterations the absolute log Z "
        f"error of the importance-sampled estimate from {eval_samples} fresh paths of the EMA control; training "
        f"time with the evaluations excluded. Machine: {machine()}.",
        "",
    ]
    for name, problem in (("GMM (d=2)", target("gmm")), ("Funnel (d=10)", target("funnel"))):
        torch.manual_seed(0)
        sampler = DIS(problem, steps=steps)
        history = sampler.fit(iterations, batch_size=batch, loss="lv", progress=False, evaluate_every=every,
                              eval_samples=eval_samples)
        evaluated = [r for r in history if "eval_log_z" in r]
        first = next((r for r in evaluated if abs(r["eval_log_z"] - problem.log_Z) < 0.1), None)
        reached = "not reached" if first is None else f"{first['time']:.0f} s (iteration {first['iteration']})"
        rows = [[str(r["iteration"]), f"{r['time']:.0f}", f"{abs(r['eval_log_z'] - problem.log_Z):.3f}",
                 f"{r['eval_ess']:.3f}", f"{r['eval_log_z']:+.3f}"] for r in evaluated if r["iteration"] in shown]
        lines += [f"### {name}: error first below 0.1 after {reached}", "",
                  markdown_table(["iterations", "train time (s)", "log Z error", "ESS", "log Z estimate"], rows), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- GPU: CUDA graphs
def graph_section(iterations: int, batch: int, steps: int) -> str:
    """Training iterations per second of DIS on the Funnel with and without CUDA-graph capture."""
    header = ["## GPU path: CUDA graphs", ""]
    if not torch.cuda.is_available():
        return "\n".join(header + [
            f"Command: `python benchmarks/speed.py --section graph`. Not measured: no CUDA device on this machine "
            f"({machine()}). The path's bookkeeping runs eagerly on a CPU and is tested there "
            f"(tests/sde_control/test_training.py, test_samplers.py); on a CPU `fit(cuda_graph=True)` warns and "
            f"trains without capture."])
    variants = {"eager": {}, "torch.compile": {"compile": True}, "CUDA graph": {"cuda_graph": True},
                "torch.compile + CUDA graph": {"compile": True, "cuda_graph": True}}
    rates = {}
    for name, options in variants.items():
        torch.manual_seed(0)
        sampler = DIS(target("funnel"), steps=steps).to("cuda")
        sampler.fit(10, batch_size=batch, progress=False, **options)  # warm-up (compilation, first capture)
        torch.cuda.synchronize()
        started = time.perf_counter()
        sampler.fit(iterations, batch_size=batch, progress=False, **options)
        torch.cuda.synchronize()
        rates[name] = iterations / (time.perf_counter() - started)
    rows = [[name, f"{rate:.2f}", f"{rate / rates['eager']:.2f}x", f"{rate / rates['CUDA graph']:.2f}x"]
            for name, rate in rates.items()]
    return "\n".join(header + [
        f"Command: `python benchmarks/speed.py --section graph`. DIS on the 10-d Funnel, log-variance loss, batch "
        f"{batch}, {steps} steps, {iterations} iterations after 10 warm-up ones. Device: {machine()}.", "",
        markdown_table(["training step", "iterations / s", "/ eager", "/ graph only"], rows)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", default="all",
                        help="all, or comma-separated of levers, estimate, floor, step, memory, accuracy, graph")
    parser.add_argument("--peer", type=Path, default=None,
                        help="the reference implementation's folder built by ../shared/tools/peer_setup.sh")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; print, do not write RESULTS.md")
    parser.add_argument("--memory-child", nargs=3, metavar=("MODE", "STEPS", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--training-child", nargs=4, metavar=("OPTIONS", "BATCH", "STEPS", "ITERATIONS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        mode, steps, batch = args.memory_child
        return memory_child(mode, int(steps), int(batch))
    if args.training_child:
        options, batch, steps, iterations = args.training_child
        return training_child(json.loads(options), int(batch), int(steps), int(iterations))
    default, one = torch.get_num_threads(), 1
    sections = {  # (threads, section): levers, estimate and floor measure the machine's default threads
        "levers": (default, lambda: levers_section(16, 10, WARM_UP + 1, 1, None) if args.smoke
                   else levers_section(2048, 200, WARM_UP + 5, 3, args.peer)),
        "estimate": (default, lambda: estimate_section(200, 20, 1) if args.smoke else estimate_section(10_000, 200, 3)),
        "floor": (default, lambda: floor_section(64, 10) if args.smoke else floor_section(2048, 200)),
        "step": (one, lambda: step_section(batch=64, steps=10, rounds=2) if args.smoke
                 else step_section(2048, 200, rounds=7)),
        "memory": (one, lambda: memory_section([10, 20], 16) if args.smoke
                   else memory_section([100, 200, 400, 800, 1600], 256)),
        "accuracy": (one, lambda: accuracy_section(4, 2, [2, 4], 16, 8, 64) if args.smoke
                     else accuracy_section(1500, 50, [50, 100, 250, 500, 1000, 1500], 512, 200, 10_000)),
        "graph": (one, lambda: graph_section(3, 16, 8) if args.smoke else graph_section(200, 2048, 200)),
    }
    chosen = set(sections) if args.section == "all" else set(args.section.split(","))
    if chosen - set(sections):
        parser.error(f"--section: unknown {', '.join(sorted(chosen - set(sections)))}; choose all or of "
                     f"{', '.join(sections)}")
    for name, (threads, section) in sections.items():
        if name in chosen:
            torch.set_num_threads(threads)
            text = section()
            print(text, flush=True)
            if not args.smoke:
                write_section(f"speed-{name}", text)


if __name__ == "__main__":
    main()
