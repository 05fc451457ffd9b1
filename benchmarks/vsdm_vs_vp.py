"""VSDM against the single-variate VP score model on the VSDM paper's anisotropic shapes, at equal budget.

    OMP_NUM_THREADS=1 python benchmarks/vsdm_vs_vp.py                 # the CPU budget (the table in VSDM.md)
    OMP_NUM_THREADS=1 python benchmarks/vsdm_vs_vp.py --budget smoke  # a seconds-long check of the script

Data: the spiral stretched 8 times along y and the checkerboard stretched 6 times along x
(:mod:`sde_control.generative.data`), 20,000 training points, 2000 held-out points. Models: the VP score model
(``beta`` from 0.1 to 10, the paper's setting where VP struggles) and VSDM with a time-dependent ``A_t`` and with
a time-invariant ``A``, started at that VP. Equal budget: the same score network (a Fourier-feature MLP), the
same number of its gradient steps, batch and learning-rate schedule (:func:`sde_control.generative.fit_equal_budget`); VSDM
spends extra time on backward paths and forward updates, which the table's training time shows.

Evaluation from ``N(0, I)`` at 10, 20 and 50 Euler steps (one score evaluation each): the exact squared
2-Wasserstein distance to the held-out points (``sde_control.metrics.wasserstein2_squared``, the ``eps -> 0``
limit of the Sinkhorn divergence), the total variation between 50 x 50 histograms, for the probability-flow ODE
and the reverse SDE; the straightness of the ODE paths (chord over length, 1 for straight lines); and the KL of
the forward process's terminal moments to the prior (``ScoreModel.prior_kl``).

Each cell (data, model, seed) runs in its own process and is saved to ``benchmarks/results/vsdm/<budget>/`` as
it finishes (with a checkpoint per VSDM stage), so an interrupted run resumes; the table goes to
``benchmarks/VSDM.md`` with the command at its top.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, mean_std, run_cells  # noqa: E402

from sde_control.generative import VSDM, data, fit_equal_budget  # noqa: E402
from sde_control.generative.evaluation import evaluate  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = {"spiral": lambda n, seed: data.spiral(n, stretch=8.0, seed=seed),
        "checkerboard": lambda n, seed: data.checkerboard(n, stretch=6.0, seed=seed)}
DATA_NAMES = {"spiral": "spiral (8x along y)", "checkerboard": "checkerboard (6x along x)"}
MODELS = {"vp": "VP", "vsdm": "VSDM (A_t)", "vsdm_ti": "VSDM (A)"}
STEPS = (10, 20, 50)
HELD_OUT_SEED = 10_000

BUDGETS: dict[str, dict[str, Any]] = {
    # 10 stages of 500 score steps (5000 steps, batch 512) per model; the paper runs 200 stages of 500 on a GPU.
    "cpu": dict(n=20_000, held_out=2000, stages=10, score_iterations=500, batch_size=512, forward_iterations=100,
                paths=1000, path_steps=100, width=128, depth=4, seeds=3),
    "smoke": dict(n=1000, held_out=200, stages=2, score_iterations=3, batch_size=64, forward_iterations=2,
                  paths=20, path_steps=5, width=16, depth=2, seeds=1),
}


def build(model: str, budget: dict[str, Any]):
    vsdm = VSDM(2, time_dependent=model == "vsdm", width=budget["width"], depth=budget["depth"])
    return vsdm.vp_baseline() if model == "vp" else vsdm


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    budget = BUDGETS[cell["budget"]]
    torch.manual_seed(cell["seed"])
    train = DATA[cell["data"]](budget["n"], cell["seed"])
    test = DATA[cell["data"]](budget["held_out"], HELD_OUT_SEED + cell["seed"])
    model = build(cell["model"], budget)
    forward = {k: budget[k] for k in ("forward_iterations", "paths", "path_steps")} if isinstance(model, VSDM) else {}
    started = time.perf_counter()
    fit_equal_budget(model, train, iterations=budget["stages"] * budget["score_iterations"], stages=budget["stages"],
                     batch_size=budget["batch_size"], progress=False, checkpoint=cell["checkpoint"], **forward)
    result: dict[str, Any] = {"train_time_s": time.perf_counter() - started, "score_steps": model.trainer.iteration,
                              "prior_kl": model.prior_kl(train)}
    if isinstance(model, VSDM):
        result["time_averaged_A"] = model.sde.time_averaged_A().tolist()
    started = time.perf_counter()
    for steps, method in itertools.product(STEPS, ("ode", "em")):
        result[f"{method}{steps}"] = evaluate(model, test, steps, method=method, grid="uniform", seed=cell["seed"])[0]
    result["eval_time_s"] = time.perf_counter() - started
    return result


def table(results: list[dict[str, Any]]) -> str:
    header = ["data", "model", "NFE", "W2^2 ODE", "TV ODE", "straightness ODE", "W2^2 SDE", "TV SDE", "prior KL",
              "train s"]
    rows = []
    for name, model, steps in itertools.product(DATA, MODELS, STEPS):
        cells = [r for r in results if r["data"] == name and r["model"] == model]
        if not cells:
            continue
        ode, sde = [c[f"ode{steps}"] for c in cells], [c[f"em{steps}"] for c in cells]
        rows.append([DATA_NAMES[name], MODELS[model], str(steps), mean_std(o["w2"] for o in ode),
                     mean_std(o["tv"] for o in ode), mean_std(o["straightness"] for o in ode),
                     mean_std(s["w2"] for s in sde), mean_std(s["tv"] for s in sde),
                     mean_std(c["prior_kl"] for c in cells), mean_std(c["train_time_s"] for c in cells)])
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at a time (one process each)")
    parser.add_argument("--table", type=Path, default=HERE / "VSDM.md")
    args = parser.parse_args()
    budget = BUDGETS[args.budget]
    out = HERE / "results" / "vsdm" / args.budget
    cells = [dict(id=f"{d}-{m}-{s}", budget=args.budget, data=d, model=m, seed=s, checkpoint=str(out / f"{d}-{m}-{s}.pt"))
             for d, m, s in itertools.product(DATA, MODELS, range(budget["seeds"]))]
    results = run_cells(cells, run_cell, out, args.jobs)
    command = "OMP_NUM_THREADS=1 python benchmarks/vsdm_vs_vp.py" + "".join(
        f" {shlex.quote(a)}" for a in sys.argv[1:])
    total = sum(r["train_time_s"] + r["eval_time_s"] for r in results)
    vp_times = [r["train_time_s"] for r in results if r["model"] == "vp"]
    text = "\n".join([
        "# VSDM versus VP on anisotropic 2-d data",
        "",
        f"Made by `{command}` (budget `{args.budget}`: {budget}); {budget['seeds']} seed(s), mean ± standard "
        f"deviation over seeds. Machine: {machine()}. The cells' training and evaluation times add up to "
        f"{total / 60:.0f} minutes ({args.jobs} cell(s) at a time); cells already in "
        f"`{out.relative_to(HERE.parent)}` are reused. Times are wall-clock on a machine shared with other jobs and "
        f"vary with its load: the same VP budget took from {min(vp_times):.0f} to {max(vp_times):.0f} s.",
        "",
        "W2^2: exact squared 2-Wasserstein distance between 2000 generated and 2000 held-out points (lower is "
        "better). TV: total variation between 50 x 50 histograms (0 to 1). Straightness: chord over length of the "
        "probability-flow paths (1 is straight). Prior KL: KL of the forward process's terminal mean and covariance "
        "to N(0, I). NFE: Euler steps from N(0, I) at t = 1 to t = 0.001, one score evaluation each. "
        "Equal budget: the same score network and number of its gradient steps; VSDM's training time includes its "
        "backward paths and forward updates.",
        "",
        table(results),
        "",
    ])
    args.table.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
