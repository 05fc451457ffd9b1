r"""Statistical baselines with the forecaster interface: ``.fit(series)``, then ``.forecast(context, num_samples)``
returning sample paths ``(B, S, P, D)`` in the original units.

Both work in units of each series' training-range scale (:class:`~.data.MeanScaler` with ``source="train"``: the
mean of ``|x|`` over the training range), so the forecast window never enters the scaling, and multiply back.

* :class:`NaiveBootstrap`: the last observed value plus a random walk whose steps are resampled one-step changes
  ``x_t - x_{t-1}`` of the training range (the residuals of the naive forecast ``x_t = x_{t-1}``), whole rows at a
  time so that the ``D`` series keep their joint law at each step.
* :class:`GaussianVAR`: ``x_t = c + sum_{i <= p} A_i x_{t-i} + e_t``, ``e_t ~ N(0, Sigma)``, by least squares in
  statsmodels (``statsmodels.tsa.api.VAR``, order ``p`` by AIC up to a cap); sample paths by its simulator
  (``statsmodels.tsa.vector_ar.util.varsim``) started from the last ``p`` context rows. Above ``ridge_above`` series
  a full VAR has too many coefficients (``p D^2``) for the data, so a ridge-regularised VAR(1) takes its place.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .data import ArrayLike, MeanScaler, validate_series


class Baseline:
    """Shared plumbing: input checks, the training-range scaling, numpy sampling in scaled units."""

    def __init__(self, prediction_length: int):
        if prediction_length < 1:
            raise ValueError(f"prediction_length must be positive, got {prediction_length}")
        self.prediction_length = prediction_length
        self.dim: int | None = None
        self.scaler = MeanScaler("train")

    @property
    def min_context(self) -> int:
        """The fewest context steps :meth:`forecast` needs."""
        return 1

    def fit(self, series: ArrayLike | Sequence[ArrayLike]) -> Baseline:
        """Fit to a training series ``(T, D)`` (tensor or array) or a list of them with the same ``D``."""
        items = [series] if isinstance(series, (Tensor, np.ndarray)) else list(series)
        if not items:
            raise ValueError("fit needs at least one series")
        items = [validate_series(s, f"series {i}") for i, s in enumerate(items)]
        dims = {s.shape[1] for s in items}
        if len(dims) != 1:
            raise ValueError(f"all series must have the same number of columns, got {sorted(dims)}")
        self.dim = dims.pop()
        self.scaler.fit(items)
        scale = self.scaler.train_scale.double().numpy()
        self._fit_scaled([s.double().numpy() / scale for s in items])
        return self

    def _fit_scaled(self, series: list[np.ndarray]) -> None:
        raise NotImplementedError

    def _sample_scaled(self, context: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """Paths ``(B, S, P, D)`` from scaled contexts ``(B, C, D)``."""
        raise NotImplementedError

    def forecast(self, context: ArrayLike, num_samples: int = 100, seed: int | None = None) -> Tensor:
        """Sample paths ``(B, num_samples, P, D)`` (original units) following contexts ``(B, C, D)``."""
        if self.dim is None:
            raise RuntimeError(f"{type(self).__name__} must be fit before forecasting")
        context = torch.as_tensor(context).detach().cpu()
        if context.ndim != 3 or context.shape[2] != self.dim:
            raise ValueError(f"context must have shape (B, C, D) with D = {self.dim} (the fitted series), got "
                             f"{tuple(context.shape)}")
        if context.shape[1] < self.min_context:
            raise ValueError(f"context has {context.shape[1]} steps; {type(self).__name__} needs at least "
                             f"{self.min_context}")
        if not torch.isfinite(context).all():
            raise ValueError("context has NaN or infinite entries")
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        scale = self.scaler.train_scale.double().numpy()
        paths = self._sample_scaled(context.double().numpy() / scale, num_samples, np.random.default_rng(seed))
        return torch.as_tensor(paths * scale, dtype=torch.float32)


class NaiveBootstrap(Baseline):
    r"""``x_{n+h} = x_n + sum_{k <= h} r_{j_k}``, ``j_k`` uniform over the training range's one-step changes
    ``r_t = x_t - x_{t-1}`` (rows of all ``D`` series together), independently for every step and path."""

    def _fit_scaled(self, series: list[np.ndarray]) -> None:
        if any(len(s) < 2 for s in series):
            raise ValueError("NaiveBootstrap needs series of at least 2 steps")
        self.changes = np.concatenate([np.diff(s, axis=0) for s in series])

    def _sample_scaled(self, context: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        draws = rng.integers(0, len(self.changes), size=(context.shape[0], num_samples, self.prediction_length))
        return context[:, None, -1:, :] + self.changes[draws].cumsum(axis=2)


class GaussianVAR(Baseline):
    r"""Gaussian vector autoregression, fitted by statsmodels (module docstring).

    ``D <= ridge_above``: ``statsmodels.tsa.api.VAR(...).fit(maxlags, ic="aic")`` with a constant, the order chosen
    by AIC among ``0..maxlags``; ``maxlags`` is ``max_lags``, lowered where the series is too short for it
    (``(T - 2) // (D + 1)``). ``D > ridge_above``: VAR(1), ``A = argmin sum_t |y_t - c - A y_{t-1}|^2 + lam |A|_F^2``
    on centred data with ``lam = ridge * n * mean_d Var(y_d)`` (``n`` transitions), ``Sigma`` the residuals'
    covariance. Either way the coefficients live in the training-range-scaled units.
    """

    def __init__(self, prediction_length: int, max_lags: int = 10, ridge_above: int = 150, ridge: float = 0.01):
        super().__init__(prediction_length)
        if max_lags < 1:
            raise ValueError(f"max_lags must be positive, got {max_lags}")
        self.max_lags, self.ridge_above, self.ridge = max_lags, ridge_above, ridge

    @property
    def order(self) -> int:
        """The fitted order ``p``."""
        return self.coefs.shape[0]

    @property
    def min_context(self) -> int:
        return max(self.order, 1) if hasattr(self, "coefs") else 1

    def _fit_scaled(self, series: list[np.ndarray]) -> None:
        if len(series) != 1:
            raise ValueError("GaussianVAR fits one series (T, D); pass a single series")
        y = series[0]
        T, D = y.shape
        if D > self.ridge_above:
            self.coefs, self.intercept, self.sigma = ridge_var1(y, self.ridge)
            return
        from statsmodels.tsa.api import VAR

        max_lags = min(self.max_lags, (T - 2) // (D + 1))
        if max_lags < 1:
            raise ValueError(f"a series of {T} steps is too short for a VAR on {D} series")
        result = VAR(y).fit(maxlags=max_lags, ic="aic", trend="c")
        self.coefs, self.intercept, self.sigma = result.coefs, result.intercept, np.asarray(result.sigma_u)

    def _sample_scaled(self, context: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        from statsmodels.tsa.vector_ar.util import varsim

        p, P = self.order, self.prediction_length
        paths = [varsim(self.coefs, self.intercept, self.sigma, steps=p + P, initial_values=c[-p:] if p else None,
                        rng=rng, nsimulations=num_samples)[:, p:] for c in context]
        return np.stack(paths)


def ridge_var1(y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Ridge VAR(1) of ``y`` ``(T, D)``: coefficients ``(1, D, D)``, intercept ``(D,)`` and noise covariance ``(D, D)``
    (:class:`GaussianVAR`'s docstring has the objective)."""
    past, present = y[:-1], y[1:]
    past_mean, present_mean = past.mean(0), present.mean(0)
    X, Y = past - past_mean, present - present_mean
    n, D = X.shape
    lam = ridge * n * X.var(axis=0).mean()
    A = np.linalg.solve(X.T @ X + lam * np.eye(D), X.T @ Y).T
    residuals = Y - X @ A.T
    return A[None], present_mean - A @ past_mean, residuals.T @ residuals / (n - 1)
