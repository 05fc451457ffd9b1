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

acting on the block axis (``Psi kron I_m``, :func:`blockwise`). Scalar SDEs (:class:`VP`, :class:`SubVP`,
:class:`VE`, :class:`ScaledBrownian`) have closed forms in their coefficients ``f``, ``g^2``;
:class:`ScheduledLinearSDE` (``F = beta(t) M``, ``G G^T = beta(t) N``) is solved exactly by
a matrix exponential in the clock ``tau = int beta``: critically damped Langevin (:class:`CLD`) and the
auxiliary-variable diffusions ``F = -(Q + D)``, ``G G^T = 2 D`` (:class:`AuxiliaryVariableSDE`) are such.
Coefficients with a general time dependence go through the moment ODEs (:class:`MomentODELinearSDE`).
The samplers use the scalar ones as references (DIS: the time reversal of :class:`VP`; PIS:
:class:`ScaledBrownian` from the origin; DDS: a stationary :class:`VP`), the generative models all of them.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor, nn

from .specs import Specified


class LinearSDE(Specified, abc.ABC):
    """``dZ = F(t) Z dt + G(t) dW`` on ``[0, T]`` with ``K x K`` coefficients (module docstring).

    ``aux`` counts the auxiliary blocks of an augmented state (velocity for :class:`CLD`; ``K - 1`` for
    :class:`AuxiliaryVariableSDE`): the data ``x`` (dimension ``d``) is block 0 and the state has ``(1 + aux) d``
    channels. ``aux = 0`` for every process whose blocks are all data (scalar SDEs; VSDM's ``K = d`` drift).
    """

    T: float
    K: int
    aux: int = 0

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

    def initial_covariance(self) -> Tensor:
        r"""``Sigma_0`` (``K x K``, float64): the covariance per channel of the state at ``t = 0`` given the data.

        Zero for processes without auxiliary variables; ``diag(0, Sigma_aux0)`` for augmented ones, whose
        auxiliary blocks start from their own law ``N(0, Sigma_aux0)`` independently of ``x``. Given the data,
        the state at time ``t`` is then ``N(Psi_t [x; 0], Psi_t Sigma_0 Psi_t^T + Sigma_t)``
        (:meth:`marginal_matrices` with ``cov0 = initial_covariance()``).
        """
        return torch.zeros(self.K, self.K, dtype=torch.float64)

    def prior_covariance(self) -> Tensor:
        r"""Covariance per channel (``K x K``, float64) of the prior ``N(0, S kron I)`` that generation starts from.

        The stationary covariance where the process has one (overridden: :class:`VP`, and
        :class:`ScheduledLinearSDE` with a Hurwitz ``M``: CLD, the auxiliary-variable diffusions); here, for
        processes without one, the law at ``t = T`` of the process started at ``Z_0 = 0``, i.e. ``Sigma(0 -> T)``
        (:class:`VE`: ``sigma_max^2 - sigma_min^2``; :class:`ScaledBrownian`: ``sigma^2 T``; :class:`SubVP`:
        ``(1 - exp(-int_0^T beta))^2``).
        """
        T = torch.tensor(self.T, dtype=torch.float64)
        return self.transition_matrices(torch.zeros_like(T), T)[1].double()


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


def blockwise(matrix: Tensor, x: Tensor) -> Tensor:
    r"""``(matrix kron I_m) x`` for states ``x`` of shape ``(n, K m)`` laid out as ``K`` blocks of ``m`` channels.

    ``matrix`` is ``K x K`` (shared) or ``(n, K, K)`` (one per row); it is cast to ``x``'s dtype. ``K = 1``
    scales every coordinate alike; ``K = d`` (``m = 1``) is the full matrix-vector product.
    """
    K = matrix.shape[-1]
    n, width = x.shape
    if width % K:
        raise ValueError(f"a {K} x {K} block matrix cannot act on states of dimension {width} (not a multiple of {K})")
    return (matrix.to(x.dtype) @ x.reshape(n, K, width // K)).reshape(n, width)


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

    def prior_covariance(self) -> Tensor:
        """``N(0, I)`` is stationary for every schedule."""
        return torch.ones(1, 1, dtype=torch.float64)

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

    def prior_covariance(self) -> Tensor:
        r"""The stationary covariance ``S`` (``M S + S M^T + N = 0``, the same for every schedule ``beta``) when ``M``
        is Hurwitz; otherwise the time-``T`` law from 0 (:meth:`LinearSDE.prior_covariance`). Differentiable in
        ``M`` and ``N`` (a ``K^2 x K^2`` linear solve)."""
        M, N = self.matrices()
        if not bool((torch.linalg.eigvals(M.detach().double()).real < 0).all()):
            return super().prior_covariance()
        M, N = M.double(), N.double()
        eye = torch.eye(self.K, dtype=torch.float64, device=M.device)
        generator = torch.kron(M, eye) + torch.kron(eye, M)
        S = torch.linalg.solve(generator, -N.reshape(-1)).reshape(self.K, self.K)
        return 0.5 * (S + S.T)


def check_hurwitz(F: Tensor, what: str = "F") -> None:
    """Raise ``ValueError`` unless every eigenvalue of the ``K x K`` matrix ``F`` has a negative real part.

    Only a Hurwitz drift makes the transition forget its start (``Psi = exp(tau F) -> 0``), so that the
    stationary law of an auxiliary-variable diffusion is also its limit (docs/generative.md, section
    'Multivariate diffusions: CLD and auxiliary variables').
    """
    real = torch.linalg.eigvals(F.detach().double()).real
    if not (real < 0).all():
        raise ValueError(
            f"{what} is not Hurwitz: eigenvalue real parts {[round(v, 6) for v in real.tolist()]} must all be negative. "
            f"With F = -(Q + D) this happens when an eigenvector of Q lies in the null space of D; make D positive "
            f"definite (e.g. diag(softplus(d) + 1e-3)) so that the process converges to N(0, I)."
        )


class CLD(ScheduledLinearSDE):
    r"""Critically damped Langevin diffusion (Dockhorn, Vahdat, Kreis 2022) on position and velocity, ``K = 2``:

    .. math::  dx = \beta(t)\, v / m \, dt, \qquad
               dv = -\beta(t) (x + \Gamma v / m)\, dt + \sqrt{2 \Gamma \beta(t)}\, dW,

    i.e. ``M = [[0, 1/m], [-1, -Gamma/m]]``, ``N = diag(0, 2 Gamma)`` (noise on the velocity only: a degenerate
    ``G``). Critical damping is ``Gamma^2 = 4 m`` (the default); the stationary law is ``N(0, diag(1, m))``.
    The paper's setting: ``m = 0.25``, ``Gamma = 1``, constant ``beta = 4`` over ``T = 1``, and the initial velocity
    ``v_0 ~ N(0, init_velocity_scale * m)`` with ``init_velocity_scale = 0.04`` (the paper's ``gamma``; variance
    0.01 at ``m = 0.25``), independent of the data (``aux = 1``: the velocity is the auxiliary block).
    """

    aux = 1

    def __init__(self, mass: float = 0.25, gamma: float | None = None, beta_min: float = 4.0, beta_max: float = 4.0,
                 T: float = 1.0, init_velocity_scale: float = 0.04):
        super().__init__(2, beta_min, beta_max, T)
        gamma = 2 * math.sqrt(mass) if gamma is None else gamma
        if mass <= 0 or gamma <= 0 or init_velocity_scale < 0:
            raise ValueError(f"CLD needs mass > 0, gamma > 0 and init_velocity_scale >= 0, got {mass}, {gamma}, "
                             f"{init_velocity_scale}")
        self.mass, self.gamma, self.init_velocity_scale = float(mass), float(gamma), float(init_velocity_scale)
        self.register_buffer("M", torch.tensor([[0.0, 1 / mass], [-1.0, -gamma / mass]], dtype=torch.float64))
        self.register_buffer("N", torch.tensor([[0.0, 0.0], [0.0, 2 * gamma]], dtype=torch.float64))

    def matrices(self) -> tuple[Tensor, Tensor]:
        return self.M, self.N

    def stationary_covariance(self) -> Tensor:
        """``diag(1, m)``."""
        return torch.diag(torch.tensor([1.0, self.mass], dtype=torch.float64))

    def initial_covariance(self) -> Tensor:
        """``diag(0, init_velocity_scale * m)``: the position is the data, the velocity starts from its own law."""
        return torch.diag(torch.tensor([0.0, self.init_velocity_scale * self.mass], dtype=torch.float64))


class AuxiliaryVariableSDE(ScheduledLinearSDE):
    r"""Multivariate diffusion with ``F = -beta(t) (Q + D)``, ``G G^T = 2 beta(t) D`` (Singhal et al. 2023).

    ``Q`` is skew-symmetric and ``D`` symmetric positive semi-definite, so ``F + F^T + G G^T = 0`` and ``N(0, I)``
    is stationary for every ``Q``, ``D``; it is also the limit when ``-(Q + D)`` is Hurwitz.

    Learned (``Q = D = None``): ``Q = W - W^T`` and ``D = diag(softplus(d) + 1e-3)`` as in the paper's reference
    code, positive definite, hence always Hurwitz (``F + F^T = -2 beta D < 0``). ``W = 0`` and ``D = I`` at
    initialisation. Fixed (both given): checked to be skew, symmetric positive semi-definite and Hurwitz, else
    ``ValueError``.

    Block 0 is the data, blocks ``1..K-1`` are auxiliary (``aux = K - 1``) and start from ``N(0, init_aux_var I)``
    independently of the data (0.01 in the reference code's configurations, ``init_aux_var``).
    """

    D_FLOOR = 1e-3

    def __init__(self, K: int, Q: Tensor | None = None, D: Tensor | None = None, beta_min: float = 0.1,
                 beta_max: float = 20.0, T: float = 1.0, init_aux_var: float = 0.01):
        super().__init__(K, beta_min, beta_max, T)
        if init_aux_var < 0:
            raise ValueError(f"init_aux_var must be >= 0, got {init_aux_var}")
        self.aux, self.init_aux_var = K - 1, float(init_aux_var)
        if (Q is None) != (D is None):
            raise ValueError("give both Q and D (a fixed process) or neither (a learned one)")
        if Q is None:
            self.W = nn.Parameter(torch.zeros(K, K, dtype=torch.float64))
            self.d = nn.Parameter(torch.full((K,), math.log(math.expm1(1.0 - self.D_FLOOR)), dtype=torch.float64))
            return
        Q, D = torch.as_tensor(Q, dtype=torch.float64), torch.as_tensor(D, dtype=torch.float64)
        if Q.shape != (K, K) or D.shape != (K, K):
            raise ValueError(f"Q and D must be {K} x {K}, got {tuple(Q.shape)} and {tuple(D.shape)}")
        if not torch.allclose(Q, -Q.T, atol=1e-10):
            raise ValueError("Q must be skew-symmetric (Q = -Q^T)")
        if not torch.allclose(D, D.T, atol=1e-10) or torch.linalg.eigvalsh(D).min() < -1e-10:
            raise ValueError("D must be symmetric positive semi-definite")
        check_hurwitz(-(Q + D), "F = -(Q + D)")
        self.register_buffer("Q", Q)
        self.register_buffer("D", D)

    def matrices(self) -> tuple[Tensor, Tensor]:
        if "Q" in self._buffers:
            Q, D = self.Q, self.D
        else:
            Q, D = self.W - self.W.T, torch.diag(nn.functional.softplus(self.d) + self.D_FLOOR)
        return -(Q + D), 2 * D

    def initial_covariance(self) -> Tensor:
        """``diag(0, init_aux_var, ..., init_aux_var)``."""
        return torch.diag(torch.tensor([0.0] + [self.init_aux_var] * self.aux, dtype=torch.float64))


class MomentODELinearSDE(LinearSDE, nn.Module):
    r"""A linear SDE with time-dependent coefficients whose transition has no closed form.

    The moments from ``t = 0``, ``Psi(t) = Psi(t, 0)`` and ``Sigma(t) = Cov(Z_t | Z_0)``, solve

    .. math::  \Psi' = F \Psi, \qquad \Sigma' = F \Sigma + \Sigma F^T + G G^T, \qquad \Psi(0) = I, \ \Sigma(0) = 0,

    integrated by classical RK4 in float64 on a uniform grid of ``grid_steps`` steps (the coefficients at the
    grid and half-grid times are evaluated in one batch) and interpolated in between by cubic Hermite
    polynomials through the values and the exact derivatives at the grid points. Between two times,

    .. math::  \Psi(t_1, t_0) = \Psi(t_1) \Psi(t_0)^{-1}, \qquad
               \Sigma(t_0 \to t_1) = \Sigma(t_1) - \Psi(t_1, t_0) \Sigma(t_0) \Psi(t_1, t_0)^T .

    With gradients enabled and learnable coefficients the table is recomputed on every call, differentiably;
    otherwise it is cached until a parameter or buffer changes (in-place updates are tracked by their version
    counters), so a frozen process costs one solve. Accuracy: RK4's and the interpolation's errors are both
    ``O(h^4)``; against the exact transitions of constant-matrix processes the tests find agreement to ``1e-9``.

    Subclasses implement :meth:`drift_matrix` and :meth:`noise_matrix` for a batch of times.
    """

    def __init__(self, K: int, T: float = 1.0, grid_steps: int = 500):
        nn.Module.__init__(self)
        if T <= 0 or grid_steps < 1:
            raise ValueError(f"need T > 0 and grid_steps >= 1, got {T}, {grid_steps}")
        self.K, self.T, self.grid_steps = K, float(T), int(grid_steps)
        self._cache: tuple[tuple, tuple[Tensor, Tensor]] | None = None

    def _state_key(self) -> tuple:
        return tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers()))

    def moments(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(Psi, Sigma, Psi', Sigma')`` on the grid ``t_k = k T / grid_steps``, each ``(grid_steps + 1, K, K)``."""
        differentiable = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if differentiable:
            return self._solve_moments()
        key = self._state_key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._solve_moments())
        return self._cache[1]

    def _solve_moments(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n, h = self.grid_steps, self.T / self.grid_steps
        times = torch.linspace(0.0, self.T, 2 * n + 1, dtype=torch.float64)
        F, N = self.drift_matrix(times).double(), self.noise_matrix(times).double()

        def rate(j: int, psi: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
            F_sigma = F[j] @ sigma
            return F[j] @ psi, F_sigma + F_sigma.transpose(-1, -2) + N[j]

        psi = torch.eye(self.K, dtype=torch.float64, device=F.device)
        sigma = torch.zeros_like(psi)
        values, rates = [(psi, sigma)], []
        for k in range(n):
            j = 2 * k
            k1 = rate(j, psi, sigma)
            k2 = rate(j + 1, psi + 0.5 * h * k1[0], sigma + 0.5 * h * k1[1])
            k3 = rate(j + 1, psi + 0.5 * h * k2[0], sigma + 0.5 * h * k2[1])
            k4 = rate(j + 2, psi + h * k3[0], sigma + h * k3[1])
            psi = psi + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
            sigma = sigma + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
            values.append((psi, sigma))
            rates.append(k1)
        rates.append(rate(2 * n, psi, sigma))
        return (torch.stack([v[0] for v in values]), torch.stack([v[1] for v in values]),
                torch.stack([r[0] for r in rates]), torch.stack([r[1] for r in rates]))

    def _from_zero(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``Psi(t)``, ``Sigma(t)`` by cubic Hermite interpolation with the exact derivatives at the grid points
        (error ``O(h^4)``; linear interpolation would be off by about 1 % near ``t = 0`` for VP-like schedules)."""
        psi, sigma, dpsi, dsigma = self.moments()
        h = self.T / self.grid_steps
        position = (t / h).clamp(0, self.grid_steps)
        k = position.floor().long().clamp(max=self.grid_steps - 1)
        w = (position - k)[..., None, None]
        h00, h10, h01, h11 = (1 + 2 * w) * (1 - w) ** 2, w * (1 - w) ** 2, w**2 * (3 - 2 * w), w**2 * (w - 1)

        def interpolate(value: Tensor, rate: Tensor) -> Tensor:
            return h00 * value[k] + h10 * h * rate[k] + h01 * value[k + 1] + h11 * h * rate[k + 1]

        return interpolate(psi, dpsi), interpolate(sigma, dsigma)

    def marginal_matrices(self, t: Tensor, cov0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """From ``t = 0`` the table itself (no interpolation at 0 and no solve, as through
        :meth:`transition_matrices`)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if bool((t < 0).any() or (t > self.T * (1 + 1e-12)).any()):
            raise ValueError(f"marginals need 0 <= t <= T = {self.T}")
        psi, sigma = self._from_zero(t)
        sigma = 0.5 * (sigma + sigma.transpose(-1, -2))
        if cov0 is not None:
            sigma = sigma + psi @ cov0.to(psi) @ psi.transpose(-1, -2)
        return psi, sigma

    def transition_matrices(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        t0, t1 = torch.broadcast_tensors(torch.as_tensor(t0, dtype=torch.float64), torch.as_tensor(t1, dtype=torch.float64))
        if bool((t0 < 0).any() or (t1 > self.T * (1 + 1e-12)).any() or (t1 < t0).any()):
            raise ValueError(f"transitions need 0 <= t0 <= t1 <= T = {self.T}")
        psi0, sigma0 = self._from_zero(t0)
        psi1, sigma1 = self._from_zero(t1)
        psi = torch.linalg.solve(psi0.transpose(-1, -2), psi1.transpose(-1, -2)).transpose(-1, -2)
        sigma = sigma1 - psi @ sigma0 @ psi.transpose(-1, -2)
        return psi, 0.5 * (sigma + sigma.transpose(-1, -2))


class ALDA(AuxiliaryVariableSDE):
    r"""The MDM paper's ALDA: position, velocity and one more auxiliary block (``K = 3``), noise on the last only.

    .. math::  Q = \begin{pmatrix} 0 & -1 & 0 \\ 1 & 0 & -\gamma \\ 0 & \gamma & 0 \end{pmatrix}, \qquad
               D = \mathrm{diag}(0, 0, \psi), \qquad F = -\beta(t) (Q + D), \quad G G^T = 2 \beta(t) D,

    so ``N(0, I)`` is stationary (``F + F^T + G G^T = 0``) and the drift is Hurwitz for ``gamma, psi > 0``. Taken
    from the paper's public code, ``rajesh-lab/MultivariateDiffusionModels``, file ``mdm/models/alda.py`` (``Q``,
    ``D`` with its stationary auxiliary variance 1, ``alda_gamma = alda_psi = 1`` by default there; its drift
    ``-(Q + D) diag(1, 1/M, 1/M)`` is ours at ``M = 1``, the value of every configuration in that repository), with
    its schedule ``beta(t) = 0.1 + 9.9 t`` over ``T = 1`` (``configs/*/*.yaml``) and initial auxiliary variance 0.01.
    Its slowest mode decays at rate ``0.215 beta`` (``gamma = psi = 1``), so at ``int beta = 5.05`` the mean keeps
    ``exp(-1.09) = 0.34`` of the data: ALDA is far from its prior at ``T``.
    """

    def __init__(self, gamma: float = 1.0, psi: float = 1.0, beta_min: float = 0.1, beta_max: float = 10.0,
                 T: float = 1.0, init_aux_var: float = 0.01):
        if gamma <= 0 or psi <= 0:
            raise ValueError(f"ALDA needs gamma > 0 and psi > 0, got {gamma}, {psi}")
        Q = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, -gamma], [0.0, gamma, 0.0]], dtype=torch.float64)
        D = torch.diag(torch.tensor([0.0, 0.0, psi], dtype=torch.float64))
        super().__init__(3, Q=Q, D=D, beta_min=beta_min, beta_max=beta_max, T=T, init_aux_var=init_aux_var)
        self.gamma, self.psi = float(gamma), float(psi)


class MALDA(AuxiliaryVariableSDE):
    r"""The MDM paper's MALDA on ``K`` blocks (data plus ``K - 1`` auxiliary), noise on every auxiliary block.

    .. math::  Q_{ij} = -1 \ (i < j), \quad Q_{ij} = 1 \ (i > j), \quad Q_{ii} = 0, \qquad
               D = \mathrm{diag}(0, 2, \dots, 2),

    (``D_jj = 2 sqrt(M)`` with stationary auxiliary variance ``M = 1``) and ``F = -beta(t) (Q + D)``,
    ``G G^T = 2 beta(t) D``: ``N(0, I)`` stationary, Hurwitz (eigenvalues of ``-(Q + D)`` at ``K = 3``:
    ``-1, -1.5 +- 1.32 i``). From ``rajesh-lab/MultivariateDiffusionModels``, ``mdm/models/malda.py``, with the
    schedule of its configurations (``configs/mnist/malda.yaml``: ``n_vars = 3``, ``beta`` from 0.1 to 10,
    ``init_aux_var = 0.01``).
    """

    def __init__(self, K: int = 3, beta_min: float = 0.1, beta_max: float = 10.0, T: float = 1.0,
                 init_aux_var: float = 0.01):
        if K < 2:
            raise ValueError(f"MALDA needs K >= 2 blocks (data plus at least one auxiliary), got {K}")
        ones = torch.ones(K, K, dtype=torch.float64)
        Q = ones.tril(-1) - ones.triu(1)
        D = torch.diag(torch.tensor([0.0] + [2.0] * (K - 1), dtype=torch.float64))
        super().__init__(K, Q=Q, D=D, beta_min=beta_min, beta_max=beta_max, T=T, init_aux_var=init_aux_var)
