r"""The continuous-time ELBO of a score model on a linear forward SDE, with auxiliary variables, in nats and bits/dim.

**Setting.** Data ``x`` (``d`` channels), the augmented state ``u = [x; y]`` of :mod:`.augmented` (``D = K m``
channels, ``K x K`` blocks), the forward SDE ``du = F u dt + G dW`` in noising time, and the model: the reverse SDE
``du = (F u - G G^T s_theta(u, t)) dt + G dW_bar`` run from the prior ``pi = N(0, P kron I)``
(:meth:`~sde_control.sdes.LinearSDE.prior_covariance`) at ``t = T`` down to ``t = eps`` (``eps = t_min``), then a
Gaussian decoder ``p(x | u_eps)``.

**Derivation.** (1) Variational step over ``u_eps`` with the encoder ``q(u_eps | x)`` (the auxiliary start
``y_0`` integrated out, :mod:`.augmented`):

.. math::  \log p_\theta(x) \ge E_{q(u_\epsilon|x)}\big[\log p(x | u_\epsilon) + \log p_\theta(u_\epsilon)
           - \log q(u_\epsilon | x)\big].

(2) The continuous-time bound on the model's density at ``eps`` (Song, Durkan, Murray, Ermon 2021, "Maximum
likelihood training of score-based diffusion models", Theorem 1 and its proof; Huang, Lim, Courville 2021,
Theorem 3), in its implicit-score-matching form, for any start ``u_eps``:

.. math::  \log p_\theta(u_\epsilon) \ge E\big[\log \pi(u_T)\big] - \int_\epsilon^T E\big[\tfrac12 |s_\theta|^2_{GG^T}
           + \nabla\cdot(G G^T s_\theta - F u)\big]\, dt .

Averaged over ``q(u_eps | x)`` the paths are those of ``q(u_t | x) = N(m_t, S_t kron I)``, and integration by parts
against that Gaussian, ``E[div(G G^T s)] = -E[s^T G G^T grad log q(u_t|x)]``, gives the denoising form of the
MDM paper (Singhal, Goldstein, Ranganath 2023, its ELBO for multivariate diffusions, DSM version with the hybrid
transition kernel; the reference code's ``dsm_elbo``, ``mdm/bin/evaluate.py``):

.. math::  E[\log \pi(u_T)] + \int_\epsilon^T E\Big[-\tfrac12 |s_\theta - \nabla \log q(u_t|x)|^2_{GG^T}
           + \tfrac12 |\nabla \log q(u_t|x)|^2_{GG^T} + \nabla \cdot (F u)\Big] dt .

(3) The deterministic part is an entropy difference: ``E|grad log q|^2_{GG^T} = m tr(G G^T S_t^{-1})`` and
``div(F u) = m tr F``, and ``d/dt log det S_t = tr(S_t^{-1} (F S_t + S_t F^T + G G^T)) = 2 tr F +
tr(G G^T S_t^{-1})``, so the integral of ``m (tr(G G^T S^{-1}) / 2 + tr F)`` is ``H(q(u_T|x)) - H(q(u_eps|x))``.
With ``E log pi(u_T) = -KL(q(u_T|x) || pi) - H(q(u_T|x))`` the entropies of (1) and (2) cancel and

.. math::  -\log p_\theta(x) \le \underbrace{E_{q(u_\epsilon|x)}[-\log p(x|u_\epsilon)]}_{\text{reconstruction}}
           + \underbrace{\mathrm{KL}(q(u_T|x)\,\|\,\pi)}_{\text{prior}}
           + \underbrace{\int_\epsilon^T \tfrac12 E_{q(u_t|x)}|s_\theta - \nabla\log q(u_t|x)|^2_{GG^T} dt}_
           {\text{diffusion}} ,

the form implemented here (for VP it is the continuous-time bound of variational diffusion models, Kingma et al.
2021, eq. 17 with ``-SNR'(t) = g^2 / sigma^4 alpha^2``). **Relation to the MDM paper's bound.** The MDM paper (and its
code) bounds ``log p(x, y_0)`` and pays the auxiliary-variable correction ``-E log q(y_0 | x)``, decoding the whole
state ``u_0`` from ``u_eps``; here the decoder reconstructs ``x`` alone from ``u_eps ~ q(. | x)``, and that
correction is the entropy ``H(q(u_eps | x))`` of step (1), which cancels exactly against the diffusion's
deterministic part (3). Both are lower bounds on ``log p(x)`` and both are tight as ``eps -> 0`` with the exact
score and no prior mismatch; this one never needs the covariance of ``u_eps`` given ``(x, y_0)``, whose smallest
eigenvalue is of order ``(int_0^eps beta)^5`` for ALDA (the reference code adds ``1e-4 I`` when its Cholesky factor
fails). ALDA's covariance given ``x`` alone is singular to float64 too below ``t ~ 0.03`` and is refused there
(:func:`.augmented.conditional_cholesky`): ALDA needs ``t_min >= 0.03``.

**Decoder.** ``u_eps = c x + L xi`` with ``c = Psi_eps[:, 0]`` (the data column; every column when all blocks are
data, as for VSDM's ``K = d``, where ``v`` becomes a ``K x K`` matrix) and ``S = L L^T``; Tweedie's formula
gives ``E[c x | u] = u + S grad log p_eps(u)``, and its generalised-least-squares left inverse
``x_hat = v c^T (S^{-1} u + s_theta(u, eps))``, ``v = (c^T S^{-1} c)^{-1}``, is ``E[x | u_eps]`` for the exact score.
``p(x | u_eps) = N(x_hat, v I)`` (``v`` is the variance of ``x`` given ``u_eps`` under a flat prior on ``x``; for VP
``x_hat = (u + sigma^2 s) / alpha`` and ``v = sigma^2 / alpha^2``). Then ``x - x_hat = -v c^T (s_theta + L^{-T} xi)``.

**Estimator.** The prior term is computed in closed form (no sampling). The reconstruction is one draw of ``xi``.
The diffusion integral is one draw of ``t`` per sample from the importance density ``p(t) ∝ tr(G G^T S_t^{-1})``
(:class:`TimeProposal`), the size of the integrand's ``|grad log q|^2`` part; for VP it is Song et al. (2021)'s
variance-reduction density ``g(t)^2 / sigma_t^2`` (the MDM reference code uses VP's for every process,
``mdm/utils/importance_sampling.py``). Each per-sample value is an unbiased estimate of that sample's bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sde_control.sdes import LinearSDE, blockwise

from .augmented import conditional_cholesky, conditional_moments, embed, state_dim
from .score_matching import Score


class TimeProposal:
    r"""Importance density of ``t`` on ``[t_min, T]``, ``p(t) ∝ w(t) = tr(G G^T S_t^{-1})``, piecewise constant.

    ``w`` is evaluated at the geometric midpoints of ``cells`` cells equally spaced in ``log t`` (``w ~ 1/t`` near 0
    for VP); ``p`` is exactly the density of :meth:`sample` (a cell with probability ``w_i |cell_i| / Z``, then
    uniform in it), so ``f(t) / p(t)`` is unbiased for ``int f``. Computed once, without gradient: rebuild it after
    the forward process changes much (an outdated proposal stays unbiased, only less efficient).
    """

    def __init__(self, sde: LinearSDE, t_min: float, aux_init_cov: Tensor | None = None, cells: int = 512):
        if not 0 < t_min < sde.T:
            raise ValueError(f"t_min must lie in (0, T = {sde.T}), got {t_min}")
        self.edges = torch.logspace(math.log10(t_min), math.log10(sde.T), cells + 1, dtype=torch.float64)
        with torch.no_grad():
            mid = (self.edges[:-1] * self.edges[1:]).sqrt()
            _, chol = conditional_cholesky(sde, mid, aux_init_cov)
            GG_S_inv = torch.cholesky_solve(sde.noise_matrix(mid).double(), chol.double())
            weight = GG_S_inv.diagonal(dim1=-2, dim2=-1).sum(-1)
        if not bool(torch.isfinite(weight).all() and (weight > 0).all()):
            raise ValueError("tr(G G^T S_t^{-1}) must be positive and finite on [t_min, T] for the importance density")
        mass = weight * self.edges.diff()
        self.probabilities = mass / mass.sum()
        self.heights = weight / mass.sum()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` times (float64) from ``p``."""
        cell = torch.multinomial(self.probabilities, n, replacement=True, generator=generator)
        u = torch.rand(n, dtype=torch.float64, generator=generator)
        return self.edges[cell] + u * (self.edges[cell + 1] - self.edges[cell])

    def density(self, t: Tensor) -> Tensor:
        """``p(t)``."""
        cell = (torch.searchsorted(self.edges, t.double(), right=True) - 1).clamp(0, self.heights.numel() - 1)
        return self.heights[cell]


def _states(sde: LinearSDE, x: Tensor, t: Tensor, eps: Tensor | None, aux_init_cov: Tensor | None
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(u_t, eps, Psi_t, L_t)`` with ``u_t = Psi_t [x; 0] + L_t eps`` (``eps`` drawn if not given)."""
    psi, chol = conditional_cholesky(sde, t, aux_init_cov)
    u0 = embed(x, sde)
    eps = torch.randn_like(u0) if eps is None else eps
    return blockwise(psi, u0) + blockwise(chol, eps), eps, psi, chol


def _score_residual(score: Score, u: Tensor, t: Tensor, eps: Tensor, chol: Tensor) -> Tensor:
    """``s_theta(u_t, t) - grad log q(u_t | x) = s_theta + L_t^{-T} eps``."""
    return score(u, t) + blockwise(torch.linalg.inv(chol).transpose(-1, -2), eps)


def diffusion_integrand(score: Score, sde: LinearSDE, x: Tensor, t: Tensor, eps: Tensor | None = None,
                        aux_init_cov: Tensor | None = None) -> Tensor:
    r"""``1/2 |s_theta(u_t, t) - grad log q(u_t|x)|^2_{G G^T}`` (n,) at ``u_t = Psi_t [x; 0] + L_t eps``, times
    ``t`` (n,): the integrand of the diffusion term (module docstring)."""
    t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
    u, eps, _, chol = _states(sde, x, t, eps, aux_init_cov)
    residual = _score_residual(score, u, t, eps, chol)
    return 0.5 * (blockwise(sde.noise_matrix(t), residual) * residual).sum(-1)


def decoder_variance(sde: LinearSDE, t_min: float, aux_init_cov: Tensor | None = None) -> Tensor:
    r"""``V = (C^T S^{-1} C)^{-1}`` (float64, one row and column per data block; ``C`` the data columns of
    ``Psi_{t_min}``, ``S`` the covariance of ``q(u_{t_min} | x)``): the decoder's variance, i.e. the data's noise
    floor at ``t_min`` (``sigma^2 / alpha^2`` for VP). The bound is tight for any ``t_min``, but the score is
    learned down to this noise level: processes compared at one floor need their own ``t_min``."""
    t = torch.tensor(float(t_min), dtype=torch.float64)
    psi, chol = conditional_cholesky(sde, t, aux_init_cov)
    C = psi[:, : sde.K - sde.aux]
    return torch.linalg.inv(C.T @ torch.cholesky_solve(C, chol))


def reconstruction_log_likelihood(score: Score, sde: LinearSDE, x: Tensor, t_min: float, eps: Tensor | None = None,
                                  aux_init_cov: Tensor | None = None) -> Tensor:
    r"""``log p(x | u_eps)`` (n,) at ``u_eps = Psi [x; 0] + L eps`` (one draw): the Gaussian decoder of the module
    docstring, ``N(x_hat, V kron I)`` with ``C`` the data columns of ``Psi`` (the first for an augmented state, all
    ``K`` when every block is data), ``V = (C^T S^{-1} C)^{-1}`` and ``x - x_hat = -V C^T (s_theta + L^{-T} eps)``."""
    t = torch.tensor(float(t_min), dtype=torch.float64)
    u, eps, psi, chol = _states(sde, x, t, eps, aux_init_cov)
    residual = _score_residual(score, u, t, eps, chol)
    C = psi[:, : sde.K - sde.aux]
    V = decoder_variance(sde, t_min, aux_init_cov)
    m = u.shape[1] // sde.K
    projected = torch.einsum("kj,nkm->njm", C.to(u.dtype), residual.reshape(x.shape[0], sde.K, m))
    quadratic = torch.einsum("njm,jl,nlm->n", projected, V.to(u.dtype), projected)
    return -0.5 * m * torch.logdet(2 * math.pi * V).to(u.dtype) - 0.5 * quadratic


def prior_kl(sde: LinearSDE, x: Tensor, aux_init_cov: Tensor | None = None) -> Tensor:
    r"""``KL(q(u_T | x) || pi)`` (n,) in closed form, ``q(u_T|x) = N(m_T, S_T kron I)``, ``pi = N(0, P kron I)``:
    ``(m tr(P^{-1} S_T) + m_T^T (P^{-1} kron I) m_T - D + m log(det P / det S_T)) / 2``."""
    T = torch.tensor(sde.T, dtype=torch.float64)
    psi, cov = conditional_moments(sde, T, aux_init_cov)
    prior = sde.prior_covariance().to(cov)
    mean = blockwise(psi, embed(x, sde).double())
    D = mean.shape[1]
    m = D // sde.K
    precision = torch.linalg.inv(prior)
    quadratic = (blockwise(precision, mean) * mean).sum(-1)
    constant = m * (torch.trace(precision @ cov) + torch.logdet(prior) - torch.logdet(cov)) - D
    return 0.5 * (quadratic + constant)


def negative_elbo(score: Score, sde: LinearSDE, x: Tensor, t_min: float, proposal: TimeProposal | None = None,
                  aux_init_cov: Tensor | None = None) -> Tensor:
    r"""One unbiased estimate per sample (n,) of the bound on ``-log p(x)`` in nats (module docstring):
    ``-log p(x | u_eps) + KL(q(u_T|x) || pi) + diffusion_integrand(t) / p(t)``, ``t ~ p``. Differentiable in the
    score network and in the SDE's parameters (the MDM objective for a learned diffusion)."""
    state_dim(sde, x.shape[1])
    proposal = TimeProposal(sde, t_min, aux_init_cov) if proposal is None else proposal
    t = proposal.sample(x.shape[0]).to(x.device)
    diffusion = diffusion_integrand(score, sde, x, t, aux_init_cov=aux_init_cov) / proposal.density(t).to(x.device)
    reconstruction = reconstruction_log_likelihood(score, sde, x, t_min, aux_init_cov=aux_init_cov)
    return -reconstruction + prior_kl(sde, x, aux_init_cov).to(reconstruction) + diffusion.to(reconstruction)


@dataclass
class BoundEstimate:
    """``per_sample`` (n,) estimates of a bound on ``-log p(x_i)`` (in nats, or in bits per dimension); their
    ``mean`` and its ``standard_error`` (sample standard deviation over ``sqrt(n)``)."""

    per_sample: Tensor
    mean: float
    standard_error: float

    @classmethod
    def of(cls, values: Tensor) -> BoundEstimate:
        """The summary of per-sample values (n,); refuses non-finite ones."""
        values = values.double()
        if not bool(torch.isfinite(values).all()):
            raise ValueError("the bound is not finite for some rows (a NaN score, or t_min too small for the decoder)")
        n = values.numel()
        se = float(values.std() / math.sqrt(n)) if n > 1 else float("nan")
        return cls(values, float(values.mean()), se)


@torch.no_grad()
def estimate_negative_elbo(score: Score, sde: LinearSDE, x: Tensor, t_min: float, *, repeats: int = 1,
                           batch_size: int = 1024, aux_init_cov: Tensor | None = None) -> BoundEstimate:
    """The bound on ``-log p(x)`` in nats for every row of ``x``, averaging ``repeats`` draws of ``(t, noise)`` per
    row, in chunks of ``batch_size`` rows; with its standard error over the rows."""
    if repeats < 1 or batch_size < 1:
        raise ValueError(f"repeats and batch_size must be positive, got {repeats}, {batch_size}")
    proposal = TimeProposal(sde, t_min, aux_init_cov)
    return BoundEstimate.of(torch.cat([
        torch.stack([negative_elbo(score, sde, chunk, t_min, proposal, aux_init_cov) for _ in range(repeats)]).mean(0)
        for chunk in x.split(batch_size)
    ]))


def bits_per_dim(nll_nats: Tensor | float, dim: int, log_det: Tensor | float = 0.0) -> Tensor | float:
    r"""``(nll - log_det) / (dim ln 2)``: bits per dimension of the data, for a bound ``nll`` on ``-log p(z)`` in the
    model's space ``z = f(x)`` and ``log_det = log |det df/dx|`` of the data transform, so that
    ``-log p(x) = -log p(z) - log_det`` (change of variables; CONVENTIONS section 10). For 8-bit images dequantised
    to ``x in [0, 256)^D`` and rescaled to ``z = x / 256 in [0, 1)``, ``log_det = -D ln 256`` adds 8 bits/dim; a
    logit or ``[-1, 1]`` rescaling adds its own log-determinant. For continuous data given as is, ``log_det = 0``.
    """
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    return (nll_nats - log_det) / (dim * math.log(2))


def bound_in_bits(per_sample_nats: Tensor, dim: int, log_det: float = 0.0) -> BoundEstimate:
    """Per-sample bounds in nats (n,) as a :class:`BoundEstimate` in bits per dimension (:func:`bits_per_dim`); the
    standard error scales alike, ``SE / (dim ln 2)``."""
    return BoundEstimate.of(bits_per_dim(per_sample_nats.double(), dim, log_det))
