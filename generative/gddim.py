r"""gDDIM: the exponential integrator of Zhang, Tao, Chen (ICLR 2023) for any linear forward diffusion.

Forward SDE ``du = F u dt + G dW`` in noising time (augmented state allowed, :mod:`.augmented`), with ``S_t`` the
covariance of ``u_t`` given the data (``S_t = Psi_t Sigma_0 Psi_t^T + Sigma_t``,
:func:`.augmented.conditional_moments`).

**The R parameterisation.** Write the score as ``s(u, t) = -R_t^{-T} eps(u, t)`` with

.. math::  \dot R_t = F_t R_t + \tfrac12 G_t G_t^T R_t^{-T} = \big(F_t + \tfrac12 G_t G_t^T S_t^{-1}\big) R_t ,
           \qquad R R^T = S_t

(``R R^T = S`` is preserved: ``d(R R^T)/dt = F S + S F^T + G G^T = dS/dt``). For data that is
a point ``x``, the probability-flow ODE ``du/dt = F u - G G^T s / 2`` is solved exactly by
``u_t = Psi_t [x; 0] + R_t eps`` with **constant** ``eps``: differentiate, ``F Psi x + (F R + G G^T R^{-T} / 2) eps
= F u + G G^T S^{-1} (u - Psi x) / 2``. So ``eps`` varies slowly along real trajectories, and a step from ``t_i`` to
``t < t_i`` that integrates the linear part exactly and ``eps`` as a polynomial in time is accurate at few steps.
Any two solutions of the ``R`` equation with ``R R^T = S`` differ by a constant orthogonal factor ``R' = R C``
(``R^{-1} R'`` solves ``X' = 0``), under which ``eps' = C^T eps`` and every update below is unchanged: the sampler
takes the score ``s`` and starts ``R`` at ``t_0 = T`` from the Cholesky factor of ``S_T``; nothing depends on that
choice. (The reference code starts at ``t = 0`` from ``sqrt(Sigma_0 + 1e-6 I)``, which changes ``S_t`` by
``Psi 1e-6 Psi^T``: at ``t = 1e-3`` CLD's position variance is ``3e-6``.)

**Deterministic step** (``lam = 0``): with ``eps(tau) ~ sum_j l_j(tau) eps_j``, the Lagrange polynomial through the
last ``q`` evaluations (``q = order``, fewer in the first steps),

.. math::  u_t = \Psi(t, t_i) u_{t_i} + \sum_j C_{ij} \epsilon_j, \qquad
           C_{ij} = \int_{t_i}^{t} \Psi(t, \tau)\, \tfrac12 G_\tau G_\tau^T R_\tau^{-T}\, l_j(\tau)\, d\tau ,

(Algorithm 1's predictor; ``sum_j C_ij = R_t - Psi(t, t_i) R_{t_i}``, which for VP and ``q = 1`` is DDIM:
``u_t = alpha_t / alpha_i u_i + (sigma_t - alpha_t sigma_i / alpha_i) eps_i``). With ``corrector=True`` each step
also evaluates ``eps`` at the predicted point and recomputes the step with the polynomial through it and the last
``q - 1`` evaluations (the corrector of Algorithm 1; two evaluations per step).

**Stochastic step** (``lam > 0``, the paper's stochastic gDDIM): the SDE ``du = (F u - (1 + lam^2) G G^T s / 2) dt +
lam G dW`` has the same marginals for every ``lam``; replacing the score on the step by the score of the law given
the data prediction of ``(u_{t_i}, eps_i)``, ``-S_tau^{-1} (u - Psi(tau, t_i)(u_{t_i} - R_{t_i} eps_i))``, makes it
linear with ``F_hat = F + (1 + lam^2) G G^T S^{-1} / 2`` and propagator ``Psi_hat``:

.. math::  u_t = \Psi(t, t_i) u_{t_i} + (\hat\Psi(t, t_i) - \Psi(t, t_i)) R_{t_i} \epsilon_i + \xi, \qquad
           \xi \sim N(0,\ S_t - \hat\Psi S_{t_i} \hat\Psi^T),

the noise covariance in closed form (it solves ``dP = (F_hat P + P F_hat^T - lam^2 G G^T) dtau``, ``P(t_i) = 0``;
the reference code integrates that equation with ``P F_hat`` in place of ``P F_hat^T``); exact in law for point
data. It is one-step: the reference code's multistep extension (``cld_jax/sde_lib.py``, ``LambdaSDE``: the data
prediction through an extrapolated ``eps`` and ``R_{t_i}``) blew up here on CLD at order 3 and 20 steps
(covariance 6e7) and was no better than order 1 at 100 steps.

**Numerics.** On each step the propagators ``Phi_lam(tau, t_i)`` of ``F_hat`` (``lam`` and 0, which carries ``R``)
are integrated by classical RK4 in ``log tau`` on ``substeps`` substeps (``F_hat ~ 1/tau`` near 0 for VP), all steps
at once, and the weights by Simpson's rule on the same points; ``Psi`` comes from the SDE's exact transitions.
Coefficients are cached under a fingerprint of the SDE's coefficients (``F`` and ``G G^T`` at 33 times, ``Sigma_0``,
``T``), the grid, ``order``, ``lam`` and ``corrector``: changing a learned SDE's parameters gives a new entry. (The
reference code's file cache is keyed by the grid alone, so it serves stale coefficients for other SDE parameters.)
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from sde_control.sdes import LinearSDE, blockwise

from .augmented import conditional_cholesky, initial_covariance
from .sampling import time_grid
from .score_matching import Score

CACHE_SIZE = 32
_CACHE: OrderedDict[tuple, GDDIMCoefficients] = OrderedDict()


@dataclass
class GDDIMCoefficients:
    """Per-step matrices (each ``K x K``) for the grid ``times`` (N+1,) from ``T`` down to ``t_min``."""

    times: Tensor
    R: Tensor  # (N+1, K, K): R at every grid time
    psi: Tensor  # (N, K, K): Psi(t_{i+1}, t_i)
    predictor: Tensor  # (N, order, K, K): C_ij, j = 0 the newest evaluation ((Psi_hat - Psi) R_i for lam > 0)
    corrector: Tensor | None  # (N, order, K, K): j = 0 the predicted point's evaluation
    noise: Tensor | None  # (N, K, K): a square root of S_t - Psi_hat S_{t_i} Psi_hat^T (lam > 0)


def fingerprint(sde: LinearSDE, aux_init_cov: Tensor | None = None) -> str:
    """A hash of what the coefficients depend on: ``F``, ``G G^T`` at 33 times, ``Sigma_0`` and ``T``."""
    probe = torch.linspace(0.0, sde.T, 33, dtype=torch.float64)
    with torch.no_grad():
        parts = (sde.drift_matrix(probe), sde.noise_matrix(probe), initial_covariance(sde, aux_init_cov),
                 torch.tensor(sde.T))
        data = b"".join(p.detach().double().cpu().contiguous().numpy().tobytes() for p in parts)
    return f"{type(sde).__qualname__}:{hashlib.sha1(data).hexdigest()}"


def _lagrange(tau: Tensor, nodes: Tensor) -> Tensor:
    """``l_j(tau)`` for the nodes (q,) at points ``tau`` (...,): shape (..., q)."""
    q = nodes.numel()
    basis = []
    for j in range(q):
        value = torch.ones_like(tau)
        for k in range(q):
            if k != j:
                value = value * (tau - nodes[k]) / (nodes[j] - nodes[k])
        basis.append(value)
    return torch.stack(basis, -1)


def _simpson(values: Tensor, h: Tensor) -> Tensor:
    """Simpson's rule over axis 1 of ``values`` (N, M+1, ...) with spacings ``h`` (N,), ``M`` even."""
    M = values.shape[1] - 1
    w = torch.ones(M + 1, dtype=values.dtype)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return torch.einsum("m,nm...->n...", w, values) * (h / 3).reshape(-1, *([1] * (values.dim() - 2)))


class _StepPropagators:
    """RK4 in ``log tau`` of ``Phi_lam(tau, t_i)`` on every step at once, with the values needed on the way."""

    def __init__(self, sde: LinearSDE, times: Tensor, lams: tuple[float, ...], substeps: int,
                 aux_init_cov: Tensor | None):
        N, M = times.numel() - 1, substeps
        log_t = times.log()
        self.h = (log_t[1:] - log_t[:-1]) / M  # negative: generation runs down in t
        fine = log_t[:-1, None] + self.h[:, None] * torch.arange(2 * M + 1, dtype=torch.float64) / 2  # (N, 2M+1)
        self.tau = fine.exp()
        self.tau[:, 0], self.tau[:, -1] = times[:-1], times[1:]  # exactly the grid (rounding could step past it)
        flat = self.tau.reshape(-1)
        _, chol = conditional_cholesky(sde, flat, aux_init_cov)  # refuses an S_t singular to float64
        F, GG = sde.drift_matrix(flat).double(), sde.noise_matrix(flat).double()
        K = F.shape[-1]
        shape = (N, 2 * M + 1, K, K)
        self.cov = (chol @ chol.transpose(-1, -2)).double().reshape(shape)
        self.F, self.GG = F.reshape(shape), GG.reshape(shape)
        self.GG_S_inv = torch.cholesky_solve(GG, chol.double()).transpose(-1, -2).reshape(shape)  # G G^T S^{-1}
        self.phi = {lam: self._integrate(lam, M) for lam in lams}  # (N, M+1, K, K) at the substep points

    def _integrate(self, lam: float, M: int) -> Tensor:
        rate = self.tau[..., None, None] * (self.F + 0.5 * (1 + lam**2) * self.GG_S_inv)  # d Phi / d log tau
        h = self.h[:, None, None]
        phi = torch.eye(rate.shape[-1], dtype=torch.float64).expand(rate.shape[0], -1, -1)
        values = [phi]
        for k in range(M):
            a, b, c = rate[:, 2 * k], rate[:, 2 * k + 1], rate[:, 2 * k + 2]
            k1 = a @ phi
            k2 = b @ (phi + 0.5 * h * k1)
            k3 = b @ (phi + 0.5 * h * k2)
            k4 = c @ (phi + h * k3)
            phi = phi + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            values.append(phi)
        return torch.stack(values, 1)

    def at_nodes(self, value: Tensor) -> Tensor:
        """The substep points' entries (N, M+1, ...) of a fine-grid array (N, 2M+1, ...)."""
        return value[:, ::2]


def _coefficients(sde: LinearSDE, times: Tensor, order: int, lam: float, corrector: bool, substeps: int,
                  aux_init_cov: Tensor | None) -> GDDIMCoefficients:
    N = times.numel() - 1
    steps = _StepPropagators(sde, times, (0.0, lam) if lam else (0.0,), substeps, aux_init_cov)
    tau = steps.at_nodes(steps.tau)  # (N, M+1), tau[:, 0] = t_i, tau[:, -1] = t_{i+1}
    K = steps.F.shape[-1]
    # R on the grid: Cholesky at T, then R_{t_{i+1}} = Phi_0(t_{i+1}, t_i) R_{t_i}.
    _, chol_T = conditional_cholesky(sde, times[0], aux_init_cov)
    R = [chol_T.double()]
    for i in range(N):
        R.append(steps.phi[0.0][i, -1] @ R[-1])
    R = torch.stack(R)
    # Psi(t_{i+1}, tau) = Psi(tau, t_{i+1})^{-1}, and Psi(t_{i+1}, t_i), from the SDE's exact transitions.
    psi_to_end = torch.linalg.inv(sde.transition_matrices(times[1:, None].expand_as(tau), tau)[0].double())
    psi = psi_to_end[:, 0]
    if lam:
        # One step with eps constant: (Psi_hat(t, t_i) - Psi(t, t_i)) R_{t_i}, and the noise in closed form.
        cov = steps.at_nodes(steps.cov)
        psi_hat = steps.phi[lam][:, -1]
        P = cov[:, -1] - psi_hat @ cov[:, 0] @ psi_hat.transpose(-1, -2)
        values, vectors = torch.linalg.eigh(0.5 * (P + P.transpose(-1, -2)))
        noise = vectors @ torch.diag_embed(values.clamp_min(0).sqrt()) @ vectors.transpose(-1, -2)
        return GDDIMCoefficients(times, R, psi, ((psi_hat - psi) @ R[:-1])[:, None], None, noise)
    R_tau = steps.phi[0.0] @ R[:-1, None]  # R along each step
    integrand = psi_to_end @ (0.5 * steps.at_nodes(steps.GG)) @ torch.linalg.inv(R_tau).transpose(-1, -2)
    total = R[1:] - psi @ R[:-1]  # the whole integral for constant eps, in closed form
    jacobian = tau[..., None, None]  # d tau = tau d log tau

    def weights(nodes_of_step) -> Tensor:
        """(N, order, K, K): int integrand * l_j over each step, for the nodes chosen per step; the newest node's
        weight is the closed-form total minus the others (the l_j sum to 1), so order 1 needs no quadrature."""
        out = torch.zeros(N, order, K, K, dtype=torch.float64)
        for i in range(N):
            nodes = nodes_of_step(i)
            basis = _lagrange(tau[i], nodes)[:, 1:]  # (M+1, q-1)
            values = integrand[i, :, None] * basis[..., None, None] * jacobian[i, :, None]
            out[i, 1 : nodes.numel()] = _simpson(values[None], steps.h[i : i + 1])[0]
            out[i, 0] = total[i] - out[i, 1:].sum(0)
        return out

    predictor = weights(lambda i: times[max(0, i - order + 1) : i + 1].flip(0))
    correction = None
    if corrector:
        correction = weights(lambda i: torch.cat([times[i + 1 : i + 2], times[max(0, i - order + 2) : i + 1].flip(0)]))
    return GDDIMCoefficients(times, R, psi, predictor, correction, None)


def gddim_coefficients(sde: LinearSDE, times: Tensor, order: int = 1, lam: float = 0.0, corrector: bool = False,
                       substeps: int = 128, aux_init_cov: Tensor | None = None) -> GDDIMCoefficients:
    """The (cached) per-step matrices of :func:`gddim_sample` on the grid ``times`` (decreasing, float64)."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if lam and (order > 1 or corrector):
        raise ValueError("the stochastic sampler (lam > 0) is one-step (order 1, no corrector): the reference code's "
                         "multistep extension was unstable here (CLD, order 3, 20 steps) and no better than order 1")
    if substeps < 2 or substeps % 2:
        raise ValueError(f"substeps must be a positive even number (Simpson's rule), got {substeps}")
    times = torch.as_tensor(times, dtype=torch.float64)
    if times.dim() != 1 or times.numel() < 2 or not bool((times.diff() < 0).all()) or float(times[-1]) <= 0 \
            or float(times[0]) > sde.T * (1 + 1e-12):
        raise ValueError(f"times must decrease strictly from at most T = {sde.T} to a positive t_min")
    key = (fingerprint(sde, aux_init_cov), times.numpy().tobytes(), order, float(lam), corrector, substeps)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    with torch.no_grad():
        coefficients = _coefficients(sde, times, order, float(lam), corrector, substeps, aux_init_cov)
    _CACHE[key] = coefficients
    if len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return coefficients


@torch.no_grad()
def gddim_sample(sde: LinearSDE, score: Score, x_T: Tensor, steps: int, *, order: int = 1, lam: float = 0.0,
                 corrector: bool = False, t_min: float = 1e-3, times: Tensor | None = None,
                 aux_init_cov: Tensor | None = None, return_path: bool = False,
                 generator: torch.Generator | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Integrate from ``x_T`` (n, D) at ``t = T`` down to ``t_min`` by ``steps`` gDDIM steps (module docstring).

    ``score(u, t)`` is the model's score (``t`` a 0-dim float64 noising time); ``eps = -R_t^T s`` is formed
    inside. ``order`` 1-3 (multistep, lower in the first steps; lam = 0), ``lam >= 0`` (0: the probability-flow
    sampler; > 0: the one-step stochastic one), ``corrector`` (lam = 0: two score evaluations per step). The grid
    is :func:`time_grid` (quadratic) unless ``times`` is given. Returns the state at ``t_min`` (n, D), and with
    ``return_path`` also the states on the grid (steps + 1, n, D).
    """
    grid = time_grid(sde.T, t_min, steps) if times is None else torch.as_tensor(times, dtype=torch.float64)
    if grid.numel() != steps + 1:
        raise ValueError(f"times must have steps + 1 = {steps + 1} entries, got {grid.numel()}")
    c = gddim_coefficients(sde, grid, order, lam, corrector, aux_init_cov=aux_init_cov)
    if x_T.dim() != 2 or x_T.shape[1] % sde.K:
        raise ValueError(f"x_T must be (n, D) with D a multiple of K = {sde.K}, got {tuple(x_T.shape)}")

    R_T, psi, predictor, correction, noise_root = (
        None if m is None else m.to(device=x_T.device, dtype=x_T.dtype)
        for m in (c.R.transpose(-1, -2), c.psi, c.predictor, c.corrector, c.noise))

    def eps(u: Tensor, k: int) -> Tensor:
        return -blockwise(R_T[k], score(u, c.times[k]))

    u, history, path = x_T, [], [x_T]
    for i in range(steps):
        history = [eps(u, i), *history][:order]
        linear = blockwise(psi[i], u)
        new = linear + sum(blockwise(predictor[i, j], e) for j, e in enumerate(history))
        if corrector:
            corrected = [eps(new, i + 1), *history][:order]
            new = linear + sum(blockwise(correction[i, j], e) for j, e in enumerate(corrected))
        if lam:
            noise = torch.randn(u.shape, generator=generator, dtype=u.dtype, device=u.device)
            new = new + blockwise(noise_root[i], noise)
        u = new
        path.append(u)
    return (u, torch.stack(path)) if return_path else u
