"""Reproduction table: PIS, DIS, DDS, the Bridge, CMCD and the underdamped DIS and Bridge with the KL and
log-variance losses on GMM, Funnel, double well (d=5) and many-well (d=50), over several seeds.

    python benchmarks/reproduce.py                      # the CPU budget (about 90 minutes on 2 cores)
    python benchmarks/reproduce.py --budget paper --jobs 1 --cuda-graph   # the papers' budget, on a GPU
    python benchmarks/reproduce.py --budget smoke       # a seconds-long check of the script

Each cell (target, sampler, loss, seed) is trained and evaluated in its own process and saved to
``benchmarks/results/<budget>/<cell>.json`` as it finishes (its training checkpoints next to it),
so an interrupted run resumes where it stopped. The aggregated table is written to the
``reproduce-<budget>`` section of ``benchmarks/RESULTS.md``.

Per cell: the absolute log Z error of the importance-sampled estimate and of the ELBO (10,000 paths), ESS,
the EUBO, the squared 2-Wasserstein distance between 2000 model and 2000 exact samples (the
eps -> 0 limit of the debiased Sinkhorn divergence, see ``sde_control.metrics``), the error of the
marginal standard deviations, and the training wall time.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TARGET_NAMES, machine, markdown_table, mean_std, run_cells, target, write_section  # noqa: E402

from sde_control import CMCD, DDS, DIS, PIS, Bridge  # noqa: E402
from sde_control.metrics import marginal_std_error, wasserstein2_squared  # noqa: E402

SAMPLERS = {"pis": PIS, "dis": DIS, "dds": DDS, "bridge": Bridge, "cmcd": CMCD,
            "dis_ud": lambda problem, steps: DIS(problem, steps=steps, underdamped=True),
            "bridge_ud": lambda problem, steps: Bridge(problem, steps=steps, underdamped=True)}

BUDGETS: dict[str, dict[str, Any]] = {
    # Chosen so that the whole table (4 targets x 3 samplers x 2 losses x 5 seeds) finishes in
    # about 90 minutes on this project's 2-core CPU with two cells at a time.
    "cpu": dict(batch_size=256, steps=128, iterations=200, eval_samples=10_000, metric_samples=2000, seeds=5),
    # The DIS paper: batch 2048, 100/200/400/800 steps for quarters of 20,000 (d <= 10) or
    # 80,000 gradient steps; evaluation at 800 steps.
    "paper": dict(batch_size=2048, steps=(100, 200, 400, 800), iterations=(20_000, 80_000), eval_steps=800,
                  eval_samples=10_000, metric_samples=2000, seeds=10),
    "smoke": dict(batch_size=16, steps=8, iterations=2, eval_samples=64, metric_samples=32, seeds=1),
}

# Published reference points (|log Z error| of DIS at 128 steps and of the best flow-based
# method), quoted second-hand from a later benchmark of diffusion samplers at 128 steps; its estimator is not
# stated with the numbers.
PUBLISHED = {"gmm": ("0.090", "0.0027"), "funnel": ("0.641", "0.0022"), "double_well": ("1.21", "n/a"),
             "double_well_50": ("n/a", "n/a")}


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one (target, sampler, loss, seed) cell."""
    budget = BUDGETS[cell["budget"]]
    torch.manual_seed(cell["seed"])
    problem = target(cell["target"])
    iterations = budget["iterations"]
    if isinstance(iterations, tuple):
        iterations = iterations[0] if problem.dim <= 10 else iterations[1]
    steps = budget["steps"]
    eval_steps = budget.get("eval_steps", steps)
    sampler = SAMPLERS[cell["sampler"]](problem, steps=eval_steps, **cell.get("sampler_options", {})).to(cell["device"])
    checkpoint = Path(cell["out"]) / f"{cell['id']}.pt"
    history = sampler.fit(iterations, batch_size=budget["batch_size"], loss=cell["loss"],
                          step_schedule=steps if isinstance(steps, tuple) else None,
                          progress=False, checkpoint=checkpoint, checkpoint_every=max(iterations // 10, 1),
                          cuda_graph=cell["cuda_graph"], **cell.get("fit_options", {}))
    started = time.perf_counter()
    est = sampler.estimate_log_z(budget["eval_samples"])
    samples = sampler.sample(budget["metric_samples"]).cpu()
    exact = problem.sample(budget["metric_samples"]).cpu()
    checkpoint.unlink(missing_ok=True)
    return {
        **est.as_dict(),
        "w2_squared": wasserstein2_squared(samples, exact),
        "marginal_std_error": marginal_std_error(samples, exact),
        "train_time_s": history[-1]["time"],
        "eval_time_s": time.perf_counter() - started,
        "iterations": iterations,
        "sampler_name": sampler.name,
    }


def exact_w2_floor(name: str, n: int) -> float:
    """W2² between two independent sets of ``n`` exact samples: what a perfect sampler would score."""
    torch.manual_seed(0)
    exact = target(name)
    return wasserstein2_squared(exact.sample(n).cpu(), exact.sample(n).cpu())


def table(results: list[dict[str, Any]], budget: str, command: str) -> str:
    b = BUDGETS[budget]
    lines = [
        f"## Reproduction table, `{budget}` budget",
        "",
        f"Command: `{command}`. Budget: batch {b['batch_size']}, "
        f"time steps {b['steps']}, {b['iterations']} iterations, up to {b['seeds']} seeds; evaluation with "
        f"{b['eval_samples']} paths, W2 on {b['metric_samples']} vs {b['metric_samples']} samples. "
        f"Machine: {machine()}. Mean ± standard deviation over the seeds of each row.",
        "",
    ]
    header = ["sampler", "loss", "seeds", "IS log Z error", "ELBO error", "ESS", "EUBO - log Z", "W2²",
              "marg. std error", "evaluations", "train time (s)"]
    for name in TARGET_NAMES:
        rows = []
        for sampler, loss in itertools.product(SAMPLERS, ("kl", "lv")):
            cell = [r for r in results if (r["target"], r["sampler"], r["loss"]) == (name, sampler, loss)]
            if not cell:
                continue
            eubo_gap = [None if r["eubo"] is None else r["eubo"] - r["log_z_exact"] for r in cell]
            rows.append([cell[0].get("sampler_name", sampler.upper()), loss.upper(), str(len(cell)),
                         mean_std(r["error"] for r in cell),
                         mean_std(r["elbo_error"] for r in cell), mean_std(r["ess"] for r in cell),
                         mean_std(eubo_gap), mean_std(r["w2_squared"] for r in cell),
                         mean_std(r["marginal_std_error"] for r in cell),
                         mean_std(r.get("evaluations") for r in cell), mean_std(r["train_time_s"] for r in cell)])
        if rows:
            dis, flow = PUBLISHED[name]
            lines += [f"### {TARGET_NAMES[name]}", "",
                      f"Published |log Z error| at 128 steps: DIS {dis}, best flow-based method {flow}. "
                      f"W2² between two independent exact sample sets of the same size: "
                      f"{exact_w2_floor(name, b['metric_samples']):.3g} (the metric's noise floor).", "",
                      markdown_table(header, rows), ""]
    return "\n".join(lines)


def _options(pairs: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` as keyword arguments, the values read as YAML (``false``, ``0.5``, ``norm``)."""
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"options are KEY=VALUE, got {pair!r}")
        options[key] = yaml.safe_load(value)
    return options


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--targets", default=",".join(TARGET_NAMES), help="config names of configs/target/")
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help=f"of {', '.join(SAMPLERS)}")
    parser.add_argument("--losses", default="kl,lv")
    parser.add_argument("--seeds", type=int, default=None, help="default: the budget's")
    parser.add_argument("--jobs", type=int, default=2, help="cells trained at the same time (one thread each)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cuda-graph", action="store_true", help="capture training steps in CUDA graphs (GPU)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/<budget>")
    parser.add_argument("--no-results-md", action="store_true", help="do not rewrite benchmarks/RESULTS.md")
    parser.add_argument("--fit", action="append", default=[], metavar="KEY=VALUE",
                        help="a training option for every cell (e.g. detach_score=false, exploration=0); with --out")
    parser.add_argument("--sampler-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a constructor option for every sampler (e.g. clip_mode=norm); with --out")
    args = parser.parse_args(argv)

    budget = BUDGETS[args.budget]
    fit_options, sampler_options = _options(args.fit), _options(args.sampler_option)
    if (fit_options or sampler_options) and (args.out is None or not args.no_results_md):
        parser.error("--fit and --sampler-option change the cells: give them their own --out and --no-results-md")
    out = args.out or Path(__file__).resolve().parent / "results" / args.budget
    cells = [
        {"id": f"{t}-{s}-{loss}-{seed}", "budget": args.budget, "target": t, "sampler": s, "loss": loss,
         "seed": seed, "out": str(out), "device": args.device, "cuda_graph": args.cuda_graph,
         "fit_options": fit_options, "sampler_options": sampler_options}
        for t in args.targets.split(",") for s in args.samplers.split(",") for loss in args.losses.split(",")
        for seed in range(args.seeds or budget["seeds"])
    ]
    results = run_cells(cells, run_cell, out, args.jobs)
    command = " ".join(["python benchmarks/reproduce.py"] + (sys.argv[1:] if argv is None else list(argv)))
    text = table(results, args.budget, command)
    print(text)
    if not args.no_results_md:
        write_section(f"reproduce-{args.budget}", text)


if __name__ == "__main__":
    main()
