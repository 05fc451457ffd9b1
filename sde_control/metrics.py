"""Sample-quality metrics shared by the samplers, the benchmarks and the generative side.

Optimal transport (docs/measurements.md, section 'Optimal transport'): the debiased Sinkhorn divergence with squared Euclidean cost
(:func:`sinkhorn_divergence`) and its ``epsilon -> 0`` limit, the exact squared 2-Wasserstein distance
(:func:`wasserstein2_squared`). At ``epsilon = 1e-3`` on 2000 against 2000 samples the Sinkhorn iterations do not
converge in practical time on a CPU (the number of iterations grows like ``max cost / epsilon``); the two agree to
within ``epsilon log n`` (see :func:`wasserstein2_squared`), and :func:`sinkhorn_divergence` raises
:class:`SinkhornNotConverged` rather than return an unconverged number.

Modes: :func:`mode_fractions` and :func:`entropic_mode_coverage` (EMC) from the nearest-mode histogram.
The generative side's own measures (histograms, trajectory straightness) live in
:mod:`sde_control.generative.evaluation`.
"""

from __future__ import annotations

import math

import numpy as np
import ot
import torch
from torch import Tensor

__all__ = [
    "SinkhornNotConverged",
    "entropic_mode_coverage",
    "marginal_std_error",
    "mode_fractions",
    "nearest_mode",
    "point_clouds",
    "sinkhorn_divergence",
    "wasserstein2_squared",
]


class SinkhornNotConverged(RuntimeError):
    """The Sinkhorn iterations stopped at ``max_iter`` with a marginal error above ``tol``.

    ``value`` holds the unconverged divergence and ``marginal_errors`` the final errors of the three problems
    (``xy``, ``xx``, ``yy``), for a caller that wants to inspect them.
    """

    def __init__(self, value: float, marginal_errors: dict[str, float], max_iter: int, tol: float) -> None:
        self.value, self.marginal_errors = value, marginal_errors
        errors = ", ".join(f"{k}: {v:.2e}" for k, v in marginal_errors.items())
        super().__init__(
            f"Sinkhorn did not converge in {max_iter} iterations (marginal errors {errors}; tol {tol:.0e}); "
            f"unconverged value {value:.6g}. Raise max_iter or eps, or use wasserstein2_squared (the eps -> 0 limit)."
        )


def point_clouds(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 numpy copies of two (n, d) and (m, d) point clouds; ``ValueError`` on bad shapes or non-finite input."""
    clouds = []
    for name, cloud in (("x", x), ("y", y)):
        a = cloud.detach().cpu().double().numpy() if isinstance(cloud, Tensor) else np.asarray(cloud, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] == 0:
            raise ValueError(f"{name} must have shape (n, d) with n >= 1, got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} has NaN or infinite entries")
        clouds.append(a)
    if clouds[0].shape[1] != clouds[1].shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {clouds[0].shape[1]} and {clouds[1].shape[1]}")
    return clouds[0], clouds[1]


def sinkhorn_divergence(
    x: Tensor | np.ndarray, y: Tensor | np.ndarray, eps: float = 1e-3, max_iter: int = 10_000, tol: float = 1e-9
) -> float:
    r"""Debiased Sinkhorn divergence of the empirical measures of ``x`` (n, d) and ``y`` (m, d), cost ``|x - y|^2``.

    ``S_eps(x, y) = max(0, <P_xy, C_xy> - (<P_xx, C_xx> + <P_yy, C_yy>) / 2)`` with ``P_ab`` the entropic optimal
    plan ``argmin_P <P, C_ab> + eps sum P log P`` between uniform weights, as POT's
    ``ot.bregman.empirical_sinkhorn_divergence`` computes it (log-domain iterations, ``method="sinkhorn_log"``, on
    float64 copies; the transport terms exclude the entropy). It is the divergence, not its square root.

    The iterations of each problem stop when the l2 norm of the column-marginal error falls below ``tol``; if any
    of the three has not converged after ``max_iter`` iterations, :class:`SinkhornNotConverged` is raised (it
    carries the unconverged value). With ``eps = 1e-3`` this happens for 2000 against 2000 benchmark samples; see
    :func:`wasserstein2_squared`.
    """
    xs, ys = point_clouds(x, y)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    with np.errstate(over="ignore"):  # exp of unconverged log-plans may overflow; non-convergence is raised below
        value, log = ot.bregman.empirical_sinkhorn_divergence(
            xs, ys, eps, metric="sqeuclidean", method="sinkhorn_log", numIterMax=max_iter, stopThr=tol, log=True,
            warn=False,
        )
    errors = {k: float(log[f"log_sinkhorn_{k}"]["err"][-1]) for k in ("ab", "a", "b")}
    if not all(e < tol for e in errors.values()):  # also catches NaN errors
        names = {"ab": "xy", "a": "xx", "b": "yy"}
        raise SinkhornNotConverged(float(value), {names[k]: v for k, v in errors.items()}, max_iter, tol)
    return float(value)


def wasserstein2_squared(x: Tensor | np.ndarray, y: Tensor | np.ndarray, max_iter: int = 10_000_000) -> float:
    r"""Exact squared 2-Wasserstein distance ``W_2^2 = min_P <P, C>`` between the empirical measures (network simplex).

    It is the ``eps -> 0`` limit of :func:`sinkhorn_divergence`, and close to it at every ``eps``: the entropic plan
    ``P_eps`` minimises ``<P, C> - eps H(P)`` and every coupling of uniform weights has entropy
    ``H in [max(log n, log m), log n + log m]``, so ``W_2^2 <= <P_xy, C_xy> <= W_2^2 + eps min(log n, log m)``
    and ``0 <= <P_xx, C_xx> <= eps log n``. Hence, for converged plans,

        ``|S_eps(x, y) - W_2^2(x, y)| <= eps max(log n, log m)``  (7.6e-3 at ``eps = 1e-3``, n = m = 2000).

    Raises ``RuntimeError`` if the simplex stops at ``max_iter`` before optimality.
    """
    xs, ys = point_clouds(x, y)
    a, b = np.full(len(xs), 1.0 / len(xs)), np.full(len(ys), 1.0 / len(ys))
    value, log = ot.emd2(a, b, ot.dist(xs, ys, metric="sqeuclidean"), numItermax=max_iter, log=True)
    if log["warning"] is not None:
        raise RuntimeError(f"exact OT did not reach optimality: {log['warning']}")
    return float(value)


def marginal_std_error(samples: Tensor, reference: Tensor) -> float:
    r"""Mean over coordinates of ``|std(samples)_i - std(reference)_i|`` (unbiased standard deviations).

    ``reference`` holds exact samples of the target.
    """
    if samples.ndim != 2 or reference.ndim != 2 or samples.shape[1] != reference.shape[1]:
        raise ValueError(f"expected (n, d) and (m, d) samples, got {tuple(samples.shape)} and {tuple(reference.shape)}")
    return (samples.std(0) - reference.std(0)).abs().mean().item()


def nearest_mode(samples: Tensor, means: Tensor) -> Tensor:
    """Index of the nearest (Euclidean) of the K ``means`` (K, d) for each of the ``samples`` (n, d); shape (n,)."""
    if samples.ndim != 2 or means.ndim != 2 or samples.shape[1] != means.shape[1]:
        raise ValueError(f"expected (n, d) samples and (K, d) means, got {tuple(samples.shape)}, {tuple(means.shape)}")
    return torch.cdist(samples.detach(), means.to(samples)).argmin(dim=1)


def mode_fractions(samples: Tensor, means: Tensor, weights: Tensor | None = None) -> Tensor:
    """``p_k`` = fraction of ``samples`` whose nearest mode is ``means[k]``; shape (K,), sums to one.

    With ``weights`` (n,), e.g. self-normalised importance weights, each sample counts with its weight.
    """
    counts = torch.bincount(nearest_mode(samples, means), weights=weights, minlength=means.shape[0])
    return counts / counts.sum()


def entropic_mode_coverage(samples: Tensor, means: Tensor) -> float:
    r"""EMC ``= -sum_k p_k log p_k / log K`` with ``p = mode_fractions(samples, means)`` (``0 log 0 = 0``).

    1 when all K modes hold equal fractions, 0 when one mode holds every sample. Needs K >= 2.
    """
    if means.shape[0] < 2:
        raise ValueError(f"entropic mode coverage needs at least 2 modes, got {means.shape[0]}")
    p = mode_fractions(samples, means).double()
    return (-torch.xlogy(p, p).sum() / math.log(means.shape[0])).item()
