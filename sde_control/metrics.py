"""Sample-quality metrics shared by the samplers, the benchmarks and the generative side.

Optimal transport (docs/measurements.md, section 'Optimal transport'), cost ``C(x, y) = |x - y|^2`` (not halved) between the empirical measures
``a = 1/n sum delta_{x_i}`` and ``b = 1/m sum delta_{y_j}``:

* :func:`wasserstein2_squared`: the exact ``W_2^2 = min_P <P, C>`` (network simplex);
* :func:`sinkhorn`, :func:`sinkhorn_divergence`: the debiased Sinkhorn divergence of Feydy et al. (2019,
  "Interpolating between optimal transport and MMD using Sinkhorn divergences", eq. 4)

      ``S_eps(a, b) = OT_eps(a, b) - OT_eps(a, a) / 2 - OT_eps(b, b) / 2``,
      ``OT_eps(a, b) = min_{P in Pi(a, b)} <P, C> + eps KL(P | a x b)``,

  *with* the entropic term, the divergence itself (not its root). This is what geomloss's ``SamplesLoss("sinkhorn",
  debias=True)`` and ott-jax's ``sinkhorn_divergence(...).divergence`` return, the latter being what the
  Beyond-ELBOs benchmark code reports (``algorithms/common/ipm_eval/optimal_transport.py`` of
  github.com/DenisBless/variational_sampling_methods); POT's ``empirical_sinkhorn_divergence`` instead combines the
  transport terms ``<P, C>`` alone. With uniform weights ``KL(P | a x b) = log(n m) - H(P)``, so the ``-eps H``
  convention gives the same ``S_eps``. ``S_eps >= 0``, ``S_eps(x, x) = 0``, and
  ``|S_eps - W_2^2| <= eps max(log n, log m)`` (see :func:`wasserstein2_squared`); between Gaussians it has a
  closed form (:func:`gaussian_sinkhorn_divergence`).

  Convergence at the benchmarks' ``eps = 1e-3`` (``benchmarks/sinkhorn.py``, 2000 exact samples of the 9-mode GMM
  against 2000 others): Sinkhorn's rate degrades like ``exp(-c / eps)``, so the plans' marginal errors decay slowly
  (l1 error 1.4e-2 after 90 iterations), while the dual objective, started at the exact optimal transport's
  potentials, settles within tens to hundreds of iterations: ``S_eps = 0.345753`` after 90/20/20 iterations of the
  three problems (210 s wall on this 2-core machine shared with other jobs, load about 8, one thread; the whole
  benchmark took a quarter of its wall time in CPU time), 0.345785 at a ten times smaller tolerance, beside
  ``W_2^2 = 0.346044``. On the same samples shifted by (0.3, -0.4), whose divergence is exactly 0.25: 0.249810 after
  210 iterations (290 s wall), 0.249877 at the smaller tolerance, so the default tolerance leaves an error of about
  2e-4 here (1e-3 relative; far below the spread of the divergence between sample sets). Epsilon scaling from above
  does not get there in that time: geomloss's annealing (factor 0.9) returns 0.174 for the first pair (108 s).

Modes: :func:`mode_fractions` and :func:`entropic_mode_coverage` (EMC) from the nearest-mode histogram.
The generative side's own measures (histograms, trajectory straightness) live in
:mod:`sde_control.generative.evaluation`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import ot
import torch
from torch import Tensor

__all__ = [
    "Sinkhorn",
    "SinkhornNotConverged",
    "entropic_mode_coverage",
    "entropic_ot_gaussians",
    "gaussian_sinkhorn_divergence",
    "marginal_std_error",
    "mode_fractions",
    "nearest_mode",
    "point_clouds",
    "sinkhorn",
    "sinkhorn_divergence",
    "wasserstein2_squared",
]


class SinkhornNotConverged(RuntimeError):
    """The Sinkhorn iterations of one of the three problems of :func:`sinkhorn` stopped at ``max_iter`` while the
    dual objective was still rising by more than the tolerance.

    ``value`` holds the divergence from the unconverged dual objectives (each a lower bound of its ``OT_eps``) and
    ``increases`` the last relative rise of the three objectives (``xy``, ``xx``, ``yy``).
    """

    def __init__(self, value: float, increases: dict[str, float], max_iter: int, tol: float) -> None:
        self.value, self.increases = value, increases
        rises = ", ".join(f"{k}: {v:.1e}" for k, v in increases.items())
        super().__init__(
            f"Sinkhorn did not converge in {max_iter} iterations (last relative rise of the dual objectives {rises}; "
            f"tol {tol:.0e}); unconverged value {value:.6g}. Raise max_iter or tol, or use wasserstein2_squared."
        )


@dataclass(frozen=True)
class Sinkhorn:
    """The debiased Sinkhorn divergence of two point clouds, with what was computed on the way.

    ``divergence`` is ``S_eps``; ``error_estimate`` an estimate of its remaining error (below); ``entropic_ot`` the
    three ``OT_eps`` values (``xy``, ``xx``, ``yy``, each the dual objective at the final potentials, a lower bound);
    ``w2_squared`` the exact ``W_2^2`` between ``x`` and ``y`` (the warm start's by-product); ``iterations`` the
    Sinkhorn iterations of the three problems; ``marginal_errors`` the l1 error ``|P^T 1 - b|_1`` of the final plans'
    second marginals (the first is exact); ``seconds`` the wall time.

    ``error_estimate``: Sinkhorn's dual objective approaches its limit sublinearly; if its gap fell like ``1/k``,
    after ``k`` blocks of iterations the remaining gap would be ``k`` times the last block's rise, and the estimate
    adds these gaps over the three problems (``|gap_xy| + (|gap_xx| + |gap_yy|) / 2`` bounds the divergence's
    error). It is an indication, not a bound: measured, it matched the true error of a translated cloud of 100 points
    (5.0e-5 against 5.2e-5) but was 3.6 times too small for 2000 points (5.3e-5 against 1.9e-4;
    ``benchmarks/sinkhorn.py``), where the gap decays more slowly.
    """

    divergence: float
    error_estimate: float
    entropic_ot: dict[str, float]
    w2_squared: float
    eps: float
    iterations: dict[str, int]
    marginal_errors: dict[str, float]
    seconds: float


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


def sinkhorn(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    eps: float = 1e-3,
    tol: float = 1e-5,
    max_iter: int = 20_000,
    check_every: int = 10,
) -> Sinkhorn:
    r"""Debiased Sinkhorn divergence ``S_eps`` (module docstring) between the empirical measures of ``x`` (n, d) and
    ``y`` (m, d), cost ``|x - y|^2``, with the exact ``W_2^2`` beside it.

    Each ``OT_eps`` is solved by POT's log-domain Sinkhorn iterations (``ot.sinkhorn(method="sinkhorn_log")``, float64)
    warm-started at the exact optimal transport's dual potentials (``ot.emd``, network simplex), the ``eps -> 0``
    limit of the entropic potentials: the far end of epsilon scaling, reached in one step. The value is the dual
    objective ``<a, f> + <b, g>`` after a row update (``f_i = eps (log u_i - log a_i)``, ``g_j = eps (log v_j -
    log b_j)``, plan ``P = exp(log u + log v - C / eps)`` with exact row sums), a lower bound of ``OT_eps`` that rises
    monotonically along the iterations. They stop when the objective rose by at most ``tol (|value| + eps)`` over the
    last ``check_every`` iterations; :class:`SinkhornNotConverged` if that has not happened after ``max_iter``.

    Why not epsilon scaling from above, or a marginal tolerance: at ``eps = 1e-3`` on 2000 against 2000 samples the
    plans' marginal errors decay like a power of the iteration count (Sinkhorn's rate degrades like ``exp(-c / eps)``)
    while the dual objective settles within tens of iterations; ``benchmarks/sinkhorn.py`` measures both, and the
    settled value against a run at a ten times smaller tolerance (module docstring).
    """
    xs, ys = point_clouds(x, y)
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be positive and finite, got {eps}")
    if not tol > 0 or not isinstance(check_every, int) or check_every < 1 or max_iter < check_every:
        raise ValueError("need tol > 0, an int check_every >= 1 and max_iter >= check_every")
    start = time.perf_counter()
    problems = {"xy": (xs, ys), "xx": (xs, xs), "yy": (ys, ys)}
    solved = {name: _entropic_ot(*clouds, eps, tol, max_iter, check_every) for name, clouds in problems.items()}
    value = {name: s.value for name, s in solved.items()}
    divergence = value["xy"] - 0.5 * (value["xx"] + value["yy"])
    unconverged = {name: s.last_rise for name, s in solved.items() if not s.converged}
    if unconverged:
        raise SinkhornNotConverged(divergence, unconverged, max_iter, tol)
    gaps = {name: s.iterations / check_every * s.last_rise * (abs(s.value) + eps) for name, s in solved.items()}
    return Sinkhorn(
        divergence=divergence,
        error_estimate=gaps["xy"] + 0.5 * (gaps["xx"] + gaps["yy"]),
        entropic_ot=value,
        w2_squared=solved["xy"].w2_squared,
        eps=eps,
        iterations={name: s.iterations for name, s in solved.items()},
        marginal_errors={name: s.marginal_error for name, s in solved.items()},
        seconds=time.perf_counter() - start,
    )


def sinkhorn_divergence(
    x: Tensor | np.ndarray, y: Tensor | np.ndarray, eps: float = 1e-3, tol: float = 1e-5, max_iter: int = 20_000
) -> float:
    """``S_eps(x, y)``: the ``divergence`` of :func:`sinkhorn`, with the benchmarks' ``eps = 1e-3`` by default."""
    return sinkhorn(x, y, eps, tol=tol, max_iter=max_iter).divergence


@dataclass(frozen=True)
class _EntropicOT:
    value: float
    w2_squared: float
    iterations: int
    marginal_error: float
    converged: bool
    last_rise: float


def _entropic_ot(xs: np.ndarray, ys: np.ndarray, eps: float, tol: float, max_iter: int, check_every: int) -> _EntropicOT:
    """``OT_eps`` between uniform weights on ``xs`` and ``ys``: POT's log-domain Sinkhorn from the exact duals, in
    blocks of ``check_every`` iterations until the dual objective settles (see :func:`sinkhorn`)."""
    cost = ot.dist(xs, ys, metric="sqeuclidean")
    a, b = np.full(len(xs), 1.0 / len(xs)), np.full(len(ys), 1.0 / len(ys))
    _, exact = ot.emd(a, b, cost, numItermax=10_000_000, log=True)
    if exact["warning"] is not None:
        raise RuntimeError(f"exact OT (the warm start) did not reach optimality: {exact['warning']}")
    # The iterations run on torch tensors (POT's torch backend: its logsumexp is about twice numpy's speed here).
    cost_t, a_t, b_t = (torch.from_numpy(v) for v in (cost, a, b))
    log_u, log_v = torch.from_numpy(exact["u"] / eps), torch.from_numpy(exact["v"] / eps)  # log_v is recomputed first
    value, rise, iterations = -math.inf, math.inf, 0
    while iterations < max_iter:
        with np.errstate(over="ignore"):  # POT's marginal check may overflow at the warm start; unused here
            _, log = ot.sinkhorn(a_t, b_t, cost_t, eps, method="sinkhorn_log", numItermax=check_every, stopThr=0.0,
                                 log=True, warn=False, warmstart=(log_u, log_v))
        log_u, log_v, iterations = log["log_u"], log["log_v"], iterations + check_every
        previous = value
        value = eps * float(a_t @ (log_u - a_t.log()) + b_t @ (log_v - b_t.log()))
        rise = max(value - previous, 0.0) / (abs(value) + eps)  # (rounding can make a settled objective dip)
        if rise <= tol:
            break
    column_sums = torch.exp(log_u[:, None] + log_v[None, :] - cost_t / eps).sum(0)
    return _EntropicOT(value, float(exact["cost"]), iterations, float((column_sums - b_t).abs().sum()), rise <= tol,
                       float(rise))


def entropic_ot_gaussians(
    mean_x: Tensor | np.ndarray, cov_x: Tensor | np.ndarray, mean_y: Tensor | np.ndarray, cov_y: Tensor | np.ndarray,
    eps: float,
) -> float:
    r"""``OT_eps`` (cost ``|x - y|^2``, regulariser ``eps KL(P | alpha x beta)``) between ``N(m_x, A)`` and
    ``N(m_y, B)`` in closed form (Janati, Muzellec, Peyre & Cuturi 2020, "Entropic optimal transport between
    unbalanced Gaussian measures has a closed form", Theorem 1, balanced case; Mallasto, Gerolin & Minh 2021):
    with ``sigma^2 = eps / 2`` and ``D = (4 A^{1/2} B A^{1/2} + sigma^4 I)^{1/2}``,

        ``|m_x - m_y|^2 + tr A + tr B - tr D + d sigma^2 (1 - log(2 sigma^2)) + sigma^2 log det(D + sigma^2 I)``.

    Only the eigenvalues ``lambda_k`` of ``A^{1/2} B A^{1/2}`` (those of ``A B``) enter: ``D`` has eigenvalues
    ``sqrt(4 lambda_k + sigma^4)``. As ``eps -> 0`` it tends to the Bures-Wasserstein ``W_2^2``.
    """
    mx, my = (np.asarray(m, dtype=np.float64) for m in (mean_x, mean_y))
    a, b = (np.asarray(c, dtype=np.float64) for c in (cov_x, cov_y))
    d = mx.shape[0]
    if mx.shape != (d,) or my.shape != (d,) or a.shape != (d, d) or b.shape != (d, d):
        raise ValueError(f"expected means (d,) and covariances (d, d), got {mx.shape}, {a.shape}, {my.shape}, {b.shape}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be positive and finite, got {eps}")
    eigenvalues_a, vectors_a = np.linalg.eigh(a)
    root_a = (vectors_a * np.sqrt(eigenvalues_a.clip(min=0))) @ vectors_a.T
    lam = np.linalg.eigvalsh(root_a @ b @ root_a).clip(min=0)
    s2 = eps / 2
    d_eig = np.sqrt(4 * lam + s2**2)
    return float(((mx - my) ** 2).sum() + np.trace(a) + np.trace(b) - d_eig.sum()
                 + d * s2 * (1 - math.log(2 * s2)) + s2 * np.log(d_eig + s2).sum())


def gaussian_sinkhorn_divergence(
    mean_x: Tensor | np.ndarray, cov_x: Tensor | np.ndarray, mean_y: Tensor | np.ndarray, cov_y: Tensor | np.ndarray,
    eps: float,
) -> float:
    """``S_eps`` between ``N(m_x, A)`` and ``N(m_y, B)``: :func:`entropic_ot_gaussians` debiased (Janati et al. 2020,
    Feydy et al. 2019), the population value that :func:`sinkhorn_divergence` estimates from samples."""
    return (entropic_ot_gaussians(mean_x, cov_x, mean_y, cov_y, eps)
            - 0.5 * entropic_ot_gaussians(mean_x, cov_x, mean_x, cov_x, eps)
            - 0.5 * entropic_ot_gaussians(mean_y, cov_y, mean_y, cov_y, eps))


def wasserstein2_squared(x: Tensor | np.ndarray, y: Tensor | np.ndarray, max_iter: int = 10_000_000) -> float:
    r"""Exact squared 2-Wasserstein distance ``W_2^2 = min_P <P, C>`` between the empirical measures (network simplex).

    It is the ``eps -> 0`` limit of :func:`sinkhorn_divergence`, and close to it at every ``eps``: for uniform weights
    ``KL(P | a x b) = log(n m) - H(P)`` lies in ``[0, min(log n, log m)]`` for every coupling (``H(P) >=
    max(log n, log m)``), so ``W_2^2 <= OT_eps(x, y) <= W_2^2 + eps min(log n, log m)`` (the upper bound at the exact
    plan) and ``0 <= OT_eps(x, x) <= eps log n``. Hence

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
