"""The samplers that learn a backward process (the Bridge, CMCD, the underdamped Bridge) under the log-variance loss
and under the reverse KL by the log-derivative trick (``loss="kl_ld"``), at the evaluations table's CPU budget.

    python benchmarks/bridge_losses.py                    # DW-5, both losses, seeds 0 and 1, two cells at a time
    python benchmarks/bridge_losses.py --targets funnel --samplers bridge --seeds 1 --jobs 1
    python benchmarks/bridge_losses.py --smoke            # seconds: a check of the script, writes nothing

Each cell (target, sampler, loss, seed) trains as an evaluations cell does (``benchmarks/evaluations.py``: batch
256, 128 steps, 1000 iterations or 600 s, log Z from 2000 fresh paths every 100 iterations; the log-variance loss
with the sampler's default exploration) and records, every 100 iterations, the median training loss of those
iterations beside the estimate's |log Z error| and ELBO error. The question it answers: does the loss fall while the
ELBO error grows (the pair of processes drifting apart), and does the log-derivative KL stop it? Cells are saved to
``benchmarks/results/bridge-losses-<budget>/`` as they finish; the table goes to the section ``bridge-losses`` of
RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, run_cells, target, write_section  # noqa: E402
from evaluations import BUDGETS, TARGETS, estimate_point, train  # noqa: E402

BACKWARD_SAMPLERS = ("bridge", "bridge_ud", "cmcd")
LOSSES = ("lv", "kl_ld")
REPORTED = (100, 500, 1000)
"""Iterations whose estimates the table shows (with the last one, if the time cap stopped the run before)."""


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Train one cell and return its estimates with the median training loss of each block of iterations (an error
    is returned, not raised: the table names the cell with it)."""
    budget = BUDGETS[cell["budget"]]
    torch.manual_seed(cell["seed"])
    started = time.perf_counter()
    problem = target(cell["target"])
    try:
        history = train(problem, cell["sampler"], budget, loss=cell["loss"])
    except Exception as error:  # noqa: BLE001 - a diverged cell is reported, not fatal to the sitting
        return {"error": f"{type(error).__name__}: {error}"}
    points, block = [], []
    for record in history:
        if "loss" in record:
            block.append(record["loss"])
        if "eval_log_z" in record:
            points.append({**estimate_point(record, problem), "loss": statistics.median(block)})
            block = []
    return {"points": points, "wall_time_s": time.perf_counter() - started}


def grid(budget: str, targets: list[str], samplers: list[str], losses: list[str], seeds: int) -> list[dict[str, Any]]:
    """The cells of every (target, sampler, loss, seed) combination at one budget."""
    return [{"id": f"{t}-{s}-{loss}-{seed}", "budget": budget, "target": t, "sampler": s, "loss": loss,
             "seed": seed} for t in targets for s in samplers for loss in losses for seed in range(seeds)]


def table(results: dict[str, dict[str, Any]], cells: list[dict[str, Any]], budget: str) -> str:
    b = BUDGETS[budget]
    header = ["target", "sampler", "loss", "seed"] + [f"loss / ELBO error at {i}" for i in REPORTED] + [
        "final |log Z error|", "final ESS"]
    rows, missing = [], []
    for cell in cells:
        result = results.get(cell["id"])
        if result is None or "error" in result:
            missing.append(f"`{cell['id']}` ({'not run yet' if result is None else result['error']})")
            continue
        points = result["points"]
        shown = [next((p for p in points if p["iteration"] == i), None) for i in REPORTED]
        if shown[-1] is None:  # stopped by the time cap: show its last estimate instead
            shown[-1] = points[-1]
        rows.append([TARGETS[cell["target"]], cell["sampler"], cell["loss"], str(cell["seed"])]
                    + ["—" if p is None else f"{p['loss']:.3g} / {p['elbo_error']:.3g}"
                       + ("" if p["iteration"] in REPORTED else f" (it. {p['iteration']})") for p in shown]
                    + [f"{points[-1]['error']:.3g}", f"{points[-1]['ess']:.3f}"])
    lines = [
        "## The samplers with a backward process: log-variance against log-derivative KL",
        "",
        f"Command: `python benchmarks/bridge_losses.py` (resumable). The evaluations table's budget: batch "
        f"{b['batch_size']}, {b['steps']} steps, up to {b['iterations']} iterations or {b['time_limit']:.0f} s of "
        f"training, estimates from {b['eval_samples']} fresh paths; `lv` with the sampler's default exploration, "
        f"`kl_ld` on-policy (`fit(loss=\"kl_ld\")`). Each entry: the median training loss of the "
        f"{b['evaluate_every']} iterations before the estimate (the log-variance loss: the batch's variance of "
        f"log w; `kl_ld`: minus the batch's ELBO) / the estimate's ELBO error (log Z - ELBO). "
        f"Machine: {machine()}.",
        "",
    ]
    if missing:
        lines += [f"- missing cells: {', '.join(missing)}", ""]
    lines.append(markdown_table(header, rows))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny budget on gmm (bridge); writes nothing")
    parser.add_argument("--targets", default="double_well")
    parser.add_argument("--samplers", default=",".join(BACKWARD_SAMPLERS))
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2, help="cells at the same time (one thread each)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/bridge-losses-<budget>")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    budget = "smoke" if args.smoke else "cpu"
    targets = ["gmm"] if args.smoke else args.targets.split(",")
    samplers = ["bridge"] if args.smoke else args.samplers.split(",")
    losses, seeds = args.losses.split(","), 1 if args.smoke else args.seeds
    unknown = (sorted(set(targets) - set(TARGETS)) + sorted(set(samplers) - set(BACKWARD_SAMPLERS))
               + sorted(set(losses) - set(LOSSES)))
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)}; targets {', '.join(TARGETS)}, samplers "
                         f"{', '.join(BACKWARD_SAMPLERS)}, losses {', '.join(LOSSES)}")
    out = args.out or Path(__file__).resolve().parent / "results" / f"bridge-losses-{budget}"
    run_cells(grid(budget, targets, samplers, losses, seeds), run_cell, out, args.jobs)
    # The table: the default grid (so that a sitting with a part of it does not shrink it) and what was asked.
    default = [] if args.smoke else grid(budget, ["double_well"], BACKWARD_SAMPLERS, LOSSES, 2)
    cells = list({c["id"]: c for c in default + grid(budget, targets, samplers, losses, seeds)}.values())
    results = {c["id"]: json.loads((out / f"{c['id']}.json").read_text()) for c in cells
               if (out / f"{c['id']}.json").exists()}
    text = table(results, cells, budget)
    print(text)
    if not args.smoke:
        write_section("bridge-losses", text)


if __name__ == "__main__":
    main()
