"""VSDM (A_t diagonal in the DCT basis), CLD and the learned MDM diffusion against the VP score model on the embedded
digits, at equal budget, on the CPU: the Frechet distance in the digits classifier's features against the number of
function evaluations.

    OMP_NUM_THREADS=1 python benchmarks/images_digits.py                 # the CPU budget (the table in IMAGES.md)
    OMP_NUM_THREADS=1 python benchmarks/images_digits.py --budget smoke  # a seconds-long check of the script
    OMP_NUM_THREADS=1 python benchmarks/images_digits.py --models vp,cld # some of the models (the table has the rest
                                                                         # if their runs are saved)

Data: scikit-learn's digits, 8 x 8, 1 channel, 17 grey levels (the 1437 images of the training split), dequantised
to [-1, 1]. Models: the VP score model (beta from 0.1 to 10) and VSDM started at it, A_t diagonal in the 2-d DCT
and constant on 3 equal intervals of [0, T]; CLD (the command line's ``model=cld``: beta 4, mass 0.25) and MDM's
learned diffusion with one auxiliary block (``model=mdm``, trained by its ELBO), whose U-Net takes the image and its
auxiliary block as 2 channels (``images.image_network``); the same tiny U-Net otherwise (44,969 parameters for one
channel), batch, number of its gradient steps and learning rate, through the image command's training path
(``sde_control.generative.images.train``). VSDM's forward updates come on top (their time is in the table).

Evaluation: 1000 samples of the EMA network from N(0, I) at 10, 20, 50 and 100 steps (one score evaluation each)
with Euler-Maruyama on the reverse SDE, Euler on the probability-flow ODE and gDDIM's exponential integrator of
order 1 (``images.sample``); the Frechet distance between the penultimate features (64) of the digits classifier
(``sde_control.generative.evaluation.classifier``, 96.9 % held out) of the samples and of the training images. The
floor: the same distance of the 360 held-out images (a smaller set: its estimate is biased upward by the sample
size). Bits/dim: the continuous-time ELBO (``sde_control.generative.likelihood``) on the held-out images. Time: the
trainer's clock of the score steps, and the rest of the training wall time (VSDM's forward updates; for both, the
final sample grid and the checkpoints). Runs and their scores resume from ``benchmarks/results/images_digits/
<budget>/``; the table goes to the section ``digits`` of ``benchmarks/IMAGES.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, mean_std, write_section  # noqa: E402

from sde_control import checkpoints  # noqa: E402
from sde_control.generative import MDM, VSDM, ScoreModel, images  # noqa: E402
from sde_control.generative.data import digits  # noqa: E402
from sde_control.generative.evaluation import classifier_frechet_distance, digit_classifier  # noqa: E402
from sde_control.generative.likelihood import estimate_negative_elbo  # noqa: E402
from sde_control.sdes import CLD, VP  # noqa: E402

HERE = Path(__file__).resolve().parent
IMAGES_MD = HERE / "IMAGES.md"
MODELS = {"vp": "VP", "vsdm": "VSDM (DCT-diagonal A_t)", "cld": "CLD (2 channels)", "mdm": "MDM, learned (2 channels)"}
METHODS = {"em": "Euler-Maruyama (reverse SDE)", "ode": "Euler (probability flow)",
           "gddim": "gDDIM (exponential integrator, order 1)"}
BUDGETS: dict[str, dict[str, Any]] = {
    "cpu": dict(iterations=3000, batch_size=64, stage_iterations=750, paths=256, path_steps=50, forward_iterations=100,
                steps=(10, 20, 50, 100), samples=1000, seeds=(0,), bpd_repeats=4),
    "smoke": dict(iterations=8, batch_size=16, stage_iterations=4, paths=8, path_steps=4, forward_iterations=3,
                  steps=(2,), samples=32, seeds=(0,), bpd_repeats=1),
}


def build(name: str, seed: int) -> ScoreModel:
    torch.manual_seed(seed)
    network = images.image_network((1, 8, 8), "tiny", aux=int(name in ("cld", "mdm")))
    if name == "vp":
        return ScoreModel(64, VP(0.1, 10.0), network, ema_decay=0.999)
    if name == "cld":
        return ScoreModel(64, CLD(mass=0.25, beta_min=4.0, beta_max=4.0), network, ema_decay=0.999)
    if name == "mdm":
        return MDM(64, aux=1, network=network, ema_decay=0.999)
    return VSDM(64, basis="dct", image_shape=(1, 8, 8), knots=3, beta_min=0.1, beta_max=10.0, network=network,
                ema_decay=0.999)


def run_cell(name: str, seed: int, budget: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Train (or resume) one model, then score it at every sampler and step count and bound its held-out
    likelihood; what is done is saved in ``result.json`` beside the checkpoint, so a rerun computes only what is
    missing."""
    result_file = directory / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else None
    data = digits()
    model = None
    if result is None:
        model = build(name, seed)
        config = images.training_config(model, dict(
            iterations=budget["iterations"], batch_size=budget["batch_size"], lr=2e-3, lr_final=1.0, warmup=100,
            grad_clip=1.0, paths=budget["paths"], path_steps=budget["path_steps"],
            forward_iterations=budget["forward_iterations"], log_every=10, progress=False), budget["stage_iterations"])
        options = images.ImageOptions(network="tiny", checkpoint_images=100 * budget["batch_size"],
                                      sample_images=10**12, grid=64, grid_steps=100, workers=0)
        started = time.perf_counter()
        images.train(model, data, config, options, directory, images.Session(0, 1, torch.device("cpu")), seed=seed)
        result = {"model": name, "seed": seed, "rows": [], "train_s": time.perf_counter() - started}
        if isinstance(model, VSDM):
            result["eigenvalues"] = model.sde.weight.detach().tolist()
            result["forward_objective"] = [s.get("forward_objective") for s in model.stages]
        result_file.write_text(json.dumps(result, indent=1))
    missing = [(m, n) for m in METHODS for n in budget["steps"]
               if not any(row["method"] == m and row["nfe"] == n for row in result["rows"])]
    if missing or "bits_per_dim" not in result:
        model = model or ScoreModel.load(directory / images.CHECKPOINT)
        classifier = digit_classifier(HERE / "results" / "images_digits" / "classifier.pt")
        reference = data.transform.to_uint8(data.images)
        for method, steps in missing:
            samples = images.generate(model, data, budget["samples"], steps, method, seed=1000 + seed)
            result["rows"].append({"method": method, "nfe": steps,
                                   "fd": classifier_frechet_distance(samples, reference, classifier)})
        if "bits_per_dim" not in result:
            result["bits_per_dim"] = held_out_bits_per_dim(model, budget["bpd_repeats"])
        result_file.write_text(json.dumps(result, indent=1))
    return result


def held_out_bits_per_dim(model: ScoreModel, repeats: int) -> list[float]:
    """The continuous-time ELBO's bound on the held-out digits in bits/dim of the dequantised levels, with its
    standard error over the images (``likelihood.estimate_negative_elbo``; one dequantisation draw, ``repeats``
    draws of time and noise per image; the map to [-1, 1] enters through its log-determinant)."""
    held = digits("held_out")
    x = held.transform.to_model(held.images, generator=torch.Generator().manual_seed(0)).flatten(1)
    bound = estimate_negative_elbo(model.score, model.sde, x, model.t_min, repeats=repeats)
    return [float(held.transform.bits_per_dim(torch.tensor(bound.mean), x.shape[1])),
            bound.standard_error / (x.shape[1] * math.log(2))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)}; the table also shows the others' saved runs")
    parser.add_argument("--out", type=Path, default=None,
                        help="run folders (default benchmarks/results/images_digits/<budget>)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    budget = BUDGETS[args.budget]
    out = args.out or HERE / "results" / "images_digits" / args.budget
    started = time.perf_counter()
    chosen = args.models.split(",")
    if set(chosen) - set(MODELS):
        parser.error(f"--models: unknown {sorted(set(chosen) - set(MODELS))}; choose from {', '.join(MODELS)}")
    results = [run_cell(name, seed, budget, out / f"{name}-seed{seed}") for name in MODELS for seed in budget["seeds"]
               if name in chosen or (out / f"{name}-seed{seed}" / "result.json").is_file()]
    data, held_out = digits(), digits("held_out")
    classifier = digit_classifier(HERE / "results" / "images_digits" / "classifier.pt")
    floor = classifier_frechet_distance(held_out.transform.to_uint8(held_out.images),
                                        data.transform.to_uint8(data.images), classifier)
    header = ["model", "sampler", *(f"NFE {s}" for s in budget["steps"]), "held-out bits/dim", "score steps (s)",
              "other training time (s)"]
    table = []
    for name, label in MODELS.items():
        cells = [r for r in results if r["model"] == name]
        if not cells:
            continue
        for cell in cells:  # the trainer's clock counts the steps only; the rest is forward updates, grids, files
            cell["steps_s"] = checkpoints.load(out / f"{name}-seed{cell['seed']}" / images.CHECKPOINT)["state"][
                "trainer"]["history"][-1]["time"]
        bpd = "; ".join(f"{c['bits_per_dim'][0]:.3f} ± {c['bits_per_dim'][1]:.3f}" for c in cells)
        for index, method in enumerate(METHODS):
            values = [mean_std(next(row["fd"] for row in c["rows"] if row["method"] == method and row["nfe"] == s)
                               for c in cells) for s in budget["steps"]]
            shared = [bpd, mean_std(c["steps_s"] for c in cells), mean_std(c["train_s"] - c["steps_s"] for c in cells)]
            table.append([label if index == 0 else "", method, *values, *(shared if index == 0 else [""] * 3)])
    command = "OMP_NUM_THREADS=1 python benchmarks/images_digits.py"
    command += "" if args.budget == "cpu" else f" --budget {args.budget}"
    b = budget
    text = "\n".join([
        "## Measured: VP, VSDM, CLD and MDM on the embedded digits (CPU)",
        "",
        f"Command: `{command}` ({time.perf_counter() - started:.0f} s on {machine()}; runs resume from "
        f"`benchmarks/results/images_digits/{args.budget}/`). Digits 8 x 8 x 1 (1437 training images), the tiny U-Net, "
        f"{b['iterations']} steps of batch {b['batch_size']} (Adam 2e-3 after 100 warm-up steps, clip 1, EMA 0.999) "
        f"for each; VSDM: {b['iterations'] // b['stage_iterations']} stages of {b['stage_iterations']}, forward "
        f"updates from {b['paths']} backward paths of {b['path_steps']} steps. Frechet distance in the digits "
        f"classifier's features, {b['samples']} samples against the training set (lower is better; seeds "
        f"{', '.join(map(str, b['seeds']))}); `em` is Euler-Maruyama, `ode` Euler on the probability flow, `gddim` "
        f"the exponential integrator of order 1 (quadratic time grid); NFE = steps. Held-out images against the "
        f"training set: {floor:.3g} (360 images: the floor, biased upward by its size). Bits/dim: the continuous-time "
        f"ELBO on the 360 held-out images, dequantised (17 levels; uniform data would have log2 17 = 4.09), "
        f"{b['bpd_repeats']} draws of time and noise per image, ± its standard error over the images.",
        "",
        markdown_table(header, table),
    ])
    print(text)
    if args.budget == "cpu":
        write_section("digits", text, IMAGES_MD)
    vsdm = [r for r in results if r["model"] == "vsdm"]
    if vsdm:
        print("VSDM eigenvalues (mean over the 64 DCT coordinates, per piece):",
              [round(sum(piece) / len(piece), 4) for piece in vsdm[0]["eigenvalues"]])


if __name__ == "__main__":
    main()
