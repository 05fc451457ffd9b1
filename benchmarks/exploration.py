"""Mode coverage on the 9-mode GMM against the log-variance loss's exploration: the measurement behind each
sampler's ``default_exploration``.

    python benchmarks/exploration.py                    # every sampler x exploration 0, 1, 2; resumable; ~40 min on 2 cores
    python benchmarks/exploration.py --samplers pis,dis --etas 0,2 --seeds 2
    python benchmarks/exploration.py --smoke            # seconds; prints, writes nothing

CPU budget of the reproduction table (batch 256, 128 steps, 200 iterations), log-variance loss with exploration
``eta`` decaying to 0 over the run (``exploration_end=0``, the default) and, for ``--constant``, kept. Per cell:
the largest error of the importance-weighted mode shares (each should be 1/9; a dropped mode gives 1/9), the
smallest raw share of the 10,000 samples, the importance-sampled log Z error, the ELBO error and the ESS. Cells are
saved in ``benchmarks/results/exploration/`` as they finish; the table goes to section ``exploration`` of
RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, run_cells, target, write_section  # noqa: E402

from sde_control import CMCD, DDS, DIS, PIS, Bridge  # noqa: E402
from sde_control.metrics import mode_fractions  # noqa: E402

SAMPLERS = {
    "pis": lambda steps: PIS(target("gmm"), steps=steps),
    "dis": lambda steps: DIS(target("gmm"), steps=steps),
    "dds": lambda steps: DDS(target("gmm"), steps=steps),
    "bridge": lambda steps: Bridge(target("gmm"), steps=steps),
    "cmcd": lambda steps: CMCD(target("gmm"), steps=steps),
    "cmcd_prior5": lambda steps: CMCD(target("gmm"), steps=steps, prior_std=5.0),
    "dis_ud": lambda steps: DIS(target("gmm"), steps=steps, underdamped=True),
    "dis_ud_prior5": lambda steps: DIS(target("gmm"), steps=steps, underdamped=True, prior_std=5.0),
    "bridge_ud": lambda steps: Bridge(target("gmm"), steps=steps, underdamped=True),
    "bridge_ud_prior5": lambda steps: Bridge(target("gmm"), steps=steps, underdamped=True, prior_std=5.0),
}
BUDGETS = {"cpu": dict(batch_size=256, steps=128, iterations=200, eval_samples=10_000),
           "smoke": dict(batch_size=16, steps=8, iterations=2, eval_samples=64)}


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    budget = BUDGETS[cell["budget"]]
    torch.manual_seed(cell["seed"])
    sampler = SAMPLERS[cell["sampler"]](budget["steps"])
    started = time.perf_counter()
    sampler.fit(budget["iterations"], batch_size=budget["batch_size"], loss="lv", exploration=cell["eta"],
                exploration_end=1.0 if cell["constant"] else 0.0, progress=False)
    train_time = time.perf_counter() - started
    est = sampler.estimate_log_z(budget["eval_samples"], eubo=False)
    samples, log_weights = sampler.weighted_samples(budget["eval_samples"])
    means = sampler.target.means
    shares = mode_fractions(samples, means, weights=torch.softmax(log_weights.double(), 0))
    return {"max_share_error": float((shares - 1 / means.shape[0]).abs().max()),
            "min_raw_share": float(mode_fractions(samples, means).min()), "error": est.error,
            "elbo_error": est.elbo_error, "ess": est.ess, "evaluations": est.evaluations, "train_time_s": train_time}


def table(results: list[dict[str, Any]], budget: str, constant: bool) -> str:
    b = BUDGETS[budget]
    rows = []
    for name in dict.fromkeys(r["sampler"] for r in results):
        for eta in sorted({r["eta"] for r in results if r["sampler"] == name}):
            cell = [r for r in results if (r["sampler"], r["eta"]) == (name, eta)]

            def median(key: str) -> str:
                return f"{statistics.median(r[key] for r in cell):.3g}"

            rows.append([name, f"{eta:g}", median("max_share_error"), median("min_raw_share"), median("error"),
                         median("elbo_error"), median("ess"), str(len(cell))])
    return "\n".join([
        "## Exploration and mode coverage on the 9-mode GMM",
        "",
        f"Command: `python benchmarks/exploration.py{' --constant' if constant else ''}`. Log-variance loss, batch "
        f"{b['batch_size']}, {b['steps']} steps, {b['iterations']} iterations, exploration eta "
        f"{'kept constant' if constant else 'decaying to 0 over the run (the default)'}; {b['eval_samples']} paths "
        f"for the estimates and the shares; medians over seeds. A dropped mode makes the largest share error 1/9 = "
        f"0.111 and the smallest raw share 0; the goal is a largest share error of at most 0.03. `_prior5`: the "
        f"prior N(0, 25 I) in place of N(0, I). Machine: {machine()}.",
        "",
        markdown_table(["sampler", "eta", "largest share error", "smallest raw share", "IS log Z error", "ELBO error",
                        "ESS", "seeds"], rows),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--etas", default="0,1,2")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--constant", action="store_true", help="keep the exploration constant over the run")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/exploration[-smoke]")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    budget = "smoke" if args.smoke else "cpu"
    samplers = ["pis", "cmcd"] if args.smoke else args.samplers.split(",")
    out = args.out or Path(__file__).resolve().parent / "results" / ("exploration-smoke" if args.smoke else "exploration")
    cells = [{"id": f"{s}-{eta}-{seed}{'-constant' if args.constant else ''}", "budget": budget, "sampler": s,
              "eta": float(eta), "seed": seed, "constant": args.constant}
             for s in samplers for eta in args.etas.split(",") for seed in range(args.seeds)]
    text = table(run_cells(cells, run_cell, out, args.jobs), budget, args.constant)
    print(text)
    if not args.smoke:
        write_section("exploration-constant" if args.constant else "exploration", text)


if __name__ == "__main__":
    main()
