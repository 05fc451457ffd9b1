r"""Linear SDEs with closed-form (or matrix-exponential) transitions, shared by both sides.

Every process here is a linear SDE in *noising time* ``t in [0, T]`` (data at ``t = 0``) on a
state of ``K`` blocks, each block a vector of ``m`` channels that share the coefficients
(a state tensor of shape ``(..., K, m)``; ``K = 1`` for the scalar SDEs, where the blocks are
the data coordinates themselves):

.. math::  dZ_t = F(t) Z_t \, dt + G(t) \, dW_t, \qquad F(t), G(t) G(t)^T \in R^{K \times K}.

Its transition from ``t0`` to ``t1 >= t0`` is Gaussian,

.. math::  Z_{t_1} | Z_{t_0} \sim N(\Psi Z_{t_0}, \Sigma), \quad
           \partial_{t_1} \Psi = F \Psi, \quad
           \partial_{t_1} \Sigma = F \Sigma + \Sigma F^T + G G^T, \quad \Psi(t_0) = I, \Sigma(t_0) = 0,

acting on the block axis (``Psi kron I_m``). Scalar SDEs (:class:`VP`, :class:`SubVP`,
:class:`VE`, :class:`ScaledBrownian`) have closed forms in their coefficients ``f``, ``g^2``;
:class:`ScheduledLinearSDE` (``F = beta(t) M``, ``G G^T = beta(t) N``) is solved exactly by
a matrix exponential in the clock ``tau = int beta``. The samplers use the scalar ones
as references (DIS: the time reversal of :class:`VP`; PIS: :class:`ScaledBrownian` from the
origin; DDS: a stationary :class:`VP`), the generative models all of them.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor, nn


class LinearSDE(abc.ABC):
    """``dZ = F(t) Z dt + G(t) dW`` on ``[0, T]`` with ``K x K`` coefficients (module docstring)."""

    T: float
    K: int

    @abc.abstractmethod
    def drift_matrix(self, t: Tensor) -> Tensor:
        """``F(t)``, shape ``t.shape + (K, K)``."""

    @abc.abstractmethod
    def noise_matrix(self, t: Tensor) -> Tensor:
        """``G(t) G(t)^T``, shape ``t.shape + (K, K)``."""

    @abc.abstractmethod
    def transition_matrices(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        """``(Psi, Sigma)`` of ``Z_t1 | Z_t0``, each of shape ``broadcast(t0, t1).shape + (K, K)``."""

    def marginal_matrices(self, t: Tensor, cov0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(Psi, Cov)`` of ``Z_t`` given ``Z_0``, ``Cov = Psi cov0 Psi^T + Sigma`` (``cov0 = 0`` by default)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        psi, sigma = self.transition_matrices(torch.zeros_like(t), t)
        if cov0 is not None:
            sigma = sigma + psi @ cov0.to(psi) @ psi.transpose(-1, -2)
        return psi, sigma


class ScalarSDE(LinearSDE):
    """``dY = f(t) Y dt + g(t) dW`` with scalar coefficients acting on every coordinate alike."""

    K = 1

    @abc.abstractmethod
    def f(self, t: Tensor) -> Tensor:
        """Drift coefficient ``f(t)``."""

    @abc.abstractmethod
    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion coefficient ``g(t)^2``."""

    def g(self, t: Tensor) -> Tensor:
        """Diffusion coefficient ``g(t)``."""
        return self.g2(t).sqrt()

    @abc.abstractmethod
    def transition(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, gamma)`` with ``Y_t1 | Y_t0 ~ N(a Y_t0, gamma I)``, elementwise in ``t0 <= t1``."""

    def time_flipped(self) -> ScalarSDE:
        """The SDE with coefficients read backwards in time: ``f(T - t)``, ``g(T - t)``."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form time-flipped version")

    def marginal(self, t: Tensor, mean0: Tensor | float = 0.0, var0: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``Y_t`` when ``Y_0 ~ N(mean0, var0 I)``: ``(a m0, a^2 v0 + gamma)``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        a, gamma = self.transition(torch.zeros_like(t), t)
        return a * mean0, a**2 * var0 + gamma

    def drift_matrix(self, t: Tensor) -> Tensor:
        return _as_matrix(self.f(torch.as_tensor(t, dtype=torch.float64)))

    def noise_matrix(self, t: Tensor) -> Tensor:
        return _as_matrix(self.g2(torch.as_tensor(t, dtype=torch.float64)))

    def transition_matrices(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        a, gamma = self.transition(torch.as_tensor(t0, dtype=torch.float64), torch.as_tensor(t1, dtype=torch.float64))
        return _as_matrix(a), _as_matrix(gamma)


def _as_matrix(value: Tensor) -> Tensor:
    return value[..., None, None]


class LinearSchedule:
    """``beta(t) = beta_0 + (beta_T - beta_0) t / T`` and its integral."""

    def __init__(self, beta_0: float, beta_T: float, T: float):
        if beta_0 <= 0 or beta_T <= 0 or T <= 0:
            raise ValueError(f"a linear schedule needs beta_0, beta_T, T > 0, got {beta_0}, {beta_T}, {T}")
        self.beta_0, self.beta_T, self.T = float(beta_0), float(beta_T), float(T)

    def __call__(self, t: Tensor) -> Tensor:
        return self.beta_0 + (self.beta_T - self.beta_0) * t / self.T

    def integral(self, t0: Tensor, t1: Tensor) -> Tensor:
        """``int_{t0}^{t1} beta(r) dr``."""
        return (t1 - t0) * (self.beta_0 + (self.beta_T - self.beta_0) * (t0 + t1) / (2 * self.T))

    def flipped(self) -> LinearSchedule:
        return LinearSchedule(self.beta_T, self.beta_0, self.T)


class VP(ScalarSDE):
    r"""Variance-preserving SDE: ``f = -beta(t) / 2``, ``g^2 = beta(t)``, linear ``beta``.

    ``beta(t) = beta_0 + (beta_T - beta_0) t / T``; the DIS/score-SDE default is
    ``beta_min = 0.1`` at ``t = 0`` rising to ``beta_max = 10`` at ``t = T = 1``. With
    ``B = int_{t0}^{t1} beta``, the transition is ``a = exp(-B / 2)``, ``gamma = 1 - exp(-B)``,
    so ``N(0, I)`` is stationary for every schedule.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 10.0, T: float = 1.0):
        self.schedule = LinearSchedule(beta_min, beta_max, T)
        self.T = self.schedule.T

    def beta(self, t: Tensor) -> Tensor:
        return self.schedule(t)

    def f(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def g2(self, t: Tensor) -> Tensor:
        return self.beta(t)

    def transition(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        b = self.schedule.integral(t0, t1)
        return torch.exp(-0.5 * b), -torch.expm1(-b)

    def time_flipped(self) -> VP:
        return VP(beta_min=self.schedule.beta_T, beta_max=self.schedule.beta_0, T=self.T)

    def __repr__(self) -> str:
        return f"VP(beta(0)={self.schedule.beta_0:g}, beta(T)={self.schedule.beta_T:g}, T={self.T:g})"


class SubVP(ScalarSDE):
    r"""Sub-VP SDE (Song et al. 2021): ``f = -beta / 2``, ``g^2 = beta(t) (1 - exp(-2 int_0^t beta))``.

    From ``Y_0`` the variance is ``(1 - exp(-int_0^t beta))^2``, below VP's; between two times
    ``a = exp(-B / 2)`` and ``gamma = v(t1) - a^2 v(t0)``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        self.schedule = LinearSchedule(beta_min, beta_max, T)
        self.T = self.schedule.T

    def _variance_from_zero(self, t: Tensor) -> Tensor:
        return (-torch.expm1(-self.schedule.integral(torch.zeros_like(t), t))) ** 2

    def f(self, t: Tensor) -> Tensor:
        return -0.5 * self.schedule(t)

    def g2(self, t: Tensor) -> Tensor:
        return self.schedule(t) * -torch.expm1(-2 * self.schedule.integral(torch.zeros_like(t), t))

    def transition(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        a = torch.exp(-0.5 * self.schedule.integral(t0, t1))
        return a, self._variance_from_zero(t1) - a**2 * self._variance_from_zero(t0)


class VE(ScalarSDE):
    r"""Variance-exploding SDE: ``f = 0``, ``sigma(t) = sigma_min (sigma_max / sigma_min)^(t / T)``,
    ``g^2 = d sigma^2 / dt``; ``a = 1``, ``gamma = sigma(t1)^2 - sigma(t0)^2``."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0):
        if not 0 < sigma_min < sigma_max or T <= 0:
            raise ValueError(f"VE needs 0 < sigma_min < sigma_max and T > 0, got {sigma_min}, {sigma_max}, {T}")
        self.sigma_min, self.sigma_max, self.T = float(sigma_min), float(sigma_max), float(T)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (t / self.T)

    def f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(torch.as_tensor(t, dtype=torch.float64))

    def g2(self, t: Tensor) -> Tensor:
        return 2 * self.sigma(t) ** 2 * math.log(self.sigma_max / self.sigma_min) / self.T

    def transition(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t1 - t0), self.sigma(t1) ** 2 - self.sigma(t0) ** 2


class ScaledBrownian(ScalarSDE):
    """``dY = sigma dW``: ``f = 0``, ``g^2 = sigma2`` (PIS: ``sigma2 = 0.2``, ``T = 5``)."""

    def __init__(self, sigma2: float = 0.2, T: float = 5.0):
        if sigma2 <= 0 or T <= 0:
            raise ValueError(f"ScaledBrownian needs sigma2, T > 0, got {sigma2}, {T}")
        self.sigma2, self.T = float(sigma2), float(T)

    def f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(torch.as_tensor(t, dtype=torch.float64))

    def g2(self, t: Tensor) -> Tensor:
        return torch.full_like(torch.as_tensor(t, dtype=torch.float64), self.sigma2)

    def transition(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t1 - t0), self.sigma2 * (t1 - t0)

    def time_flipped(self) -> ScaledBrownian:
        return self

    def __repr__(self) -> str:
        return f"ScaledBrownian(sigma={math.sqrt(self.sigma2):.4g}, T={self.T:g})"


class ScheduledLinearSDE(LinearSDE, nn.Module):
    r"""``F(t) = beta(t) M``, ``G G^T = beta(t) N`` with fixed (or learned) ``K x K`` matrices.

    In the clock ``tau = int_{t0}^{t1} beta`` the coefficients are constant: ``Psi = exp(tau M)``,
    and the Lyapunov equation ``Sigma' = M Sigma + Sigma M^T + N`` is linear in ``vec(Sigma)``
    with generator ``L = M kron I + I kron M``, so one augmented exponential gives it exactly and
    differentiably in ``M`` and ``N`` (also for singular ``M``):

    .. math::  \exp\Big(\tau \begin{pmatrix} L & \mathrm{vec}\, N \\ 0 & 0 \end{pmatrix}\Big)
               = \begin{pmatrix} e^{\tau L} & \mathrm{vec}\, \Sigma \\ 0 & 1 \end{pmatrix}.

    (Van Loan's form ``exp(tau [[M, N], [0, -M^T]])`` is shorter but multiplies the growing
    ``exp(-tau M^T)`` into a decaying result, losing all digits for stiff ``M``.) The augmented
    matrix has ``K^2 + 1`` rows: fine for auxiliary-variable blocks and low-dimensional data.

    Subclasses implement :meth:`matrices` (e.g. critically damped Langevin, learned
    auxiliary-variable diffusions with ``M = -(Q + D)``, ``N = 2 D``); the time-invariant VP is
    ``M = -I/2``, ``N = I``.
    """

    def __init__(self, K: int, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        nn.Module.__init__(self)
        self.K = K
        self.schedule = LinearSchedule(beta_min, beta_max, T)
        self.T = self.schedule.T

    @abc.abstractmethod
    def matrices(self) -> tuple[Tensor, Tensor]:
        """``(M, N)``, each ``K x K``, ``N`` symmetric positive semi-definite."""

    def drift_matrix(self, t: Tensor) -> Tensor:
        M, _ = self.matrices()
        return self.schedule(torch.as_tensor(t, dtype=M.dtype))[..., None, None] * M

    def noise_matrix(self, t: Tensor) -> Tensor:
        _, N = self.matrices()
        return self.schedule(torch.as_tensor(t, dtype=N.dtype))[..., None, None] * N

    def transition_matrices(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        M, N = self.matrices()
        K = self.K
        tau = self.schedule.integral(torch.as_tensor(t0, dtype=M.dtype), torch.as_tensor(t1, dtype=M.dtype))
        eye = torch.eye(K, dtype=M.dtype, device=M.device)
        generator = torch.kron(M, eye) + torch.kron(eye, M)
        augmented = torch.zeros(K * K + 1, K * K + 1, dtype=M.dtype, device=M.device)
        augmented[: K * K, : K * K] = generator
        augmented[: K * K, K * K] = N.reshape(-1)
        exp = torch.linalg.matrix_exp(tau[..., None, None] * augmented)
        sigma = exp[..., : K * K, K * K].reshape(*tau.shape, K, K)
        psi = torch.linalg.matrix_exp(tau[..., None, None] * M)
        return psi, 0.5 * (sigma + sigma.transpose(-1, -2))
