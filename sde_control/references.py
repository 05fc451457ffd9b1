r"""Reference processes of the samplers and their discretisation, in generation time ``s in [0, T]``.

Every sampler simulates a Markov chain ``z_0, ..., z_N`` on a grid ``0 = s_0 < ... < s_N = T``. Its state ``z`` is
the position ``x`` (overdamped samplers) or the pair ``(x, v)`` of position and velocity (underdamped ones). Step
``k`` is one Gaussian sub-step on a *noise block* ``y`` of the state (``x`` itself, or the velocity ``v``),
between two deterministic, volume-preserving maps (the identity for overdamped chains, the leapfrog parts of a
splitting scheme for underdamped ones)::

    z~_k = before_noise_k(z_k)
    y'   = A_k y + B_k u(z~_k, s_k) + sqrt(v_k) xi_k,    y the noise block of z~_k
    z_{k+1} = after_noise_k(z~'_k),                      z~'_k = z~_k with y replaced by y'

so the stochastic sub-step has the kernel ``q_u(y'|y) = N(A_k y + B_k u, v_k I)`` and ``q_0`` is the same without
control. The reference also has *backward kernels* on the same block, ``p(y | y') = N(b_k y' + beta_k w, c_k I)``,
with a backward control ``w(z~'_k, s_{k+1})`` (zero unless the sampler learns one: the Bridge, CMCD). The log
importance weight of a path is the ratio of the two path densities (:mod:`sde_control.weights`; docs/samplers.md,
"The discrete-time weight"); the deterministic maps have unit Jacobian and drop out of it.

The references:

* :class:`TimeReversalReference` (DIS, the Bridge, CMCD): the reversal of a noising SDE started from a prior;
  its backward kernel is the noising SDE's exact transition.
* :class:`ForwardReference` (PIS, DDS): an SDE run forwards from a point or its stationary law, with exact steps.
* :class:`UnderdampedReference` (the underdamped DIS and Bridge): Langevin dynamics on ``(x, v)`` for the prior,
  split into an Ornstein-Uhlenbeck step on the velocity and leapfrog steps.
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
    """Coefficients of the simulated sub-steps ``q_u(y'|y) = N(A_k y + B_k u_k, v_k I)``, each of shape (N,)."""

    scale: Tensor
    control: Tensor
    var: Tensor

    def to(self, dtype: torch.dtype) -> ForwardKernels:
        return ForwardKernels(self.scale.to(dtype), self.control.to(dtype), self.var.to(dtype))


@dataclass(frozen=True)
class BackwardKernels:
    """Coefficients of the backward kernels ``p(y|y') = N(b_k y' + beta_k w_k, c_k I)``, each of shape (N,).

    ``control`` is ``beta_k``, the weight of a learned backward control ``w`` (a Bridge's); the reference's own
    backward kernel is the one with ``w = 0``. Unless a reference says otherwise ``beta_k = sqrt(c_k h_k)``, so that
    ``beta_k / sqrt(c_k) = sqrt(h_k)``, as ``B_k / sqrt(v_k)`` for Euler steps: ``w`` is measured in units of the
    noise, like ``u``.
    """

    scale: Tensor
    var: Tensor
    control: Tensor

    def to(self, dtype: torch.dtype) -> BackwardKernels:
        return BackwardKernels(self.scale.to(dtype), self.var.to(dtype), self.control.to(dtype))


def time_grid(T: float, steps: int) -> Tensor:
    """Uniform grid ``s_k = k T / N``, ``k = 0..N``, in float64 on the CPU (grids and the per-step
    coefficients derived from them stay there; :func:`sde_control.device.like` moves them)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"the number of steps must be a positive int, got {steps!r}")
    return torch.linspace(0.0, T, steps + 1, dtype=torch.float64)


def log_normal(x: Tensor, mean: Tensor | float, var: Tensor | float) -> Tensor:
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
    """Uncontrolled generation process, its discretisation and its backward kernels (module docstring).

    ``dim`` is the dimension of the target (the position); ``state_dim`` that of the chain's state. The
    overdamped references below need only the kernels, the prior and the drift of the continuous SDE (for the
    adjoint); an underdamped one also splits each step (:meth:`before_noise`, :meth:`after_noise`).
    """

    def __init__(self, dim: int, T: float):
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim, self.T = dim, float(T)

    # ------------------------------------------------------------------ the state
    @property
    def state_dim(self) -> int:
        """Dimension of the chain's state (``dim``, or ``2 dim`` with a velocity)."""
        return self.dim

    def position(self, z: Tensor) -> Tensor:
        """The position ``x`` of states ``z`` (the samples)."""
        return z[..., : self.dim]

    def noise_block(self, z: Tensor) -> Tensor:
        """The block ``y`` of ``z`` that the Gaussian sub-step moves."""
        return z

    def with_noise_block(self, z: Tensor, y: Tensor) -> Tensor:
        """``z`` with its noise block replaced by ``y``."""
        return y

    def before_noise(self, z: Tensor, k: int, h: float) -> Tensor:
        """The deterministic map applied before the Gaussian sub-step of step ``k`` (of size ``h``)."""
        return z

    def after_noise(self, z: Tensor, k: int, h: float) -> Tensor:
        """The deterministic map applied after the Gaussian sub-step of step ``k``."""
        return z

    def undo_before_noise(self, z: Tensor, k: int, h: float) -> Tensor:
        """Inverse of :meth:`before_noise`."""
        return z

    def undo_after_noise(self, z: Tensor, k: int, h: float) -> Tensor:
        """Inverse of :meth:`after_noise`."""
        return z

    @property
    def splits_steps(self) -> bool:
        """Whether the steps have deterministic sub-steps (the noise block is then not the whole state)."""
        return False

    # ------------------------------------------------------------------ the kernels
    @abc.abstractmethod
    def forward_kernels(self, grid: Tensor) -> ForwardKernels:
        """Coefficients of the simulated sub-steps ``q_u`` on ``grid``."""

    @abc.abstractmethod
    def backward_kernels(self, grid: Tensor) -> BackwardKernels:
        """Coefficients ``(b_k, c_k, beta_k)`` of the backward kernels."""

    @abc.abstractmethod
    def sample_initial(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """``n`` draws of ``z_0 ~ p_0``, shape (n, state_dim), float32."""

    @abc.abstractmethod
    def log_initial(self, z0: Tensor) -> Tensor:
        """``log p_0(z_0)``."""

    def log_terminal_auxiliary(self, zN: Tensor) -> Tensor | float:
        """``log`` of the law the target-started backward process gives the auxiliary part of ``z_N`` (a velocity);
        0 when the state is the position alone."""
        return 0.0

    def telescopes(self, grid: Tensor) -> bool:
        """Whether the uncontrolled kernel ratios of the path term telescope on ``grid``
        (:meth:`telescoped_log_ratio`).

        They do for every reference whose forward sub-step is the exact inverse of its backward kernel,
        ``A_k = 1 / b_k`` and ``v_k = c_k / b_k^2``: the quadratic forms then agree and only the normalisers remain,
        ``d sum_k log A_k`` (DIS's exponential integrator, Brownian references); :class:`ForwardReference` overrides
        both methods.
        """
        if self.splits_steps:
            return False
        forward, backward = self.forward_kernels(grid), self.backward_kernels(grid)
        return bool(torch.allclose(forward.scale * backward.scale, torch.ones_like(forward.scale), rtol=1e-12)
                    and torch.allclose(forward.var, backward.var / backward.scale**2, rtol=1e-12))

    def telescoped_log_ratio(self, z0: Tensor, zN: Tensor, grid: Tensor) -> Tensor:
        r"""The path term ``\log p_{ref}(z_{0:N-1}|z_N) - \log q_0(z_{0:N})`` (incl. ``- log p_0(z_0)``) in closed
        form from the end points, where :meth:`telescopes`; elsewhere the chain sums the per-step kernel ratios
        (:func:`sde_control.weights.kernel_log_ratio`)."""
        return -self.log_initial(z0) + self.dim * float(torch.log(self.forward_kernels(grid).scale).sum())

    def log_ratio(self, states: Tensor, grid: Tensor) -> Tensor:
        r"""``\log p_{ref}(x_{0:N-1} | x_N) - \log q_0(x_{0:N})`` for the states (N+1, batch, dim) of an overdamped
        chain: the telescoped closed form where there is one, else the sum of the per-step kernel ratios."""
        if self.telescopes(grid):
            return self.telescoped_log_ratio(states[0], states[-1], grid)
        forward, backward = self.forward_kernels(grid), self.backward_kernels(grid)
        A, v = like(forward.scale, states), like(forward.var, states)
        b, c = like(backward.scale, states), like(backward.var, states)
        x, x_next = states[:-1], states[1:]
        log_backward = log_normal(x, b[:, None, None] * x_next, c[:, None])
        log_forward = log_normal(x_next, A[:, None, None] * x, v[:, None])
        return (log_backward - log_forward).sum(0) - self.log_initial(states[0])

    # ------------------------------------------------------------------ the continuous SDE (adjoint training)
    def drift_coefficient(self, s: Tensor) -> Tensor:
        """``m(s)``: the uncontrolled drift of the continuous SDE is ``m(s) x``."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous-time form for the adjoint")

    def diffusion(self, s: Tensor) -> Tensor:
        """``sigma(s)``."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous-time form for the adjoint")

    def log_ratio_continuous(self, x0: Tensor, xN: Tensor) -> Tensor:
        """The continuous-time limit of the path term, from the end points only (adjoint training)."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous-time form for the adjoint")


def _default_backward_control(var: Tensor, grid: Tensor) -> Tensor:
    """``beta_k = sqrt(c_k h_k)`` (:class:`BackwardKernels`)."""
    return (var * grid.diff()).sqrt()


class TimeReversalReference(Reference):
    r"""DIS reference: the time reversal of a noising SDE, without its score.

    In generation time the uncontrolled drift is ``m(s) = -f(T - s)``, ``sigma(s) = g(T - s)``,
    started from the prior ``p_0 = N(mean, std^2 I)`` (default ``N(0, I)``, an approximation
    of the law of ``Y_T`` that the weight accounts for through ``-log p_0(X_0)``). The backward
    kernel is the noising SDE's exact transition ``N(a_k x', gamma_k I)`` over ``[T - s_{k+1}, T - s_k]``. The
    optimal control is ``u*(x, s) = sigma(s) grad log p_{T-s}(x)`` with ``p_t`` the noised target.

    Integrators (the forward sub-step ``N(A x + B u, v I)``):

    * ``"ancestral"`` (default): ``A = 1/a``, ``B = (1/a - a) / sigma(s_k)``, ``v = gamma``: DDPM's ancestral
      step (Ho et al. 2020, Algorithm 2 with variance ``beta_t``) with the score ``u / sigma``. For the target
      ``N(0, I)`` every marginal of the noising SDE is ``N(0, I)``, its reversal over a step is exactly
      ``N(a x, gamma I)``, and the continuous-time optimal control ``u* = -sigma x`` makes the step that kernel:
      the weights are constant at any step count. ``A = 1 + beta h / 2 + O(h^2)``, ``B = sigma h + O(h^2)``.
    * ``"euler"``: Euler-Maruyama (the DIS paper): ``A = 1 + m h``, ``B = sigma h``, ``v = sigma^2 h``.
    * ``"exponential"``: the linear drift integrated exactly (``A = 1/a``, ``v = gamma / a^2``), the uncontrolled
      reference's own transition; its Gaussian parts of the kernel ratio cancel: ``log_ratio = -log p_0(X_0)
      + d sum_k log(1/a_k)``, the discrete twin of ``int div(m) ds``.

    Why only the ancestral step removes DIS's variance floor: a control moves the mean of a step, never its
    variance. The step that the optimal chain takes, the reversal of the noising kernel, has variance
    ``gamma_k`` (exactly for ``N(0, I)``; near the prior end of generation, where ``beta`` is largest, for any
    target), while Euler's is ``sigma^2 h`` and the exponential integrator's ``gamma / a^2``: the uncontrolled
    reference's transition *expands* (``dX = beta/2 X ds + ...``), the optimal process contracts. The mismatch
    costs ``d/2 sum_k (r_k - 1 - log r_k)`` nats of KL with ``r_k`` the ratio of the variances, about
    ``d/4 sum_k (beta_k h)^2`` for the exponential integrator: 3.3 nats at d = 50 and 128 steps, which no control
    can remove (docs/samplers.md, "DIS's variance floor").
    """

    INTEGRATORS = ("ancestral", "euler", "exponential")

    def __init__(
        self,
        sde: ScalarSDE,
        dim: int,
        prior_mean: Tensor | float = 0.0,
        prior_std: float = 1.0,
        integrator: str = "ancestral",
    ):
        super().__init__(dim, sde.T)
        if integrator not in self.INTEGRATORS:
            raise ValueError(f"integrator must be one of {', '.join(map(repr, self.INTEGRATORS))}, got {integrator!r}")
        if prior_std <= 0:
            raise ValueError(f"prior_std must be positive, got {prior_std}")
        self.sde = sde
        self.prior_mean = torch.as_tensor(prior_mean, dtype=torch.float32).expand(dim).clone()
        self.prior_std = float(prior_std)
        self.integrator = integrator

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
        a, gamma = self._transition(grid)
        if self.integrator == "ancestral":
            return ForwardKernels(1.0 / a, (1.0 / a - a) / self.diffusion(s), gamma)
        scale = 1.0 / a
        return ForwardKernels(scale, _exact_control_coefficient(scale, h, self.diffusion(s + h / 2)), gamma / a**2)

    def _transition(self, grid: Tensor) -> tuple[Tensor, Tensor]:
        """``(a_k, gamma_k)`` of the noising SDE from noising time ``T - s_{k+1}`` to ``T - s_k``."""
        t = self._noising_time(grid)
        return self.sde.transition(t[1:], t[:-1])

    def backward_kernels(self, grid: Tensor) -> BackwardKernels:
        a, gamma = self._transition(grid)
        return BackwardKernels(a, gamma, _default_backward_control(gamma, grid))

    def sample_initial(self, n: int, device: torch.device | str | None = None) -> Tensor:
        noise = torch.randn(n, self.dim, device=device)
        return like(self.prior_mean, noise) + self.prior_std * noise

    def log_initial(self, z0: Tensor) -> Tensor:
        return log_normal(z0, like(self.prior_mean, z0), self.prior_std**2)

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
        super().__init__(dim, sde.T)
        if initial_std < 0:
            raise ValueError(f"initial_std must be non-negative, got {initial_std}")
        self.sde = sde
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
        c = v[:-1] * (1.0 - b * scale)
        return BackwardKernels(b, c, _default_backward_control(c, grid))

    def sample_initial(self, n: int, device: torch.device | str | None = None) -> Tensor:
        return self.initial_std * torch.randn(n, self.dim, device=device)

    def log_initial(self, z0: Tensor) -> Tensor:
        if self.initial_std == 0:
            raise ValueError("p_0 is a point mass; use log_ratio, which telescopes it away")
        return log_normal(z0, 0.0, self.initial_std**2)

    def log_terminal(self, x: Tensor) -> Tensor:
        """``log pi_T(x)``, the uncontrolled terminal marginal."""
        return log_normal(x, 0.0, self.terminal_var)

    def telescopes(self, grid: Tensor) -> bool:
        return True

    def telescoped_log_ratio(self, z0: Tensor, zN: Tensor, grid: Tensor) -> Tensor:
        return -self.log_terminal(zN)

    def log_ratio_continuous(self, x0: Tensor, xN: Tensor) -> Tensor:
        return -self.log_terminal(xN)


class UnderdampedReference(Reference):
    r"""Underdamped Langevin dynamics for the prior, on the state ``z = (x, v)`` (unit mass): the reference of the
    underdamped DIS and Bridge samplers (Blessing et al. 2025, "Underdamped diffusion bridges with applicable time
    discretization").

    In continuous time (generation time ``s``)

    .. math::  dx = v\, ds, \qquad dv = \big(\nabla \log p_0(x) - \gamma v + \sigma u\big) ds + \sigma dW,
               \qquad \sigma = \sqrt{2 \gamma},

    with ``p_0 = N(mean, std^2 I)`` and ``z_0 ~ p_0 x N(0, I)``, which the uncontrolled dynamics leave invariant;
    the target-started backward process runs the same dynamics from ``rho / Z x N(0, I)``. A step of size ``h`` is
    split into an Ornstein-Uhlenbeck step of the velocity (O, exact: ``v' = e^{-gamma h} v + B u + sqrt(1 -
    e^{-2 gamma h}) xi`` with ``B = sigma h phi(-gamma h)``, which keeps ``N(0, I)`` invariant) and leapfrog
    sub-steps, B: ``v += h/2 grad log p_0(x)``, A: ``x += h v``, in the order ``splitting``:

    * ``"OBAB"``: O(h), then B(h/2) A(h) B(h/2);
    * ``"BAOAB"``: B(h/2) A(h/2), then O(h), then A(h/2) B(h/2).

    The leapfrog maps are deterministic, invertible and volume-preserving, so only the O sub-steps enter the weight.
    The backward kernel of an O step is the same Ornstein-Uhlenbeck kernel read backwards, ``N(e^{-gamma h} v' +
    beta w, (1 - e^{-2 gamma h}) I)`` with ``beta = B`` (its reversal with respect to ``N(0, I)``), so the path term
    is ``sum_k [log N(v_k; 0, I) - log N(v'_k; 0, I)]`` plus the end terms ``log N(v_N; 0, I) - log p_0(z_0)``; over a
    path it is minus the leapfrog's energy error, small but not zero.
    """

    SPLITTINGS = ("OBAB", "BAOAB")

    def __init__(self, dim: int, T: float = 5.0, friction: float = 1.0, prior_mean: Tensor | float = 0.0,
                 prior_std: float = 1.0, splitting: str = "OBAB"):
        super().__init__(dim, T)
        if not T > 0 or not friction > 0 or not prior_std > 0:
            raise ValueError(f"need T, friction, prior_std > 0, got {T}, {friction}, {prior_std}")
        if splitting not in self.SPLITTINGS:
            raise ValueError(f"splitting must be one of {', '.join(map(repr, self.SPLITTINGS))}, got {splitting!r}")
        self.friction, self.splitting = float(friction), splitting
        self.prior_mean = torch.as_tensor(prior_mean, dtype=torch.float32).expand(dim).clone()
        self.prior_std = float(prior_std)

    @property
    def state_dim(self) -> int:
        return 2 * self.dim

    @property
    def splits_steps(self) -> bool:
        return True

    def diffusion(self, s: Tensor) -> Tensor:
        """``sigma = sqrt(2 gamma)``, the velocity's diffusion (constant)."""
        return torch.full_like(torch.as_tensor(s, dtype=torch.float64), math.sqrt(2 * self.friction))

    def velocity(self, z: Tensor) -> Tensor:
        return z[..., self.dim:]

    def noise_block(self, z: Tensor) -> Tensor:
        return self.velocity(z)

    def with_noise_block(self, z: Tensor, y: Tensor) -> Tensor:
        return torch.cat([self.position(z), y], dim=-1)

    # ------------------------------------------------------------------ leapfrog sub-steps
    def _kick(self, z: Tensor, h: float) -> Tensor:
        """B: ``v += h grad log p_0(x)``."""
        x, v = self.position(z), self.velocity(z)
        return torch.cat([x, v - (h / self.prior_std**2) * (x - like(self.prior_mean, x))], dim=-1)

    def _drift(self, z: Tensor, h: float) -> Tensor:
        """A: ``x += h v``."""
        x, v = self.position(z), self.velocity(z)
        return torch.cat([x + h * v, v], dim=-1)

    def before_noise(self, z: Tensor, k: int, h: float) -> Tensor:
        return z if self.splitting == "OBAB" else self._drift(self._kick(z, h / 2), h / 2)

    def after_noise(self, z: Tensor, k: int, h: float) -> Tensor:
        if self.splitting == "OBAB":
            return self._kick(self._drift(self._kick(z, h / 2), h), h / 2)
        return self._kick(self._drift(z, h / 2), h / 2)

    def undo_before_noise(self, z: Tensor, k: int, h: float) -> Tensor:
        return z if self.splitting == "OBAB" else self._kick(self._drift(z, -h / 2), -h / 2)

    def undo_after_noise(self, z: Tensor, k: int, h: float) -> Tensor:
        if self.splitting == "OBAB":
            return self._kick(self._drift(self._kick(z, -h / 2), -h), -h / 2)
        return self._drift(self._kick(z, -h / 2), -h / 2)

    # ------------------------------------------------------------------ kernels and end points
    def forward_kernels(self, grid: Tensor) -> ForwardKernels:
        h = grid.diff()
        scale = torch.exp(-self.friction * h)
        sigma = torch.full_like(h, math.sqrt(2 * self.friction))
        return ForwardKernels(scale, _exact_control_coefficient(scale, h, sigma), -torch.expm1(-2 * self.friction * h))

    def backward_kernels(self, grid: Tensor) -> BackwardKernels:
        forward = self.forward_kernels(grid)
        return BackwardKernels(forward.scale, forward.var, forward.control)

    def sample_initial(self, n: int, device: torch.device | str | None = None) -> Tensor:
        noise = torch.randn(n, 2 * self.dim, device=device)
        x = like(self.prior_mean, noise) + self.prior_std * noise[:, : self.dim]
        return torch.cat([x, noise[:, self.dim:]], dim=-1)

    def log_initial(self, z0: Tensor) -> Tensor:
        x, v = self.position(z0), self.velocity(z0)
        return log_normal(x, like(self.prior_mean, x), self.prior_std**2) + log_normal(v, 0.0, 1.0)

    def log_terminal_auxiliary(self, zN: Tensor) -> Tensor:
        return log_normal(self.velocity(zN), 0.0, 1.0)
