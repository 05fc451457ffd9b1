r"""VSDM's variational forward processes: VP plus a learned linear drift.

In noising time, with ``g(t) = sqrt(beta(t))`` and the VP schedule ``beta`` (docs/samplers.md, section 'Time conventions'), the forward SDE is

.. math::  dX_t = \big(-\tfrac12 \beta(t) X_t + g(t) z_f(X_t, t)\big) dt + g(t)\, dW_t, \qquad
           z_f = g(t) A_t X_t ,

i.e. the linear SDE with ``F(t) = beta(t) (A_t - I/2)`` and ``G G^T = beta(t) I`` on the full ``d x d`` state
(``K = d``). ``A = 0`` is plain VP, where VSDM starts. Generation starts from the fixed prior ``N(0, I)``
(:meth:`prior_covariance`), whatever ``A``. Two parameterisations:

* :class:`VSDMForward`: time-invariant ``A`` (a free ``d x d`` matrix), exact transitions by the matrix
  exponential of :class:`~sde_control.sdes.ScheduledLinearSDE`;
* :class:`TimeDependentVSDMForward`: ``A_t`` piecewise linear in ``t`` between ``knots`` learned matrices at
  equally spaced times; its transitions solve the moment ODEs (:class:`~sde_control.sdes.MomentODELinearSDE`).

Parameters are float64 (they are few, and the transitions are computed in float64).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sde_control.sdes import LinearSchedule, MomentODELinearSDE, ScheduledLinearSDE


class _VariationalDrift:
    """What both parameterisations share: ``beta``, ``A_t``, its time average and the fixed prior."""

    T: float
    K: int
    schedule: LinearSchedule
    weight: nn.Parameter

    def A(self, t: Tensor) -> Tensor:  # noqa: N802 (the paper's name)
        """``A_t``, shape ``t.shape + (d, d)``."""
        raise NotImplementedError

    def beta(self, t: Tensor) -> Tensor:
        return self.schedule(torch.as_tensor(t, dtype=torch.float64))

    def prior_covariance(self) -> Tensor:
        """``I``: VSDM generates from the fixed prior ``N(0, I)`` (its forward update pulls the process's terminal law
        toward it). Once ``A != 0`` the process's stationary law (which :class:`~sde_control.sdes.ScheduledLinearSDE`
        would return) is not ``N(0, I)``; the prior stays fixed so that the forward update has a target."""
        return torch.eye(self.K, dtype=torch.float64, device=self.weight.device)

    def time_averaged_A(self, points: int = 1001) -> Tensor:  # noqa: N802
        r"""``(1 / T) int_0^T A_t dt`` by the trapezoid rule on ``points`` equally spaced times."""
        t = torch.linspace(0.0, self.T, points, dtype=torch.float64)
        return torch.trapezoid(self.A(t), t, dim=0) / self.T


class VSDMForward(_VariationalDrift, ScheduledLinearSDE):
    r"""``F = beta(t) (A - I/2)``, ``G G^T = beta(t) I`` with one learned ``d x d`` matrix ``A`` (0 at start)."""

    def __init__(self, dim: int, beta_min: float = 0.1, beta_max: float = 10.0, T: float = 1.0):
        ScheduledLinearSDE.__init__(self, dim, beta_min, beta_max, T)
        self.weight = nn.Parameter(torch.zeros(dim, dim, dtype=torch.float64))

    def A(self, t: Tensor) -> Tensor:  # noqa: N802
        t = torch.as_tensor(t, dtype=torch.float64)
        return self.weight.expand(*t.shape, self.K, self.K)

    def matrices(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.K, dtype=torch.float64, device=self.weight.device)
        return self.weight - 0.5 * eye, eye


class TimeDependentVSDMForward(_VariationalDrift, MomentODELinearSDE):
    r"""``F(t) = beta(t) (A_t - I/2)``, ``G G^T = beta(t) I`` with ``A_t`` piecewise linear between ``knots``
    learned matrices ``A^{(j)}`` at ``t_j = j T / (knots - 1)`` (all 0 at start)."""

    def __init__(self, dim: int, knots: int = 3, beta_min: float = 0.1, beta_max: float = 10.0, T: float = 1.0,
                 grid_steps: int = 500):
        if knots < 2:
            raise ValueError(f"a time-dependent A_t needs at least 2 knots, got {knots} (use VSDMForward for one)")
        MomentODELinearSDE.__init__(self, dim, T, grid_steps)
        self.schedule = LinearSchedule(beta_min, beta_max, T)
        self.weight = nn.Parameter(torch.zeros(knots, dim, dim, dtype=torch.float64))

    def A(self, t: Tensor) -> Tensor:  # noqa: N802
        t = torch.as_tensor(t, dtype=torch.float64)
        segments = self.weight.shape[0] - 1
        position = (t / self.T * segments).clamp(0, segments)
        j = position.floor().long().clamp(max=segments - 1)
        w = (position - j)[..., None, None]
        return torch.lerp(self.weight[j], self.weight[j + 1], w)

    def drift_matrix(self, t: Tensor) -> Tensor:
        eye = torch.eye(self.K, dtype=torch.float64, device=self.weight.device)
        return self.beta(t)[..., None, None] * (self.A(t) - 0.5 * eye)

    def noise_matrix(self, t: Tensor) -> Tensor:
        eye = torch.eye(self.K, dtype=torch.float64, device=self.weight.device)
        return self.beta(t)[..., None, None] * eye
