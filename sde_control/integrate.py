r"""Simulation of the samplers' chains and of controlled SDEs: every call into ``torchsde`` is here.

Three entry points:

* :func:`simulate_chain`: the discretised chain of :mod:`sde_control.references` (Gaussian sub-steps
  ``y' = A_k y + B_k \bar u_k + sqrt(v_k) xi_k`` between deterministic maps), stepped by a plain loop with the
  noise of :class:`~sde_control.brownian.GridBrownian` (regenerated per step from a seed), accumulating the path
  term and the running costs ``C``, ``M``, ``D`` of the weight (:mod:`sde_control.weights`) on the way.
  Backpropagation goes through the whole path unless it is detached.

* :func:`simulate_continuous`: the continuous SDE ``dX = (m X + sigma u) ds + sigma dW`` with the
  energy ``1/2 int |u|^2 ds`` as an extra state (zero diffusion, so the noise stays additive),
  solved by ``torchsde.sdeint_adjoint``: memory independent of the number of steps. For the KL
  loss only (its integrand drops the mean-zero stochastic integral).

* :func:`solve`: any SDE ``dX = f ds + G dW`` or ODE on a grid (Euler or Heun), returning the
  whole path: the generative models' reverse SDE and probability-flow ODE.
"""

from __future__ import annotations

from typing import Callable

import torch
import torchsde
from torch import Tensor, nn

from .brownian import GridBrownian
from .controls import Control, on_grid
from .device import like
from .references import Reference, log_normal
from .weights import Trajectory, backward_costs, kernel_log_ratio, running_costs


def _new_seed() -> int:
    return int(torch.randint(0, 2**62, ()).item())


def simulate_chain(
    control: Control,
    reference: Reference,
    x0: Tensor,
    grid: Tensor,
    *,
    backward: Control | None = None,
    exploration: float = 0.0,
    seed: int | None = None,
    detach_drift: bool = False,
    stream_noise: bool = False,
    keep_states: bool = True,
) -> Trajectory:
    r"""Simulate the controlled chain of ``reference`` from ``x0`` (batch, state_dim) on ``grid`` (N+1,, on the CPU).

    Each step is ``z~ = before_noise(z)``, ``y' = A y + B \bar u + sqrt(v) xi`` on the noise block ``y`` of
    ``z~``, ``z' = after_noise(z~')`` (:mod:`sde_control.references`), with ``u = control(z~, s_k)``; the path term
    and the running costs ``C``, ``M`` and (with a ``backward`` control, evaluated at ``(z~', s_{k+1})``) ``D`` of
    the weight are accumulated on the way (:mod:`sde_control.weights`).

    Args:
        control, backward: the forward and (optional) backward controls, callables ``(z, s) -> (batch, dim)`` or
            networks with ``on_grid``.
        exploration: ``eta >= 0``; the path is driven by the behaviour control ``\bar u_k = u_k.detach() + eta
            sqrt(v_k) / B_k zeta_k`` with fresh standard normal ``zeta_k`` (sde_sampler's ``sde_ctrl_noise``, scaled so
            that the step's noise is ``sqrt(v_k) (xi_k + eta zeta_k)``: the reference's noise widened by
            ``sqrt(1 + eta^2)`` whatever the step count), while the costs score ``u``. Needs ``detach_drift``.
        seed: fixes the noise (``None``: a fresh seed); ``stream_noise=True`` draws it from torch's default generator
            instead (CUDA-graph capture).
        detach_drift: drive the path with ``u.detach()``: no gradient flows through the path, only through the
            running costs (the log-variance loss).
        keep_states: keep the states (``Trajectory.states``, and for split steps ``pre_noise``/``post_noise``);
            ``False`` keeps only what the weight needs (memory independent of N).

    The chain is stepped by a plain loop: it is a Markov chain of exact Gaussian kernels, and scoring a backward
    control at the next state, splitting steps and recording sub-step states do not fit ``torchsde``'s one-drift-
    per-step interface (which integrates the continuous SDEs below).
    """
    if exploration < 0:
        raise ValueError(f"exploration must be non-negative, got {exploration}")
    if exploration and not detach_drift:
        raise ValueError("exploration drives the path with a perturbed detached control: it needs detach_drift=True "
                         "(the log-variance loss); the KL loss differentiates through its own on-policy paths")
    batch = x0.shape[0]
    if x0.ndim != 2 or x0.shape[1] != reference.state_dim:
        raise ValueError(f"initial states must have shape (batch, {reference.state_dim}), got {tuple(x0.shape)}")
    times = like(grid, x0)
    control_at = on_grid(control, times)
    backward_at = None if backward is None else on_grid(backward, times)
    forward, back = reference.forward_kernels(grid), reference.backward_kernels(grid)
    # Python floats: arithmetic with them is cheaper than with 0-dim tensors in the step loop, and needs no device.
    A, B, v = forward.scale.tolist(), forward.control.tolist(), forward.var.tolist()
    b, beta, c = back.scale.tolist(), back.control.tolist(), back.var.tolist()
    h = grid.diff().tolist()
    telescoped = reference.telescopes(grid)
    noise_shape = (batch, reference.noise_block(x0).shape[1])
    seed = None if stream_noise else _new_seed() if seed is None else seed
    noise = GridBrownian(noise_shape, seed=seed, dtype=x0.dtype, device=x0.device)
    explore = None if not exploration else GridBrownian(
        noise_shape, seed=None if seed is None else hash((seed, -1)) & 0x7FFF_FFFF_FFFF_FFFF,
        dtype=x0.dtype, device=x0.device)

    z = x0.detach() if detach_drift else x0
    # The running sums are accumulated in place (one kernel per term and step, no new tensor); each starts as its own
    # zeros, since an in-place sum must not alias another.
    path, control_cost, noise_cost, backward_cost = (x0.new_zeros(batch) for _ in range(4))
    behaviour = x0.new_zeros(batch) if explore is not None else None
    states, pre_noise, post_noise = ([z], [], []) if keep_states else (None, None, None)
    for k in range(len(A)):
        pre = reference.before_noise(z, k, h[k])
        y = reference.noise_block(pre)
        u = control_at(pre, k)
        xi = noise.increment(k)
        std, c_control, c_noise = v[k] ** 0.5, B[k] ** 2 / (2 * v[k]), B[k] / v[k] ** 0.5
        if detach_drift:
            drive = u.detach()
            if explore is not None:
                drive = drive + (exploration * std / B[k]) * explore.increment(k)
            step_control, step_noise = running_costs(u, xi, c_control, c_noise, behaviour=drive)
        else:
            drive = u
            step_control, step_noise = running_costs(u, xi, c_control, c_noise)
        y_next = torch.add(A[k] * y, drive, alpha=B[k]) + std * xi
        post = reference.with_noise_block(pre, y_next)
        control_cost += step_control
        noise_cost += step_noise
        if backward_at is not None:
            w = backward_at(post, k + 1)
            backward_cost += backward_costs(w, y, y_next, b[k], beta[k], c[k])
        if not telescoped:
            path += kernel_log_ratio(y, y_next, A[k], v[k], b[k], c[k])
        if behaviour is not None:  # the drawing kernel N(A y + B u, (1 + eta^2) v I), with the noise xi + eta zeta
            widened = (1 + exploration**2) * v[k]
            increment = y_next - A[k] * y
            behaviour += log_normal(increment, 0.0, v[k]) - log_normal(increment - B[k] * u.detach(), 0.0, widened)
        z = reference.after_noise(post, k, h[k])
        if keep_states:
            states.append(z)
            if reference.splits_steps:
                pre_noise.append(pre)
                post_noise.append(post)
    if telescoped:
        path = reference.telescoped_log_ratio(x0, z, grid)
    else:
        path = path - reference.log_initial(x0) + reference.log_terminal_auxiliary(z)
    trajectory = Trajectory(initial=x0, terminal=z, grid=grid, path_term=path, control_cost=control_cost,
                            noise_cost=noise_cost, backward_cost=backward_cost, behaviour_log_ratio=behaviour)
    if keep_states:
        trajectory.states = torch.stack(states)
        if reference.splits_steps:
            trajectory.pre_noise, trajectory.post_noise = torch.stack(pre_noise), torch.stack(post_noise)
        else:
            trajectory.pre_noise, trajectory.post_noise = trajectory.states[:-1], trajectory.states[1:]
    return trajectory


class _GenericSDE(nn.Module):
    """``dX = f(X, s) ds + G(s) dW`` in step-index time: ``h_k f`` and ``sqrt(h_k) G xi``."""

    noise_type = "general"

    def __init__(self, drift, diffusion, grid: Tensor, sde_type: str):
        super().__init__()
        self.drift, self.diffusion, self.sde_type = drift, diffusion, sde_type
        self.h = grid.diff().tolist()

    def f_and_g_prod(self, tau: Tensor, y: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:
        k = round(float(tau))
        h = self.h[min(k, len(self.h) - 1)]
        noise = torch.zeros_like(y) if self.diffusion is None else h**0.5 * self.diffusion(k, xi)
        return h * self.drift(y, k), noise


SOLVERS = {"euler": "ito", "heun": "stratonovich"}


def solve(
    drift: Callable[[Tensor, int], Tensor],
    x0: Tensor,
    grid: Tensor,
    *,
    diffusion: Callable[[int, Tensor], Tensor] | None = None,
    noise_dim: int | None = None,
    method: str = "euler",
    seed: int | None = None,
) -> Tensor:
    r"""Solve ``dX = f(X, s_k) ds + G(s_k) dW`` (or the ODE, ``diffusion=None``) on ``grid``.

    ``drift(x, k)`` is ``f`` at grid time ``s_k``; ``diffusion(k, xi)`` maps a standard normal
    ``xi`` of shape (batch, noise_dim) to ``G(s_k) xi`` of ``x``'s shape (a degenerate ``G``,
    as in CLD, is allowed). ``method="euler"`` (Euler-Maruyama) or ``"heun"`` (second order for
    the ODE; for SDEs it needs noise that does not depend on the state, where the Ito and
    Stratonovich forms coincide, as for every reversed linear SDE here). Returns the path
    (N+1, batch, n).
    """
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {sorted(SOLVERS)}, got {method!r}")
    batch = x0.shape[0]
    sde = _GenericSDE(drift, diffusion, grid, SOLVERS[method])
    bm = GridBrownian((batch, noise_dim or x0.shape[1]), seed=_new_seed() if seed is None else seed,
                      dtype=x0.dtype, device=x0.device)
    ts = torch.arange(grid.numel(), dtype=x0.dtype)
    return torchsde.sdeint(sde, x0, ts, bm=bm, method=method, dt=1.0)


class _ContinuousSDE(nn.Module):
    """``dX = h (m X + sigma u) dtau + sqrt(h) sigma dW``, ``dE = h |u|^2 / 2 dtau``, in index time."""

    noise_type = "diagonal"

    def __init__(self, control: Control, reference: Reference, grid: Tensor, dim: int, sde_type: str):
        super().__init__()
        self.control, self.grid, self.dim, self.sde_type = control, grid, dim, sde_type
        self.h = grid.diff()
        self.m = reference.drift_coefficient(grid).to(grid.dtype)
        self.sigma = reference.diffusion(grid).to(grid.dtype)

    def _at(self, tau: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Grid time, step size, drift coefficient and diffusion at index time ``tau``, interpolated."""
        k = min(int(float(tau)), self.h.numel() - 1)
        w = torch.as_tensor(tau, dtype=self.grid.dtype) - k
        s, m, sigma = (torch.lerp(v[k], v[k + 1], w) for v in (self.grid, self.m, self.sigma))
        return s, self.h[k], m, sigma

    def f(self, tau: Tensor, y: Tensor) -> Tensor:
        s, h, m, sigma = self._at(tau)
        x = y[:, : self.dim]
        u = self.control(x, s)
        return torch.cat([h * (m * x + sigma * u), h * 0.5 * u.square().sum(-1, keepdim=True)], dim=1)

    def g(self, tau: Tensor, y: Tensor) -> Tensor:
        _, h, _, sigma = self._at(tau)
        scale = torch.ones_like(y)
        scale[:, self.dim :] = 0.0
        return h.sqrt() * sigma * scale


ADJOINT_METHODS = {"reversible_heun": ("stratonovich", "adjoint_reversible_heun"), "euler": ("ito", "euler")}


def simulate_continuous(
    control: nn.Module,
    reference: Reference,
    x0: Tensor,
    grid: Tensor,
    *,
    seed: int | None = None,
    method: str = "reversible_heun",
    adjoint: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""Terminal state ``X_T`` and energy ``1/2 \int |u|^2 ds`` of the continuous SDE.

    With ``adjoint=True`` (``torchsde.sdeint_adjoint``) gradients with respect to ``control``'s
    parameters come from the adjoint SDE solved backwards, so memory does not grow with the
    number of steps; ``adjoint=False`` backpropagates through the same solver steps instead.
    ``method="reversible_heun"`` (Stratonovich; the noise is additive, so it equals the Ito SDE)
    has an algebraically reversible adjoint that matches backpropagation to rounding error;
    ``"euler"`` (Ito) has an adjoint whose gradient error shrinks with the step size.
    """
    if method not in ADJOINT_METHODS:
        raise ValueError(f"adjoint method must be one of {sorted(ADJOINT_METHODS)}, got {method!r}")
    sde_type, adjoint_method = ADJOINT_METHODS[method]
    batch, dim = x0.shape
    sde = _ContinuousSDE(control, reference, grid.to(x0.dtype), dim, sde_type)
    bm = GridBrownian((batch, dim + 1), seed=_new_seed() if seed is None else seed, dtype=x0.dtype, device=x0.device)
    y0 = torch.cat([x0, x0.new_zeros(batch, 1)], dim=1)
    ts = torch.tensor([0.0, grid.numel() - 1.0], dtype=x0.dtype)
    if adjoint:
        params = tuple(p for p in control.parameters() if p.requires_grad)
        ys = torchsde.sdeint_adjoint(
            sde, y0, ts, bm=bm, method=method, adjoint_method=adjoint_method, dt=1.0, adjoint_params=params
        )
    else:
        ys = torchsde.sdeint(sde, y0, ts, bm=bm, method=method, dt=1.0)
    return ys[-1, :, :dim], ys[-1, :, dim]
