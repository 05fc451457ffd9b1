r"""The log importance weight of a path: the one function every loss and estimator rests on.

.. math::  \log w = \log\rho(X_N) + \big[\log p_{ref}(X_{0:N-1}|X_N) - \log q_0(X_{0:N})\big]
           + \sum_k \log\frac{q_0}{q_u}(X_{k+1}|X_k)

(the ratio of discrete path densities, CONVENTIONS.md section 2): ``E[w] = Z`` for any control
and step count, ``E[log w] <= log Z`` (the ELBO), and ``log w = log Z`` path by path for the
optimal control in the limit of small steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .device import like
from .integrate import Control, Path, on_grid
from .references import Reference
from .target import Target, checked_log_prob


def log_weight(target: Target, reference: Reference, path: Path, validate: bool = True) -> Tensor:
    """``log w`` of each path, shape (batch,); ``validate`` checks the target's output (a host sync)."""
    log_rho = checked_log_prob(target, path.terminal) if validate else target.log_prob(path.terminal)
    return log_rho + reference.log_ratio(path.states, path.grid) + path.log_control_ratio


@torch.no_grad()
def path_from_states(control: Control, reference: Reference, states: Tensor, grid: Tensor) -> Path:
    r"""The :class:`Path` of given states (e.g. reference paths started at exact target samples).

    With ``r_k = X_{k+1} - A_k X_k`` and the control evaluated at the states,

    .. math::  \log\frac{q_0}{q_u}(X_{k+1}|X_k) = \frac{B_k^2 |u_k|^2 - 2 B_k u_k \cdot r_k}{2 v_k},

    split like :func:`~sde_control.integrate.simulate`'s on-policy terms, with the noise
    ``xi_k = (r_k - B_k u_k) / sqrt(v_k)`` that would have produced the states under ``u``.
    """
    steps = reference.forward_steps(grid).to(states.dtype)
    control_at = on_grid(control, like(grid, states))
    control_term = states.new_zeros(states.shape[1])
    noise_term = states.new_zeros(states.shape[1])
    for k in range(grid.numel() - 1):
        A, B, v = steps.scale[k], steps.control[k], steps.var[k]
        u = control_at(states[k], k)
        xi = (states[k + 1] - A * states[k] - B * u) / v.sqrt()
        control_term -= B**2 / (2 * v) * u.square().sum(-1)
        noise_term += B / v.sqrt() * (u * xi).sum(-1)
    return Path(states=states, grid=grid, control_term=control_term, noise_term=noise_term)


@torch.no_grad()
def reference_paths_from(reference: Reference, x_terminal: Tensor, grid: Tensor) -> Tensor:
    """States (N+1, batch, dim) of the reference's backward kernel started at ``X_N = x_terminal``.

    With ``x_terminal`` exact target samples these are paths of the target-started reference
    (for DIS: the noising SDE run from the data), on which ``E[log w]`` is the EUBO.
    """
    b, c = (like(v, x_terminal) for v in reference.backward_steps(grid))
    states = [x_terminal]
    for k in reversed(range(grid.numel() - 1)):
        states.append(b[k] * states[-1] + c[k].sqrt() * torch.randn_like(x_terminal))
    return torch.stack(states[::-1])
