"""Neal's funnel."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sde_control.target import Target


class Funnel(Target):
    r"""Neal's funnel on R^d: ``x_1 ~ N(0, scale^2)``, ``x_i | x_1 ~ N(0, exp(x_1))`` for ``i = 2..d``.

    ``log rho(x) = -x_1^2 / (2 scale^2) - 1/2 log(2 pi scale^2)
    + sum_{i >= 2} [-x_i^2 exp(-x_1) / 2 - x_1 / 2 - 1/2 log(2 pi)]``, normalised (``log_Z = 0``).
    ``sample`` is exact: ``x_1 = scale z_1``, ``x_i = exp(x_1 / 2) z_i`` with ``z`` standard normal.

    The benchmark funnel (PIS/DIS, ``dim=10``) has ``scale = 3``: the first coordinate has *standard deviation* 3,
    variance 9. Some code uses variance 1 for ``x_1``, a different and much easier target.
    """

    def __init__(self, dim: int = 10, scale: float = 3.0) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 2:
            raise ValueError(f"dim must be an int >= 2, got {dim!r}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be positive and finite, got {scale}")
        self.dim = dim
        self.scale = float(scale)
        self.log_Z = 0.0

    def log_prob(self, x: Tensor) -> Tensor:
        x1, rest = x[:, 0], x[:, 1:]
        log_p1 = -0.5 * (x1 / self.scale) ** 2 - 0.5 * math.log(2 * math.pi * self.scale**2)
        log_p_rest = -0.5 * ((rest * torch.exp(-0.5 * x1)[:, None]) ** 2).sum(-1) - (self.dim - 1) * 0.5 * (
            x1 + math.log(2 * math.pi)
        )
        return log_p1 + log_p_rest

    def score(self, x: Tensor) -> Tensor:
        r"""``d/dx_1 = -x_1 / scale^2 + 1/2 e^{-x_1} sum_{i>=2} x_i^2 - (d-1)/2``, ``d/dx_i = -x_i e^{-x_1}``."""
        x1, rest = x[:, :1], x[:, 1:]
        precision = torch.exp(-x1)
        d1 = -x1 / self.scale**2 + 0.5 * precision * rest.square().sum(-1, keepdim=True) - 0.5 * (self.dim - 1)
        return torch.cat([d1, -rest * precision], dim=1)

    def sample(self, n: int) -> Tensor:
        z = torch.randn(n, self.dim)
        x1 = self.scale * z[:, :1]
        return torch.cat([x1, torch.exp(0.5 * x1) * z[:, 1:]], dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}"
