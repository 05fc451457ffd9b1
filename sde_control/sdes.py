r"""Linear SDEs with closed-form transitions.

Every process here is a linear SDE in *noising time* ``t in [0, T]`` (data at ``t = 0``):

.. math::  dY_t = f(t) Y_t \, dt + g(t) \, dW_t ,

with scalar coefficients acting on every coordinate alike. Its transition from ``t0`` to
``t1 >= t0`` is Gaussian,

.. math::  Y_{t_1} | Y_{t_0} \sim N(a Y_{t_0}, \gamma I), \quad
           a = e^{\int_{t_0}^{t_1} f}, \quad
           \gamma = \int_{t_0}^{t_1} e^{2 \int_r^{t_1} f} g(r)^2 dr .

The samplers use them as references (DIS: the time reversal of :class:`VP`; PIS:
:class:`ScaledBrownian` from the origin; DDS: a stationary :class:`VP`).
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor


class LinearSDE(abc.ABC):
    """``dY = f(t) Y dt + g(t) dW`` on ``[0, T]`` with a closed-form transition."""

    T: float

    @abc.abstractmethod
    def f(self, t: Tensor) -> Tensor:
        """Drift coefficient ``f(t)``."""

    @abc.abstractmethod
    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion coefficient ``g(t)^2``."""

    def g(self, t: Tensor) -> Tensor:
        """Diffusion coefficient ``g(t)``."""
        return self.g2(t).sqrt()

    @abc.abstractmethod
    def transition(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, gamma)`` with ``Y_t1 | Y_t0 ~ N(a Y_t0, gamma I)``, elementwise in ``t0 <= t1``."""

    @abc.abstractmethod
    def time_flipped(self) -> LinearSDE:
        """The SDE with coefficients read backwards in time: ``f(T - t)``, ``g(T - t)``."""

    def marginal(self, t: Tensor, mean0: Tensor | float = 0.0, var0: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``Y_t`` when ``Y_0 ~ N(mean0, var0 I)``: ``(a m0, a^2 v0 + gamma)``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        a, gamma = self.transition(torch.zeros_like(t), t)
        return a * mean0, a**2 * var0 + gamma


class VP(LinearSDE):
    r"""Variance-preserving SDE: ``f = -beta(t) / 2``, ``g^2 = beta(t)``, linear ``beta``.

    ``beta(t) = beta_0 + (beta_T - beta_0) t / T``; the DIS/score-SDE default is
    ``beta_min = 0.1`` at ``t = 0`` rising to ``beta_max = 10`` at ``t = T = 1``. With
    ``B = int_{t0}^{t1} beta``, the transition is ``a = exp(-B / 2)``, ``gamma = 1 - exp(-B)``,
    so ``N(0, I)`` is stationary for every schedule.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 10.0, T: float = 1.0):
        if beta_min <= 0 or beta_max <= 0 or T <= 0:
            raise ValueError(f"VP needs beta_min, beta_max, T > 0, got {beta_min}, {beta_max}, {T}")
        self.beta_0, self.beta_T, self.T = float(beta_min), float(beta_max), float(T)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_0 + (self.beta_T - self.beta_0) * t / self.T

    def integrated_beta(self, t0: Tensor, t1: Tensor) -> Tensor:
        """``int_{t0}^{t1} beta(r) dr``."""
        return (t1 - t0) * (self.beta_0 + (self.beta_T - self.beta_0) * (t0 + t1) / (2 * self.T))

    def f(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def g2(self, t: Tensor) -> Tensor:
        return self.beta(t)

    def transition(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        b = self.integrated_beta(t0, t1)
        return torch.exp(-0.5 * b), -torch.expm1(-b)

    def time_flipped(self) -> VP:
        return VP(beta_min=self.beta_T, beta_max=self.beta_0, T=self.T)

    def __repr__(self) -> str:
        return f"VP(beta(0)={self.beta_0:g}, beta(T)={self.beta_T:g}, T={self.T:g})"


class ScaledBrownian(LinearSDE):
    """``dY = sigma dW``: ``f = 0``, ``g^2 = sigma2`` (PIS: ``sigma2 = 0.2``, ``T = 5``)."""

    def __init__(self, sigma2: float = 0.2, T: float = 5.0):
        if sigma2 <= 0 or T <= 0:
            raise ValueError(f"ScaledBrownian needs sigma2, T > 0, got {sigma2}, {T}")
        self.sigma2, self.T = float(sigma2), float(T)

    def f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(torch.as_tensor(t, dtype=torch.float64))

    def g2(self, t: Tensor) -> Tensor:
        return torch.full_like(torch.as_tensor(t, dtype=torch.float64), self.sigma2)

    def transition(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t1 - t0), self.sigma2 * (t1 - t0)

    def time_flipped(self) -> ScaledBrownian:
        return self

    def __repr__(self) -> str:
        return f"ScaledBrownian(sigma={math.sqrt(self.sigma2):.4g}, T={self.T:g})"
