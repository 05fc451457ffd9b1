"""Multivariate and learned diffusions: likelihoods in bits/dim on the digits, and sample quality against the number of
network evaluations for gDDIM, Euler-Maruyama and the probability-flow ODE.

    OMP_NUM_THREADS=1 python benchmarks/multivariate.py likelihood              # 7 models x 3 seeds (the CPU budget)
    OMP_NUM_THREADS=1 python benchmarks/multivariate.py likelihood --seeds 1 --models vp,cld
    OMP_NUM_THREADS=1 python benchmarks/multivariate.py nfe --data points       # VP and CLD on 2-d data
    OMP_NUM_THREADS=1 python benchmarks/multivariate.py nfe --data digits       # needs the likelihood cells of seed 0
    OMP_NUM_THREADS=1 python benchmarks/multivariate.py likelihood --budget smoke   # seconds: a check of the script

**Likelihood** (``likelihood``): scikit-learn's digits (8 x 8, 17 levels) as 64-d vectors, fitted on the training split
(1437 images) and scored on the held-out split (360): bits/dim of the uniformly dequantised levels on the scale of unit
cells, the transform to ``[-1, 1]`` entering through its log-determinant (``log2(17 / 2) = 3.09`` bits/dim), so a model
that learns nothing but the range scores ``log2 17 = 4.09``. Every model has the same Fourier-feature MLP (``width``,
``depth``; on the whole augmented state), batch, number of gradient steps, learning-rate schedule, and the same
objective: the ELBO with importance-sampled time (the MDM paper's ``dsm_elbo``; NDM: its NELBO; VSDM: the ELBO in its
score stages, with forward updates between them). Models: VP (``beta`` 0.1 to 10), CLD (the paper's, ``beta = 4``),
ALDA and MALDA (the MDM code's, ``beta`` 0.1 to 10; ALDA decodes at ``t_min = 0.05``, where its state given the data
becomes non-singular to float64, the others at ``10^-3``), MDM with one learned auxiliary block, NDM and VSDM (``A_t``
a 64 x 64 matrix at 3 knots). The bound is averaged over ``repeats`` draws of dequantisation, time and noise per
image; the standard error is over the 360 images. A grid of samples per model (Euler-Maruyama, 100 steps) goes to
``benchmarks/multivariate_digits.png``.

**Quality against NFE** (``nfe``): for VP and CLD, gDDIM (orders 1-3 with ``lam = 0``; order 1 with ``lam = 1``;
order 2 with the corrector), Euler-Maruyama, and the probability-flow ODE by Euler and Heun steps, at 5, 10, 20, 50
and 100 network evaluations (Heun and the corrector take two a step: at odd NFE they have no cell), all on the
quadratic time grid; the ODE by scipy's RK45 at ``rtol = atol = 1e-5`` is the converged reference (its NFE as
counted). Points: the two moons (noise 0.05), VP and CLD fitted by denoising score matching (5000 steps, batch 512),
exact squared 2-Wasserstein distance between 2000 samples and 2000 held-out points; the noise floor is the same
distance between two exact sample sets. Digits: the VP and CLD models of the likelihood cells (seed 0), the Frechet
distance in the features of the digits classifier (``sde_control.generative.evaluation.digit_classifier``, trained
on the training split and cached) between 360 samples and the 360 held-out images; the floor is the distance between
360 training images and the held-out ones.

Cells (one process each, ``run_cells``) are saved as they finish under ``benchmarks/results/multivariate/<budget>/``
and reused; the tables go to their sections of ``benchmarks/MULTIVARIATE.md``. Training times are not reported (the
machine is shared).
"""

from __future__ import annotations

import argparse
import itertools
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, mean_std, run_cells, write_section  # noqa: E402

from sde_control.generative import (ALDA, CLD, MALDA, MDM, NDM, VP, VSDM, ScoreModel, data,  # noqa: E402
                                    fit_equal_budget)
from sde_control.generative.evaluation import classifier_frechet_distance, digit_classifier  # noqa: E402
from sde_control.generative.model import GenerativeModel  # noqa: E402
from sde_control.generative.plotting import plot_image_grids  # noqa: E402
from sde_control.metrics import wasserstein2_squared  # noqa: E402

HERE = Path(__file__).resolve().parent
TABLE = HERE / "MULTIVARIATE.md"
MODELS = {"vp": "VP", "cld": "CLD", "alda": "ALDA", "malda": "MALDA", "mdm": "MDM (learned, aux = 1)", "ndm": "NDM",
          "vsdm": "VSDM (A_t)"}
PAPER_MNIST = {"vp": "1.089", "cld": "0.920", "mdm": "0.960", "alda": "2.061 (unverified)",
               "malda": "0.507 (unverified)"}
"""The MDM paper's bits/dim on MNIST (same network for all; ALDA's and MALDA's treated as unverified)."""
SAMPLERS = {"gddim1": ("gDDIM, order 1", dict(method="gddim", order=1)),
            "gddim2": ("gDDIM, order 2", dict(method="gddim", order=2)),
            "gddim3": ("gDDIM, order 3", dict(method="gddim", order=3)),
            "gddim2c": ("gDDIM, order 2 + corrector", dict(method="gddim", order=2, corrector=True)),
            "gddim_lam1": ("gDDIM, lam = 1 (stochastic)", dict(method="gddim", lam=1.0)),
            "em": ("Euler-Maruyama", dict(method="em")),
            "euler": ("ODE, Euler", dict(method="ode", solver="euler")),
            "heun": ("ODE, Heun", dict(method="ode", solver="heun"))}

BUDGETS: dict[str, dict[str, Any]] = {
    "cpu": dict(iterations=2000, stages=4, batch_size=128, width=256, depth=4, lr=1e-3, repeats=4, seeds=3,
                forward_iterations=100, paths=256, path_steps=50, grid_steps=100,
                points=20_000, held_out=2000, point_iterations=5000, point_batch=512, point_width=128,
                nfes=(5, 10, 20, 50, 100), tolerance=1e-5),
    "smoke": dict(iterations=4, stages=2, batch_size=16, width=16, depth=2, lr=1e-3, repeats=1, seeds=1,
                  forward_iterations=2, paths=8, path_steps=4, grid_steps=5,
                  points=600, held_out=100, point_iterations=4, point_batch=32, point_width=16,
                  nfes=(5, 10), tolerance=1e-2),
}


def build(name: str, budget: dict[str, Any], dim: int) -> GenerativeModel:
    net = dict(width=budget["width"], depth=budget["depth"])
    if name == "mdm":
        return MDM(dim, aux=1, **net)
    if name == "ndm":
        return NDM(dim, **net)
    if name == "vsdm":
        return VSDM(dim, **net)
    sde = {"vp": VP(0.1, 10.0), "cld": CLD(), "alda": ALDA(), "malda": MALDA()}[name]
    return ScoreModel(dim, sde, t_min=0.05 if name == "alda" else 1e-3, **net)


# ---------------------------------------------------------------------------------------------------- likelihood
def likelihood_cell(cell: dict[str, Any]) -> dict[str, Any]:
    budget = BUDGETS[cell["budget"]]
    torch.manual_seed(cell["seed"])
    train, held_out = data.digits("train"), data.digits("held_out")
    model = build(cell["model"], budget, 64)
    options = {k: budget[k] for k in ("iterations", "stages", "batch_size", "lr")}
    if isinstance(model, VSDM):
        options.update({k: budget[k] for k in ("forward_iterations", "paths", "path_steps")})
    fit_equal_budget(model, train, checkpoint=cell["checkpoint"], progress=False, objective="elbo", **options)
    bound = model.bits_per_dim(held_out, repeats=budget["repeats"], seed=cell["seed"])
    samples = model.sample(100, budget["grid_steps"], method="em", seed=cell["seed"])
    levels = model.data_transform.to_uint8(model.data_transform.from_model(samples)).reshape(-1, 1, 8, 8)
    torch.save(levels, Path(cell["checkpoint"]).with_suffix(".samples.pt"))
    result = {"bits_per_dim": bound.mean, "standard_error": bound.standard_error, "steps": model.trainer.iteration}
    if isinstance(model, MDM):
        Q_D = model.sde.matrices()
        result["drift"], result["noise"] = Q_D[0].tolist(), Q_D[1].tolist()
    return result


def likelihood_table(results: list[dict[str, Any]], models: list[str]) -> str:
    rows = []
    for name in models:
        cells = [r for r in results if r["model"] == name]
        if cells:
            errors = ", ".join(f"{c['standard_error']:.3f}" for c in cells)
            rows.append([MODELS[name], mean_std(c["bits_per_dim"] for c in cells), errors, str(len(cells)),
                         PAPER_MNIST.get(name, "-")])
    return markdown_table(["model", "bits/dim (held out), mean ± std over seeds", "standard error per seed",
                           "seeds", "MDM paper, MNIST"], rows)


def write_grid(out: Path, models: list[str], path: Path) -> None:
    grids = {}
    for name in models:
        samples = out / f"likelihood-{name}-0.samples.pt"
        if samples.is_file():
            grids[MODELS[name]] = torch.load(samples)[:50]
    grids["held out"] = data.digits("held_out").transform.to_uint8(data.digits("held_out").images[:50])
    plot_image_grids(grids, path, columns=10, title="digits: Euler-Maruyama, 100 steps (seed 0)")


# ---------------------------------------------------------------------------------------------------- NFE
def _point_data(budget: dict[str, Any], seed: int) -> torch.Tensor:
    return data.moons(budget["points"], noise=0.05, seed=seed)


def nfe_cell(cell: dict[str, Any]) -> dict[str, Any]:
    budget = BUDGETS[cell["budget"]]
    torch.manual_seed(0)
    if cell["data"] == "points":
        model = ScoreModel(2, VP(0.1, 10.0) if cell["model"] == "vp" else CLD(), width=budget["point_width"], depth=4)
        model.fit(_point_data(budget, 0), iterations=budget["point_iterations"], batch_size=budget["point_batch"],
                  progress=False, checkpoint=cell["checkpoint"])
        reference = data.moons(budget["held_out"], noise=0.05, seed=10_000)

        def score(samples: torch.Tensor) -> float:
            return wasserstein2_squared(samples, reference)
    else:
        model = GenerativeModel.load(cell["checkpoint"])
        held_out = data.digits("held_out")
        classifier = digit_classifier(Path(cell["out"]) / "digit_classifier.pt")
        reference = held_out.transform.to_uint8(held_out.images)

        def score(samples: torch.Tensor) -> float:
            images = model.data_transform.to_uint8(model.data_transform.from_model(samples)).reshape(-1, 1, 8, 8)
            return classifier_frechet_distance(images, reference, classifier)

    n = len(reference)
    if cell["sampler"] == "rk45":
        tolerance = budget["tolerance"]
        samples = model.sample(n, 1, method="ode", solver="rk45", rtol=tolerance, atol=tolerance, seed=1)
        return {"metric": score(samples), "nfe": model.last_nfe}
    options = SAMPLERS[cell["sampler"]][1]
    per_step = 2 if options.get("solver") == "heun" or options.get("corrector") else 1
    out = {}
    for nfe in budget["nfes"]:
        if nfe % per_step:
            continue
        samples = model.sample(n, nfe // per_step, seed=1, **options)
        out[str(nfe)] = {"metric": score(samples), "nfe": model.last_nfe}
    return out


def nfe_floor(kind: str, budget: dict[str, Any], out: Path) -> float:
    if kind == "points":
        return wasserstein2_squared(data.moons(budget["held_out"], noise=0.05, seed=10_000),
                                    data.moons(budget["held_out"], noise=0.05, seed=20_000))
    train, held_out = data.digits("train"), data.digits("held_out")
    classifier = digit_classifier(out / "digit_classifier.pt")
    return classifier_frechet_distance(train.transform.to_uint8(train.images[: len(held_out)]),
                                       held_out.transform.to_uint8(held_out.images), classifier)


def nfe_table(results: list[dict[str, Any]], kind: str, budget: dict[str, Any], out: Path) -> str:
    metric = "W2^2" if kind == "points" else "Frechet distance"
    nfes, rows = budget["nfes"], []
    for model in ("vp", "cld"):
        for sampler, (label, _) in SAMPLERS.items():
            cell = next((r for r in results if r["model"] == model and r["sampler"] == sampler), None)
            if cell is not None:
                rows.append([MODELS[model], label, *(f"{cell[str(k)]['metric']:.3g}" if str(k) in cell else "-"
                                                     for k in nfes)])
        ref = next((r for r in results if r["model"] == model and r["sampler"] == "rk45"), None)
        if ref is not None:
            rows.append([MODELS[model], f"ODE, RK45 (reference, NFE {ref['nfe']})",
                         *[f"{ref['metric']:.3g}"] * len(nfes)])
    floor = f"{nfe_floor(kind, budget, out):.3g}"
    rows.append(["-", "noise floor (exact against exact)", *[floor] * len(nfes)])
    return markdown_table(["process", f"sampler ({metric} at NFE)", *map(str, nfes)], rows)


# ---------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("likelihood", "nfe"))
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"likelihood: comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--data", choices=("points", "digits"), default="points", help="nfe: the data")
    parser.add_argument("--samplers", default=",".join(SAMPLERS),
                        help=f"nfe: comma-separated, of {', '.join(SAMPLERS)} "
                        "(the RK45 reference always runs)")
    parser.add_argument("--seeds", type=int, default=None, help="likelihood: seeds 0..n-1 (default: the budget's)")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at a time (one process each)")
    parser.add_argument("--out", type=Path, default=None,
                        help="cells (default benchmarks/results/multivariate/<budget>)")
    parser.add_argument("--table", type=Path, default=TABLE)
    args = parser.parse_args()
    budget = dict(BUDGETS[args.budget])
    budget["seeds"] = args.seeds or budget["seeds"]
    out = args.out or HERE / "results" / "multivariate" / args.budget
    command = ("OMP_NUM_THREADS=1 python benchmarks/multivariate.py"
               + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:]))
    header = f"Made by `{command}` (budget `{args.budget}`: {budget}). Machine: {machine()}."
    if args.part == "likelihood":
        models = args.models.split(",")
        unknown = sorted(set(models) - set(MODELS))
        if unknown:
            parser.error(f"unknown models {', '.join(unknown)}; choose from {', '.join(MODELS)}")
        cells = [dict(id=f"likelihood-{m}-{s}", budget=args.budget, model=m, seed=s,
                      checkpoint=str(out / f"likelihood-{m}-{s}.pt"))
                 for m, s in itertools.product(models, range(budget["seeds"]))]
        results = run_cells(cells, likelihood_cell, out, args.jobs)
        text = "\n\n".join([header, likelihood_table(results, models)])
        write_grid(out, models, args.table.with_name("multivariate_digits.png"))
        write_section("likelihood", text, args.table)
    else:
        samplers = args.samplers.split(",")
        unknown = sorted(set(samplers) - set(SAMPLERS))
        if unknown:
            parser.error(f"unknown samplers {', '.join(unknown)}; choose from {', '.join(SAMPLERS)}")
        cells = [dict(id=f"nfe-{args.data}-{m}-{s}", budget=args.budget, data=args.data, model=m, sampler=s,
                      out=str(out), checkpoint=str(out / (f"nfe-points-{m}.pt" if args.data == "points"
                                                          else f"likelihood-{m}-0.pt")))
                 for m, s in itertools.product(("vp", "cld"), [*samplers, "rk45"])]
        if args.data == "digits":
            missing = [c["checkpoint"] for c in cells if not Path(c["checkpoint"]).is_file()]
            if missing:
                parser.error(f"the digits' NFE table samples the likelihood cells' models: run `multivariate.py "
                             f"likelihood --models vp,cld --seeds 1 --budget {args.budget}` first "
                             f"(missing: {missing[0]})")
        results = run_cells(cells, nfe_cell, out, 1 if args.data == "points" else args.jobs)
        text = "\n\n".join([header, nfe_table(results, args.data, budget, out)])
        write_section(f"nfe-{args.data}", text, args.table)
    print(args.table.read_text())


if __name__ == "__main__":
    main()
