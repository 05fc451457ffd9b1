"""Why DIS refuses ``fit(adjoint=True)``: torchsde's adjoint solvers on DIS's drift, against PIS.

    python benchmarks/adjoint_accuracy.py           # about two minutes on the CPU; writes section adjoint-accuracy
    python benchmarks/adjoint_accuracy.py --smoke   # seconds; prints, writes nothing

For an untrained score-informed control (clip 10, the start of training) and one batch of
initial points, two columns per step count:

* the KL objective ``-mean(log w)`` by backpropagation through the discrete chain (the loss
  ``fit`` trains) against the continuous one integrated by reversible Heun (the exact adjoint
  pair's forward solver): a forward solution that is wrong shows as a gap;
* the relative error ``|g_adjoint - g_backprop| / |g_backprop|`` of the parameter gradient of the
  Euler adjoint against backpropagation through the same Euler solver and the same noise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, target as named_target, write_section  # noqa: E402

from sde_control import DIS, PIS  # noqa: E402
from sde_control.integrate import simulate_continuous  # noqa: E402
from sde_control.losses import kl_loss  # noqa: E402
from sde_control.references import time_grid  # noqa: E402


def euler_adjoint_gradient_error(sampler, x0: torch.Tensor, grid: torch.Tensor) -> float:
    gradients = []
    for adjoint in (False, True):
        sampler.control.zero_grad()
        x_T, energy = simulate_continuous(sampler.control, sampler.reference, x0, grid, seed=3, method="euler",
                                          adjoint=adjoint)
        (sampler.target.log_prob(x_T) - energy).mean().backward()
        gradients.append(torch.cat([p.grad.flatten() for p in sampler.control.parameters() if p.grad is not None]))
    backprop, adjoint = gradients
    return float((adjoint - backprop).norm() / backprop.norm())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    step_counts, batch = ([8, 16], 32) if args.smoke else ([200, 800, 1600], 1000)
    rows = []
    for sampler_cls in (DIS, PIS):
        for target in (named_target("gmm"), named_target("funnel")):
            torch.manual_seed(0)
            sampler = sampler_cls(target, steps=step_counts[0])
            sampler.control.clip = 10.0
            x0 = sampler.reference.sample_initial(batch)
            for steps in step_counts:
                grid = time_grid(sampler.reference.T, steps)
                discrete = kl_loss(target, sampler.reference, sampler.control, x0, grid).loss.item()
                heun = kl_loss(target, sampler.reference, sampler.control, x0, grid, adjoint=True,
                               adjoint_method="reversible_heun").loss.item()
                error = euler_adjoint_gradient_error(sampler, x0[: batch // 4], grid)
                rows.append([sampler_cls.__name__, type(target).__name__, str(steps), f"{discrete:.3f}", f"{heun:.3f}",
                             f"{error:.3g}"])
                print(" | ".join(rows[-1]), flush=True)
    text = "\n".join([
        "## The adjoint on DIS's drift",
        "",
        f"Command: `python benchmarks/adjoint_accuracy.py`. Untrained score-informed control (clip 10), {batch} "
        f"initial points for the KL objectives, {batch // 4} for the gradients. A reversible-Heun objective far "
        f"from the backpropagated one means its forward solution is wrong; the last column is the Euler adjoint's "
        f"relative gradient error against backpropagation through the same solver and noise. This is why "
        f"`DIS.fit(adjoint=True)` refuses while PIS and DDS use the reversible-Heun adjoint. Machine: {machine()}.",
        "",
        markdown_table(["sampler", "target", "steps", "KL, backprop (discrete)", "KL, reversible Heun",
                        "Euler adjoint gradient error"], rows),
    ])
    print(text)
    if not args.smoke:
        write_section("adjoint-accuracy", text)


if __name__ == "__main__":
    main()
