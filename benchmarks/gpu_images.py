"""On a GPU: throughput and memory of image training, VSDM's forward-update cost, a short run on the embedded digits,
and the distributed path under torchrun (issue 13's GPU checks).

    python benchmarks/gpu_images.py            # on a CUDA machine (about 10 minutes); writes section gpu-images of
                                               # benchmarks/IMAGES.md
    python benchmarks/gpu_images.py --smoke    # tiny sizes on the CPU in seconds; prints, writes nothing

1. Training throughput of Ho et al.'s DDPM U-Net (35,746,307 parameters) at global batch 128 on 32 x 32 x 3 images,
   DSM on VP through the library's trainer: images/s and peak memory in float32 (TF32 off, then on), float16 with
   the gradient scaler, and bfloat16 (where the GPU has it).
2. VSDM's forward update at that size (256 backward paths of 100 Euler-Maruyama steps, DCT basis, 3 pieces) in
   seconds and as a share of a 5000-step stage at the measured step time: the cost of the default stage schedule.
3. A few minutes of training on the embedded digits (16 x 16, nearest-neighbour resize, 1 channel; the DDPM U-Net,
   batch 128) with ``images.train``: the loss of the first and last 100 steps, ``samples.png``, and the digits
   classifier's Frechet distance of 1000 samples (Euler-Maruyama, 100 steps) against the training set.
4. The distributed path: ``torchrun --nproc_per_node=1 -m sde_control.generative data=digits ...`` on the GPU: exit
   status, the precision chosen, images/s, and a resume from the written checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, write_section  # noqa: E402

from sde_control.generative import VSDM, ScoreModel, images  # noqa: E402
from sde_control.generative.data import ImageTransform, digits  # noqa: E402
from sde_control.generative.diagonal import backward_statistics  # noqa: E402
from sde_control.generative.evaluation import classifier_frechet_distance, digit_classifier  # noqa: E402
from sde_control.generative.networks import UNet  # noqa: E402
from sde_control.sdes import VP  # noqa: E402
from sde_control.training import TrainConfig  # noqa: E402

IMAGES_MD = Path(__file__).resolve().parent / "IMAGES.md"


def network(shape, smoke: bool) -> UNet:
    return UNet.tiny(shape) if smoke else UNet.ddpm(shape)


def throughput(device: torch.device, smoke: bool) -> list[list[str]]:
    """Images/s and peak memory of training steps at each precision."""
    shape, batch, warm, timed = ((1, 8, 8), 16, 2, 3) if smoke else ((3, 32, 32), 128, 20, 100)
    settings = [("float32", False), ("float32", True), ("float16", False), ("bfloat16", False)]
    rows = []
    for precision, tf32 in settings:
        if device.type == "cuda":
            if precision == "bfloat16" and not torch.cuda.is_bf16_supported(including_emulation=False):
                rows.append([precision, "-", "not supported by this GPU", "-"])
                continue
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        elif tf32:
            continue
        torch.manual_seed(0)
        model = ScoreModel(math.prod(shape), VP(0.1, 20.0), network(shape, smoke), ema_decay=0.9999).to(device)
        levels = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, device=device)
        transform, loss_net = ImageTransform(256), model.trainer.training_module

        def loss(iteration):
            return model.loss(transform.to_model(levels).flatten(1), network=loss_net), {}

        config = TrainConfig(iterations=warm + timed, batch_size=batch, lr=2e-4, lr_final=1.0, progress=False,
                             precision=precision)
        try:
            history = model.trainer.fit(loss, config)
        except RuntimeError as error:  # e.g. a precision the CPU's autocast lacks
            rows.append([precision, str(tf32).lower(), f"failed: {str(error).splitlines()[0][:60]}", "-"])
            continue
        seconds = history[-1]["time"] - history[warm - 1]["time"]
        memory = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if device.type == "cuda" else "-"
        rows.append([precision + (" + scaler" if precision == "float16" else ""), str(tf32).lower(),
                     f"{timed * batch / seconds:.0f}", memory])
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return rows


def forward_update_cost(device: torch.device, smoke: bool, step_seconds: float) -> list[str]:
    """Seconds of one forward update, and its share of a stage of 5000 score steps."""
    shape, paths, steps = ((1, 8, 8), 16, 5) if smoke else ((3, 32, 32), 256, 100)
    torch.manual_seed(0)
    model = VSDM(math.prod(shape), basis="dct", image_shape=shape, network=network(shape, smoke)).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    statistics = backward_statistics(model.sde, model.score, paths, steps, model.t_min)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    share = seconds / (seconds + 5000 * step_seconds)
    assert torch.isfinite(statistics.squares).all()
    return [f"{paths} x {steps}", f"{seconds:.1f}", f"{step_seconds * 1000:.1f}", f"{100 * share:.2f} %"]


def short_run(device: torch.device, smoke: bool, directory: Path) -> list[str]:
    """A few minutes of training on the digits; loss first/last, the classifier distance, samples.png."""
    size, iterations, batch = (8, 20, 16) if smoke else (16, 4000, 128)  # 4000 x 128: about 10 epochs
    data = digits("train", image_size=size, resize="nearest")
    torch.manual_seed(0)
    model = ScoreModel(math.prod(data.shape), VP(0.1, 20.0), network(data.shape, smoke), ema_decay=0.999)
    config = images.training_config(model, dict(iterations=iterations, batch_size=batch, stages=1,
                                                lr=2e-3 if smoke else 2e-4, lr_final=1.0, warmup=0 if smoke else 200,
                                                progress=False))
    options = images.ImageOptions(checkpoint_images=10**12, sample_images=10**12, grid=64,
                                  grid_steps=10 if smoke else 100, workers=0)
    session = images.Session(0, 1, device)
    started = time.perf_counter()
    images.train(model, data, config, options, directory, session)
    seconds = time.perf_counter() - started
    losses = [r["loss"] for r in model.history]
    window = min(100, len(losses) // 2)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    samples = images.generate(model, data, 64 if smoke else 1000, 10 if smoke else 100, "em", seed=1)
    classifier = digit_classifier(directory / "classifier.pt", size, 1, "nearest")
    fd = classifier_frechet_distance(samples.cpu(), data.transform.to_uint8(data.images), classifier)
    grid = directory / images.GRID
    if not smoke:  # keep the grid beside the table
        grid = Path(shutil.copy(grid, IMAGES_MD.parent / "gpu_images_samples.png")).name
    return [f"{iterations} x {batch}", f"{seconds:.0f}", f"{first:.3f}", f"{last:.3f}", f"{fd:.3g}", str(grid)]


def torchrun_path(smoke: bool, directory: Path) -> list[str]:
    """The command line under torchrun with one process; then a resume with more iterations."""
    budget = ["preset=smoke"] if smoke else ["train.iterations=400", "images.network=ddpm", "data.image_size=16",
                                             "data.resize=nearest", "images.stage_iterations=200"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "-m", "sde_control.generative",
               "data=digits", "model=vsdm", "train.progress=false", f"hydra.run.dir={directory}", *budget]
    started = time.perf_counter()
    first = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if first.returncode != 0:
        return ["failed", first.stderr.strip().splitlines()[-1][:80], "-", "-"]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    iterations, resume = summary["iterations"], "not tried (smoke)"
    if not smoke:
        resumed = subprocess.run([*command, f"train.iterations={2 * iterations}"], capture_output=True, text=True)
        resume = (f"{iterations} -> {json.loads(resumed.stdout.strip().splitlines()[-1])['iterations']}"
                  if resumed.returncode == 0 else "failed: " + resumed.stderr.strip().splitlines()[-1][:80])
    return [f"{summary['world_size']} x {summary['precision']}", f"{summary['images'] / seconds:.0f} (with start-up)",
            str(iterations), resume]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU; print, write nothing")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not (cuda or args.smoke):
        sys.exit("gpu_images.py needs a CUDA device (or --smoke)")
    device = torch.device("cuda" if cuda and not args.smoke else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*autocast.*")
    rows = throughput(device, args.smoke)
    fastest = max((float(r[2]) for r in rows if r[2].replace(".", "").isdigit()), default=1.0)
    step_seconds = (16 if args.smoke else 128) / fastest
    with tempfile.TemporaryDirectory() as tmp:
        forward = forward_update_cost(device, args.smoke, step_seconds)
        run = short_run(device, args.smoke, Path(tmp) / "digits")
        ddp = torchrun_path(args.smoke, Path(tmp) / "torchrun")
    size = ("tiny U-Net, 8 x 8 x 1, batch 16 (smoke)" if args.smoke
            else "DDPM U-Net (35,746,307 parameters), 32 x 32 x 3, batch 128")
    text = "\n".join([
        "## GPU: throughput, memory, a short run and the distributed path",
        "",
        f"Command: `python benchmarks/gpu_images.py{' --smoke' if args.smoke else ''}`. Device: {machine()}.",
        "",
        f"Training throughput, {size}, DSM on VP through `Trainer` (warm-up steps excluded):",
        "",
        markdown_table(["precision", "TF32", "images/s", "peak memory (GiB)"], rows),
        "",
        "VSDM's forward update (DCT basis, 3 pieces) against a stage of 5000 score steps at the fastest step time:",
        "",
        markdown_table(["paths x steps", "seconds", "step (ms)", "share of a stage"], [forward]),
        "",
        "A short run on the embedded digits (16 x 16 nearest, DDPM U-Net, VP, Adam 2e-4 after 200 warm-up steps); "
        "the Frechet distance in the digits classifier's features of 1000 Euler-Maruyama samples (100 steps) to the "
        "training split:",
        "",
        markdown_table(["steps x batch", "seconds", "loss, first 100", "loss, last 100", "classifier FD", "grid"],
                       [run]),
        "",
        "`torchrun --nproc_per_node=1 -m sde_control.generative data=digits model=vsdm ...`, then again with twice the "
        "iterations (a resume; the smoke run does not resume):",
        "",
        markdown_table(["ranks x precision", "images/s", "iterations", "resumed to"], [ddp]),
    ])
    print(text)
    if not args.smoke:
        write_section("gpu-images", text, IMAGES_MD)


if __name__ == "__main__":
    main()
