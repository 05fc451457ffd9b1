"""A 1-d unnormalised density on a grid: its log normaliser by quadrature and an inverse-CDF sampler.

Shared by the targets whose coordinates are independent 1-d wells (:class:`~sde_control.targets.DoubleWell`,
:class:`~sde_control.targets.ManyWell`). The caller chooses an interval ``[lower, upper]`` outside which the density is
negligible (its mass there far below the quadrature tolerance) and registers ``grid`` and ``cdf`` as buffers,
so that ``target.to(device)`` moves them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from scipy.integrate import cumulative_trapezoid, quad
from torch import Tensor

GRID_POINTS = 20_001


class Tabulated1d(NamedTuple):
    """``log_normaliser = log int_lower^upper f(x) dx``; ``grid`` (float64, increasing) and the normalised
    trapezoidal CDF of ``f`` on it, ``cdf[0] = 0``, ``cdf[-1] = 1``."""

    log_normaliser: float
    grid: Tensor
    cdf: Tensor


def tabulate_1d(
    log_density: Callable[[np.ndarray], np.ndarray],
    lower: float,
    upper: float,
    points: Sequence[float] = (),
    grid_points: int = GRID_POINTS,
) -> Tabulated1d:
    r"""Tabulate ``f = exp(log_density)`` on ``grid_points`` equally spaced points of ``[lower, upper]``.

    ``log int f`` comes from adaptive quadrature (``scipy.integrate.quad``, relative tolerance 1e-12, with
    ``points`` such as the modes passed as break points), applied to ``f / max_grid f`` so that a density with a
    large peak (``exp(9.87)`` for the many-well) neither overflows nor loses relative precision:
    ``log int f = log int exp(log f - c) + c``. The CDF is the cumulative trapezoid rule on the grid, normalised
    to end at one; with :func:`inverse_cdf` it gives samples exact up to the grid's resolution.
    """
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise ValueError(f"need finite lower < upper, got [{lower}, {upper}]")
    if grid_points < 2:
        raise ValueError(f"grid_points must be at least 2, got {grid_points}")
    grid = np.linspace(lower, upper, grid_points)
    log_f = np.asarray(log_density(grid), dtype=np.float64)
    shift = float(log_f.max())
    if not math.isfinite(shift):
        raise ValueError(f"log_density must be finite somewhere on [{lower}, {upper}], its maximum there is {shift}")
    integral, _ = quad(lambda x: np.exp(log_density(x) - shift), lower, upper, points=list(points) or None,
                       epsabs=0.0, epsrel=1e-12, limit=200)
    cdf = cumulative_trapezoid(np.exp(log_f - shift), grid, initial=0.0)
    return Tabulated1d(math.log(integral) + shift, torch.from_numpy(grid), torch.from_numpy(cdf / cdf[-1]))


def inverse_cdf(u: Tensor, grid: Tensor, cdf: Tensor) -> Tensor:
    """The tabulated quantile function at ``u`` in [0, 1]: linear interpolation through ``(cdf, grid)``."""
    return _interp(u, cdf, grid)


def sample_tabulated(n: int, columns: int, grid: Tensor, cdf: Tensor) -> Tensor:
    """``(n, columns)`` independent draws by inverse CDF, computed in the table's dtype and returned in the
    default dtype on the table's device."""
    u = torch.rand(n, columns, dtype=cdf.dtype, device=cdf.device)
    return inverse_cdf(u, grid, cdf).to(torch.get_default_dtype())


def _interp(u: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation through ``(xp, fp)`` at ``u`` (``xp`` non-decreasing), like ``np.interp``."""
    i = torch.searchsorted(xp, u).clamp(1, xp.numel() - 1)
    x0, x1 = xp[i - 1], xp[i]
    t = ((u - x0) / (x1 - x0).clamp_min(torch.finfo(xp.dtype).tiny)).clamp(0.0, 1.0)
    return fp[i - 1] + t * (fp[i] - fp[i - 1])
