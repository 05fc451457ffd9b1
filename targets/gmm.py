"""Gaussian mixture target (default: the 9-mode grid GMM of the PIS/DIS benchmarks)."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from sde_control.target import Target
from targets.gaussian import as_float, covariance_matrix


def grid_means(values: tuple[float, ...] = (-5.0, 0.0, 5.0), dim: int = 2) -> Tensor:
    """The ``len(values)^dim`` points of the grid ``values^dim``, shape (K, dim)."""
    return torch.tensor(list(itertools.product(values, repeat=dim)), dtype=torch.get_default_dtype())


class GaussianMixture(Target):
    r"""Normalised mixture ``rho(x) = sum_k w_k N(x; mu_k, Sigma)`` with one shared covariance (``log_Z = 0``).

    ``log rho(x) = logsumexp_k [log w_k + log N(x; mu_k, Sigma)]``, stable far from every mode (at |x| ~ 1e3 it is
    a large negative number, not ``-inf``). ``sample`` draws a component ``k ~ w``, then ``x ~ N(mu_k, Sigma)``.

    Args:
        means: ``mu``, shape (K, d); default the 9 points of {-5, 0, 5}^2.
        covariance: the shared ``Sigma``: a scalar (``c I``), a (d,) vector (``diag(c)``) or a (d, d) matrix;
            default 0.3 I.
        weights: non-negative, shape (K,), normalised to sum to one; default equal weights.
    """

    def __init__(
        self,
        means: Tensor | None = None,
        covariance: float | Tensor = 0.3,
        weights: Tensor | None = None,
    ) -> None:
        super().__init__()
        means = grid_means() if means is None else as_float(means)
        if means.ndim != 2 or 0 in means.shape:
            raise ValueError(f"means must have shape (K, d) with K, d >= 1, got {tuple(means.shape)}")
        if not torch.isfinite(means).all():
            raise ValueError("means has non-finite entries")
        num_modes, self.dim = means.shape
        weights = torch.ones(num_modes, dtype=means.dtype) if weights is None else as_float(weights, means.dtype)
        if weights.shape != (num_modes,):
            raise ValueError(f"weights must have shape ({num_modes},), got {tuple(weights.shape)}")
        if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and sum to a positive number")
        self.log_Z = 0.0
        self.register_buffer("means", means)
        self.register_buffer("weights", weights / weights.sum())
        scale_tril = torch.linalg.cholesky(covariance_matrix(covariance, self.dim, means.dtype))
        self.register_buffer("scale_tril", scale_tril)
        whitened = torch.linalg.solve_triangular(scale_tril, means.T, upper=False).T
        log_det = 2 * scale_tril.diagonal().log().sum()
        self.register_buffer("whitened_means", whitened)
        self.register_buffer(
            "log_norms",
            self.weights.log() - 0.5 * (whitened.square().sum(-1) + log_det + self.dim * math.log(2 * math.pi)),
        )

    @property
    def distribution(self) -> MixtureSameFamily:
        """The mixture as a :class:`torch.distributions.MixtureSameFamily`."""
        components = MultivariateNormal(self.means, scale_tril=self.scale_tril, validate_args=False)
        return MixtureSameFamily(Categorical(probs=self.weights, validate_args=False), components, validate_args=False)

    def _joint_log_prob(self, x: Tensor) -> Tensor:
        r"""``log w_k + log N(x; mu_k, Sigma)``, shape (batch, K), with the quadratic form expanded as
        ``|L^{-1} x|^2 - 2 (L^{-1} x) . (L^{-1} mu_k) + |L^{-1} mu_k|^2`` (``Sigma = L L^T``): two small
        matrix products instead of a triangular solve per component."""
        z = torch.linalg.solve_triangular(self.scale_tril, x.T, upper=False).T
        return self.log_norms - 0.5 * (z.square().sum(-1, keepdim=True) - 2 * z @ self.whitened_means.T)

    def log_prob(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self._joint_log_prob(x), dim=-1)

    def score(self, x: Tensor) -> Tensor:
        r"""``grad log rho(x) = Sigma^{-1} (sum_k r_k(x) mu_k - x)`` with responsibilities ``r = softmax_k``
        of :meth:`_joint_log_prob` (no autograd; differentiable when ``x`` requires grad)."""
        mean = torch.softmax(self._joint_log_prob(x), dim=-1) @ self.means
        return torch.cholesky_solve((mean - x).T, self.scale_tril).T

    def sample(self, n: int) -> Tensor:
        return self.distribution.sample((n,))
