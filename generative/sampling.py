r"""Generation: the reverse SDE and the probability-flow ODE of a linear forward SDE, through the core's solver.

For the forward SDE ``dX = F(t) X dt + G(t) dW`` in noising time and a score ``s(x, t)``, generation runs in
``s = T - t`` from ``X_{s=0} = x_T`` to ``t = t_min``:

.. math::  \text{reverse SDE:}\quad dX = \big(-F X + G G^T s(X, t)\big) ds + G\, d\bar W, \qquad
           \text{probability flow:}\quad dX = \big(-F X + \tfrac12 G G^T s(X, t)\big) ds ,

with ``t = T - s`` and every matrix acting blockwise. The backward control of the stochastic-control view is
``u = G^T s``. Steps are Euler(-Maruyama) or Heun on a uniform grid (:func:`sde_control.integrate.solve`);
Euler evaluates the score once per step, Heun twice.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sde_control.integrate import SOLVERS, solve
from sde_control.sdes import LinearSDE, blockwise

from .diagonal import DiagonalLinearSDE
from .score_matching import Score

METHODS = ("ode", "sde")


def evaluations(steps: int, solver: str) -> int:
    """Score evaluations (NFE) of one sampling run: ``steps`` for Euler, ``2 steps`` for Heun."""
    return steps * (2 if solver == "heun" else 1)


def reverse_paths(sde: LinearSDE, score: Score, x_T: Tensor, steps: int, t_min: float, method: str = "ode",
                  solver: str = "euler", seed: int | None = None) -> Tensor:
    """Paths (steps + 1, n, d) of the probability-flow ODE (``method="ode"``) or the reverse SDE (``"sde"``)
    from ``x_T`` at ``t = T`` to ``t = t_min`` (module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not 0 < t_min < sde.T:
        raise ValueError(f"t_min must lie in (0, T = {sde.T}), got {t_min}")
    times = torch.linspace(sde.T, t_min, steps + 1, dtype=torch.float64)
    factor = 0.5 if method == "ode" else 1.0
    if isinstance(sde, DiagonalLinearSDE):  # F = B^T diag(f) B and G G^T = g^2 I as operators: O(d) per step
        drift, diffusion = _diagonal_coefficients(sde, score, times, factor, method)
    else:
        drift, diffusion = _block_coefficients(sde, score, times, factor, method)
    return solve(drift, x_T, sde.T - times, diffusion=diffusion, method=solver, seed=seed)


def _block_coefficients(sde: LinearSDE, score: Score, times: Tensor, factor: float, method: str):
    """The drift ``-F x + factor G G^T s`` and (reverse SDE) diffusion ``G xi`` with ``K x K`` blocks."""
    with torch.no_grad():
        F, GG = sde.drift_matrix(times).double(), sde.noise_matrix(times).double()

    def drift(x: Tensor, k: int) -> Tensor:
        return -blockwise(F[k], x) + factor * blockwise(GG[k], score(x, times[k]))

    diffusion = None
    if method == "sde":
        values, vectors = torch.linalg.eigh(GG)  # G = GG^{1/2}: also for a degenerate G G^T
        G = vectors @ torch.diag_embed(values.clamp_min(0).sqrt()) @ vectors.transpose(-1, -2)

        def diffusion(k: int, xi: Tensor) -> Tensor:
            return blockwise(G[k], xi)

    return drift, diffusion


def _diagonal_coefficients(sde: DiagonalLinearSDE, score: Score, times: Tensor, factor: float, method: str):
    """The drift ``-F x + factor g^2 s`` and (reverse SDE) diffusion ``g xi`` of a process diagonal in a basis."""
    with torch.no_grad():
        g2 = sde.g2(times).cpu()

    def drift(x: Tensor, k: int) -> Tensor:
        return -sde.drift(x, times[k]) + factor * float(g2[k]) * score(x, times[k])

    def diffusion(k: int, xi: Tensor) -> Tensor:
        return float(g2[k]) ** 0.5 * xi

    return drift, diffusion if method == "sde" else None
