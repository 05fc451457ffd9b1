r"""Reference processes of the samplers, in generation time ``s in [0, T]``.

A sampler simulates the controlled SDE

.. math::  dX_s = \big(m(s) X_s + \sigma(s) u(X_s, s)\big) ds + \sigma(s) dW_s, \quad X_0 \sim p_0,

on a grid ``0 = s_0 < ... < s_N = T``. Each step is a Gaussian transition with the control held
at its left end,

.. math::  q_u(X_{k+1} | X_k) = N\big(A_k X_k + B_k u(X_k, s_k),\; v_k I\big),

and ``q_0`` is the same step without control. A reference also has a *backward kernel*
``p_ref(X_k | X_{k+1}) = N(b_k X_{k+1}, c_k I)``: the path density of the target-started
reference read backwards. The importance weight of a simulated path is then the ratio of the
discrete path densities (docs/samplers.md, section 'The discrete-time weight'),

.. math::  \log w = \log\rho(X_N) + \underbrace{\log p_{ref}(X_{0:N-1}|X_N) - \log q_0(X_{0:N})}_{\text{log\_ratio}}
           + \sum_k \log \frac{q_0}{q_u}(X_{k+1}|X_k),

with ``E[w] = Z`` exactly at any step count and for any control. ``log_ratio`` involves the
path only (no control); the last sum is the control's running cost (:mod:`sde_control.weights`).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .device import like
from .sdes import ScalarSDE


@dataclass(frozen=True)
class ForwardKernels:
    """Coefficients of the simulated steps ``q_u(X_{k+1}|X_k) = N(A_k X_k + B_k u_k, v_k I)``, each of shape (N,)."""

    scale: Tensor
    control: Tensor
    var: Tensor

    def to(self, dtype: torch.dtype) -> ForwardKernels:
        return ForwardKernels(self.scale.to(dtype), self.control.to(dtype), self.var.to(dtype))


@dataclass(frozen=True)
class BackwardKernels:
    """Coefficients of the reference's backward kernels ``p_ref(X_k|X_{k+1}) = N(b_k X_{k+1}, c_k I)``, each (N,)."""

    scale: Tensor
    var: Tensor


def time_grid(T: float, steps: int) -> Tensor:
    """Uniform grid ``s_k = k T / N``, ``k = 0..N``, in float64 on the CPU (grids and the per-step
    coefficients derived from them stay there; :func:`sde_control.device.like` moves them)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"the number of steps must be a positive int, got {steps!r}")
    return torch.linspace(0.0, T, steps + 1, dtype=torch.float64)


def _log_normal(x: Tensor, mean: Tensor | float, var: Tensor | float) -> Tensor:
    """``log N(x; mean, var I) = -|x - mean|^2 / (2 var) - d/2 log(2 pi var)``, with ``var`` a float
    or of shape ``x.shape[:-1]`` or broadcastable to it (written out: ``torch.distributions.Normal``
    would expand ``var`` to the full shape of ``x`` and take its logarithm elementwise)."""
    log_var = math.log(2 * math.pi * var) if isinstance(var, float) else torch.log(2 * math.pi * var)
    return -0.5 * ((x - mean).square().sum(-1) / var + x.shape[-1] * log_var)


def _exact_control_coefficient(scale: Tensor, h: Tensor, sigma: Tensor) -> Tensor:
    r"""``B = \int_0^h e^{m (h - r)} \sigma dr = \sigma h \, \mathrm{expm1}(mh) / (mh)`` with ``mh = log A``."""
    z = torch.log(scale)
    phi = torch.where(z.abs() < 1e-8, 1.0 + z / 2, torch.expm1(z) / torch.where(z == 0, 1.0, z))
    return sigma * h * phi


class Reference(abc.ABC):
    """Uncontrolled generation process, its discretisation and its backward kernel."""

    def __init__(self, sde: ScalarSDE, dim: int):
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.sde, self.dim, self.T = sde, dim, sde.T

    @abc.abstractmethod
    def drift_coefficient(self, s: Tensor) -> Tensor:
        """``m(s)``: the uncontrolled drift is ``m(s) x``."""

    @abc.abstractmethod
    def diffusion(self, s: Tensor) -> Tensor:
        """``sigma(s)``."""

    @abc.abstractmethod
    def forward_kernels(self, grid: Tensor) -> ForwardKernels:
        """Coefficients of the simulated step ``q_u`` on ``grid``."""

    @abc.abstractmethod
    def backward_kernels(self, grid: Tensor) -> BackwardKernels:
        """``(b_k, c_k)`` with ``p_ref(X_k | X_{k+1}) = N(b_k X_{k+1}, c_k I)``."""

    @abc.abstractmethod
    def sample_initial(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """``n`` draws of ``X_0 ~ p_0``, shape (n, dim), float32."""

    def log_ratio(self, states: Tensor, grid: Tensor) -> Tensor:
        r"""``\log p_ref(X_{0:N-1} | X_N) - \log q_0(X_{0:N})`` for states of shape (N+1, batch, dim)."""
        forward, backward = self.forward_kernels(grid), self.backward_kernels(grid)
        A, v = like(forward.scale, states), like(forward.var, states)
        b, c = like(backward.scale, states), like(backward.var, states)
        x, x_next = states[:-1], states[1:]
        log_backward = _log_normal(x, b[:, None, None] * x_next, c[:, None])
        log_forward = _log_normal(x_next, A[:, None, None] * x, v[:, None])
        return (log_backward - log_forward).sum(0) - self.log_initial(states[0])

    @abc.abstractmethod
    def log_initial(self, x0: Tensor) -> Tensor:
        """``log p_0(X_0)``."""

    @abc.abstractmethod
    def log_ratio_continuous(self, x0: Tensor, xN: Tensor) -> Tensor:
        """The continuous-time limit of :meth:`log_ratio`, from the end points only (adjoint training)."""


class TimeReversalReference(Reference):
    r"""DIS reference: the time reversal of a noising SDE, without its score.

    In generation time the uncontrolled drift is ``m(s) = -f(T - s)``, ``sigma(s) = g(T - s)``,
    started from the prior ``p_0 = N(mean, std^2 I)`` (default ``N(0, I)``, an approximation
    of the law of ``Y_T`` that the weight accounts for through ``-log p_0(X_0)``). The backward
    kernel is the noising SDE's exact transition over ``[T - s_{k+1}, T - s_k]``. The optimal
    control is ``u*(x, s) = sigma(s) grad log p_{T-s}(x)`` with ``p_t`` the noised target.

    ``integrator="euler"``: Euler-Maruyama steps (the DIS paper). ``"exponential"``: the linear
    drift integrated exactly (``A = 1/a``, ``v = gamma / a^2``), which makes the Gaussian parts
    of the kernel ratio cancel: ``log_ratio = -log p_0(X_0) + d sum_k log(1/a_k)``, the discrete
    twin of ``int div(m) ds``.
    """

    def __init__(
        self,
        sde: ScalarSDE,
        dim: int,
        prior_mean: Tensor | float = 0.0,
        prior_std: float = 1.0,
        integrator: str = "euler",
    ):
        super().__init__(sde, dim)
        if integrator not in ("euler", "exponential"):
            raise ValueError(f"integrator must be 'euler' or 'exponential', got {integrator!r}")
        if prior_std <= 0:
            raise ValueError(f"prior_std must be positive, got {prior_std}")
        self.prior_mean = torch.as_tensor(prior_mean, dtype=torch.float32).expand(dim).clone()
        self.prior_std = float(prior_std)
        self.integrator = integrator

    def log_ratio(self, states: Tensor, grid: Tensor) -> Tensor:
        if self.integrator == "euler":
            return super().log_ratio(states, grid)
        a = self.backward_kernels(grid).scale
        return -self.log_initial(states[0]) - self.dim * float(torch.log(a).sum())

    def _noising_time(self, s: Tensor) -> Tensor:
        return self.T - torch.as_tensor(s, dtype=torch.float64)

    def drift_coefficient(self, s: Tensor) -> Tensor:
        return -self.sde.f(self._noising_time(s))

    def diffusion(self, s: Tensor) -> Tensor:
        return self.sde.g(self._noising_time(s))

    def forward_kernels(self, grid: Tensor) -> ForwardKernels:
        s, h = grid[:-1], grid.diff()
        if self.integrator == "euler":
            sigma = self.diffusion(s)
            return ForwardKernels(1.0 + self.drift_coefficient(s) * h, sigma * h, sigma**2 * h)
        backward = self.backward_kernels(grid)
        scale = 1.0 / backward.scale
        return ForwardKernels(scale, _exact_control_coefficient(scale, h, self.diffusion(s + h / 2)),
                              backward.var / backward.scale**2)

    def backward_kernels(self, grid: Tensor) -> BackwardKernels:
        t = self._noising_time(grid)
        return BackwardKernels(*self.sde.transition(t[1:], t[:-1]))

    def sample_initial(self, n: int, device: torch.device | str | None = None) -> Tensor:
        noise = torch.randn(n, self.dim, device=device)
        return like(self.prior_mean, noise) + self.prior_std * noise

    def log_initial(self, x0: Tensor) -> Tensor:
        return _log_normal(x0, like(self.prior_mean, x0), self.prior_std**2)

    def log_ratio_continuous(self, x0: Tensor, xN: Tensor) -> Tensor:
        a, _ = self.sde.transition(torch.tensor(0.0, dtype=torch.float64), torch.tensor(self.T, dtype=torch.float64))
        return -self.log_initial(x0) - self.dim * math.log(float(a))


class ForwardReference(Reference):
    r"""PIS/DDS reference: an SDE run forwards in generation time from ``N(0, std0^2 I)``.

    ``m(s) = f(s)``, ``sigma(s) = g(s)``; steps use the exact transition, so the uncontrolled
    chain has the exact terminal marginal ``pi_T = N(0, v_N I)``. Its backward kernel is the
    reversed Gaussian chain, ``b_k = v_k A_k / v_{k+1}``, ``c_k = v_k (1 - v_k A_k^2 / v_{k+1})``
    with ``v_k`` the marginal variances, and the path ratio telescopes to
    ``log_ratio = -log pi_T(X_N)``.

    PIS: ``ScaledBrownian(0.2, T=5)`` from the origin (``std0 = 0``); DDS: a VP process read
    from noise to data (``VP().time_flipped()``) from its stationary law (``std0 = 1``).
    """

    def __init__(self, sde: ScalarSDE, dim: int, initial_std: float = 0.0):
        super().__init__(sde, dim)
        if initial_std < 0:
            raise ValueError(f"initial_std must be non-negative, got {initial_std}")
        self.initial_std = float(initial_std)
        _, var_T = sde.marginal(torch.tensor(sde.T), var0=self.initial_std**2)
        self.terminal_var = float(var_T)

    def drift_coefficient(self, s: Tensor) -> Tensor:
        return self.sde.f(torch.as_tensor(s, dtype=torch.float64))

    def diffusion(self, s: Tensor) -> Tensor:
        return self.sde.g(torch.as_tensor(s, dtype=torch.float64))

    def forward_kernels(self, grid: Tensor) -> ForwardKernels:
        s, h = grid[:-1], grid.diff()
        scale, var = self.sde.transition(s, grid[1:])
        return ForwardKernels(scale, _exact_control_coefficient(scale, h, self.diffusion(s + h / 2)), var)

    def backward_kernels(self, grid: Tensor) -> BackwardKernels:
        _, v = self.sde.marginal(grid, var0=self.initial_std**2)
        scale = self.forward_kernels(grid).scale
        b = v[:-1] * scale / v[1:]
        return BackwardKernels(b, v[:-1] * (1.0 - b * scale))

    def sample_initial(self, n: int, device: torch.device | str | None = None) -> Tensor:
        return self.initial_std * torch.randn(n, self.dim, device=device)

    def log_initial(self, x0: Tensor) -> Tensor:
        if self.initial_std == 0:
            raise ValueError("p_0 is a point mass; use log_ratio, which telescopes it away")
        return _log_normal(x0, 0.0, self.initial_std**2)

    def log_terminal(self, x: Tensor) -> Tensor:
        """``log pi_T(x)``, the uncontrolled terminal marginal."""
        return _log_normal(x, 0.0, self.terminal_var)

    def log_ratio(self, states: Tensor, grid: Tensor) -> Tensor:
        return -self.log_terminal(states[-1])

    def log_ratio_continuous(self, x0: Tensor, xN: Tensor) -> Tensor:
        return -self.log_terminal(xN)
