r"""Estimators of ``log Z`` from log importance weights ``l_i = log w_i`` of ``n`` paths.

* importance sampling: ``log Z_IS = logsumexp(l) - log n`` (consistent; biased low by Jensen for finite n);
* ELBO: ``mean(l) <= log Z``;
* EUBO: ``mean(l)`` over paths of the target-started reference, ``>= log Z``;
* effective sample size ``ESS = (sum w)^2 / (n sum w^2)`` in ``[0, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor


def importance_log_z(log_weights: Tensor) -> float:
    """``log (1/n sum_i w_i)``."""
    return float(torch.logsumexp(log_weights.double(), 0) - math.log(log_weights.numel()))


def effective_sample_size(log_weights: Tensor) -> float:
    """``(sum w)^2 / (n sum w^2)``, normalised to ``[0, 1]``."""
    lw = log_weights.double()
    return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)) / lw.numel())


@dataclass(frozen=True)
class LogZEstimate:
    """``log Z`` estimates from one batch of ``n`` paths (or particles); errors are ``|estimate - log_z_exact|``.

    ``elbo`` is ``None`` for estimators that have none (SMC); ``evaluations`` counts the points at which the
    target's log density or score was computed to produce the estimate (for a trained sampler: training and
    estimation), where the estimator tracks it.
    """

    log_z: float
    elbo: float | None
    ess: float
    n: int
    eubo: float | None = None
    log_z_exact: float | None = None
    evaluations: int | None = None

    @classmethod
    def from_log_weights(
        cls, log_weights: Tensor, target_log_weights: Tensor | None = None, log_z_exact: float | None = None
    ) -> LogZEstimate:
        return cls(
            log_z=importance_log_z(log_weights),
            elbo=float(log_weights.double().mean()),
            ess=effective_sample_size(log_weights),
            n=log_weights.numel(),
            eubo=None if target_log_weights is None else float(target_log_weights.double().mean()),
            log_z_exact=log_z_exact,
        )

    def with_evaluations(self, evaluations: int) -> LogZEstimate:
        """A copy that carries its count of target evaluations."""
        return replace(self, evaluations=int(evaluations))

    @property
    def error(self) -> float | None:
        """``|log Z_IS - log Z|``."""
        return None if self.log_z_exact is None else abs(self.log_z - self.log_z_exact)

    @property
    def elbo_error(self) -> float | None:
        return None if self.log_z_exact is None or self.elbo is None else abs(self.elbo - self.log_z_exact)

    def as_dict(self) -> dict[str, float | int | None]:
        return {**asdict(self), "error": self.error, "elbo_error": self.elbo_error}

    def __str__(self) -> str:
        rows = [(key, value) for key, value in self.as_dict().items() if value is not None]
        width = max(len(key) for key, _ in rows)
        return "\n".join(f"{key:<{width}}  {value:.6g}" if isinstance(value, float) else f"{key:<{width}}  {value}"
                         for key, value in rows)
