"""What the time grid alone costs: the samplers at their exact optimal controls on DW-5 and the Funnel.

    python benchmarks/optimal_control_floor.py     # about 20 minutes; writes the section ``optimal-control-floor``
    python benchmarks/optimal_control_floor.py --smoke    # 256 paths, 32 steps: seconds, writes nothing

DW-5 (``double_well``) is five independent copies of ``log rho(x) = -(x^2 - 4)^2``, and every reference factorises
over coordinates, so the optimal control acts coordinate by coordinate, the path measures factorise and the ELBO
error ``log Z - ELBO`` (the path KL to the optimum) of DW-5 is five times that of one coordinate. On one coordinate
the optimal control is computed by quadrature on a 2001-point grid of ``y`` in ``[-3.2, 3.2]``
(the density is below ``e^-38`` outside):

* DIS (the reversal of VP from ``N(0, 1)``): ``u*(x, s) = sigma(s) d/dx log p_{T-s}(x)``,
  ``p_t(x) = int rho(y) N(x; a_t y, g_t) dy``;
* PIS and DDS (a forward reference with terminal law ``pi_T``): ``u*(x, s) = sigma(s) d/dx log h(x, s)``,
  ``h(x, s) = int rho(y) / pi_T(y) N(y; e x, gamma) dy`` with ``(e, gamma)`` the transition from ``s`` to ``T``.

The Funnel (``funnel``, d = 10: ``y_1 ~ N(0, 9)``, ``y_i | y_1 ~ N(0, e^{y_1})``) is Gaussian given ``y_1``, so DIS's
optimal control is a quadrature over ``y_1`` alone (6001 nodes in ``[-15, 15]``): with ``v(y_1) = a_t^2 e^{y_1} + g_t``,
``p_t(x) = int N(y_1; 0, 9) N(x_1; a_t y_1, g_t) prod_{i >= 2} N(x_i; 0, v(y_1)) dy_1``.

The remaining error is the time discretisation's (and, for DIS and DDS, the start: ``N(0, I)`` is not the optimal
law at time 0 exactly; for DDS this part does not shrink with the steps). The trained samplers' errors are in the
reproduction and evaluations sections; this is the floor below them.
"""

from __future__ import annotations

import argparse
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
from sde_control.targets import DoubleWell, Funnel  # noqa: E402
from sde_control.weights import log_weight  # noqa: E402

COPIES = 5
BUDGETS = {"full": dict(paths=2000, steps=(128, 512), funnel_steps=(128,)),  # the Funnel at 512 steps: 25 minutes
           "smoke": dict(paths=256, steps=(32,), funnel_steps=(32,))}
NODES = torch.linspace(-3.2, 3.2, 2001, dtype=torch.float64)
FUNNEL_NODES = torch.linspace(-15.0, 15.0, 6001, dtype=torch.float64)


def gaussian_mixture_score(x: Tensor, log_weights: Tensor, scale: Tensor, var: Tensor) -> Tensor:
    r"""``d/dx log int exp(log_weights(y)) N(x; scale y, var) dy`` by quadrature on ``NODES``: the posterior mean
    of ``(scale y - x) / var``."""
    log_kernel = log_weights - (x.double() - scale * NODES).square() / (2 * var)
    return (torch.softmax(log_kernel, -1) * (scale * NODES - x.double())).sum(-1, keepdim=True) / var


def noising_transition(reference: Reference, s: Tensor) -> tuple[Tensor, Tensor]:
    """``(a_t, g_t)`` of DIS's noising SDE from time 0 to ``t = T - s``: ``X_t = a_t X_0 + sqrt(g_t) xi``."""
    T = torch.tensor(reference.T, dtype=torch.float64)
    return reference.sde.transition(torch.zeros((), dtype=torch.float64), (T - s.double()).clamp_min(1e-9))


Field = Callable[[Tensor, Tensor], Tensor]
"""A function ``(x, s)`` of the state and the generation time."""


def control_of(reference: Reference, grad_log: Field) -> Field:
    """The control ``u(x, s) = sigma(s) grad_log(x, s)`` in the dtype of ``x``."""
    return lambda x, s: (reference.diffusion(s).double() * grad_log(x, s)).to(x)


def optimal_control(reference: Reference, log_rho: Tensor) -> Field:
    """The exact optimal control of ``reference`` for the 1-d density ``exp(log_rho)`` on ``NODES`` (see above)."""
    if isinstance(reference, ForwardReference):
        log_ratio = log_rho + NODES.square() / (2 * reference.terminal_var)
        T = torch.tensor(reference.T, dtype=torch.float64)

        def grad_log(x: Tensor, s: Tensor) -> Tensor:
            e, gamma = reference.sde.transition(s.double(), T)
            # h(x) = int r(y) N(y; e x, gamma) dy = int r(y) N(x; y / e, gamma / e^2) dy / e
            return gaussian_mixture_score(x, log_ratio, 1 / e, gamma / e**2)
    else:
        def grad_log(x: Tensor, s: Tensor) -> Tensor:
            return gaussian_mixture_score(x, log_rho, *noising_transition(reference, s))

    return control_of(reference, grad_log)


def funnel_dis_control(reference: Reference, funnel: Funnel) -> Field:
    """DIS's exact optimal control ``sigma(s) grad log p_{T-s}`` for the Funnel (module docstring): the score is the
    posterior mean over ``y_1`` of ``(a y_1 - x_1) / g`` for ``x_1`` and of ``-x_i / v(y_1)`` for the others."""
    log_prior = -0.5 * (FUNNEL_NODES / funnel.scale).square()
    rest = funnel.dim - 1

    def grad_log(x: Tensor, s: Tensor) -> Tensor:
        a, g = noising_transition(reference, s)
        x = x.double()
        v = a**2 * FUNNEL_NODES.exp() + g
        radius2 = x[:, 1:].square().sum(-1, keepdim=True)
        log_post = log_prior - (x[:, :1] - a * FUNNEL_NODES).square() / (2 * g) - radius2 / (2 * v) - rest / 2 * v.log()
        post = torch.softmax(log_post, -1)
        return torch.cat([(post * (a * FUNNEL_NODES - x[:, :1])).sum(-1, keepdim=True) / g,
                          -x[:, 1:] * (post / v).sum(-1, keepdim=True)], dim=1)

    return control_of(reference, grad_log)


def at_optimum(problem, reference: Reference, control: Field, steps: int, paths: int) -> LogZEstimate:
    torch.manual_seed(0)
    with torch.no_grad():
        grid = time_grid(reference.T, steps)
        path = simulate_chain(control, reference, reference.sample_initial(paths), grid, seed=0, keep_states=False)
        return LogZEstimate.from_log_weights(log_weight(problem, reference, path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="256 paths, 32 steps; writes nothing")
    budget = BUDGETS["smoke" if parser.parse_args(argv).smoke else "full"]
    torch.set_num_threads(1)
    problem = DoubleWell(1, 1, delta=4.0)
    log_rho = problem.log_prob(NODES[:, None].float()).double()
    rows = []
    for name, sampler in {"PIS": PIS, "DIS": DIS, "DDS": DDS}.items():
        reference = sampler(problem).reference
        control = optimal_control(reference, log_rho)
        for steps in budget["steps"]:
            est = at_optimum(problem, reference, control, steps, budget["paths"])
            gap = problem.log_Z - est.elbo
            rows.append(["DW-5, one coordinate", name, str(steps), f"{gap:.3f}",
                         f"{abs(est.log_z - problem.log_Z):.3f}", f"{est.ess:.3f}", f"{COPIES * gap:.2f}"])
            print(rows[-1], flush=True)
    funnel = Funnel(10, 3.0)
    reference = DIS(funnel).reference
    for steps in budget["funnel_steps"]:
        est = at_optimum(funnel, reference, funnel_dis_control(reference, funnel), steps, budget["paths"])
        rows.append(["Funnel (d=10)", "DIS", str(steps), f"{funnel.log_Z - est.elbo:.3f}",
                     f"{abs(est.log_z - funnel.log_Z):.3f}", f"{est.ess:.3f}", "—"])
        print(rows[-1], flush=True)
    text = "\n".join([
        "## The samplers at the exact optimal control",
        "",
        f"Command: `python benchmarks/optimal_control_floor.py`. ELBO error (log Z - ELBO), |log Z error| of the "
        f"importance-sampled estimate and ESS of {budget['paths']} paths at the exact optimal control (by quadrature; "
        f"the script's docstring): on one coordinate of DW-5 (`-(x^2 - 4)^2`), with five times its ELBO error in the "
        f"last column, DW-5's (its coordinates are independent); on the Funnel for DIS. "
        f"What is left is the time grid's. "
        f"Each sampler's default reference; seed 0; {machine()}.",
        "",
        markdown_table(["target", "sampler", "steps", "ELBO error", "abs. log Z error", "ESS", "ELBO error, DW-5"],
                       rows),
    ])
    print(text)
    if budget is BUDGETS["full"]:
        write_section("optimal-control-floor", text)


if __name__ == "__main__":
    main()
