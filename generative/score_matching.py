r"""Denoising score matching on the exact transitions of a linear forward SDE (simulation-free).

For a linear SDE in noising time with transition ``X_t | X_0 ~ N(Psi_t X_0, Sigma_t)`` (blockwise,
:func:`sde_control.sdes.blockwise`) and ``Sigma_t = L_t L_t^T`` (Cholesky), draw ``t ~ U(t_min, T)``,
``eps ~ N(0, I)`` and ``X_t = Psi_t X_0 + L_t eps``. The network predicts the noise, and

.. math::  \mathcal L(\theta) = E_{t, X_0, \epsilon}\, |\hat\epsilon_\theta(X_t, t) - \epsilon|^2
           = E\, |L_t^T (s_\theta - \nabla \log p(X_t | X_0))|^2, \qquad
           s_\theta(x, t) = -L_t^{-T} \hat\epsilon_\theta(x, t),

the usual time weighting ``lambda(t) = Sigma_t`` (Song et al.'s ``sigma_t^2`` for scalar SDEs, its matrix form
for multivariate ones), which keeps every time's term of order one. Its minimum over all functions is reached at
the marginal score ``s = grad log p_t``, where (for any data law)

.. math::  \min \mathcal L = E_t\big[\, d - E|L_t^T \nabla \log p_t(X_t)|^2 \big] ,

and for Gaussian data ``N(mu, C)``, with ``C_t = Psi_t C Psi_t^T + Sigma_t``, this is
``E_t[d - tr(Sigma_t C_t^{-1})]`` (:func:`gaussian_dsm_minimum`; :func:`gaussian_score` is the exact score).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from sde_control.sdes import LinearSDE, blockwise

from .diagonal import DiagonalLinearSDE

Score = Callable[[Tensor, Tensor], Tensor]
"""``s(x, t)``: states (n, d) and noising times (0-dim, or (n,)) -> scores (n, d)."""


def sample_times(n: int, T: float, t_min: float, generator: torch.Generator | None = None) -> Tensor:
    """``n`` times uniform on ``[t_min, T]`` (float64)."""
    return t_min + (T - t_min) * torch.rand(n, dtype=torch.float64, generator=generator)


def dsm_loss(network: nn.Module, sde: LinearSDE, x0: Tensor, t_min: float, condition: Tensor | None = None, *,
             t: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
    r"""One Monte Carlo estimate of :math:`\mathcal L` (module docstring) on the batch ``x0`` (n, d).

    ``condition`` (one row per sample, e.g. the context window of a forecast) is passed to the network as its third
    argument, ``network(x_t, t, condition)``: the conditional score of ``x_0`` given it. The transitions are computed
    without gradient (the forward process is frozen while the score is fitted). ``t`` (n,) and ``eps`` (n, d) may be
    given instead of drawn (e.g. slices of one draw for a whole batch split across processes).
    """
    t = sample_times(x0.shape[0], sde.T, t_min).to(x0.device) if t is None else t
    eps = torch.randn_like(x0) if eps is None else eps
    with torch.no_grad(), torch.autocast(x0.device.type, enabled=False):  # x_t in x0's precision under autocast
        if isinstance(sde, DiagonalLinearSDE):  # the closed form of a process diagonal in a basis: O(d)
            xt = sde.perturb(x0, t, eps)
        else:
            psi, sigma = sde.transition_matrices(torch.zeros_like(t), t)
            xt = blockwise(psi, x0) + blockwise(torch.linalg.cholesky(sigma), eps)
    eps_hat = network(xt, t.to(x0.dtype)) if condition is None else network(xt, t.to(x0.dtype), condition)
    return (eps_hat - eps).square().sum(-1).mean()


def noise_to_score(sde: LinearSDE, eps_hat: Tensor, t: Tensor) -> Tensor:
    """``s = -L_t^{-T} eps_hat`` for noising times ``t`` (0-dim or (n,))."""
    if isinstance(sde, DiagonalLinearSDE):
        return sde.noise_to_score(eps_hat, t)
    t = torch.as_tensor(t, dtype=torch.float64)
    _, sigma = sde.transition_matrices(torch.zeros_like(t), t)
    inverse_transpose = torch.linalg.inv(torch.linalg.cholesky(sigma)).transpose(-1, -2)
    return -blockwise(inverse_transpose, eps_hat)


def _full(matrix: Tensor, d: int) -> Tensor:
    """``matrix kron I_m`` as ``d x d`` matrices (``matrix`` is ``(..., K, K)``, ``d = K m``)."""
    K = matrix.shape[-1]
    eye = torch.eye(d // K, dtype=matrix.dtype)
    return torch.einsum("...ij,ab->...iajb", matrix, eye).reshape(*matrix.shape[:-2], d, d)


def gaussian_marginal(sde: LinearSDE, t: Tensor, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``Psi_t mu`` and covariance ``C_t = Psi_t C Psi_t^T + Sigma_t`` of ``X_t`` for data ``N(mu, C)``
    (``t`` of any shape; float64; results of shape ``t.shape + (d,)`` and ``t.shape + (d, d)``)."""
    d = mean.shape[0]
    t = torch.as_tensor(t, dtype=torch.float64)
    psi, sigma = sde.transition_matrices(torch.zeros_like(t), t)
    psi, sigma = _full(psi, d), _full(sigma, d)
    return psi @ mean.double(), psi @ cov.double() @ psi.transpose(-1, -2) + sigma


def gaussian_score(sde: LinearSDE, mean: Tensor, cov: Tensor) -> Score:
    """The exact score ``-C_t^{-1} (x - Psi_t mu)`` of the marginals of data ``N(mu, C)`` (0-dim ``t``)."""

    def score(x: Tensor, t: Tensor) -> Tensor:
        m, C = gaussian_marginal(sde, torch.as_tensor(t, dtype=torch.float64).reshape(()), mean, cov)
        return torch.linalg.solve(C, (m - x.double()).T).T.to(x.dtype)

    return score


@torch.no_grad()
def gaussian_dsm_minimum(sde: LinearSDE, cov: Tensor, t_min: float, points: int = 2001) -> float:
    r"""``E_{t ~ U(t_min, T)}[d - tr(Sigma_t C_t^{-1})]`` for data with covariance ``cov``, by the trapezoid rule."""
    d = cov.shape[0]
    times = torch.linspace(t_min, sde.T, points, dtype=torch.float64)
    _, C = gaussian_marginal(sde, times, torch.zeros(d, dtype=torch.float64), cov)
    sigma = _full(sde.transition_matrices(torch.zeros_like(times), times)[1], d)
    values = d - torch.linalg.solve(C, sigma).diagonal(dim1=-2, dim2=-1).sum(-1)
    return float(torch.trapezoid(values, times) / (sde.T - t_min))
