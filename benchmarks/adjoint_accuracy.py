"""Why DIS refuses ``fit(adjoint=True)`` and DDS uses the Euler adjoint: torchsde's adjoint solvers on their drifts.

    python benchmarks/adjoint_accuracy.py              # about eight minutes on the CPU; writes both sections
    python benchmarks/adjoint_accuracy.py --table dds  # the DDS table only (section adjoint-dds), about five minutes
    python benchmarks/adjoint_accuracy.py --smoke      # seconds; prints, writes nothing

Two tables.

For an untrained score-informed control (clip 10, the start of training) and one batch of
initial points, two columns per step count:

* the KL objective ``-mean(log w)`` by backpropagation through the discrete chain (the loss
  ``fit`` trains) against the continuous one integrated by reversible Heun (the exact adjoint
  pair's forward solver): a forward solution that is wrong shows as a gap;
* the relative error ``|g_adjoint - g_backprop| / |g_backprop|`` of the parameter gradient of the
  Euler adjoint against backpropagation through the same Euler solver and the same noise.

**DDS at a near-optimal control**: on the 2-d Gaussian ``N((1, -0.5), 0.3 I)`` with ``log Z = 0.7``, the analytic
optimal control of DDS's stationary VP reference plus a small random network, 4000 paths: the discrete ELBO
``mean(log w)`` (about ``log Z`` here) against the continuous objective integrated by reversible Heun
and by Euler, and the relative gradient error of both adjoints against backpropagation through their own solver
(500 paths).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, target as named_target, write_section  # noqa: E402

from torch import nn  # noqa: E402

from sde_control import DIS, PIS  # noqa: E402
from sde_control.controls import ControlMLP  # noqa: E402
from sde_control.integrate import simulate_continuous  # noqa: E402
from sde_control.losses import kl_loss  # noqa: E402
from sde_control.references import ForwardReference, time_grid  # noqa: E402
from sde_control.sdes import VP  # noqa: E402
from sde_control.targets import Gaussian  # noqa: E402
from sde_control.weights import continuous_objective  # noqa: E402


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


class NearOptimalDDSControl(nn.Module):
    r"""DDS's optimal control for ``rho = Z N(m, s2 I)`` (docs/samplers.md: ``u* = sigma grad log h`` with
    ``grad log h = -a e (e x - c) / (1 + a gamma)``) plus a small random Fourier MLP."""

    def __init__(self, reference: ForwardReference, mean: torch.Tensor, s2: float, perturbation: float = 0.05):
        super().__init__()
        self.reference, self.mean, self.s2 = reference, mean, s2
        self.a = 1 / s2 - 1 / reference.terminal_var
        self.network = ControlMLP(mean.numel(), 16, 3).double()
        nn.init.normal_(self.network.body[-1][-1].weight, std=perturbation)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(s, dtype=torch.float64)
        sde = self.reference.sde
        e, gamma = sde.transition(s, torch.tensor(sde.T, dtype=torch.float64))
        c = self.mean / (self.s2 * self.a)
        return self.reference.diffusion(s) * (-self.a * e * (e * x - c) / (1 + self.a * gamma)) + self.network(x, s)


def dds_near_optimal_rows(step_counts: list[int], paths: int, gradient_paths: int) -> list[list[str]]:
    """Objectives and adjoint gradient errors of DDS at a near-optimal control (module docstring)."""
    mean = torch.tensor([1.0, -0.5], dtype=torch.float64)
    target = Gaussian(mean, 0.3, log_Z=0.7)
    reference = ForwardReference(VP().time_flipped(), 2, initial_std=1.0)
    torch.manual_seed(0)
    control = NearOptimalDDSControl(reference, mean, 0.3)
    x0 = reference.sample_initial(paths).double()
    rows = []
    for steps in step_counts:
        grid = time_grid(reference.T, steps)
        with torch.no_grad():
            log_w = kl_loss(target, reference, control, x0, grid).log_weights
            objective, standard_error = float(log_w.mean()), float(log_w.std()) / paths**0.5
            continuous = {method: float(continuous_objective(target, reference, x0, *simulate_continuous(
                control, reference, x0, grid, method=method, adjoint=False, seed=1)).mean())
                for method in ("reversible_heun", "euler")}
        errors = {}
        for method in ("reversible_heun", "euler"):
            gradients = []
            for adjoint in (False, True):
                control.zero_grad()
                x_T, energy = simulate_continuous(control, reference, x0[:gradient_paths], grid, method=method,
                                                  adjoint=adjoint, seed=2)
                (-continuous_objective(target, reference, x0[:gradient_paths], x_T, energy).mean()).backward()
                gradients.append(torch.cat([p.grad.flatten() for p in control.parameters()]))
            errors[method] = float((gradients[1] - gradients[0]).norm() / gradients[0].norm())
        rows.append([str(steps), f"{objective:.3f} ± {standard_error:.3f}", f"{continuous['reversible_heun']:.3f}",
                     f"{continuous['euler']:.3f}", f"{errors['reversible_heun']:.2g}", f"{errors['euler']:.3g}"])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def dis_pis_section(step_counts: list[int], batch: int) -> str:
    """The first table: DIS and PIS on the GMM and the Funnel at an untrained control."""
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
    return "\n".join([
        "## The adjoint on DIS's drift",
        "",
        f"Command: `python benchmarks/adjoint_accuracy.py --table dis`. Untrained score-informed control (clip 10), "
        f"{batch} initial points for the KL objectives, {batch // 4} for the gradients. A reversible-Heun objective far "
        f"from the backpropagated one means its forward solution is wrong; the last column is the Euler adjoint's "
        f"relative gradient error against backpropagation through the same solver and noise. This is why "
        f"`DIS.fit(adjoint=True)` refuses while PIS uses the reversible-Heun adjoint. Machine: {machine()}.",
        "",
        markdown_table(["sampler", "target", "steps", "KL, backprop (discrete)", "KL, reversible Heun",
                        "Euler adjoint gradient error"], rows),
    ])


def dds_section(step_counts: list[int], paths: int, gradient_paths: int) -> str:
    """The second table: DDS at a near-optimal control."""
    rows = dds_near_optimal_rows(step_counts, paths, gradient_paths)
    return "\n".join([
        "## DDS's adjoint at a near-optimal control",
        "",
        f"Command: `python benchmarks/adjoint_accuracy.py --table dds`. 2-d Gaussian N((1, -0.5), 0.3 I), log Z = 0.7; "
        f"DDS's analytic optimal control plus a small random network; objectives from {paths} paths (ELBOs: about "
        f"log Z here), gradient errors of each adjoint against backpropagation through its own solver and noise from "
        f"{gradient_paths} paths. Reversible Heun's gradient is its solver's exactly, but its forward solution is "
        f"wrong at coarse steps on DDS's contracting drift; Euler's forward solution converges, its adjoint's gradient "
        f"error falls like the step. This is why `DDS.fit(adjoint=True)` uses the Euler adjoint (and warns below 800 "
        f"steps). Machine: {machine()}.",
        "",
        markdown_table(["steps", "ELBO, discrete (± s.e.)", "continuous, reversible Heun", "continuous, Euler",
                        "reversible-Heun adjoint gradient error", "Euler adjoint gradient error"], rows),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--table", choices=("dis", "dds", "all"), default="all")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sections = {
        "adjoint-accuracy": lambda: dis_pis_section([8, 16], 32) if args.smoke else dis_pis_section([200, 800, 1600],
                                                                                                    1000),
        "adjoint-dds": lambda: dds_section([8, 16], 64, 32) if args.smoke else dds_section([100, 200, 400, 800, 1600],
                                                                                           4000, 500),
    }
    for name, section in sections.items():
        if args.table in ("all", "dis" if name == "adjoint-accuracy" else "dds"):
            text = section()
            print(text, flush=True)
            if not args.smoke:
                write_section(name, text)


if __name__ == "__main__":
    main()
