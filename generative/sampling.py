r"""Generation by the reverse SDE and the probability-flow ODE of a linear forward SDE: fixed-step solvers through
the core's ``solve``, an adaptive reference solver, time grids and the count of score evaluations.

For the forward SDE ``du = F(t) u dt + G(t) dW`` in noising time and a score ``s(u, t)``, generation runs in
``s = T - t`` from ``u_{s=0} = u_T`` down to ``t = t_min``:

.. math::  \text{reverse SDE:}\quad du = \big(-F u + G G^T s(u, t)\big) ds + G\, d\bar W, \qquad
           \text{probability flow:}\quad du = \big(-F u + \tfrac12 G G^T s(u, t)\big) ds ,

with ``t = T - s`` and every matrix acting blockwise. The backward control of the stochastic-control view is
``u = G^T s``. :func:`reverse_paths` takes Euler-Maruyama steps (``method="em"``) of the reverse SDE, or Euler or
Heun steps (``method="ode"``) of the probability flow, on a grid of noising times (:func:`time_grid`);
:func:`solve_ode_adaptive` integrates the probability flow with scipy's RK45 (Dormand-Prince 5(4) with error
control), the converged reference of the sampler comparisons. gDDIM (:mod:`.gddim`) is the third method.

NFE (score evaluations) per step: 1 for Euler, Euler-Maruyama and gDDIM's predictor, 2 for Heun and for gDDIM with
its corrector (:func:`evaluations_per_step`); :class:`CountedScore` counts them as they happen.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from sde_control.integrate import SOLVERS, solve
from sde_control.sdes import LinearSDE, blockwise

from .diagonal import DiagonalLinearSDE
from .score_matching import Score

METHODS = ("em", "ode")
GRIDS = {"uniform": 1.0, "quadratic": 2.0}
"""Time grids: uniform in ``t ** (1 / power)``; quadratic is the gDDIM and MDM reference codes' grid."""

Velocity = Callable[[Tensor, Tensor], Tensor]
"""``v(u, t) = du/dt`` in noising time at a 0-dim float64 time ``t``."""


def time_grid(T: float, t_min: float, steps: int, power: float = 2.0) -> Tensor:
    """``steps + 1`` noising times from ``T`` down to ``t_min``, uniform in ``t^(1/power)`` (float64): ``power = 1``
    is the uniform grid, ``2`` the quadratic one, denser near the data."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not 0 < t_min < T:
        raise ValueError(f"t_min must lie in (0, T = {T}), got {t_min}")
    ends = torch.tensor([T, t_min], dtype=torch.float64) ** (1 / power)
    return torch.linspace(float(ends[0]), float(ends[1]), steps + 1, dtype=torch.float64) ** power


def evaluations_per_step(method: str, solver: str = "euler", corrector: bool = False) -> int:
    """Score evaluations per step: 2 for Heun and for gDDIM's predictor-corrector, else 1."""
    return 2 if (method == "ode" and solver == "heun") or (method == "gddim" and corrector) else 1


class CountedScore:
    """A score function that counts its calls (each call is one evaluation of the network on the batch)."""

    def __init__(self, score: Score):
        self.score, self.calls = score, 0

    def __call__(self, u: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.score(u, t)


def remember_latest(drift: Callable[[Tensor, int], Tensor]) -> Callable[[Tensor, int], Tensor]:
    """``drift(x, k)`` that returns its latest value again when called with the same state object and step: torchsde
    evaluates the start once to check shapes and then again for the first step, which would cost one network
    evaluation per run."""
    latest: list = [None, None, None]  # k, x, value

    def remembered(x: Tensor, k: int) -> Tensor:
        if latest[0] != k or latest[1] is not x:
            latest[:] = k, x, drift(x, k)
        return latest[2]

    return remembered


def check_method(method: str, valid: Sequence[str], owner: str = "") -> None:
    """Refuse an unknown sampling ``method``, listing the ``valid`` ones (of ``owner``, where given); the old name of
    Euler-Maruyama, ``"sde"``, is pointed at its new one."""
    if method not in valid:
        hint = " ('sde' is now 'em': Euler-Maruyama on the reverse SDE)" if method == "sde" else ""
        raise ValueError(f"method must be one of {tuple(valid)}{' for ' + owner if owner else ''}, got "
                         f"{method!r}{hint}")


def reverse_paths(sde: LinearSDE, score: Score, x_T: Tensor, steps: int, t_min: float, method: str = "ode",
                  solver: str = "euler", seed: int | None = None, times: Tensor | None = None) -> Tensor:
    """Paths (steps + 1, n, D) of the probability-flow ODE (``method="ode"``, Euler or Heun steps) or the reverse SDE
    (``"em"``: Euler-Maruyama; Heun is allowed, the noise being additive) from ``x_T`` at ``t = T`` to ``t = t_min``
    (module docstring), on ``times`` (decreasing noising times, ``steps + 1`` of them) or the uniform grid. A process
    diagonal in a basis (:class:`~.diagonal.DiagonalLinearSDE`) is applied as operators, ``O(d)`` per step."""
    check_method(method, METHODS)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    times = time_grid(sde.T, t_min, steps, power=1.0) if times is None else torch.as_tensor(times, dtype=torch.float64)
    if times.numel() != steps + 1:
        raise ValueError(f"times must have steps + 1 = {steps + 1} entries, got {times.numel()}")
    factor = 0.5 if method == "ode" else 1.0
    coefficients = _diagonal_coefficients if isinstance(sde, DiagonalLinearSDE) else _block_coefficients
    drift, diffusion = coefficients(sde, score, times, factor, method)
    return solve(remember_latest(drift), x_T, sde.T - times, diffusion=diffusion, method=solver, seed=seed)


def _block_coefficients(sde: LinearSDE, score: Score, times: Tensor, factor: float, method: str):
    """The drift ``-F x + factor G G^T s`` and (reverse SDE) diffusion ``G xi`` with ``K x K`` blocks."""
    with torch.no_grad():
        F, GG = sde.drift_matrix(times).double(), sde.noise_matrix(times).double()

    def drift(x: Tensor, k: int) -> Tensor:
        return -blockwise(F[k], x) + factor * blockwise(GG[k], score(x, times[k]))

    diffusion = None
    if method == "em":
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

    return drift, diffusion if method == "em" else None


def probability_flow(sde: LinearSDE, score: Score) -> Velocity:
    """``du/dt = F u - G G^T s(u, t) / 2``: the probability-flow ODE in noising time."""

    def velocity(u: Tensor, t: Tensor) -> Tensor:
        if isinstance(sde, DiagonalLinearSDE):
            return sde.drift(u, t) - 0.5 * float(sde.g2(t)) * score(u, t)
        with torch.no_grad():
            F, GG = sde.drift_matrix(t).double(), sde.noise_matrix(t).double()
        return blockwise(F, u) - 0.5 * blockwise(GG, score(u, t))

    return velocity


@torch.no_grad()
def solve_ode_adaptive(velocity: Velocity, x_T: Tensor, times: Tensor, rtol: float = 1e-5,
                       atol: float = 1e-5) -> Tensor:
    """States (len(times), n, D) at ``times`` (decreasing noising times, the first the start) of ``du/dt = v(u, t)``
    from ``x_T``, by scipy's ``solve_ivp`` with RK45 and the tolerances ``rtol``, ``atol`` on the whole batch as one
    system in float64 (the adaptive solver of Song et al.'s likelihood and sampling code)."""
    from scipy.integrate import solve_ivp

    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got {rtol}, {atol}")
    times = torch.as_tensor(times, dtype=torch.float64)
    shape, dtype, device = x_T.shape, x_T.dtype, x_T.device

    def fun(t: float, y: np.ndarray) -> np.ndarray:
        u = torch.from_numpy(y).reshape(shape).to(dtype=dtype, device=device)
        return velocity(u, torch.tensor(t, dtype=torch.float64)).double().cpu().numpy().reshape(-1)

    solution = solve_ivp(fun, (float(times[0]), float(times[-1])), x_T.double().cpu().numpy().reshape(-1),
                         method="RK45", t_eval=times.numpy(), rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"the adaptive ODE solver failed: {solution.message}")
    return torch.from_numpy(np.ascontiguousarray(solution.y.T)).reshape(times.numel(), *shape).to(dtype=dtype,
                                                                                                  device=device)
