r"""Path-space losses on the log-weight of :mod:`sde_control.weights`.

* KL (reverse KL, the PIS/DIS loss): ``L(u) = -E[log w]`` with gradients through the simulated
  path. The noise term ``int u . dW`` has mean zero and is left out of the loss (not of the
  estimators). Optionally by ``torchsde.sdeint_adjoint`` on the continuous-time weight, for
  memory independent of the number of steps.
* Log-variance (Richter & Berner): simulate with the detached control ``v = u.detach()``,
  weight the path with ``u``, and minimise the sample variance of ``log w_u``; no gradient flows
  through the path.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .controls import Control
from .integrate import simulate_chain, simulate_continuous
from .references import Reference
from .target import Target
from .weights import continuous_objective, log_weight


@dataclass
class LossOutput:
    """The scalar loss and the (detached) log-weights of the batch, for monitoring."""

    loss: Tensor
    log_weights: Tensor


def kl_loss(
    target: Target,
    reference: Reference,
    control: Control,
    x0: Tensor,
    grid: Tensor,
    *,
    adjoint: bool = False,
    adjoint_method: str = "reversible_heun",
    graph_safe: bool = False,
) -> LossOutput:
    """``-mean(log w)`` without the mean-zero noise term; ``adjoint=True`` uses the continuous weight.

    ``graph_safe=True`` skips the validation of the target's output and draws the noise from the
    default generator, so the loss has no host synchronisation (CUDA-graph capture).
    """
    if adjoint:
        x_T, energy = simulate_continuous(control, reference, x0, grid, method=adjoint_method)
        objective = continuous_objective(target, reference, x0, x_T, energy)
        return LossOutput(-objective.mean(), objective.detach())
    trajectory = simulate_chain(control, reference, x0, grid, stream_noise=graph_safe)
    log_w = log_weight(target, reference, trajectory, validate=not graph_safe)
    objective = log_w + trajectory.noise_cost  # the mean-zero term M = sum_k B_k u_k . xi_k / sqrt(v_k) left out
    return LossOutput(-objective.mean(), log_w.detach())


def log_variance_loss(
    target: Target, reference: Reference, control: Control, x0: Tensor, grid: Tensor, *, graph_safe: bool = False
) -> LossOutput:
    """Sample variance of ``log w_u`` on paths driven by ``u.detach()`` (``graph_safe``: see :func:`kl_loss`)."""
    trajectory = simulate_chain(control, reference, x0, grid, detach_drift=True, stream_noise=graph_safe)
    log_w = log_weight(target, reference, trajectory, validate=not graph_safe)
    return LossOutput(log_w.var(), log_w.detach())


LOSSES = {"kl": kl_loss, "lv": log_variance_loss}
