r"""Path-space losses on the log-weight of :mod:`sde_control.weights`.

* KL (reverse KL, the PIS/DIS loss): ``L(u) = -E[log w]`` with gradients through the simulated
  path. The noise term ``M`` has mean zero and is left out of the loss (not of the
  estimators). Optionally by ``torchsde.sdeint_adjoint`` on the continuous-time weight, for
  memory independent of the number of steps.
* Log-variance (Richter & Berner): draw paths from a behaviour process (the detached control, optionally with
  exploration noise), weight them with ``u`` (and the backward control ``w``), and minimise the sample variance of
  ``log w``; no gradient flows through the path. ``chunk`` computes it in two passes with memory flat in the
  number of steps.
* KL by the log-derivative trick (``kl_ld``; Sanokowski et al. 2025, "Rethinking losses for diffusion bridge
  samplers"): the reverse KL's gradient on paths drawn with the detached control, for samplers that learn a backward
  process (the Bridge, CMCD). Where only the forward control is learned its gradient is half the on-policy
  log-variance gradient; where the backward one is learned too, the log-variance loss is blind to a shift of
  ``E[log w]`` that this one penalises.

Paths whose ``log w`` is ``-inf`` (they ended where the target's density is zero) are left out of the loss and
counted (``LossOutput.dropped``); the estimators keep them as ``w = 0``. A batch in which every path is such
raises :class:`~sde_control.target.TargetError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .controls import Control, on_grid
from .device import like
from .integrate import simulate_chain, simulate_continuous
from .references import Reference
from .target import Target, checked_log_prob
from .weights import (backward_costs, behaviour_log_weight, continuous_objective, control_log_ratio, finite_paths,
                      log_weight)


@dataclass
class LossOutput:
    """The scalar loss, the (detached) log-weights of the batch for monitoring (with respect to the kernels that
    drew the paths: an importance weight of ``Z`` also when they explored), and the number of paths left out of the
    loss for a ``-inf`` weight."""

    loss: Tensor
    log_weights: Tensor
    dropped: int = 0


def _finite(log_w: Tensor, graph_safe: bool) -> tuple[Tensor, int]:
    """The mask of finite log-weights and the number of the others (not counted where that needs a host sync)."""
    if graph_safe:
        return torch.isfinite(log_w), 0
    finite = finite_paths(log_w)
    return finite, int((~finite).sum())


def kl_loss(
    target: Target,
    reference: Reference,
    control: Control,
    x0: Tensor,
    grid: Tensor,
    *,
    backward: Control | None = None,
    adjoint: bool = False,
    adjoint_method: str = "reversible_heun",
    graph_safe: bool = False,
) -> LossOutput:
    """``-mean(log w)`` without the mean-zero noise term; ``adjoint=True`` uses the continuous weight.

    ``graph_safe=True`` skips the validation of the target's output and draws the noise from the
    default generator, so the loss has no host synchronisation (CUDA-graph capture).
    """
    if adjoint:
        if backward is not None:
            raise ValueError("the adjoint KL loss has no backward control")
        x_T, energy = simulate_continuous(control, reference, x0, grid, method=adjoint_method)
        objective = continuous_objective(target, reference, x0, x_T, energy)
        finite, dropped = _finite(objective, graph_safe)
        return LossOutput(-objective[finite].mean(), objective.detach(), dropped)
    trajectory = simulate_chain(control, reference, x0, grid, backward=backward, stream_noise=graph_safe)
    log_w = log_weight(target, reference, trajectory, validate=not graph_safe)
    objective = log_w + trajectory.noise_cost  # the mean-zero term M = sum_k B_k u_k . xi_k / sqrt(v_k) left out
    finite, dropped = _finite(log_w, graph_safe)
    if graph_safe:
        loss = -torch.where(finite, objective, 0.0).sum() / finite.sum()
    elif dropped:
        # Recompute log rho on the kept paths only, so that no gradient passes through a -inf value.
        rest = trajectory.path_term + trajectory.control_cost + trajectory.backward_cost  # objective - log rho
        x_N = reference.position(trajectory.terminal)[finite]
        loss = -(checked_log_prob(target, x_N) + rest[finite]).mean()
    else:
        loss = -objective.mean()
    return LossOutput(loss, log_w.detach(), dropped)


def log_variance_loss(
    target: Target,
    reference: Reference,
    control: Control,
    x0: Tensor,
    grid: Tensor,
    *,
    backward: Control | None = None,
    exploration: float = 0.0,
    chunk: int | None = None,
    graph_safe: bool = False,
) -> LossOutput:
    r"""Sample variance of ``log w`` on paths drawn with the detached control (plus ``exploration``: see
    :func:`~sde_control.integrate.simulate_chain`), scored with ``u`` (and ``backward``).

    ``chunk=None``: one pass, the graph holding every control evaluation. ``chunk=K``: two passes with memory flat
    in the number of steps: the ``l_i = log w_i`` without gradients, then the gradient of
    ``sum_i c_i l_i`` with ``c_i = 2 (l_i - mean) / (n - 1)`` (the exact gradient of the sample variance) from the
    stored states, ``K`` steps at a time. ``graph_safe``: see :func:`kl_loss`.
    """
    if chunk is None:
        trajectory = simulate_chain(control, reference, x0, grid, backward=backward, exploration=exploration,
                                    detach_drift=True, stream_noise=graph_safe, keep_states=False)
        log_w = log_weight(target, reference, trajectory, validate=not graph_safe)
        finite, dropped = _finite(log_w, graph_safe)
        monitored = behaviour_log_weight(log_w.detach(), trajectory)
        return LossOutput(_masked_variance(log_w, finite), monitored, dropped)
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive number of steps or None, got {chunk!r}")
    with torch.no_grad():
        trajectory = simulate_chain(control, reference, x0, grid, backward=backward, exploration=exploration,
                                    detach_drift=True, stream_noise=graph_safe, keep_states=True)
        log_w = log_weight(target, reference, trajectory, validate=not graph_safe)
        finite, dropped = _finite(log_w, graph_safe)
        n = finite.sum()
        centred = torch.where(finite, log_w - _masked_mean(log_w, finite), 0.0)
        coefficients = 2 * centred / (n - 1)
        value = centred.square().sum() / (n - 1)
    modules = [m for m in (control, backward) if isinstance(m, nn.Module)]
    owner = getattr(control, "owner", None)  # the views of an AnnealedLangevinControl share one module
    if isinstance(owner, nn.Module):
        modules.append(owner)
    params = list({id(p): p for m in modules for p in m.parameters() if p.requires_grad}.values())
    gradient = _chunked_gradient(reference, control, backward, trajectory, coefficients, params, chunk)
    return LossOutput(_SecondPass.apply(value, gradient, *params), behaviour_log_weight(log_w, trajectory), dropped)


def _masked_mean(values: Tensor | float, finite: Tensor) -> Tensor:
    """The mean over the paths marked ``finite`` (no host sync, no gradient through the others)."""
    return torch.where(finite, values, 0.0).sum() / finite.sum()


def _masked_variance(log_w: Tensor, finite: Tensor) -> Tensor:
    """The sample variance of the finite entries (no host sync, no gradient through the others)."""
    return torch.where(finite, log_w - _masked_mean(log_w, finite), 0.0).square().sum() / (finite.sum() - 1)


def _chunked_gradient(reference: Reference, control: Control, backward: Control | None, trajectory,
                      coefficients: Tensor, params: list[Tensor], chunk: int) -> Callable[[Tensor], list[Tensor]]:
    """The second pass: ``grad sum_i c_i l_i`` from the stored sub-step states, ``chunk`` steps at a time (only the
    running costs depend on the parameters; each chunk's graph is freed before the next)."""

    def gradient(grad_output: Tensor) -> list[Tensor]:
        grid, pre, post = trajectory.grid, trajectory.pre_noise, trajectory.post_noise
        forward, back = reference.forward_kernels(grid), reference.backward_kernels(grid)
        A, B, v = forward.scale.tolist(), forward.control.tolist(), forward.var.tolist()
        b, beta, c = back.scale.tolist(), back.control.tolist(), back.var.tolist()
        times = like(grid, pre)
        total = [torch.zeros_like(p) for p in params]
        for start in range(0, len(A), chunk):
            with torch.enable_grad():
                control_at = on_grid(control, times)  # time features rebuilt per chunk: each graph is used once
                backward_at = None if backward is None else on_grid(backward, times)
                objective = pre.new_zeros(())
                for k in range(start, min(start + chunk, len(A))):
                    y, y_next = reference.noise_block(pre[k]), reference.noise_block(post[k])
                    l_k = control_log_ratio(control_at(pre[k], k), y, y_next, A[k], B[k], v[k])
                    if backward_at is not None:
                        l_k = l_k + backward_costs(backward_at(post[k], k + 1), y, y_next, b[k], beta[k], c[k])
                    objective = objective + (coefficients * l_k).sum()
                grads = torch.autograd.grad(objective, params, allow_unused=True)
            for t, g in zip(total, grads):
                if g is not None:
                    t += g
        return [grad_output * t for t in total]

    return gradient


class _SecondPass(torch.autograd.Function):
    """A loss whose value was computed without gradients and whose backward runs the second pass."""

    @staticmethod
    def forward(ctx, value: Tensor, gradient: Callable[[Tensor], list[Tensor]], *params: Tensor) -> Tensor:
        ctx.gradient = gradient
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        return (None, None, *ctx.gradient(grad_output))


def kl_log_derivative_loss(
    target: Target,
    reference: Reference,
    control: Control,
    x0: Tensor,
    grid: Tensor,
    *,
    backward: Control | None = None,
    graph_safe: bool = False,
) -> LossOutput:
    r"""The reverse KL ``E_q[-log w]`` (value: minus the batch's ELBO) with the gradient of the log-derivative trick
    on paths drawn with the detached control. With ``log w = log rho + R + F_u + G_w`` (``F_u = log q_0/q_u`` of the
    path, ``G_w`` the backward control's kernel ratio, ``R`` free of parameters) and paths from ``q_u``,

    .. math::  \nabla \mathrm{KL} = E_q\big[(\log w - E_q \log w)\, \nabla F_u\big] - E_q\big[\nabla G_w\big],

    since ``\nabla \log q_u = -\nabla F_u`` and ``E_q[\nabla \log q_u] = 0``: the forward control's gradient is a
    score-function one with the mean as baseline (half the on-policy log-variance gradient), the backward control's
    the likelihood of the forward paths under the backward process (where the log-variance gradient,
    ``2 E[(log w - E log w) \nabla G_w]``, is blind to a shift of every ``log w`` alike). A shared network (CMCD)
    gets the sum. No exploration: the trick needs the paths' own law. ``graph_safe``: see :func:`kl_loss`.
    """
    trajectory = simulate_chain(control, reference, x0, grid, backward=backward, detach_drift=True,
                                stream_noise=graph_safe, keep_states=False)
    log_w = log_weight(target, reference, trajectory, validate=not graph_safe)
    finite, dropped = _finite(log_w, graph_safe)
    elbo = _masked_mean(log_w.detach(), finite)
    centred = torch.where(finite, log_w.detach() - elbo, 0.0)  # no -inf times a gradient
    surrogate = (_masked_mean(centred * trajectory.log_control_ratio, finite)
                 - _masked_mean(trajectory.backward_cost, finite))
    loss = -elbo + (surrogate - surrogate.detach())  # the KL's value, the surrogate's gradient
    return LossOutput(loss, log_w.detach(), dropped)


LOSSES = {"kl": kl_loss, "lv": log_variance_loss, "kl_ld": kl_log_derivative_loss}
