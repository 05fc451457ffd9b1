"""What the time grid alone costs on the double well: the ELBO error of PIS, DIS and DDS at their exact optimal
controls.

    python benchmarks/optimal_control_floor.py     # a few minutes; writes the section ``optimal-control-floor``

DW-5 (``double_well``) is five independent copies of ``log rho(x) = -(x^2 - 4)^2``, and every reference factorises
over coordinates, so the optimal control acts coordinate by coordinate, the path measures factorise and the ELBO
error ``log Z - ELBO`` (the path KL to the optimum) of DW-5 is five times that of one coordinate. On one coordinate
the optimal control is computed by quadrature on a 2001-point grid of ``y`` in ``[-3.2, 3.2]``
(the density is below ``e^-38`` outside):

* DIS (the reversal of VP from ``N(0, 1)``): ``u*(x, s) = sigma(s) d/dx log p_{T-s}(x)``,
  ``p_t(x) = int rho(y) N(x; a_t y, g_t) dy``;
* PIS and DDS (a forward reference with terminal law ``pi_T``): ``u*(x, s) = sigma(s) d/dx log h(x, s)``,
  ``h(x, s) = int rho(y) / pi_T(y) N(y; e x, gamma) dy`` with ``(e, gamma)`` the transition from ``s`` to ``T``.

The remaining ELBO error is the time discretisation's (and, for DIS and DDS, the start: ``N(0, 1)`` is not the
optimal law at time 0 exactly; for DDS this part does not shrink with the steps). The trained samplers' ELBO errors
on DW-5 are in the reproduction and evaluations sections; this is the floor below them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, write_section  # noqa: E402

from sde_control import DDS, DIS, PIS  # noqa: E402
from sde_control.estimators import LogZEstimate  # noqa: E402
from sde_control.integrate import simulate_chain  # noqa: E402
from sde_control.references import ForwardReference, Reference, time_grid  # noqa: E402
from sde_control.targets import DoubleWell  # noqa: E402
from sde_control.weights import log_weight  # noqa: E402

PATHS, STEPS, COPIES = 2000, (128, 512), 5
NODES = torch.linspace(-3.2, 3.2, 2001, dtype=torch.float64)


def gaussian_mixture_score(x: Tensor, log_weights: Tensor, scale: Tensor, var: Tensor) -> Tensor:
    r"""``d/dx log int exp(log_weights(y)) N(x; scale y, var) dy`` by quadrature on ``NODES``: the posterior mean
    of ``(scale y - x) / var``."""
    log_kernel = log_weights - (x.double() - scale * NODES).square() / (2 * var)
    return (torch.softmax(log_kernel, -1) * (scale * NODES - x.double())).sum(-1, keepdim=True) / var


def optimal_control(reference: Reference, log_rho: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The exact optimal control of ``reference`` for the 1-d density ``exp(log_rho)`` on ``NODES`` (module docstring)."""
    T = torch.tensor(reference.T, dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64)
    if isinstance(reference, ForwardReference):
        log_ratio = log_rho + NODES.square() / (2 * reference.terminal_var)

        def grad_log(x: Tensor, s: Tensor) -> Tensor:
            e, gamma = reference.sde.transition(s.double(), T)
            # h(x) = int r(y) N(y; e x, gamma) dy = int r(y) N(x; y / e, gamma / e^2) dy / e
            return gaussian_mixture_score(x, log_ratio, 1 / e, gamma / e**2)
    else:
        def grad_log(x: Tensor, s: Tensor) -> Tensor:
            a, g = reference.sde.transition(zero, (T - s.double()).clamp_min(1e-9))
            return gaussian_mixture_score(x, log_rho, a, g)

    return lambda x, s: (reference.diffusion(s).double() * grad_log(x, s)).to(x)


def main() -> None:
    torch.set_num_threads(1)
    problem = DoubleWell(1, 1, delta=4.0)
    log_rho = problem.log_prob(NODES[:, None].float()).double()
    rows = []
    for name, sampler in {"PIS": PIS, "DIS": DIS, "DDS": DDS}.items():
        reference = sampler(problem).reference
        control = optimal_control(reference, log_rho)
        for steps in STEPS:
            with torch.no_grad():
                path = simulate_chain(control, reference, reference.sample_initial(PATHS), time_grid(reference.T, steps),
                                      seed=0, keep_states=False)
                est = LogZEstimate.from_log_weights(log_weight(problem, reference, path))
            gap = problem.log_Z - est.elbo
            rows.append([name, str(steps), f"{gap:.3f}", f"{est.ess:.3f}", f"{COPIES * gap:.2f}"])
            print(rows[-1], flush=True)
    text = "\n".join([
        "## The double well at the exact optimal control",
        "",
        f"Command: `python benchmarks/optimal_control_floor.py`. ELBO error (log Z - ELBO) and ESS of {PATHS} paths "
        f"at the exact optimal control (quadrature) on one coordinate of DW-5 (`-(x^2 - 4)^2`), and five times the "
        f"ELBO error: DW-5's, whose coordinates are independent. Each sampler's default reference; seed 0; "
        f"{machine()}.",
        "",
        markdown_table(["sampler", "steps", "ELBO error, one coordinate", "ESS, one coordinate", "ELBO error, DW-5"],
                       rows),
    ])
    print(text)
    write_section("optimal-control-floor", text)


if __name__ == "__main__":
    main()
