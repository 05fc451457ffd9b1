"""Bayesian logistic regression posterior on scikit-learn's breast-cancer data (d = 31)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sde_control.target import Target

# Reference log Z per data set: (value, standard error), produced by benchmarks/reference_log_z.py (see the class
# docstring for the method and the exact command).
REFERENCE_LOG_Z: dict[str, tuple[float, float]] = {
    "breast_cancer": (-55.22449, 0.00058),
}


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, p) and 0/1 labels (n,) of a scikit-learn data set, as float64 arrays."""
    try:
        from sklearn import datasets
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "BayesianLogisticRegression needs scikit-learn for its data set; install the optional extra: "
            'pip install "sde-control[data]"'
        ) from error
    loaders = {"breast_cancer": datasets.load_breast_cancer}
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(loaders)}")
    data = loaders[name]()
    return np.asarray(data.data, dtype=np.float64), np.asarray(data.target, dtype=np.float64)


class BayesianLogisticRegression(Target):
    r"""Posterior of a logistic regression's weights, known up to its normalising constant (the evidence).

    Data: scikit-learn's breast-cancer set (569 tumours, 30 features, label 1 = benign), bundled with
    scikit-learn (no download). Each feature is standardised on the whole data set (zero mean, unit variance,
    ``ddof = 0``) and a column of ones (the intercept) is put first, so ``X`` is (569, 31) and ``d = 31``.
    Prior ``N(0, I)``, Bernoulli likelihood with logit ``x_i . w``:

        ``log rho(w) = log N(w; 0, I) + sum_i [y_i log sigmoid(x_i . w) + (1 - y_i) log sigmoid(-x_i . w)]``
        ``           = -|w|^2 / 2 - d/2 log(2 pi) + sum_i log sigmoid((2 y_i - 1) x_i . w)``

    (the second form is the one computed, with ``F.logsigmoid``: no ``log`` of a rounded probability). ``rho`` is
    the prior times the likelihood, so ``Z`` is the marginal likelihood. Score in closed form:
    ``X^T (y - sigmoid(X w)) - w``. No exact sampler.

    ``log_Z`` (breast cancer) ``= -55.22449 +- 0.00058`` (one standard error; ``log_Z_std_error``), from
    ``OMP_NUM_THREADS=1 python benchmarks/reference_log_z.py`` (float64, seed 0, 4 minutes on one core): importance
    sampling with 4,000,000 draws from a multivariate Student t (10 degrees of freedom) whose location and scale
    matrix are the posterior mean and covariance, themselves estimated by self-normalised importance sampling in
    two rounds of 200,000 draws starting from the Laplace approximation ``N(mode, H^{-1})`` (``H`` the negative
    Hessian of ``log rho`` at the mode, :meth:`laplace`). Standard error by the delta method,
    ``sqrt(var(w) / n) / mean(w)`` (batch standard error 0.00049); ESS 0.42 n; Pareto tail shape of the weights
    0.38 (below 0.5: the variance estimate is trustworthy). ``rho / q`` is bounded (the likelihood is at most one,
    so ``rho`` has Gaussian tails, the t proposal polynomial ones). Cross-checks in the same run, each from its own
    4,000,000 draws: a t with 5 degrees of freedom at the mode with the Laplace covariance gives
    ``-55.22783 +- 0.00374`` (ESS 0.018 n, Pareto shape 0.50), a t with 10 degrees of freedom at the mode with
    ``1.5^2`` times the Laplace covariance ``-55.22555 +- 0.00338`` (ESS 0.021 n, shape 0.45), within one
    combined standard error. The Laplace approximation itself gives -55.632: the posterior is skewed.

    Args:
        dataset: the scikit-learn data set; only ``"breast_cancer"``. Needs scikit-learn (the ``data`` extra).
    """

    def __init__(self, dataset: str = "breast_cancer") -> None:
        super().__init__()
        features, labels = load_dataset(dataset)
        features = (features - features.mean(0)) / features.std(0)
        design = np.concatenate([np.ones((features.shape[0], 1)), features], axis=1)
        self.dataset = dataset
        self.num_data, self.dim = design.shape
        self.log_Z, self.log_Z_std_error = REFERENCE_LOG_Z[dataset]
        dtype = torch.get_default_dtype()
        self.register_buffer("features", torch.from_numpy(design).to(dtype))
        self.register_buffer("labels", torch.from_numpy(labels).to(dtype))

    def log_likelihood(self, w: Tensor) -> Tensor:
        """``sum_i log sigmoid((2 y_i - 1) l_i)`` with ``l = X w``, shape (batch,): accurate for any logit
        (``F.softplus`` returns ``l`` itself above ``l = 20``, an error of up to 2e-9 per term)."""
        return F.logsigmoid((2 * self.labels - 1) * (w @ self.features.T)).sum(-1)

    def log_prob(self, w: Tensor) -> Tensor:
        log_prior = -0.5 * w.square().sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        return log_prior + self.log_likelihood(w)

    def score(self, w: Tensor) -> Tensor:
        """``X^T (y - sigmoid(X w)) - w``, shape (batch, d)."""
        return (self.labels - torch.sigmoid(w @ self.features.T)) @ self.features - w

    def neg_hessian(self, w: Tensor) -> Tensor:
        """``-grad^2 log rho(w) = X^T diag(s (1 - s)) X + I`` with ``s = sigmoid(X w)``, for one ``w`` of shape (d,);
        positive definite everywhere (``log rho`` is strictly concave)."""
        s = torch.sigmoid(self.features @ w)
        weighted = self.features * (s * (1 - s))[:, None]
        return self.features.T @ weighted + torch.eye(self.dim, dtype=w.dtype, device=w.device)

    def laplace(self, max_iter: int = 100, tol: float | None = None) -> tuple[Tensor, Tensor]:
        """The posterior mode and the Laplace covariance ``H^{-1}`` (``H`` = :meth:`neg_hessian` at the mode).

        Newton's method from ``w = 0``, halving a step while it would decrease ``log rho`` (which is strictly
        concave, so the mode is unique), until the largest entry of a Newton step is at most ``tol`` (default
        ``10 sqrt(eps)`` of the buffers' dtype, 1.5e-7 in float64: convergence is quadratic, so the mode is then
        accurate to rounding). Computed in the buffers' dtype: use a float64 target for a reference computation.
        Raises ``RuntimeError`` if it has not converged after ``max_iter`` steps.
        """
        dtype = self.features.dtype
        tol = 10 * math.sqrt(torch.finfo(dtype).eps) if tol is None else tol
        w = torch.zeros(self.dim, dtype=dtype, device=self.features.device)
        value = self.log_prob(w[None])[0]
        for _ in range(max_iter):
            step = torch.linalg.solve(self.neg_hessian(w), self.score(w[None])[0])
            if step.abs().max() <= tol:
                w = w + step
                return w, torch.linalg.inv(self.neg_hessian(w))
            for _ in range(30):  # a full step almost always increases log rho; halve it while it does not
                new_value = self.log_prob((w + step)[None])[0]
                if new_value >= value:
                    break
                step = step / 2
            w, value = w + step, new_value
        raise RuntimeError(f"Newton's method did not converge in {max_iter} steps (last step {step.abs().max():.3g})")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dataset={self.dataset!r}, num_data={self.num_data}"
