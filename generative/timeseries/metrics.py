r"""Scores of probabilistic forecasts: CRPS-sum and CRPS as gluonts computes them, and the energy score.

Forecasts are samples ``(B, S, P, D)``: ``S`` sample paths of ``P`` steps of ``D`` series for each of ``B`` windows;
targets are ``(B, P, D)``. Both in the original units of the data.

**CRPS by quantile losses** (gluonts 0.17.0, ``src/gluonts/evaluation/_base.py`` and ``metrics.py``): for each
level ``q`` in 0.05, 0.10, ..., 0.95 the sample quantile is ``sorted(samples)[round((S - 1) q)]`` (``np.round``:
halves go to the even index; Python's ``round`` does the same), the quantile loss of a window is
``2 sum |(y - y_q) (1[y <= y_q] - q)|``, and the evaluator sums the losses and ``|y|`` over all windows (and series)
before dividing: ``wQL_q = sum QL_q / sum |y|``. The score is the mean of ``wQL_q`` over the levels, a weighted
approximation of the CRPS integral ``2 int_0^1 QL_q dq``. :func:`crps_sum` applies it to the sums over the ``D``
series (the ``MultivariateEvaluator``'s ``m_sum_mean_wQuantileLoss`` with ``target_agg_funcs={"sum": np.sum}``),
:func:`crps` to every series (its ``mean_wQuantileLoss``, pooled over windows and series). Both match numbers
produced by gluonts itself (``tests/generative/timeseries/gluonts_fixture.json``).

**Energy score** (Gneiting & Raftery 2007, eq. 22 with beta = 1): for a forecast law ``F`` and outcome ``y`` in
``R^{P D}``, ``ES(F, y) = E|X - y| - 1/2 E|X - X'|`` with ``X, X'`` independent draws of ``F`` and ``|.|`` the
Euclidean norm of the whole window; in one dimension it is the CRPS. Estimated without bias from ``S`` samples:
``mean_s |x_s - y| - 1/(2 S (S - 1)) sum_{s != s'} |x_s - x_s'|``.
"""

from __future__ import annotations

import torch
from torch import Tensor

QUANTILES: tuple[float, ...] = tuple(k / 20 for k in range(1, 20))  # 0.05, ..., 0.95 (the same floats as numpy's)


def _forecast_and_target(samples: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """float64 CPU copies of ``samples`` (B, S, P, D) and ``target`` (B, P, D) after checking shapes and values."""
    samples, target = torch.as_tensor(samples), torch.as_tensor(target)
    if samples.ndim != 4:
        raise ValueError(f"samples must have shape (B, S, P, D) (windows, samples, steps, series), got "
                         f"{tuple(samples.shape)}")
    if target.shape != samples.shape[:1] + samples.shape[2:]:
        raise ValueError(f"target must have shape (B, P, D) = {tuple(samples.shape[:1] + samples.shape[2:])} to "
                         f"match samples {tuple(samples.shape)}, got {tuple(target.shape)}")
    samples, target = samples.detach().cpu().double(), target.detach().cpu().double()
    for name, value in (("samples", samples), ("target", target)):
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} has NaN or infinite entries")
    return samples, target


def sample_quantile_index(num_samples: int, q: float) -> int:
    """The index into ``S`` sorted samples that gluonts' ``SampleForecast.quantile`` reads: ``round((S - 1) q)``,
    halves rounded to even (``np.round``)."""
    return int(round((num_samples - 1) * q))


def weighted_quantile_loss(samples: Tensor, target: Tensor, quantiles: tuple[float, ...] = QUANTILES) -> float:
    r"""``mean_q [sum 2 |(y - y_q)(1[y <= y_q] - q)| / sum |y|]`` over samples ``(B, S, ...)`` and target ``(B, ...)``,
    the sums running over every window and entry (module docstring)."""
    ordered = samples.sort(dim=1).values
    total = target.abs().sum()
    if total == 0:
        raise ValueError("the target is zero everywhere: the weighted quantile loss divides by sum |target|")
    losses = []
    for q in quantiles:
        q_hat = ordered[:, sample_quantile_index(samples.shape[1], q)]
        losses.append(2 * ((target - q_hat) * ((target <= q_hat).double() - q)).abs().sum())
    return float(torch.stack(losses).mean() / total)


def crps_sum(samples: Tensor, target: Tensor, quantiles: tuple[float, ...] = QUANTILES) -> float:
    """CRPS-sum: the weighted quantile loss of the sum over the ``D`` series (gluonts' ``m_sum_mean_wQuantileLoss``),
    pooled over the ``B`` windows. ``samples`` (B, S, P, D), ``target`` (B, P, D)."""
    samples, target = _forecast_and_target(samples, target)
    return weighted_quantile_loss(samples.sum(dim=-1), target.sum(dim=-1), quantiles)


def crps(samples: Tensor, target: Tensor, quantiles: tuple[float, ...] = QUANTILES) -> float:
    """Per-series CRPS: the weighted quantile loss of every series, pooled over windows and series (gluonts'
    ``mean_wQuantileLoss`` of the ``MultivariateEvaluator``). ``samples`` (B, S, P, D), ``target`` (B, P, D)."""
    samples, target = _forecast_and_target(samples, target)
    return weighted_quantile_loss(samples, target, quantiles)


def energy_score(samples: Tensor, target: Tensor, reduction: str = "mean") -> float | Tensor:
    r"""The energy score of each window, ``E|X - y| - 1/2 E|X - X'|`` over the ``P D`` vector (unbiased estimate,
    module docstring); ``reduction="mean"`` averages it over the windows (a float), ``"none"`` returns the ``(B,)``
    tensor of windows' scores. Needs ``S >= 2``."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    samples, target = _forecast_and_target(samples, target)
    S = samples.shape[1]
    if S < 2:
        raise ValueError(f"the energy score needs at least 2 samples per window, got {S}")
    x, y = samples.flatten(2), target.flatten(1)
    to_outcome = (x - y[:, None]).norm(dim=-1).mean(dim=1)
    between = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").sum(dim=(1, 2)) / (S * (S - 1))
    score = to_outcome - between / 2
    return float(score.mean()) if reduction == "mean" else score
