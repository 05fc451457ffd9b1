"""Accuracy after a fixed number of CUDA-graph-captured iterations at the DIS paper's batch size.

    python benchmarks/gpu_accuracy.py 1500   # on a CUDA machine; writes section gpu-accuracy of RESULTS.md
    python benchmarks/gpu_accuracy.py 2 --smoke   # tiny sizes on any device; prints, writes nothing

DIS (library defaults: VP reference, 200 steps, score-informed control), log-variance loss,
batch 2048, ``fit(cuda_graph=True)``; after training, the absolute error of the importance-sampled
log Z and of the ELBO, and the ESS, from 10,000 paths of the EMA control. Training wall time
includes the captures.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, target as named_target, write_section  # noqa: E402

from sde_control import DIS  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("iterations", type=int)
    parser.add_argument("--smoke", action="store_true", help="batch 16, 8 steps, any device; write nothing")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not (cuda or args.smoke):
        sys.exit("gpu_accuracy.py needs a CUDA device (or --smoke)")
    batch, steps, eval_samples = (16, 8, 64) if args.smoke else (2048, 200, 10_000)
    rows = []
    for target in (named_target("gmm"), named_target("funnel")):
        torch.manual_seed(0)
        sampler = DIS(target, steps=steps).to("cuda" if cuda else "cpu")
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="cuda_graph=True without a CUDA device")
            sampler.fit(args.iterations, batch_size=batch, loss="lv", progress=False, cuda_graph=True)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        est = sampler.estimate_log_z(eval_samples, eubo=False)
        rows.append([type(target).__name__, str(args.iterations), f"{seconds:.0f}", f"{abs(est.log_z - target.log_Z):.4f}",
                     f"{abs(est.elbo - target.log_Z):.4f}", f"{est.ess:.3f}"])
    text = "\n".join([
        "## GPU: accuracy at the paper's batch size",
        "",
        f"Command: `python benchmarks/gpu_accuracy.py {args.iterations}`. DIS (defaults, 200 steps), log-variance "
        f"loss, batch 2048, CUDA-graph training; errors from 10,000 paths of the EMA control, one seed. "
        f"Device: {machine()}.",
        "",
        markdown_table(["target", "iterations", "train time (s)", "log Z error", "ELBO error", "ESS"], rows),
    ])
    print(text)
    if not args.smoke:
        write_section("gpu-accuracy", text)


if __name__ == "__main__":
    main()
