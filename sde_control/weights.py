r"""Every weight the library computes: the log importance weight of a path, its per-step pieces, and the
continuous-time objective of the adjoint.

**The one log-weight** (docs/samplers.md, "The discrete-time weight"). A sampler's chain (:mod:`sde_control.references`)
moves a noise block ``y`` of its state by Gaussian sub-steps ``q_u(y'|y) = N(A_k y + B_k \bar u_k, v_k I)``
between deterministic volume-preserving maps; the target-started backward process moves it back by
``p_w(y|y') = N(b_k y' + \beta_k w_k, c_k I)``. The log ratio of the two path densities is

.. math::  \log w = \log\rho(x_N) + \underbrace{\Big[\log\nu(z_N) - \log p_0(z_0)
           + \sum_k \log\frac{p_0}{q_0}(y_k, y'_k)\Big]}_{\text{path term}}
           + \underbrace{\sum_k \log\frac{q_0}{q_u}(y'_k|y_k)}_{C - M}
           + \underbrace{\sum_k \log\frac{p_w}{p_0}(y_k|y'_k)}_{D},

with ``nu`` the law of the auxiliary part of the final state (a velocity; 1 for overdamped chains), so that
``E[w] = Z`` exactly, at any step count and for any forward and backward controls, and ``E[log w] <= log Z``.
The path term involves the states only (:meth:`~sde_control.references.Reference.telescoped_log_ratio` gives it
in closed form where it telescopes, :func:`kernel_log_ratio` step by step otherwise), ``C - M`` the forward
control, ``D`` the backward control (zero unless the sampler learns one).

**Running costs**: per step, for the control ``u`` that is scored, the control ``\bar u`` that drove the step
(``\bar u = u`` on-policy) and the step's standard normal noise ``\xi_k``,

.. math::  C_k = \frac{B_k^2}{2 v_k}\big(|u_k - \bar u_k|^2 - |\bar u_k|^2\big)
               = \frac{B_k^2}{2 v_k}\big(|u_k|^2 - 2 u_k\cdot\bar u_k\big), \qquad
           M_k = \frac{B_k}{\sqrt{v_k}}\, u_k\cdot\xi_k ,

and ``C_k - M_k = \log q_0/q_u(y'_k|y_k)`` (:func:`control_log_ratio` writes the same from the increment
``y'_k - A_k y_k`` alone). On-policy ``C_k = -B_k^2 |u_k|^2 / 2 v_k`` (about ``-1/2 int |u|^2 ds``) and ``M`` is
about ``int u . dW``. With ``\bar u = u.detach()`` (the log-variance loss) ``C`` has the on-policy value and zero
gradient; with exploration (``\bar u = u.detach() + e_k \zeta_k``) both carry the gradient. The backward running
cost is

.. math::  D_k = \log\frac{p_w}{p_0}(y_k|y'_k) = \frac{\beta_k}{c_k} w_k\cdot(y_k - b_k y'_k)
                 - \frac{\beta_k^2}{2 c_k}|w_k|^2 .

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
from .references import Reference, log_normal
from .target import Target, TargetError, checked_log_prob


@dataclass
class Trajectory:
    """A simulated path: its end states (batch, state_dim), the path term and the running costs ``C``, ``M``, ``D``
    (each (batch,)), and, where kept, the states.

    ``states`` (N+1, batch, state_dim) holds every state of the chain; ``pre_noise`` / ``post_noise``
    (N, batch, state_dim) the states just before and after each Gaussian sub-step (for overdamped chains these are
    ``states[:-1]`` and ``states[1:]``). ``behaviour_log_ratio`` is ``sum_k log q_0 / q_b (y'_k|y_k)`` for the kernel
    ``q_b`` that actually drew the path when it explored (``None`` otherwise).
    """

    initial: Tensor
    terminal: Tensor
    grid: Tensor
    path_term: Tensor
    control_cost: Tensor
    noise_cost: Tensor
    backward_cost: Tensor | float = 0.0
    states: Tensor | None = None
    pre_noise: Tensor | None = None
    post_noise: Tensor | None = None
    behaviour_log_ratio: Tensor | None = None

    @property
    def log_control_ratio(self) -> Tensor:
        r"""``\sum_k \log q_0/q_u (y'_k|y_k) = C - M``."""
        return self.control_cost - self.noise_cost


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


def control_log_ratio(u: Tensor, y: Tensor, y_next: Tensor, A: float | Tensor, B: float | Tensor,
                      v: float | Tensor) -> Tensor:
    r"""``\log q_0/q_u(y'|y) = B^2 |u|^2 / (2 v) - (B / v) u \cdot (y' - A y)``: ``C - M`` from the states alone."""
    return (B**2 / (2 * v)) * u.square().sum(-1) - (B / v) * (u * (y_next - A * y)).sum(-1)


def backward_costs(w: Tensor, y: Tensor, y_next: Tensor, b: float | Tensor, beta: float | Tensor,
                   c: float | Tensor) -> Tensor:
    r"""``D_k = \log p_w/p_0 (y|y') = (\beta / c) w \cdot (y - b y') - \beta^2 |w|^2 / (2 c)``, shape (batch,)."""
    return (beta / c) * (w * (y - b * y_next)).sum(-1) - (beta**2 / (2 * c)) * w.square().sum(-1)


def kernel_log_ratio(y: Tensor, y_next: Tensor, A: float | Tensor, v: float | Tensor, b: float | Tensor,
                     c: float | Tensor) -> Tensor:
    """``log N(y; b y', c I) - log N(y'; A y, v I)``: one step of the path term (uncontrolled kernels)."""
    return log_normal(y, b * y_next, c) - log_normal(y_next, A * y, v)


def log_weight(target: Target, reference: Reference, trajectory: Trajectory, validate: bool = True) -> Tensor:
    """``log w`` of each path, shape (batch,); ``-inf`` where the target's density is zero.

    ``validate`` checks the target's output (a host sync)."""
    x = reference.position(trajectory.terminal)
    log_rho = checked_log_prob(target, x) if validate else target.log_prob(x)
    return log_rho + trajectory.path_term + trajectory.log_control_ratio + trajectory.backward_cost


def behaviour_log_weight(log_w: Tensor, trajectory: Trajectory) -> Tensor:
    """The log-weight of the paths with respect to the kernels that drew them (an importance weight of ``Z`` even
    when they explored): ``log w`` with the scored control's ``C - M`` replaced by the behaviour's."""
    if trajectory.behaviour_log_ratio is None:
        return log_w
    return log_w - trajectory.log_control_ratio.detach() + trajectory.behaviour_log_ratio


def finite_paths(log_w: Tensor) -> Tensor:
    """The mask of paths with a finite log-weight; :class:`TargetError` if there is none (every path ended where
    the target's density is zero: ``log_prob = -inf``)."""
    finite = torch.isfinite(log_w)
    if not bool(finite.any()):
        raise TargetError(f"the target's log_prob is -inf at the end of all {log_w.numel()} paths of the batch (zero "
                          f"density everywhere they landed): check its support, or start from a prior inside it")
    return finite


def continuous_objective(target: Target, reference: Reference, x0: Tensor, x_T: Tensor, energy: Tensor) -> Tensor:
    r"""``log rho(X_T) + reference.log_ratio_continuous(X_0, X_T) - energy`` with ``energy = 1/2 int |u|^2 ds``:
    the continuous-time weight without its mean-zero stochastic integral (the adjoint KL loss's integrand)."""
    return checked_log_prob(target, x_T) + reference.log_ratio_continuous(x0, x_T) - energy


@torch.no_grad()
def trajectory_from_states(control: Control, reference: Reference, states: Tensor, grid: Tensor,
                           backward: Control | None = None) -> Trajectory:
    r"""The :class:`Trajectory` of given states (N+1, batch, dim) of an overdamped chain (e.g. reference paths started
    at exact target samples), scored under the forward ``control`` (and ``backward`` control): the running costs in
    the increment form of :func:`control_log_ratio`, with ``C = -B^2 |u|^2 / 2 v`` and ``M = C - log q_0/q_u``."""
    forward, back = reference.forward_kernels(grid).to(states.dtype), reference.backward_kernels(grid).to(states.dtype)
    times = like(grid, states)
    control_at = on_grid(control, times)
    backward_at = None if backward is None else on_grid(backward, times)
    control_cost = states.new_zeros(states.shape[1])
    noise_cost = states.new_zeros(states.shape[1])
    backward_cost = states.new_zeros(states.shape[1])
    for k in range(grid.numel() - 1):
        A, B, v = forward.scale[k], forward.control[k], forward.var[k]
        u = control_at(states[k], k)
        c = -(B**2 / (2 * v)) * u.square().sum(-1)
        control_cost += c
        noise_cost += c - control_log_ratio(u, states[k], states[k + 1], A, B, v)
        if backward_at is not None:
            backward_cost += backward_costs(backward_at(states[k + 1], k + 1), states[k], states[k + 1],
                                            back.scale[k], back.control[k], back.var[k])
    return Trajectory(initial=states[0], terminal=states[-1], grid=grid,
                      path_term=reference.log_ratio(states, grid), control_cost=control_cost, noise_cost=noise_cost,
                      backward_cost=backward_cost, states=states)


@torch.no_grad()
def reference_paths_from(reference: Reference, x_terminal: Tensor, grid: Tensor,
                         backward: Control | None = None) -> Tensor:
    """States (N+1, batch, dim) of the backward kernels of an overdamped chain started at ``x_N = x_terminal``.

    With ``x_terminal`` exact target samples these are paths of the target-started reference
    (for DIS: the noising SDE run from the data), on which ``E[log w]`` is the EUBO.
    """
    back = reference.backward_kernels(grid)
    b, c, beta = like(back.scale, x_terminal), like(back.var, x_terminal), like(back.control, x_terminal)
    backward_at = None if backward is None else on_grid(backward, like(grid, x_terminal))
    states = [x_terminal]
    for k in reversed(range(grid.numel() - 1)):
        mean = b[k] * states[-1]
        if backward_at is not None:
            mean = mean + beta[k] * backward_at(states[-1], k + 1)
        states.append(mean + c[k].sqrt() * torch.randn_like(x_terminal))
    return torch.stack(states[::-1])


@torch.no_grad()
def target_path_log_weights(target: Target, reference: Reference, control: Control, x_terminal: Tensor, grid: Tensor,
                            backward: Control | None = None) -> Tensor:
    r"""``log w`` of paths of the target-started backward process, started at ``x_N = x_terminal`` (exact target
    samples; an auxiliary velocity is drawn from its law): their mean is the EUBO.

    The paths are generated backwards step by step and scored on the way (the forward control at ``z~_k``, the
    backward control at ``z~'_k``), so nothing of size N is kept; any reference, over- or underdamped.
    """
    forward, back = reference.forward_kernels(grid), reference.backward_kernels(grid)
    A, B, v = (like(t, x_terminal) for t in (forward.scale, forward.control, forward.var))
    b, c, beta = (like(t, x_terminal) for t in (back.scale, back.var, back.control))
    times, h = like(grid, x_terminal), grid.diff().tolist()
    control_at = on_grid(control, times)
    backward_at = None if backward is None else on_grid(backward, times)
    z = x_terminal
    if reference.state_dim > reference.dim:
        z = torch.cat([x_terminal, torch.randn(x_terminal.shape[0], reference.state_dim - reference.dim,
                                                dtype=x_terminal.dtype, device=x_terminal.device)], dim=-1)
    z_terminal = z
    log_w = checked_log_prob(target, x_terminal) + reference.log_terminal_auxiliary(z)
    telescoped = reference.telescopes(grid)
    for k in reversed(range(grid.numel() - 1)):
        post = reference.undo_after_noise(z, k, h[k])
        y_next = reference.noise_block(post)
        mean = b[k] * y_next
        w = None
        if backward_at is not None:
            w = backward_at(post, k + 1)
            mean = mean + beta[k] * w
        y = mean + c[k].sqrt() * torch.randn_like(y_next)
        pre = reference.with_noise_block(post, y)
        log_w += control_log_ratio(control_at(pre, k), y, y_next, A[k], B[k], v[k])
        if w is not None:
            log_w += backward_costs(w, y, y_next, b[k], beta[k], c[k])
        if not telescoped:
            log_w += kernel_log_ratio(y, y_next, A[k], v[k], b[k], c[k])
        z = reference.undo_before_noise(pre, k, h[k])
    if telescoped:
        return log_w + reference.telescoped_log_ratio(z, z_terminal, grid)
    return log_w - reference.log_initial(z)

