r"""Forward processes diagonal in a fixed orthonormal basis: VSDM's ``A_t`` at image scale.

VSDM's forward drift (:mod:`sde_control.generative.forward`) is a ``d x d`` matrix ``A_t``; at ``d = 3072``
(CIFAR-10) a full matrix, its matrix exponentials and moment ODEs are out of reach. Here ``A_t`` is restricted to

.. math::  A_t = B^\top \operatorname{diag}(\lambda_j) B \quad \text{for } t \in [jT/J, (j+1)T/J), \qquad
           F(t) = \beta(t) (A_t - I/2), \quad G G^\top = \beta(t) I ,

with ``B`` a fixed orthonormal basis (:class:`OrthonormalBasis`) and ``J`` (``knots``) learned vectors
``lambda_j in R^d``, constant on ``J`` equal intervals of ``[0, T]``. In the coordinates ``z = B x`` the process is
``d`` independent scalar linear SDEs ``dz_i = beta(t)(lambda_i(t) - 1/2) z_i dt + sqrt(beta(t)) dW_i`` (the noise
is isotropic, so ``B`` leaves it unchanged), and on a piece where ``lambda`` is constant, with
``b = int_{t_0}^{t_1} beta`` and ``c = 1 - 2 lambda``, the transition is closed-form:

.. math::  z_{t_1} \mid z_{t_0} \sim N\big(a z_{t_0}, \gamma\big), \qquad a = e^{-c b / 2}, \qquad
           \gamma = \int_{t_0}^{t_1} \beta(s) e^{-c \int_s^{t_1} \beta} ds = \frac{1 - e^{-c b}}{c}
           = b \operatorname{exprel}(-c b)

(``lambda = 0`` is VP: ``a = e^{-b/2}``, ``gamma = 1 - e^{-b}``). Across pieces the transitions compose:
``a = prod_j a_j``, ``gamma = sum_j gamma_j prod_{k > j} a_k^2``. Every transition, drift and score conversion
costs ``O(J d)`` plus two basis changes, against ``O(d^3)`` for a full ``A_t``.

Which basis. The DCT (default) is per channel the orthonormal 2-d DCT-II: the covariance of natural images is
close to stationary, and a stationary covariance is nearly diagonalised by the DCT (the DCT is the asymptotic
Karhunen-Loeve basis of first-order Markov signals), with variances that fall steeply with frequency. VSDM's
forward update moves ``A_t`` toward the data's principal axes (on 2-d data its eigenvectors align with them), so a
basis close to those axes lets a diagonal ``A_t`` capture the main anisotropy of images, their spectrum: each
frequency gets its own contraction rate. The pixel basis (``B = I``) can only give each pixel its own rate (e.g.
the constant background of the padded digits), which misses the correlations between neighbouring pixels. The DCT
costs two small matrix products per image (``O(C H W (H + W))``), far below a U-Net evaluation. (Blurring
diffusion, Hoogeboom and Salimans 2023, uses the same basis for a fixed diagonal process.)

VSDM's forward update (:mod:`sde_control.generative.vsdm`) in the basis: with ``z = B x`` and ``u = B (s - A^cur_t x)``
(``s`` the frozen backward score) its objective separates over coordinates and pieces,

.. math::  J(\lambda) = E \sum_k w_k \Big(\tfrac12 |A_{t_k} x|^2 + A_{t_k} x \cdot (s - A^{cur}_{t_k} x)
           + \zeta \operatorname{tr} A_{t_k}\Big)
           = \sum_{j, i} \Big(\tfrac12 \lambda_{ji}^2 Q_{ji} + \lambda_{ji} (R_{ji} + \zeta W_j)\Big),

with the path statistics ``Q_ji = E sum_{k in j} w_k z_{ki}^2``, ``R_ji = E sum_{k in j} w_k z_{ki} u_{ki}`` and
``W_j = sum_{k in j} w_k`` (:func:`path_statistics`; ``w_k = beta(t_k) dt_k`` the trapezoid weights). They are
accumulated along the backward paths, one score evaluation per state, without storing the paths
(:func:`backward_statistics`), and summed over ranks under ``torch.distributed``: every rank then takes the same
Adam steps on the same ``J``.

Besides the operators the score models use on images (:meth:`DiagonalLinearSDE.perturb`,
:meth:`~DiagonalLinearSDE.noise_to_score`, :meth:`~DiagonalLinearSDE.drift`), the classes implement the dense
:class:`~sde_control.sdes.LinearSDE` interface (``d x d`` matrices): for small ``d`` and for tests that compare the
closed forms with the generic machinery.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sde_control.sdes import LinearSchedule, LinearSDE

__all__ = ["BASES", "DiagonalLinearSDE", "DiagonalVSDMForward", "OrthonormalBasis", "PathStatistics",
           "backward_statistics", "dct_matrix", "diagonal_objective", "exponential_sample", "exprel",
           "path_statistics"]

BASES = ("dct", "pixel")


def dct_matrix(n: int) -> Tensor:
    r"""The orthonormal DCT-II matrix ``D`` (n x n, float64): ``D_{k m} = sqrt(2 / n) c_k cos(pi (2m + 1) k / (2n))``,
    ``c_0 = 1 / sqrt(2)``, ``c_k = 1`` otherwise; ``D D^T = I``, and ``D x`` are the frequencies of ``x``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    m = torch.arange(n, dtype=torch.float64)[None, :]
    matrix = math.sqrt(2.0 / n) * torch.cos(math.pi * (2 * m + 1) * k / (2 * n))
    matrix[0] /= math.sqrt(2.0)
    return matrix


def exprel(y: Tensor) -> Tensor:
    """``(e^y - 1) / y``, continued by 1 at ``y = 0`` (stable near 0 and differentiable everywhere)."""
    small = y.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(y), y)
    return torch.where(small, 1.0 + 0.5 * y, torch.expm1(safe) / safe)


class OrthonormalBasis(nn.Module):
    """The coordinates ``z = B x`` of vectors ``x (n, d)`` laid out as images ``(C, H, W)``.

    ``"dct"``: per channel the 2-d orthonormal DCT-II, ``Z = D_H X D_W^T`` (module docstring); ``"pixel"``: ``B = I``.
    Both are orthonormal, so :meth:`inverse` is the transpose.
    """

    def __init__(self, kind: str, image_shape: Sequence[int]):
        super().__init__()
        if kind not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {kind!r}")
        image_shape = tuple(int(s) for s in image_shape)
        if kind == "dct" and len(image_shape) != 3:
            raise ValueError(f"the DCT basis needs the image shape (C, H, W), got {image_shape}")
        self.kind, self.image_shape, self.dim = kind, image_shape, math.prod(image_shape)
        if kind == "dct":
            self.register_buffer("rows", dct_matrix(image_shape[1]), persistent=False)
            self.register_buffer("columns", dct_matrix(image_shape[2]), persistent=False)

    def _transform(self, x: Tensor, transpose: bool) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"the basis acts on vectors of dimension {self.dim} (images {self.image_shape}), "
                             f"got shape {tuple(x.shape)}")
        if self.kind == "pixel":
            return x
        rows, columns = self.rows.to(x.dtype), self.columns.to(x.dtype)
        if transpose:
            rows, columns = rows.T, columns.T
        images = x.reshape(*x.shape[:-1], *self.image_shape)
        return (rows @ images @ columns.T).reshape(x.shape)

    def forward(self, x: Tensor) -> Tensor:
        """``z = B x`` for ``x`` of shape ``(..., d)``."""
        return self._transform(x, transpose=False)

    def inverse(self, z: Tensor) -> Tensor:
        """``x = B^T z``."""
        return self._transform(z, transpose=True)

    def matrix(self) -> Tensor:
        """``B`` as a dense ``d x d`` matrix (float64; for small ``d``)."""
        return self(torch.eye(self.dim, dtype=torch.float64, device=self._device())).T

    def _device(self) -> torch.device:
        return self.rows.device if self.kind == "dct" else torch.device("cpu")


class DiagonalLinearSDE(LinearSDE, nn.Module):
    r"""``dX = B^T diag(f(t)) B X dt + g(t) dW``: scalar SDEs on the coordinates ``z = B x`` (module docstring).

    Subclasses provide :attr:`basis`, :meth:`rates` (``f(t)``, shape ``t.shape + (d,)``), :meth:`g2` and
    :meth:`transition` (``(a, gamma)`` of each coordinate); the operators and the dense interface follow.
    """

    basis: OrthonormalBasis
    dim: int

    @abc.abstractmethod
    def rates(self, t: Tensor) -> Tensor:
        """``f(t)``, the drift's eigenvalues, shape ``t.shape + (d,)`` (float64)."""

    @abc.abstractmethod
    def g2(self, t: Tensor) -> Tensor:
        """``g(t)^2``, shape ``t.shape`` (float64)."""

    @abc.abstractmethod
    def transition(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, gamma)`` with ``z_{t1} | z_{t0} ~ N(a z_{t0}, diag(gamma))``, each ``broadcast(t0, t1).shape + (d,)``
        (float64)."""

    def _time(self, t: Tensor | float) -> Tensor:
        return torch.as_tensor(t, dtype=torch.float64).to(self._device())

    @abc.abstractmethod
    def _device(self) -> torch.device: ...

    # ------------------------------------------------------------------ operators on (n, d) states
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``F(t) x = B^T (f(t) * B x)`` for one time (0-dim) or one per row ``(n,)``."""
        return self.basis.inverse(self.rates(self._time(t)).to(x.dtype) * self.basis(x))

    def perturb(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``x_t = Psi_t x0 + L_t eps`` with ``L_t = B^T diag(sqrt(gamma_t)) B`` (symmetric, ``L L^T = Sigma_t``) for
        times ``t (n,)``: the denoising score-matching draw."""
        t = self._time(t)
        a, gamma = self.transition(torch.zeros_like(t), t)
        a, scale = a.to(x0.dtype), gamma.sqrt().to(x0.dtype)
        return self.basis.inverse(a * self.basis(x0) + scale * self.basis(eps))

    def noise_to_score(self, eps_hat: Tensor, t: Tensor) -> Tensor:
        """``s = -L_t^{-T} eps_hat = -B^T (B eps_hat / sqrt(gamma_t))`` for one time or one per row."""
        t = self._time(t)
        _, gamma = self.transition(torch.zeros_like(t), t)
        return -self.basis.inverse(self.basis(eps_hat) / gamma.sqrt().to(eps_hat.dtype))

    # ------------------------------------------------------------------ the dense LinearSDE interface (small d)
    def _dense(self, values: Tensor) -> Tensor:
        B = self.basis.matrix().to(values.device)
        return B.T @ torch.diag_embed(values) @ B

    def drift_matrix(self, t: Tensor) -> Tensor:
        return self._dense(self.rates(self._time(t)))

    def noise_matrix(self, t: Tensor) -> Tensor:
        g2 = self.g2(self._time(t))
        return g2[..., None, None] * torch.eye(self.dim, dtype=torch.float64, device=g2.device)

    def transition_matrices(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        a, gamma = self.transition(self._time(t0), self._time(t1))
        return self._dense(a), self._dense(gamma)


class DiagonalVSDMForward(DiagonalLinearSDE):
    r"""VSDM's forward process with ``A_t = B^T diag(lambda_j) B`` on ``knots`` equal intervals (module docstring).

    Args:
        image_shape: ``(C, H, W)`` of the data (vectors: ``(d,)`` with ``basis="pixel"``).
        basis: ``"dct"`` or ``"pixel"``.
        knots: the number of pieces ``J`` (1: one time-invariant ``A``).
        beta_min, beta_max, T: the VP schedule (``lambda = 0``, the start, is VP).

    The learned ``lambda`` (``weight``, ``(knots, d)``, float64) starts at 0.
    """

    def __init__(self, image_shape: Sequence[int], basis: str = "dct", knots: int = 4, beta_min: float = 0.1,
                 beta_max: float = 10.0, T: float = 1.0):
        nn.Module.__init__(self)
        if not isinstance(knots, int) or knots < 1:
            raise ValueError(f"knots must be a positive int, got {knots!r}")
        self.basis = OrthonormalBasis(basis, image_shape)
        self.dim = self.K = self.basis.dim
        self.schedule = LinearSchedule(beta_min, beta_max, T)
        self.T = self.schedule.T
        self.weight = nn.Parameter(torch.zeros(knots, self.dim, dtype=torch.float64))

    def _device(self) -> torch.device:
        return self.weight.device

    @property
    def knots(self) -> int:
        return self.weight.shape[0]

    def piece(self, t: Tensor) -> Tensor:
        """The index ``j`` of the interval that holds ``t`` (``t = T`` belongs to the last)."""
        return (self._time(t) / self.T * self.knots).floor().long().clamp(0, self.knots - 1)

    def eigenvalues(self, t: Tensor) -> Tensor:
        """``lambda(t)``, the eigenvalues of ``A_t``, shape ``t.shape + (d,)``."""
        return self.weight[self.piece(t)]

    def beta(self, t: Tensor) -> Tensor:
        return self.schedule(self._time(t))

    def g2(self, t: Tensor) -> Tensor:
        return self.beta(t)

    def rates(self, t: Tensor) -> Tensor:
        t = self._time(t)
        return self.beta(t)[..., None] * (self.eigenvalues(t) - 0.5)

    def prior_covariance(self) -> Tensor:
        """``I`` (dense, ``d x d``): VSDM generates from the fixed prior ``N(0, I)``, the start of the backward paths
        of its forward update, which the update drives the forward process's terminal law toward."""
        return torch.eye(self.dim, dtype=torch.float64)

    def A(self, t: Tensor) -> Tensor:  # noqa: N802 (the paper's name)
        """``A_t`` as dense ``d x d`` matrices (for small ``d``)."""
        return self._dense(self.eigenvalues(t))

    def time_averaged_A(self, points: int = 1001) -> Tensor:  # noqa: N802
        """``(1 / T) int_0^T A_t dt`` (dense): the mean of the pieces' ``A``."""
        return self._dense(self.weight.mean(0))

    def transition(self, t0: Tensor, t1: Tensor) -> tuple[Tensor, Tensor]:
        t0, t1 = torch.broadcast_tensors(self._time(t0), self._time(t1))
        slack = 1e-12 * self.T  # times recomputed through exp(log t) may cross by an ulp
        if bool((t0 < -slack).any() or (t1 > self.T + slack).any() or (t1 < t0 - slack).any()):
            raise ValueError(f"transitions need 0 <= t0 <= t1 <= T = {self.T}")
        t1 = torch.maximum(t1, t0)
        edges = torch.linspace(0.0, self.T, self.knots + 1, dtype=torch.float64, device=t0.device)
        lo = torch.maximum(t0[..., None], edges[:-1])
        hi = torch.minimum(t1[..., None], edges[1:]).clamp_min(lo)  # empty overlap: zero length
        b = self.schedule.integral(lo, hi)[..., None]  # (..., J, 1): the clock elapsed on each piece
        c = 1.0 - 2.0 * self.weight  # (J, d)
        exponent = c * b  # (..., J, d): -2 log a_j
        later = exponent.flip(-2).cumsum(-2).flip(-2) - exponent  # sum over the pieces after j
        gamma = (b * exprel(-exponent) * torch.exp(-later)).sum(-2)
        return torch.exp(-0.5 * exponent.sum(-2)), gamma


@dataclass
class PathStatistics:
    """``Q (J, d)``, ``R (J, d)``, ``W (J,)`` of the forward objective (module docstring), means over ``paths``."""

    squares: Tensor
    products: Tensor
    weights: Tensor
    paths: int

    def __add__(self, other: PathStatistics) -> PathStatistics:
        """The statistics of more time points of the same paths."""
        return PathStatistics(self.squares + other.squares, self.products + other.products,
                              self.weights + other.weights, self.paths)


def path_statistics(sde: DiagonalVSDMForward, states: Tensor, scores: Tensor, times: Tensor,
                    weights: Tensor) -> PathStatistics:
    """The statistics of states ``(K, P, d)`` with their frozen scores ``(K, P, d)`` at ``K`` noising times, with
    quadrature weights ``w_k`` (the current ``A`` is ``sde``'s; float64)."""
    with torch.no_grad():
        z, score = sde.basis(states.double()), sde.basis(scores.double())
        u = score - sde.eigenvalues(times)[:, None] * z
        w = weights.to(z)[:, None]
        pieces = sde.piece(times)
        squares = torch.zeros(sde.knots, sde.dim, dtype=torch.float64, device=z.device)
        products, totals = torch.zeros_like(squares), torch.zeros(sde.knots, dtype=torch.float64, device=z.device)
        squares.index_add_(0, pieces, w * z.square().mean(1))
        products.index_add_(0, pieces, w * (z * u).mean(1))
        totals.index_add_(0, pieces, w[:, 0])
    return PathStatistics(squares, products, totals, states.shape[1])


@torch.no_grad()
def backward_statistics(sde: DiagonalVSDMForward, score: Callable[[Tensor, Tensor], Tensor], paths: int, steps: int,
                        t_min: float, dtype: torch.dtype = torch.float32) -> PathStatistics:
    """The statistics of ``paths`` reverse-SDE paths of ``sde`` from the prior ``N(0, I)`` under ``score``, with
    ``steps`` Euler-Maruyama steps from ``t = T`` to ``t_min``: each state's score serves both its step and its
    statistics, so the cost is ``(steps + 1) paths`` score evaluations and the memory one batch of states. Under
    ``torch.distributed`` the ranks split the paths (each draws its own noise) and return the statistics of all."""
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_available() and dist.is_initialized() else (1, 0)
    local = paths // world + (rank < paths % world)
    times = torch.linspace(sde.T, t_min, steps + 1, dtype=torch.float64)
    h = (sde.T - t_min) / steps
    g2 = sde.g2(times).cpu()
    weights = g2 * h
    weights[[0, -1]] /= 2
    x = torch.randn(local, sde.dim, device=sde.weight.device, dtype=dtype)
    total = None
    for k in range(steps + 1):
        s = score(x, times[k])
        step = path_statistics(sde, x[None], s[None], times[k:k + 1], weights[k:k + 1])
        total = step if total is None else total + step
        if k < steps:
            x = x + h * (-sde.drift(x, times[k]) + float(g2[k]) * s) + math.sqrt(h * float(g2[k])) * torch.randn_like(x)
    if world > 1:
        summed = torch.stack([total.squares * local, total.products * local])
        count = torch.tensor(float(local), dtype=torch.float64, device=summed.device)
        dist.all_reduce(summed)
        dist.all_reduce(count)
        total = PathStatistics(summed[0] / count, summed[1] / count, total.weights, paths)
    return total


def diagonal_objective(forward: DiagonalVSDMForward, zeta: float, statistics: PathStatistics):
    """The forward objective ``J(lambda)`` of ``forward``'s learned eigenvalues on fixed path statistics (module
    docstring), as a training loss ``iteration -> (J, {})``."""

    def objective(iteration: int) -> tuple[Tensor, dict[str, float]]:
        lam = forward.weight
        linear = statistics.products + zeta * statistics.weights[:, None]
        return (0.5 * lam.square() * statistics.squares + lam * linear).sum(), {}

    return objective


@torch.no_grad()
def exponential_sample(sde: DiagonalLinearSDE, score: Callable[[Tensor, Tensor], Tensor], x_T: Tensor,
                       times: Tensor, return_path: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    r"""gDDIM's deterministic step of order 1 (:mod:`sde_control.generative.gddim`) for a process diagonal in a
    basis, from ``x_T`` at ``times[0]`` down the decreasing grid ``times``; returns the last state.

    In the coordinates ``z = B x`` every coordinate is a scalar linear SDE, so ``R_t = sqrt(gamma_t)`` (the
    conditional standard deviation given the data: ``R R^T = S_t``), ``eps = -R_t B s`` is the network's noise
    prediction in the basis, and the step integrates the linear part exactly with ``eps`` held constant:

    .. math::  z_t = \Psi(t, t_i) z_{t_i} + \big(R_t - \Psi(t, t_i) R_{t_i}\big) \epsilon_i, \qquad
               \Psi(t, t_i) = 1 / a(t \to t_i),

    with ``a`` the forward transition (DDIM per frequency; for VP, DDIM). One score evaluation per step and
    ``O(d)`` per coordinate: the same iterates as :func:`~sde_control.generative.gddim.gddim_sample` with
    ``order=1`` on the dense form of the process (a test), at a cost that does not grow with ``d^3``.
    ``return_path`` also returns the states on the grid (steps + 1, n, d).
    """
    times = torch.as_tensor(times, dtype=torch.float64)
    a, _ = sde.transition(times[1:], times[:-1])  # forward, from t_{i+1} up to t_i
    _, gamma = sde.transition(torch.zeros_like(times), times)
    root = gamma.sqrt().to(x_T)
    psi = (1.0 / a).to(x_T)
    x, z = x_T, sde.basis(x_T)
    path = [x_T]
    for i in range(times.numel() - 1):
        eps = -root[i] * sde.basis(score(x, times[i]))
        z = psi[i] * z + (root[i + 1] - psi[i] * root[i]) * eps
        x = sde.basis.inverse(z)
        if return_path:
            path.append(x)
    return (x, torch.stack(path)) if return_path else x
