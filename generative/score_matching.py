r"""Denoising score matching on the exact transitions of a linear forward SDE (simulation-free), also on an
augmented state (hybrid score matching).

For a linear SDE in noising time, the state given the data is ``u_t | x ~ N(Psi_t [x; 0], S_t)`` (blockwise,
:func:`sde_control.sdes.blockwise`; ``[x; 0]`` is the data followed by zero auxiliary blocks and
``S_t = Psi_t Sigma_0 Psi_t^T + Sigma_t`` integrates the auxiliary variables' initial law out,
:mod:`.augmented`; without auxiliary variables ``u = x`` and ``S_t = Sigma_t``). With ``S_t = L_t L_t^T``
(Cholesky), draw ``t ~ U(t_min, T)``, ``eps ~ N(0, I)`` and ``u_t = Psi_t [x; 0] + L_t eps``. The network predicts
the noise, and

.. math::  \mathcal L(\theta) = E_{t, x, \epsilon}\, |\hat\epsilon_\theta(u_t, t) - \epsilon|^2
           = E\, |L_t^T (s_\theta - \nabla \log q(u_t | x))|^2, \qquad
           s_\theta(u, t) = -L_t^{-T} \hat\epsilon_\theta(u, t),

the usual time weighting ``lambda(t) = S_t`` (Song et al.'s ``sigma_t^2`` for scalar SDEs, its matrix form for
multivariate ones), which keeps every time's term of order one. Regressing on the score of ``q(u_t | x)`` rather
than of ``q(u_t | x, y_0)`` is *hybrid score matching* (Dockhorn, Vahdat, Kreis 2022, section 3.2; the MDM paper's
``hybrid_transition_kernel``): ``y_0`` is integrated out analytically, so the target has lower variance, and the
minimiser is the same marginal score ``grad log p_t`` (the conditional expectation of the target given ``u_t``).

Its minimum over all functions is reached at the marginal score, where (for any data law)

.. math::  \min \mathcal L = E_t\big[\, D - E|L_t^T \nabla \log p_t(u_t)|^2 \big] ,

and for Gaussian data ``N(mu, C)`` without auxiliary variables, with ``C_t = Psi_t C Psi_t^T + Sigma_t``, this is
``E_t[d - tr(Sigma_t C_t^{-1})]`` (:func:`gaussian_dsm_minimum`; :func:`gaussian_score` is the exact score, of the
augmented state too).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from sde_control.sdes import LinearSDE, blockwise

from .augmented import augmented_gaussian, conditional_cholesky, embed, first_noised_block
from .diagonal import DiagonalLinearSDE

Score = Callable[[Tensor, Tensor], Tensor]
"""``s(u, t)``: states (n, D) and noising times (0-dim, or (n,)) -> scores (n, D)."""

BLOCKS = ("all", "noised")


def sample_times(n: int, T: float, t_min: float, generator: torch.Generator | None = None) -> Tensor:
    """``n`` times uniform on ``[t_min, T]`` (float64)."""
    return t_min + (T - t_min) * torch.rand(n, dtype=torch.float64, generator=generator)


def _call(network: Callable[..., Tensor], u: Tensor, t: Tensor, condition: Tensor | None) -> Tensor:
    """``network(u, t)``, or ``network(u, t, condition)`` for a conditional model."""
    return network(u, t) if condition is None else network(u, t, condition)


def dsm_loss(network: nn.Module, sde: LinearSDE, x0: Tensor, t_min: float, condition: Tensor | None = None, *,
             t: Tensor | None = None, eps: Tensor | None = None, aux_init_cov: Tensor | None = None,
             blocks: str = "all") -> Tensor:
    r"""Per-sample values (n,) of :math:`|\hat\epsilon_\theta(u_t, t) - \epsilon|^2` on the batch ``x0`` (n, d):
    one Monte Carlo estimate each of :math:`\mathcal L` (module docstring).

    ``network(u_t, t)`` predicts ``eps`` on the whole state (n, D). ``condition`` (one row per sample, e.g. the
    context window of a forecast) is passed to it as a third argument, ``network(u_t, t, condition)``: the
    conditional score given it. ``t`` (n,) and ``eps`` (n, D) may be given instead of drawn (e.g. slices of one draw
    for a whole batch split across processes). ``blocks="all"`` regresses every block (the MDM reference code's
    ``noise_pred``; the full score is what gDDIM needs); ``blocks="noised"`` only the blocks from
    :func:`~.augmented.first_noised_block` on (CLD's HSM, the reference code's ``cld_noise_pred``), all that the
    reverse SDE and the probability-flow ODE use. The transitions are computed without gradient (the forward process
    is frozen while the score is fitted), and ``u_t`` in ``x0``'s precision under autocast. A process diagonal in a
    basis (:class:`~.diagonal.DiagonalLinearSDE`) draws ``u_t`` by its closed form, ``O(d)``.
    """
    if blocks not in BLOCKS:
        raise ValueError(f"blocks must be one of {BLOCKS}, got {blocks!r}")
    if not 0 < t_min < sde.T:
        raise ValueError(f"t_min must lie in (0, T = {sde.T}), got {t_min}")
    t = sample_times(x0.shape[0], sde.T, t_min).to(x0.device) if t is None else t
    u0 = x0 if isinstance(sde, DiagonalLinearSDE) else embed(x0, sde)
    eps = torch.randn_like(u0) if eps is None else eps
    with torch.no_grad(), torch.autocast(x0.device.type, enabled=False):
        if isinstance(sde, DiagonalLinearSDE):
            ut = sde.perturb(u0, t, eps)
        else:
            psi, chol = conditional_cholesky(sde, t, aux_init_cov)
            ut = blockwise(psi, u0) + blockwise(chol, eps)
    error = (_call(network, ut, t.to(x0.dtype), condition) - eps).square()
    if blocks == "noised":
        error = error[:, first_noised_block(sde) * (u0.shape[1] // sde.K):]
    return error.sum(-1)


def noise_to_score(sde: LinearSDE, eps_hat: Tensor, t: Tensor, aux_init_cov: Tensor | None = None) -> Tensor:
    """``s = -L_t^{-T} eps_hat`` for noising times ``t`` (0-dim or (n,)); differentiable in the SDE."""
    if isinstance(sde, DiagonalLinearSDE):
        return sde.noise_to_score(eps_hat, t)
    _, chol = conditional_cholesky(sde, torch.as_tensor(t, dtype=torch.float64), aux_init_cov)
    return -blockwise(torch.linalg.inv(chol).transpose(-1, -2), eps_hat)


def network_score(network: Callable[..., Tensor], sde: LinearSDE, condition: Tensor | None = None,
                  aux_init_cov: Tensor | None = None) -> Score:
    """``s(u, t) = -L_t^{-T} network(u, t)`` (given ``condition``): the score of a noise-prediction network trained
    by :func:`dsm_loss` (``t`` 0-dim or (n,), float64)."""

    def score(u: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        eps_hat = _call(network, u, t.to(u.dtype), condition)
        return noise_to_score(sde, eps_hat, t, aux_init_cov)

    return score


def _full(matrix: Tensor, d: int) -> Tensor:
    """``matrix kron I_m`` as ``d x d`` matrices (``matrix`` is ``(..., K, K)``, ``d = K m``)."""
    K = matrix.shape[-1]
    eye = torch.eye(d // K, dtype=matrix.dtype, device=matrix.device)
    return torch.einsum("...ij,ab->...iajb", matrix, eye).reshape(*matrix.shape[:-2], d, d)


def gaussian_marginal(sde: LinearSDE, t: Tensor, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``Psi_t mu`` and covariance ``C_t = Psi_t C Psi_t^T + Sigma_t`` of ``X_t`` for a start ``N(mu, C)``
    (``t`` of any shape; float64; results of shape ``t.shape + (D,)`` and ``t.shape + (D, D)``)."""
    d = mean.shape[0]
    t = torch.as_tensor(t, dtype=torch.float64)
    psi, sigma = sde.transition_matrices(torch.zeros_like(t), t)
    psi, sigma = _full(psi.double(), d), _full(sigma.double(), d)
    return psi @ mean.double(), psi @ cov.double() @ psi.transpose(-1, -2) + sigma


def gaussian_score(sde: LinearSDE, mean: Tensor, cov: Tensor, aux_init_cov: Tensor | None = None) -> Score:
    r"""The exact score ``-C_t^{-1} (u - m_t)`` of the (augmented) state's marginals for data ``N(mean, cov)``, with
    ``(m_t, C_t)`` the law of ``u_0 = [x; y_0]`` (:func:`~.augmented.augmented_gaussian`) pushed through the SDE;
    ``t`` 0-dim or (n,)."""
    m0, C0 = augmented_gaussian(sde, mean, cov, aux_init_cov)

    def score(u: Tensor, t: Tensor) -> Tensor:
        m, C = gaussian_marginal(sde, torch.as_tensor(t, dtype=torch.float64), m0, C0)
        return -torch.linalg.solve(C, (u.double() - m)[..., None])[..., 0].to(u.dtype)

    return score


@torch.no_grad()
def gaussian_dsm_minimum(sde: LinearSDE, cov: Tensor, t_min: float, points: int = 2001) -> float:
    r"""``E_{t ~ U(t_min, T)}[d - tr(Sigma_t C_t^{-1})]`` for data with covariance ``cov`` and a process without
    auxiliary variables, by the trapezoid rule."""
    d = cov.shape[0]
    times = torch.linspace(t_min, sde.T, points, dtype=torch.float64)
    _, C = gaussian_marginal(sde, times, torch.zeros(d, dtype=torch.float64), cov)
    sigma = _full(sde.transition_matrices(torch.zeros_like(times), times)[1].double(), d)
    values = d - torch.linalg.solve(C, sigma).diagonal(dim1=-2, dim2=-1).sum(-1)
    return float(torch.trapezoid(values, times) / (sde.T - t_min))
