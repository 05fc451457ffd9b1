r"""Integration of controlled SDEs through ``torchsde``: every call into ``torchsde`` is here.

Three entry points:

* :func:`simulate_chain`: the discretised chain of :mod:`sde_control.references`,
  ``X_{k+1} = A_k X_k + B_k \bar u_k + sqrt(v_k) xi_k``, run by ``torchsde.sdeint`` (Ito Euler) in
  step-index time with :class:`~sde_control.brownian.GridBrownian`, so that the step is the
  exact Gaussian transition whose density the weights use. The running costs ``C`` and ``M`` of the weight
  (:func:`sde_control.weights.running_costs`) are two extra state columns, so that
  ``sum_k log q_0/q_u (X_{k+1}|X_k) = C - M`` exactly. Backpropagation goes through the whole path.

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
from .references import ForwardKernels, Reference
from .weights import Trajectory, running_costs


def _new_seed() -> int:
    return int(torch.randint(0, 2**62, ()).item())


class DiscreteChain(nn.Module):
    """The chain ``X' = A X + B u + sqrt(v) xi`` with its running costs ``C`` and ``M`` as two extra state columns,
    as an Ito SDE in step-index time (dt = 1) for ``torchsde.sdeint`` with any Brownian motion of shape
    (batch, dim). It records the states as the solver steps (the solver need only output the end point).

    ``detach_drift=True`` drives the path with ``u.detach()`` while the running costs keep the gradient of ``u``.
    """

    noise_type = "general"
    sde_type = "ito"

    def __init__(self, control: Callable[[Tensor, int], Tensor], kernels: ForwardKernels, dim: int,
                 detach_drift: bool):
        super().__init__()
        self.control, self.dim, self.detach_drift = control, dim, detach_drift
        # Python floats: arithmetic with them is cheaper than with 0-dim tensors in the step loop.
        A, B, v = kernels.scale.tolist(), kernels.control.tolist(), kernels.var.tolist()
        self.coefficients = [(a - 1, b, v**0.5, b**2 / (2 * v), b / v**0.5) for a, b, v in zip(A, B, v)]
        self.states: list[Tensor | None] = [None] * len(A)

    def f_and_g_prod(self, tau: Tensor, y: Tensor, xi: Tensor) -> tuple[Tensor, Tensor]:
        k = round(float(tau))
        a1, b, std, c_control, c_noise = self.coefficients[k]
        x = y[:, : self.dim]
        if self.detach_drift:
            x = x.detach()  # the path carries no gradient: only the running costs do
        self.states[k] = x
        u = self.control(x, k)
        u_drive = u.detach() if self.detach_drift else u
        control_cost, noise_cost = running_costs(u, xi, c_control, c_noise,
                                                 behaviour=u_drive if self.detach_drift else None)
        zero = torch.zeros_like(control_cost[:, None])
        drift = torch.cat([torch.add(a1 * x, u_drive, alpha=b), control_cost[:, None], zero], dim=1)
        noise = torch.cat([std * xi, zero, noise_cost[:, None]], dim=1)
        return drift, noise


def simulate_chain(
    control: Control,
    reference: Reference,
    x0: Tensor,
    grid: Tensor,
    *,
    seed: int | None = None,
    detach_drift: bool = False,
    stream_noise: bool = False,
) -> Trajectory:
    """Simulate the controlled chain from ``x0`` (batch, dim) on ``grid`` (N+1,, on the CPU).

    ``detach_drift=True`` drives the path with ``u.detach()`` while the running costs keep the
    gradient of ``u`` (the log-variance loss). ``seed`` fixes the Brownian increments;
    ``stream_noise=True`` draws them from torch's default generator instead (CUDA-graph capture).
    """
    batch, dim = x0.shape
    chain = DiscreteChain(on_grid(control, like(grid, x0)), reference.forward_kernels(grid), dim, detach_drift)
    seed = None if stream_noise else _new_seed() if seed is None else seed
    bm = GridBrownian((batch, dim), seed=seed, dtype=x0.dtype, device=x0.device)
    y0 = torch.cat([x0, x0.new_zeros(batch, 2)], dim=1)
    # Output only the end point: interpolating and stacking the whole augmented path would put
    # every step's state into the backward pass; the chain records the states instead.
    ts = torch.tensor([0.0, grid.numel() - 1.0], dtype=x0.dtype)  # index time, on the CPU: no device sync per step
    y_T = torchsde.sdeint(chain, y0, ts, bm=bm, method="euler", dt=1.0)[-1]
    x_T = y_T[:, :dim].detach() if detach_drift else y_T[:, :dim]
    states = torch.stack([*chain.states, x_T])
    # torchsde keeps the chain in reference cycles: drop what holds autograd graphs, so they are
    # freed with the loss rather than by the garbage collector (CUDA-graph capture needs that).
    chain.control, chain.states = None, []
    return Trajectory(states=states, grid=grid, control_cost=y_T[:, dim], noise_cost=y_T[:, dim + 1])


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
