"""Double-well target with ``2^m`` modes (the DIS paper's DW benchmark)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sde_control.target import Target
from sde_control.targets._tabulated import GRID_POINTS, sample_tabulated, tabulate_1d

# Half-width of the 1-d grid is sqrt(delta + sqrt(_TAIL_EXPONENT)): there (x^2 - delta)^2 = _TAIL_EXPONENT, so the
# density is e^-60 ~ 1e-26 of its peak and the mass outside the grid is far below 1e-12.
_TAIL_EXPONENT = 60.0


class DoubleWell(Target):
    r"""``log rho(x) = - sum_{i <= m} (x_i^2 - delta)^2 - 1/2 sum_{i > m} x_i^2`` on R^d (``m = num_wells``).

    The first ``m`` coordinates are independent double wells (modes at ``+-sqrt(delta)``), the rest standard
    normal without the ``(2 pi)^{-1/2}`` factor, so ``2^m`` modes and

        ``log Z = m log z_1 + (d - m)/2 log(2 pi)``,  ``z_1 = int exp(-(x^2 - delta)^2) dx``,

    with ``z_1`` by 1-d quadrature (``scipy.integrate.quad``). ``sample`` is exact up to the resolution of a
    20,001-point grid: each well coordinate by inverse-CDF sampling of the 1-d density (linear interpolation of its
    trapezoidal CDF; both from :func:`sde_control.targets._tabulated.tabulate_1d`), the rest standard normal. ``delta > 0``
    (for ``delta <= 0`` there is a single well).
    """

    def __init__(self, dim: int = 5, num_wells: int = 5, delta: float = 4.0) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(num_wells, int) or not 1 <= num_wells <= dim:
            raise ValueError(f"num_wells must be an int in [1, dim={dim}], got {num_wells!r}")
        if not (math.isfinite(delta) and delta > 0):
            raise ValueError(f"delta must be positive and finite, got {delta}")
        self.dim, self.num_wells, self.delta = dim, num_wells, float(delta)
        half_width = math.sqrt(delta + math.sqrt(_TAIL_EXPONENT))
        table = tabulate_1d(self._well_log_density, -half_width, half_width,
                            points=[-math.sqrt(delta), math.sqrt(delta)], grid_points=GRID_POINTS)
        self.log_z1 = table.log_normaliser
        self.log_Z = num_wells * self.log_z1 + 0.5 * (dim - num_wells) * math.log(2 * math.pi)
        self.register_buffer("grid", table.grid)
        self.register_buffer("cdf", table.cdf)

    @classmethod
    def dis_d5(cls) -> DoubleWell:
        """The DIS paper's DW with d = 5, m = 5, delta = 4 (32 modes)."""
        return cls(dim=5, num_wells=5, delta=4.0)

    @classmethod
    def dis_d50(cls) -> DoubleWell:
        """The DIS paper's DW with d = 50, m = 5, delta = 2 (32 modes)."""
        return cls(dim=50, num_wells=5, delta=2.0)

    def _well_log_density(self, x: np.ndarray | float) -> np.ndarray | float:
        """The log of the unnormalised 1-d well, ``-(x^2 - delta)^2``."""
        return -((np.square(x) - self.delta) ** 2)

    def log_prob(self, x: Tensor) -> Tensor:
        wells, rest = x[:, : self.num_wells], x[:, self.num_wells :]
        return -((wells**2 - self.delta) ** 2).sum(-1) - 0.5 * (rest**2).sum(-1)

    def score(self, x: Tensor) -> Tensor:
        """``-4 x_i (x_i^2 - delta)`` for the wells, ``-x_i`` for the rest."""
        wells, rest = x[:, : self.num_wells], x[:, self.num_wells :]
        return torch.cat([-4 * wells * (wells**2 - self.delta), -rest], dim=1)

    def sample(self, n: int) -> Tensor:
        wells = sample_tabulated(n, self.num_wells, self.grid, self.cdf)
        return torch.cat([wells, torch.randn(n, self.dim - self.num_wells, device=wells.device)], dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_wells={self.num_wells}, delta={self.delta}"
