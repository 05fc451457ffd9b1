"""Gaussian mixture target (default: the 9-mode grid GMM of the PIS/DIS benchmarks; FAB's GMM40 by
:meth:`GaussianMixture.gmm40`)."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from sde_control.specs import alternative_constructor
from sde_control.target import Target
from sde_control.targets.gaussian import as_float, covariance_matrix


GMM40_MODES = 40
GMM40_LOC_SCALE = 40.0
GMM40_SCALE = math.log1p(math.e)  # softplus(1) = 1.3133, the per-coordinate standard deviation


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
        # The expanded quadratic form of _joint_log_prob cancels terms of size |mu|^2: its constants
        # are kept in float64 (covariance_matrix(...) is recomputed in float64 for them).
        scale_tril64 = torch.linalg.cholesky(covariance_matrix(covariance, self.dim, torch.float64))
        whitened = torch.linalg.solve_triangular(scale_tril64, means.double().T, upper=False).T
        log_det = 2 * scale_tril64.diagonal().log().sum()
        self.register_buffer("whitened_means", whitened)
        self.register_buffer(
            "log_norms",
            self.weights.double().log() - 0.5 * (whitened.square().sum(-1) + log_det + self.dim * math.log(2 * math.pi)),
        )

    @alternative_constructor
    def gmm40(cls, dim: int = 2) -> GaussianMixture:
        r"""FAB's 40-mode mixture on R^dim: equal weights, means ``(U - 0.5) * 2 * 40`` (so in ``[-40, 40]^dim``)
        with ``U = torch.rand(40, dim, generator=torch.Generator().manual_seed(0))`` drawn in float32 (the same
        numbers as FAB's ``torch.manual_seed(0); torch.rand(40, dim)``, whatever the default dtype), and covariance
        ``diag(softplus(1)^2) = 1.3133^2 I``. Normalised (``log_Z = 0``). The benchmarks use ``dim`` 2 and 50.
        """
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        u = torch.rand(GMM40_MODES, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
        means = ((u - 0.5) * 2 * GMM40_LOC_SCALE).to(torch.get_default_dtype())
        return cls(means, covariance=GMM40_SCALE**2)

    @property
    def distribution(self) -> MixtureSameFamily:
        """The mixture as a :class:`torch.distributions.MixtureSameFamily`."""
        components = MultivariateNormal(self.means, scale_tril=self.scale_tril, validate_args=False)
        return MixtureSameFamily(Categorical(probs=self.weights, validate_args=False), components, validate_args=False)

    def _joint_log_prob(self, x: Tensor) -> Tensor:
        r"""``log w_k + log N(x; mu_k, Sigma)``, shape (batch, K), with the quadratic form expanded as
        ``|L^{-1} x|^2 - 2 (L^{-1} x) . (L^{-1} mu_k) + |L^{-1} mu_k|^2`` (``Sigma = L L^T``): two small
        matrix products instead of a triangular solve per component. The expansion cancels terms of
        size ``|mu|^2`` (about 1e4 in GMM40), so it runs in float64 whatever the input's dtype."""
        z = torch.linalg.solve_triangular(self.scale_tril.double(), x.double().T, upper=False).T
        quadratic = z.square().sum(-1, keepdim=True) - 2 * z @ self.whitened_means.T
        return (self.log_norms - 0.5 * quadratic).to(x.dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self._joint_log_prob(x), dim=-1)

    def score(self, x: Tensor) -> Tensor:
        r"""``grad log rho(x) = Sigma^{-1} (sum_k r_k(x) mu_k - x)`` with responsibilities ``r = softmax_k``
        of :meth:`_joint_log_prob` (no autograd; differentiable when ``x`` requires grad)."""
        mean = torch.softmax(self._joint_log_prob(x), dim=-1) @ self.means
        return torch.cholesky_solve((mean - x).T, self.scale_tril).T

    def sample(self, n: int) -> Tensor:
        """``k ~ Categorical(w)``, then ``x = mu_k + L z`` with ``z ~ N(0, I)`` (``Sigma = L L^T``): one Gaussian
        draw per sample, where ``MixtureSameFamily.sample`` draws from all K components (17 s instead of 0.07 s
        for 20,000 samples of the 50-d GMM40)."""
        k = torch.multinomial(self.weights, n, replacement=True)
        z = torch.randn(n, self.dim, dtype=self.means.dtype, device=self.means.device)
        return self.means[k] + z @ self.scale_tril.T
