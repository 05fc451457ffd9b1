"""Gaussian target with a free normalising constant: ``rho(x) = exp(log_Z) N(x; mu, Sigma)``."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from sde_control.target import Target


def as_float(value: float | Tensor | list[float], dtype: torch.dtype | None = None) -> Tensor:
    """``value`` as a tensor of ``dtype``; by default keep a floating tensor's dtype, else the default dtype."""
    t = torch.as_tensor(value)
    return t.to(dtype or (t.dtype if t.is_floating_point() else torch.get_default_dtype()))


def covariance_matrix(covariance: float | Tensor, dim: int, dtype: torch.dtype | None = None) -> Tensor:
    """A (dim, dim) positive definite matrix from a scalar (``c I``), a vector (``diag(c)``) or a matrix.

    Raises ``ValueError`` for a wrong shape, a non-finite entry, or a matrix that is not symmetric positive definite.
    """
    cov = as_float(covariance, dtype)
    if cov.ndim == 0:
        cov = cov * torch.eye(dim, dtype=cov.dtype)
    elif cov.ndim == 1 and cov.shape == (dim,):
        cov = torch.diag(cov)
    elif cov.shape != (dim, dim):
        raise ValueError(
            f"covariance must be a scalar, a ({dim},) vector or a ({dim}, {dim}) matrix, got shape {tuple(cov.shape)}"
        )
    if not torch.isfinite(cov).all():
        raise ValueError("covariance has non-finite entries")
    if not torch.allclose(cov, cov.T):
        raise ValueError("covariance must be symmetric")
    if torch.linalg.cholesky_ex(cov).info != 0:
        raise ValueError("covariance must be positive definite")
    return cov


def vector(value: Tensor | list[float], name: str) -> Tensor:
    """``value`` as a finite, non-empty 1-d floating tensor, or ``ValueError``."""
    v = as_float(value)
    if v.ndim != 1 or v.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-d tensor, got shape {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise ValueError(f"{name} has non-finite entries")
    return v


class Gaussian(Target):
    r"""``rho(x) = exp(log_Z) N(x; mu, Sigma)``, so ``Z = exp(log_Z)`` is a free parameter.

    ``log rho(x) = log_Z - d/2 log(2 pi) - 1/2 log det Sigma - 1/2 (x - mu)^T Sigma^{-1} (x - mu)``,
    ``score(x) = -Sigma^{-1} (x - mu)``; ``sample`` draws exactly from ``N(mu, Sigma)``.

    Args:
        mean: ``mu``, shape (d,).
        covariance: ``Sigma``: a scalar (``c I``), a vector (``diag(c)``) or a (d, d) positive definite matrix.
        log_Z: the log normalising constant of ``rho``.
    """

    def __init__(self, mean: Tensor | list[float], covariance: float | Tensor = 1.0, log_Z: float = 0.0) -> None:
        super().__init__()
        mean = vector(mean, "mean")
        if not math.isfinite(log_Z):
            raise ValueError(f"log_Z must be finite, got {log_Z}")
        self.dim = mean.shape[0]
        self.log_Z = float(log_Z)
        cov = covariance_matrix(covariance, self.dim, mean.dtype)
        self.register_buffer("mean", mean)
        self.register_buffer("scale_tril", torch.linalg.cholesky(cov))
        self.register_buffer("precision", torch.cholesky_inverse(self.scale_tril))

    @property
    def distribution(self) -> MultivariateNormal:
        """The normalised law ``N(mu, Sigma)``."""
        return MultivariateNormal(self.mean, scale_tril=self.scale_tril, validate_args=False)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.distribution.log_prob(x) + self.log_Z

    def score(self, x: Tensor) -> Tensor:
        return -(x - self.mean) @ self.precision

    def sample(self, n: int) -> Tensor:
        return self.distribution.sample((n,))
