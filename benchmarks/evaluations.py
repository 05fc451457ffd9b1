"""|log Z error| against target evaluations: the diffusion samplers (log-variance loss with their default
exploration; ``dis_annealed`` is DIS with ``guidance="annealed"``) and SMC, on the targets named by their config files.

    python benchmarks/evaluations.py                       # CPU budget, 3 seeds, two cells at a time; resumable
    python benchmarks/evaluations.py --targets gmm,funnel --methods dis,smc --seeds 1 --jobs 1   # a part of it
    python benchmarks/evaluations.py --smoke               # seconds: a check of the script, writes nothing

One evaluation is one point at which the target's log density or its gradient is computed (training and
estimation included; ``LogZEstimate.evaluations``). A diffusion-sampler cell (target, method, seed) trains for the
budget's iterations, capped by its ``time_limit`` of training time, and estimates log Z from ``eval_samples`` fresh
paths every ``evaluate_every`` iterations: each estimate is one point (cumulative evaluations, |log Z error|). An SMC
cell runs ``SMC(target).estimate_log_z(particles=p)`` for growing ``p``.
Each cell is saved to ``benchmarks/results/evaluations-<budget>/<cell>.json`` as it finishes, so the table fills
over several sittings; the markdown (section ``evaluations`` of RESULTS.md) and the figure
(``benchmarks/evaluations.png``, log-log, median over seeds) say which cells are missing. A target whose data
file is absent (``lgcp``: ``pines.csv`` in ``../shared/data``) is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, run_cells, target, write_section  # noqa: E402

from sde_control import CMCD, DDS, DIS, PIS, Bridge  # noqa: E402
from sde_control.baselines import SMC  # noqa: E402

TARGETS = {"gmm": "GMM-9 (d=2)", "funnel": "Funnel (d=10)", "double_well": "DW-5 (d=5)",
           "double_well_50": "MW-50 (d=50)", "gmm40_50d": "GMM40 (d=50)", "lgcp": "LGCP (d=1600)"}

SAMPLERS: dict[str, Callable[..., Any]] = {
    "pis": PIS, "dis": DIS, "dds": DDS, "bridge": Bridge, "cmcd": CMCD,
    "dis_annealed": lambda problem, steps: DIS(problem, steps=steps, guidance="annealed"),
    "dis_ud": lambda problem, steps: DIS(problem, steps=steps, underdamped=True),
    "bridge_ud": lambda problem, steps: Bridge(problem, steps=steps, underdamped=True),
}
METHODS = (*SAMPLERS, "smc")

BUDGETS: dict[str, dict[str, Any]] = {
    # About 10 minutes of training per cell at most on one core of this project's CPU.
    "cpu": dict(batch_size=256, steps=128, iterations=1000, evaluate_every=100, eval_samples=2000, time_limit=600.0,
                seeds=3, smc_particles=(256, 1024, 4096, 16384),
                # SMC on LGCP takes about 0.17 s a particle with its defaults (the lgcp-smc cell: 231 s for these
                # three runs), so 16384 particles would take 45 minutes.
                smc_particles_of={"lgcp": (64, 256, 1024)}),
    "smoke": dict(batch_size=16, steps=8, iterations=4, evaluate_every=2, eval_samples=32, time_limit=60.0, seeds=1,
                  smc_particles=(32, 64)),
}
DECADES = (10**5, 10**6, 10**7, 10**8, 10**9)
FIGURE = Path(__file__).resolve().parent / "evaluations.png"
SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DATA_FILES = {"lgcp": ("path", "pines.csv")}
"""Targets whose config needs a data file: the config key and the file in ``../shared/data``."""


def target_overrides(name: str) -> dict[str, str]:
    """Config overrides that point a target at its data file (empty for targets without one)."""
    if name not in DATA_FILES:
        return {}
    key, file = DATA_FILES[name]
    return {key: str((SHARED_DATA / file).resolve())}


def available_targets(names: list[str]) -> tuple[list[str], list[str]]:
    """The names whose data file (if they need one) exists, and notes for the others."""
    present, notes = [], []
    for name in names:
        if name in DATA_FILES and not (SHARED_DATA / DATA_FILES[name][1]).is_file():
            notes.append(f"`{name}`: its data file {DATA_FILES[name][1]} is not in {SHARED_DATA.resolve()}; skipped")
        else:
            present.append(name)
    return present, notes


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one (target, method, seed) cell; errors are returned, not raised (the cell is then
    listed as missing with its reason)."""
    budget = BUDGETS[cell["budget"]]
    torch.manual_seed(cell["seed"])
    started = time.perf_counter()
    try:
        problem = target(cell["target"], **target_overrides(cell["target"]))
        if problem.log_Z is None:
            return {"error": "the target has no reference log Z"}
        points = (smc_points(problem, budget.get("smc_particles_of", {}).get(cell["target"], budget["smc_particles"]))
                  if cell["method"] == "smc" else sampler_points(problem, cell, budget))
    except Exception as error:  # noqa: BLE001 - a failed cell is reported, not fatal to the sitting
        return {"error": f"{type(error).__name__}: {error}"}
    return {"points": points, "log_z_exact": problem.log_Z, "wall_time_s": time.perf_counter() - started}


def train(problem, method: str, budget: dict[str, Any], loss: str = "lv") -> list[dict[str, Any]]:
    """Train ``method`` on ``problem`` at ``budget`` (estimates every ``evaluate_every`` iterations); the history."""
    sampler = SAMPLERS[method](problem, steps=budget["steps"])
    return sampler.fit(budget["iterations"], batch_size=budget["batch_size"], loss=loss, progress=False,
                       evaluate_every=budget["evaluate_every"], eval_samples=budget["eval_samples"],
                       time_limit=budget["time_limit"])


def estimate_point(record: dict[str, Any], problem) -> dict[str, float]:
    """One estimate of a training history (an entry with ``eval_log_z``) against the target's exact log Z."""
    return {"iteration": record["iteration"], "evaluations": record["evaluations"], "log_z": record["eval_log_z"],
            "error": abs(record["eval_log_z"] - problem.log_Z), "elbo_error": problem.log_Z - record["eval_elbo"],
            "ess": record["eval_ess"], "time": record["time"]}


def sampler_points(problem, cell: dict[str, Any], budget: dict[str, Any]) -> list[dict[str, float]]:
    return [estimate_point(r, problem) for r in train(problem, cell["method"], budget) if "eval_log_z" in r]


def smc_points(problem, particle_counts: tuple[int, ...]) -> list[dict[str, float]]:
    points = []
    for particles in particle_counts:
        est = SMC(problem).estimate_log_z(particles=particles)
        points.append({"particles": particles, "evaluations": est.evaluations, "log_z": est.log_z,
                       "error": abs(est.log_z - problem.log_Z), "ess": est.ess})
    return points


def error_at(points: list[dict[str, float]], evaluations: int) -> float | None:
    """The error of the last point within ``evaluations`` (``None`` if the first point needs more)."""
    within = [p for p in points if p["evaluations"] <= evaluations]
    return within[-1]["error"] if within else None


def tables(results: dict[str, dict[str, Any]], cells: list[dict[str, Any]], notes: list[str], budget: str) -> str:
    b = BUDGETS[budget]
    lines = [
        "## |log Z error| against target evaluations",
        "",
        f"Command: `python benchmarks/evaluations.py` (resumable; parts with `--targets`, `--methods`, `--seeds`). "
        f"Diffusion samplers: log-variance loss with each sampler's default exploration, batch {b['batch_size']}, "
        f"{b['steps']} steps, up to {b['iterations']} iterations or {b['time_limit']:.0f} s of training, log Z "
        f"estimated from {b['eval_samples']} paths every {b['evaluate_every']} iterations; SMC with "
        f"{', '.join(map(str, b['smc_particles']))} particles"
        + "".join(f" ({', '.join(map(str, counts))} on {name})"
                  for name, counts in b.get("smc_particles_of", {}).items())
        + f". One evaluation is one point where the target's log "
        f"density or its gradient is computed, training included. Each entry: the median over seeds of the "
        f"|log Z error| of the last estimate within that many evaluations (— where none is); the last column, the "
        f"median ELBO error (log Z - ELBO) of the final estimate (cells measured before it was recorded have none). "
        f"Figure: "
        f"`benchmarks/evaluations.png`. Machine: {machine()}.",
        "",
    ]
    lines += [f"- {note}" for note in notes]
    missing = [c["id"] for c in cells if c["id"] not in results or "error" in results[c["id"]]]
    if missing:
        reasons = {c: results[c]["error"] for c in missing if c in results}
        lines.append(f"- missing cells ({len(missing)} of {len(cells)}): " + ", ".join(
            f"`{c}`" + (f" ({reasons[c]})" if c in reasons else " (not run yet)") for c in missing))
    lines.append("")
    header = ["method"] + [f"≤ 1e{int(math.log10(d))}" for d in DECADES] + ["seeds", "final ELBO error"]
    for name in dict.fromkeys(c["target"] for c in cells):
        rows = []
        for method in dict.fromkeys(c["method"] for c in cells):
            done = [results[c["id"]] for c in cells if (c["target"], c["method"]) == (name, method)
                    and "points" in results.get(c["id"], {})]
            if not done:
                continue
            row = [method]
            for decade in DECADES:
                errors = [e for e in (error_at(r["points"], decade) for r in done) if e is not None]
                row.append(f"{statistics.median(errors):.3g}" if errors else "—")
            elbo_errors = [r["points"][-1]["elbo_error"] for r in done if "elbo_error" in r["points"][-1]]
            rows.append(row + [str(len(done)), f"{statistics.median(elbo_errors):.3g}" if elbo_errors else "—"])
        if rows:
            lines += [f"### {TARGETS.get(name, name)}", "", markdown_table(header, rows), ""]
    return "\n".join(lines)


def figure(results: dict[str, dict[str, Any]], cells: list[dict[str, Any]], path: Path) -> None:
    """Log-log curves of the median |log Z error| over seeds against evaluations, one panel per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(c["target"] for c in cells))
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for method in dict.fromkeys(c["method"] for c in cells):
            runs = [results[c["id"]]["points"] for c in cells if (c["target"], c["method"]) == (name, method)
                    and "points" in results.get(c["id"], {})]
            if not runs:
                continue
            grid = sorted({p["evaluations"] for run in runs for p in run})
            medians = [(x, statistics.median(e)) for x in grid
                       if len(e := [v for v in (error_at(run, x) for run in runs) if v is not None]) == len(runs)]
            if medians:
                ax.loglog(*zip(*[(x, max(y, 1e-4)) for x, y in medians]), marker="o", markersize=3, label=method,
                          color=f"C{METHODS.index(method) % 10}")  # one colour per method in every panel
        ax.set_title(TARGETS.get(name, name))
        ax.set_xlabel("target evaluations")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("|log Z error|")
    handles = {}  # every method drawn in some panel, in the last panel's legend
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[0][-1].legend(list(handles.values()), list(handles), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny budget on gmm (dis, cmcd, smc); writes nothing")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=None, help="default: the budget's")
    parser.add_argument("--jobs", type=int, default=2, help="cells at the same time (one thread each)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/evaluations-<budget>")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    budget_name = "smoke" if args.smoke else "cpu"
    budget = BUDGETS[budget_name]
    requested_targets = ["gmm"] if args.smoke else args.targets.split(",")
    requested_methods = ["dis", "cmcd", "smc"] if args.smoke else args.methods.split(",")
    unknown = sorted(set(requested_methods) - set(METHODS)) + sorted(set(requested_targets) - set(TARGETS))
    if unknown:
        raise SystemExit(f"unknown method(s) or target(s): {', '.join(unknown)}; methods {', '.join(METHODS)}, "
                         f"targets {', '.join(TARGETS)}")
    targets, notes = available_targets(requested_targets)
    methods = list(requested_methods)
    out = args.out or Path(__file__).resolve().parent / "results" / f"evaluations-{budget_name}"

    def grid_of(target_names, method_names, seeds):
        return [{"id": f"{t}-{m}-{s}", "budget": budget_name, "target": t, "method": m, "seed": s}
                for t in target_names for m in method_names for s in seeds]

    run_cells(grid_of(targets, methods, range(args.seeds or budget["seeds"])), run_cell, out, args.jobs)
    # The table covers every cell of the full grid (the budget's seeds) on disk, so sittings with parts of it add up.
    if not args.smoke:
        all_targets, notes = available_targets(list(TARGETS))
    else:
        all_targets = targets
    all_methods = methods if args.smoke else list(METHODS)
    cells = grid_of(all_targets, all_methods, range(budget["seeds"]))
    results = {c["id"]: json.loads((out / f"{c['id']}.json").read_text()) for c in cells
               if (out / f"{c['id']}.json").exists()}
    text = tables(results, cells, notes, budget_name)
    print(text)
    if args.smoke:
        figure(results, cells, out / "evaluations.png")
    else:
        figure(results, cells, FIGURE)
        write_section("evaluations", text + "\n![|log Z error| against target evaluations](evaluations.png)\n")


if __name__ == "__main__":
    main()
