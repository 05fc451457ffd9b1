r"""The augmented state of a linear forward SDE with auxiliary variables, and hybrid score matching.

Data ``x`` of dimension ``d`` plus ``aux = sde.aux`` auxiliary blocks (velocity for CLD, ``K - 1`` blocks for the
MDM diffusions): the state ``u`` has ``D = (1 + aux) d`` channels laid out as in
:func:`sde_control.sdes.blockwise`, ``K`` blocks of ``m = D / K`` channels, the data first. The auxiliary blocks
start from their own law ``y_0 ~ N(0, Sigma_aux0 kron I)`` independently of ``x``, so with
``Sigma_0 = diag(0, Sigma_aux0)`` (:meth:`~sde_control.sdes.LinearSDE.initial_covariance`) the state at time ``t``
*given the data only* is

.. math::  q(u_t | x) = N\big(\Psi_t [x; 0],\ S_t \otimes I_m\big), \qquad
           S_t = \Psi_t \Sigma_0 \Psi_t^T + \Sigma_t = L_t L_t^T ,

with ``(Psi_t, Sigma_t)`` the transition from 0 to ``t``. **Hybrid score matching** (Dockhorn, Vahdat, Kreis 2022,
section 3.2; the MDM paper's "hybrid" transition kernel, ``hybrid_transition_kernel: True`` in its configurations)
regresses on the score of this law, ``grad log q(u_t | x) = -L_t^{-T} eps`` with ``u_t = Psi_t [x; 0] + L_t eps``,
instead of the score given ``(x, y_0)``: ``y_0`` is integrated out analytically, so the target has lower variance,
and the minimiser is the same marginal score ``grad log p_t`` (the conditional expectation of the target given
``u_t``). With the parameterisation ``s = -L_t^{-T} eps_hat`` the loss is ``|eps_hat - eps|^2``.

For data without auxiliary variables (``aux = 0``) all of this is plain denoising score matching
(:mod:`sde_control.generative.score_matching`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from sde_control.sdes import LinearSDE, blockwise

from .score_matching import Score, gaussian_marginal, sample_times

BLOCKS = ("all", "noised")


def state_dim(sde: LinearSDE, dim: int) -> int:
    """``D = (1 + aux) d``, checked to be a multiple of ``K``."""
    D = (1 + sde.aux) * dim
    if sde.aux and sde.K != 1 + sde.aux:
        raise ValueError(f"{type(sde).__name__} declares {sde.aux} auxiliary blocks but has K = {sde.K}: an augmented "
                         f"state is the data block followed by the auxiliary ones (K = 1 + aux)")
    if D % sde.K:
        raise ValueError(f"{type(sde).__name__} has {sde.K} x {sde.K} blocks and {sde.aux} auxiliary blocks per data "
                         f"coordinate, which cannot act on data of dimension {dim}")
    return D


def embed(x: Tensor, sde: LinearSDE) -> Tensor:
    """``[x; 0]``: the data with zero auxiliary blocks, shape (n, D)."""
    state_dim(sde, x.shape[-1])
    return torch.cat([x, x.new_zeros(x.shape[0], sde.aux * x.shape[-1])], dim=-1)


def initial_covariance(sde: LinearSDE, aux_init_cov: Tensor | None = None) -> Tensor:
    """``Sigma_0 = diag(0, Sigma_aux0)`` (K x K, float64): the SDE's own, or ``aux_init_cov`` (aux x aux) instead."""
    if aux_init_cov is None:
        return sde.initial_covariance()
    aux_init_cov = torch.as_tensor(aux_init_cov, dtype=torch.float64)
    if aux_init_cov.shape != (sde.aux, sde.aux):
        raise ValueError(f"aux_init_cov must be {sde.aux} x {sde.aux} (one row per auxiliary block of "
                         f"{type(sde).__name__}), got {tuple(aux_init_cov.shape)}")
    cov0 = torch.zeros(sde.K, sde.K, dtype=torch.float64)
    cov0[1:, 1:] = aux_init_cov
    return cov0


def conditional_moments(sde: LinearSDE, t: Tensor, aux_init_cov: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(Psi_t, S_t)`` of ``q(u_t | x)`` (module docstring), each ``t.shape + (K, K)``; differentiable in the SDE."""
    return sde.marginal_matrices(torch.as_tensor(t, dtype=torch.float64), cov0=initial_covariance(sde, aux_init_cov))


CONDITION_FLOOR = 1e-10
"""Smallest accepted ratio of the extreme eigenvalues of ``S_t``: below it, float64 inverses lose most digits."""


def conditional_cholesky(sde: LinearSDE, t: Tensor, aux_init_cov: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(Psi_t, L_t)`` with ``L_t L_t^T = S_t``; a clear error where ``S_t`` is singular to float64 precision.

    That happens at small ``t`` when the data block is almost a deterministic function of the auxiliary blocks:
    ALDA (noise on its last block only, ``beta`` from 0.1) has ``lambda_min / lambda_max = 1e-19`` at ``t = 1e-3``
    and ``2e-12`` at ``t = 0.018``; CLD and MALDA stay above ``1e-10`` from ``t = 1e-3``.
    """
    psi, cov = conditional_moments(sde, t, aux_init_cov)
    with torch.no_grad():
        eigenvalues = torch.linalg.eigvalsh(cov.detach())
        ratio = eigenvalues[..., 0] / eigenvalues[..., -1]
    if bool((ratio < CONDITION_FLOOR).any()):
        worst = int(ratio.reshape(-1).argmin())
        when = float(torch.as_tensor(t, dtype=torch.float64).expand(ratio.shape).reshape(-1)[worst])
        raise ValueError(
            f"the covariance of {type(sde).__name__}'s state given the data is singular to float64 precision at "
            f"t = {when:.3g} (eigenvalue ratio {float(ratio.reshape(-1)[worst]):.1e} < {CONDITION_FLOOR:g}): the data "
            f"block is almost a deterministic function of the auxiliary blocks there; raise t_min (ALDA with beta "
            f"from 0.1 needs t_min >= 0.03)")
    return psi, torch.linalg.cholesky(cov)


def hybrid_noise_to_score(sde: LinearSDE, eps_hat: Tensor, t: Tensor, aux_init_cov: Tensor | None = None) -> Tensor:
    """``s = -L_t^{-T} eps_hat`` for the hybrid ``L_t`` at noising times ``t`` (0-dim or (n,))."""
    _, chol = conditional_cholesky(sde, t, aux_init_cov)
    return -blockwise(torch.linalg.inv(chol).transpose(-1, -2), eps_hat)


def first_noised_block(sde: LinearSDE) -> int:
    """The first block on which ``G G^T`` acts (0 for VP and the learned MDM diffusion, 1 for CLD and MALDA, 2 for
    ALDA): with the lower-triangular ``L_t``, the score enters ``G G^T s`` only through ``eps`` on this block and
    the ones after it."""
    noise = sde.noise_matrix(torch.tensor(0.5 * sde.T, dtype=torch.float64)).detach().diagonal()
    return int(torch.nonzero(noise > 0)[0])


def hybrid_score_matching_loss(network: nn.Module, sde: LinearSDE, x0: Tensor, t_min: float,
                               aux_init_cov: Tensor | None = None, blocks: str = "all") -> Tensor:
    r"""Per-sample hybrid score matching loss ``|eps_hat(u_t, t) - eps|^2`` (n,), ``t ~ U(t_min, T)``.

    ``u_t = Psi_t [x; 0] + L_t eps`` samples ``q(u_t | x)`` (module docstring); ``network(u_t, t)`` predicts
    ``eps`` (shape (n, D)). ``blocks="all"`` regresses every block (the MDM reference code's ``noise_pred``; the
    full score is what gDDIM needs); ``blocks="noised"`` only the blocks from :func:`first_noised_block` on (CLD's
    HSM, which regresses the velocity only; the reference code's ``cld_noise_pred``), all that the reverse SDE and
    the probability-flow ODE use. The transitions are computed without gradient (the forward process is frozen
    while the score is fitted).
    """
    if blocks not in BLOCKS:
        raise ValueError(f"blocks must be one of {BLOCKS}, got {blocks!r}")
    if not 0 < t_min < sde.T:
        raise ValueError(f"t_min must lie in (0, T = {sde.T}), got {t_min}")
    t = sample_times(x0.shape[0], sde.T, t_min).to(x0.device)
    with torch.no_grad():
        psi, chol = conditional_cholesky(sde, t, aux_init_cov)
    u0 = embed(x0, sde)
    eps = torch.randn_like(u0)
    ut = blockwise(psi, u0) + blockwise(chol, eps)
    error = (network(ut, t.to(x0.dtype)) - eps).square()
    if blocks == "noised":
        first = first_noised_block(sde) * (u0.shape[1] // sde.K)
        error = error[:, first:]
    return error.sum(-1)


def augmented_gaussian(sde: LinearSDE, mean: Tensor, cov: Tensor, aux_init_cov: Tensor | None = None
                       ) -> tuple[Tensor, Tensor]:
    """The law ``N(m_0, C_0)`` of ``u_0 = [x; y_0]`` (float64, (D,) and (D, D)) for data ``N(mean, cov)``."""
    d = mean.shape[0]
    D = state_dim(sde, d)
    cov0 = initial_covariance(sde, aux_init_cov)
    C0 = torch.zeros(D, D, dtype=torch.float64)
    C0[:d, :d] = cov.double()
    if sde.aux:
        C0[d:, d:] = torch.kron(cov0[1:, 1:], torch.eye(d, dtype=torch.float64))
    return embed(mean.double()[None], sde)[0], C0


def gaussian_marginal_score(sde: LinearSDE, mean: Tensor, cov: Tensor, aux_init_cov: Tensor | None = None
                            ) -> Score:
    r"""The exact score ``-C_t^{-1} (u - m_t)`` of the full state's marginal for data ``N(mean, cov)``, with
    ``(m_t, C_t)`` the moments of ``u_0`` (:func:`augmented_gaussian`) pushed through the SDE; ``t`` 0-dim or (n,)."""
    m0, C0 = augmented_gaussian(sde, mean, cov, aux_init_cov)

    def score(u: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        m, C = gaussian_marginal(sde, t, m0, C0)
        return -torch.linalg.solve(C, (u.double() - m)[..., None])[..., 0].to(u.dtype)

    return score


def network_score(network: Callable[[Tensor, Tensor], Tensor], sde: LinearSDE,
                  aux_init_cov: Tensor | None = None) -> Score:
    """``s(u, t) = -L_t^{-T} network(u, t)``: the score of a noise-prediction network trained by
    :func:`hybrid_score_matching_loss` (``t`` 0-dim or (n,), float64)."""

    def score(u: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return hybrid_noise_to_score(sde, network(u, t.to(u.dtype).expand(u.shape[0])), t, aux_init_cov)

    return score
