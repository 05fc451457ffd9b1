"""Many-well target with ``2^(dim/2)`` modes (the FAB paper's ManyWell-32)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sde_control.target import Target
from sde_control.targets._tabulated import sample_tabulated, tabulate_1d

# The 1-d well f(x) = exp(-x^4 + 6 x^2 + 0.5 x) peaks at log f = 9.871 (x = 1.7525; the other well at x = -1.7108).
# At |x| = 3.4, log f <= -62.5, 72 below the peak, and further out it falls like -x^4: the mass outside the grid
# [-3.4, 3.4] is below e^-72 of the total, far below the quadrature tolerance.
_HALF_WIDTH = 3.4
# The 1-d well's stationary points, roots of -4 x^3 + 12 x + 0.5 (two maxima, one minimum near 0).
_WELL_MODES = (-1.7108290410295461, 1.7525198623099463)


class ManyWell(Target):
    r"""FAB's many-well: ``dim / 2`` independent pairs ``(x, y)``, each with

        ``log rho(x, y) = -x^4 + 6 x^2 + 0.5 x - y^2 / 2``,

    laid out as in FAB's ``ManyWellEnergy``: pair ``i`` is coordinates ``(2i, 2i + 1)``, so the double-well ``x``
    coordinates are the even ones (0, 2, 4, ...) and the Gaussian ``y`` coordinates the odd ones. The ``x`` wells
    sit near ``-1.71`` and ``+1.75`` (the ``0.5 x`` tilt makes the right one heavier), so there are ``2^(dim/2)``
    modes (65,536 for ``dim = 32``). Unnormalised, with

        ``log Z = (dim / 2) (log z_x + 1/2 log(2 pi))``,  ``z_x = int exp(-x^4 + 6 x^2 + 0.5 x) dx = 11784.50927``,

    ``z_x`` by 1-d quadrature (``scipy.integrate.quad``), so ``log Z = 164.696`` for ``dim = 32``.
    Closed-form score: ``-4 x^3 + 12 x + 0.5`` on the ``x`` coordinates, ``-y`` on the ``y`` coordinates.
    ``sample`` is exact up to the resolution of a 20,001-point grid on ``[-3.4, 3.4]``: each ``x`` by inverse-CDF
    sampling of the 1-d density (as :class:`~sde_control.targets.DoubleWell`), each ``y`` standard normal.
    """

    well_modes: tuple[float, float] = _WELL_MODES

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even int >= 2, got {dim!r}")
        self.dim = dim
        self.num_pairs = dim // 2
        table = tabulate_1d(self._well_log_density, -_HALF_WIDTH, _HALF_WIDTH, points=_WELL_MODES)
        self.log_z_x = table.log_normaliser
        self.log_Z = self.num_pairs * (self.log_z_x + 0.5 * math.log(2 * math.pi))
        self.register_buffer("grid", table.grid)
        self.register_buffer("cdf", table.cdf)

    @staticmethod
    def _well_log_density(x: np.ndarray | float) -> np.ndarray | float:
        """``log f(x) = -x^4 + 6 x^2 + 0.5 x``, the unnormalised log density of one ``x`` coordinate."""
        x2 = np.square(x)
        return -x2 * x2 + 6 * x2 + 0.5 * x

    def log_prob(self, x: Tensor) -> Tensor:
        wells, gauss = x[:, 0::2], x[:, 1::2]
        w2 = wells.square()
        return (-w2 * w2 + 6 * w2 + 0.5 * wells).sum(-1) - 0.5 * gauss.square().sum(-1)

    def score(self, x: Tensor) -> Tensor:
        """``-4 x^3 + 12 x + 0.5`` on the even (well) coordinates, ``-y`` on the odd (Gaussian) ones."""
        wells, gauss = x[:, 0::2], x[:, 1::2]
        return torch.stack([-4 * wells**3 + 12 * wells + 0.5, -gauss], dim=-1).flatten(1)

    def sample(self, n: int) -> Tensor:
        wells = sample_tabulated(n, self.num_pairs, self.grid, self.cdf)
        gauss = torch.randn(n, self.num_pairs, device=wells.device)
        return torch.stack([wells, gauss], dim=-1).flatten(1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_pairs={self.num_pairs}"
