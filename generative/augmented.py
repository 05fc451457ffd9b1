r"""The augmented state of a linear forward SDE with auxiliary variables: its layout and its law given the data.

Data ``x`` of dimension ``d`` plus ``aux = sde.aux`` auxiliary blocks (velocity for CLD, ``K - 1`` blocks for the
MDM diffusions): the state ``u`` has ``D = (1 + aux) d`` channels laid out as in
:func:`sde_control.sdes.blockwise`, ``K`` blocks of ``m = D / K`` channels, the data first. The auxiliary blocks
start from their own law ``y_0 ~ N(0, Sigma_aux0 kron I)`` independently of ``x``, so with
``Sigma_0 = diag(0, Sigma_aux0)`` (:meth:`~sde_control.sdes.LinearSDE.initial_covariance`) the state at time ``t``
*given the data only* is

.. math::  q(u_t | x) = N\big(\Psi_t [x; 0],\ S_t \otimes I_m\big), \qquad
           S_t = \Psi_t \Sigma_0 \Psi_t^T + \Sigma_t = L_t L_t^T ,

with ``(Psi_t, Sigma_t)`` the transition from 0 to ``t``. Score matching on this law (``y_0`` integrated out: the
*hybrid* score matching of CLD and MDM) is :func:`sde_control.generative.score_matching.dsm_loss`; the likelihood
bound (:mod:`.likelihood`) and gDDIM (:mod:`.gddim`) read the same moments. For processes without auxiliary
variables (``aux = 0``) the state is the data and ``S_t = Sigma_t``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sde_control.sdes import LinearSDE


def state_dim(sde: LinearSDE, dim: int) -> int:
    """``D = (1 + aux) d``, checked to be a multiple of ``K``."""
    D = (1 + sde.aux) * dim
    if sde.aux and sde.K != 1 + sde.aux:
        raise ValueError(f"{type(sde).__name__} declares {sde.aux} auxiliary blocks but has K = {sde.K}: an augmented "
                         f"state is the data block followed by the auxiliary ones (K = 1 + aux)")
    if D % sde.K:
        auxiliary = f" and {sde.aux} auxiliary blocks per data coordinate" if sde.aux else ""
        raise ValueError(f"{type(sde).__name__} has {sde.K} x {sde.K} blocks{auxiliary}, which cannot act on data of "
                         f"dimension {dim}")
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
    """``(Psi_t, L_t)`` with ``L_t L_t^T = S_t``; for augmented states a clear error where ``S_t`` is singular to
    float64 precision.

    That happens at small ``t`` when the data block is almost a deterministic function of the auxiliary blocks:
    ALDA (noise on its last block only, ``beta`` from 0.1) has ``lambda_min / lambda_max = 1e-19`` at ``t = 1e-3``
    and ``2e-12`` at ``t = 0.018``; CLD and MALDA stay above ``1e-10`` from ``t = 1e-3``.
    """
    psi, cov = conditional_moments(sde, t, aux_init_cov)
    if not sde.aux:  # S_t = Sigma_t: Cholesky refuses a singular one itself
        return psi, torch.linalg.cholesky(cov)
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


def first_noised_block(sde: LinearSDE) -> int:
    """The first block on which ``G G^T`` acts (0 for VP and the learned MDM diffusion, 1 for CLD and MALDA, 2 for
    ALDA): with the lower-triangular ``L_t``, the score enters ``G G^T s`` only through ``eps`` on this block and
    the ones after it."""
    noise = sde.noise_matrix(torch.tensor(0.5 * sde.T, dtype=torch.float64)).detach().diagonal()
    return int(torch.nonzero(noise > 0)[0])


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


