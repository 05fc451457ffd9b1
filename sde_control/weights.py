r"""Every weight the library computes: the log importance weight of a simulated trajectory, its running costs,
and the continuous-time objective of the adjoint.

**Discrete kernel ratio** (``docs/samplers.md``, "The weight in discrete time"): for a trajectory
``X_0, ..., X_N`` simulated with Gaussian steps ``q_u(X_{k+1}|X_k) = N(A_k X_k + B_k \bar u_k, v_k I)`` and a
reference with backward kernels ``p_ref(X_k|X_{k+1})``,

.. math::  \log w = \log\rho(X_N) + \underbrace{\big[\log p_{ref}(X_{0:N-1}|X_N) - \log q_0(X_{0:N})\big]}_{
           \text{reference.log\_ratio}} + \sum_k \log\frac{q_0}{q_u}(X_{k+1}|X_k),

so that ``E[w] = Z`` exactly, at any step count and for any control, and ``E[log w] <= log Z`` (the ELBO).

**Running costs**: the last sum is ``C - M`` with, per step, for the control ``u`` that is scored, the control
``\bar u`` that drove the step (``\bar u = u`` on-policy) and the step's standard normal noise ``\xi_k``,

.. math::  C_k = \frac{B_k^2}{2 v_k}\big(|u_k - \bar u_k|^2 - |\bar u_k|^2\big)
               = \frac{B_k^2}{2 v_k}\big(|u_k|^2 - 2 u_k\cdot\bar u_k\big), \qquad
           M_k = \frac{B_k}{\sqrt{v_k}}\, u_k\cdot\xi_k .

On-policy ``C_k = -B_k^2 |u_k|^2 / 2 v_k`` (about ``-1/2 int |u|^2 ds``) and ``M`` is about ``int u . dW``. With
``\bar u = u.detach()`` (the log-variance loss) ``C`` has the on-policy value and zero gradient, so only ``M``
carries the gradient; with exploration (``\bar u`` a perturbed control) both do.

**Continuous objective** (the adjoint KL loss, :func:`continuous_objective`):
``log rho(X_T) + reference.log_ratio_continuous(X_0, X_T) - 1/2 int |u|^2 ds``, the integrand of
``sdeint_adjoint`` without the mean-zero stochastic integral.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .controls import Control, on_grid
from .device import like
from .references import Reference
from .target import Target, checked_log_prob


@dataclass
class Trajectory:
    """A simulated trajectory: states (N+1, batch, dim) on ``grid`` and the sums ``C`` and ``M`` (batch,) of its
    running costs."""

    states: Tensor
    grid: Tensor
    control_cost: Tensor
    noise_cost: Tensor

    @property
    def log_control_ratio(self) -> Tensor:
        r"""``\sum_k \log q_0/q_u (X_{k+1}|X_k) = C - M``."""
        return self.control_cost - self.noise_cost

    @property
    def terminal(self) -> Tensor:
        return self.states[-1]


def running_costs(u: Tensor, xi: Tensor, c_control: float | Tensor, c_noise: float | Tensor,
                  behaviour: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""One step's ``(C_k, M_k)`` (module docstring), each of shape (batch,).

    ``c_control = B_k^2 / (2 v_k)``, ``c_noise = B_k / sqrt(v_k)``; ``behaviour`` is the control ``\bar u_k`` that
    drove the step (``None``: ``u`` itself). ``C`` is written as ``c (|u - \bar u|^2 - |\bar u|^2)``: where the
    behaviour equals ``u`` in value (``u.detach()``) its first term is exactly zero with zero gradient.
    """
    if behaviour is None:
        control = -c_control * u.square().sum(-1)
    else:
        control = c_control * ((u - behaviour).square().sum(-1) - behaviour.square().sum(-1))
    return control, c_noise * (u * xi).sum(-1)


def log_weight(target: Target, reference: Reference, trajectory: Trajectory, validate: bool = True) -> Tensor:
    """``log w`` of each trajectory, shape (batch,); ``validate`` checks the target's output (a host sync)."""
    log_rho = checked_log_prob(target, trajectory.terminal) if validate else target.log_prob(trajectory.terminal)
    return log_rho + reference.log_ratio(trajectory.states, trajectory.grid) + trajectory.log_control_ratio


def continuous_objective(target: Target, reference: Reference, x0: Tensor, x_T: Tensor, energy: Tensor) -> Tensor:
    r"""``log rho(X_T) + reference.log_ratio_continuous(X_0, X_T) - energy`` with ``energy = 1/2 int |u|^2 ds``:
    the continuous-time weight without its mean-zero stochastic integral (the adjoint KL loss's integrand)."""
    return checked_log_prob(target, x_T) + reference.log_ratio_continuous(x0, x_T) - energy


@torch.no_grad()
def trajectory_from_states(control: Control, reference: Reference, states: Tensor, grid: Tensor) -> Trajectory:
    r"""The :class:`Trajectory` of given states (e.g. reference paths started at exact target samples), scored
    on-policy under ``control``: the running costs with the noise ``xi_k = (X_{k+1} - A_k X_k - B_k u_k) / sqrt(v_k)``
    that would have produced the states under ``u``."""
    kernels = reference.forward_kernels(grid).to(states.dtype)
    control_at = on_grid(control, like(grid, states))
    control_cost = states.new_zeros(states.shape[1])
    noise_cost = states.new_zeros(states.shape[1])
    for k in range(grid.numel() - 1):
        A, B, v = kernels.scale[k], kernels.control[k], kernels.var[k]
        u = control_at(states[k], k)
        xi = (states[k + 1] - A * states[k] - B * u) / v.sqrt()
        c, m = running_costs(u, xi, B**2 / (2 * v), B / v.sqrt())
        control_cost += c
        noise_cost += m
    return Trajectory(states=states, grid=grid, control_cost=control_cost, noise_cost=noise_cost)


@torch.no_grad()
def reference_paths_from(reference: Reference, x_terminal: Tensor, grid: Tensor) -> Tensor:
    """States (N+1, batch, dim) of the reference's backward kernel started at ``X_N = x_terminal``.

    With ``x_terminal`` exact target samples these are paths of the target-started reference
    (for DIS: the noising SDE run from the data), on which ``E[log w]`` is the EUBO.
    """
    backward = reference.backward_kernels(grid)
    b, c = like(backward.scale, x_terminal), like(backward.var, x_terminal)
    states = [x_terminal]
    for k in reversed(range(grid.numel() - 1)):
        states.append(b[k] * states[-1] + c[k].sqrt() * torch.randn_like(x_terminal))
    return torch.stack(states[::-1])
