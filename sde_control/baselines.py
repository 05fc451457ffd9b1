r"""Baselines that estimate ``log Z`` without training: sequential Monte Carlo (SMC) / annealed importance sampling.

A diffusion sampler earns its place only if it beats these per target evaluation, so every estimate here counts
them (:attr:`LogZEstimate.evaluations`): one evaluation is one point at which the target's log density or its score
is computed; a point at which both are computed counts once, and a batch counts its points.

The SMC sampler (Del Moral, Doucet & Jasra 2006, "Sequential Monte Carlo samplers"; Neal 2001, "Annealed importance
sampling") moves ``N`` particles through the geometric path

    ``pi_beta(x) ∝ pi_0(x)^(1 - beta) rho(x)^beta``,  ``0 = beta_0 < beta_1 < ... < beta_T = 1``,

from the normalised Gaussian ``pi_0 = N(m_0, s_0^2 I)`` (``Z_0 = 1``) to the target ``rho = Z p``. Step ``t``:

1. reweight: ``w_i = exp((beta_t - beta_{t-1}) (log rho(x_i) - log pi_0(x_i)))``, and
   ``log Z += log sum_i W_i w_i`` with ``W`` the normalised weights before the step; ``W_i ∝ W_i w_i``;
2. resample (systematic) when the effective sample size ``(sum W)^2 / sum W^2`` falls below ``threshold * N``;
   the weights become ``1 / N``, so the increments of later steps stay correct;
3. move (for ``beta_t < 1``): ``moves`` MCMC steps that leave ``pi_{beta_t}`` invariant, MALA or HMC.

``E[Z_hat] = Z`` for any fixed schedule and kernels (the estimate of ``log Z`` is biased low by Jensen, by about
``var(log Z_hat) / 2``). The final normalised weights give the reported ESS. All weight arithmetic is float64.

**Temperatures**: a fixed number ``K`` (``beta_k = k / K``; ``K = 1`` is plain importance sampling from ``pi_0``),
an explicit increasing sequence ending at 1, or adaptive (Jasra et al. 2011; Zhou, Johansen & Aston 2016): the next
``beta`` is found by bisection so that the conditional ESS of the incremental weights,
``(sum_i W_i w_i)^2 / sum_i W_i w_i^2``, equals ``target_cess`` (times the fraction of weight on particles of
non-zero density, which no step size can raise).

**Kernels** (preconditioned by ``s``: 1 for ``preconditioning="scalar"``, the weighted standard deviation of each
coordinate over the particles before the moves for ``"diagonal"``):

* MALA: ``y = x + h^2/2 s^2 grad log pi_beta(x) + h s xi``, Metropolis-Hastings with the Gaussian proposal densities;
* HMC: momentum ``p ~ N(0, diag(1 / s^2))``, ``leapfrog_steps`` leapfrog steps of size ``h``, accept with
  ``exp(H_0 - H_L)``, ``H = -log pi_beta(x) + |s p|^2 / 2``.

**Step-size adaptation** (on by default): after each MCMC step the mean acceptance probability ``alpha_bar`` of the
population updates ``log h <- log h + gain (alpha_bar - alpha*)`` (a Robbins-Monro step with a constant gain, as the
target moves with ``beta``; Andrieu & Thoms 2008 section 5), with ``alpha* = 0.574`` for MALA (Roberts & Rosenthal
1998) and ``0.651`` for HMC (Beskos et al. 2013). The step size carries over to the next temperature. Kernels that
depend on the current population keep the estimate consistent as ``N -> infinity`` (Beskos, Jasra, Kantas & Thiery
2016), not exactly unbiased at finite ``N``.

**Zero density**: ``log rho = -inf`` is allowed: such a particle gets weight zero and is never accepted as a
proposal; where ``log rho = -inf`` the score is taken as zero (the drift falls back to ``pi_0``'s; it is a fixed
function of the point, so the Metropolis-Hastings correction stays exact). NaN log densities, finite log densities
with a non-finite score, and a population in which every particle has zero density raise :class:`TargetError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .estimators import LogZEstimate, effective_sample_size
from .target import Target, TargetError, checked_log_prob, validate_target

__all__ = ["SMC", "SMCResult"]

KERNELS = ("hmc", "mala")
PRECONDITIONING = ("scalar", "diagonal")
OPTIMAL_ACCEPTANCE = {"mala": 0.574, "hmc": 0.651}


@dataclass
class SMCResult:
    """One SMC run: the estimate, the final weighted particles and the per-step diagnostics.

    ``log_weights`` are the final normalised log weights (float64, ``logsumexp = 0``); ``betas`` the temperatures
    ``beta_1..beta_T``; ``log_z_increments[t]`` the increment of step ``t``; ``resampled[t]`` whether step ``t``
    resampled; ``step_sizes`` and ``acceptance`` one entry per MCMC step (the step size used and the population's
    mean acceptance probability).
    """

    estimate: LogZEstimate
    particles: Tensor
    log_weights: Tensor
    betas: list[float]
    log_z_increments: list[float]
    resampled: list[bool]
    step_sizes: list[float]
    acceptance: list[float]


@dataclass
class _State:
    """Particles with their target log density (float64), score, and the initial law's log density (float64)."""

    x: Tensor
    log_rho: Tensor
    score: Tensor | None
    log_pi0: Tensor

    def select(self, index: Tensor) -> _State:
        score = None if self.score is None else self.score[index]
        return _State(self.x[index], self.log_rho[index], score, self.log_pi0[index])


class SMC:
    r"""Sequential Monte Carlo (annealed importance sampling with resampling) estimate of ``log Z``; see the module
    docstring for the algorithm.

    Args:
        target: the unnormalised density.
        kernel: ``"hmc"`` or ``"mala"``.
        moves: MCMC steps per temperature.
        leapfrog_steps: leapfrog steps per HMC step (ignored by MALA).
        step_size: initial step size ``h`` (relative to the preconditioner ``s``); default ``0.5 d^(-1/4)`` for HMC,
            ``d^(-1/3)`` for MALA (the optimal scalings' orders in the dimension).
        target_acceptance: ``alpha*`` of the adaptation; default 0.651 (HMC), 0.574 (MALA).
        adapt_step_size: adapt ``h`` toward ``alpha*``.
        adaptation_gain: the constant gain of the Robbins-Monro update of ``log h``.
        preconditioning: ``"scalar"`` (``s = 1``) or ``"diagonal"`` (``s`` = the particles' weighted standard deviation
            per coordinate, re-estimated before each temperature's moves).
        resample_threshold: resample when ``ESS < resample_threshold * N``.
        initial_mean, initial_std: ``m_0`` and ``s_0`` of ``pi_0 = N(m_0, s_0^2 I)``: scalars or (d,) tensors.
    """

    def __init__(
        self,
        target: Target,
        *,
        kernel: str = "hmc",
        moves: int = 1,
        leapfrog_steps: int = 10,
        step_size: float | None = None,
        target_acceptance: float | None = None,
        adapt_step_size: bool = True,
        adaptation_gain: float = 1.0,
        preconditioning: str = "scalar",
        resample_threshold: float = 0.3,
        initial_mean: float | Tensor = 0.0,
        initial_std: float | Tensor = 1.0,
    ) -> None:
        validate_target(target)
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")
        if preconditioning not in PRECONDITIONING:
            raise ValueError(f"unknown preconditioning {preconditioning!r}; choose one of {PRECONDITIONING}")
        for name, value in (("moves", moves), ("leapfrog_steps", leapfrog_steps)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        dim = target.dim
        step_size = (0.5 * dim**-0.25 if kernel == "hmc" else dim ** (-1 / 3)) if step_size is None else step_size
        target_acceptance = OPTIMAL_ACCEPTANCE[kernel] if target_acceptance is None else target_acceptance
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be positive and finite, got {step_size}")
        if not 0 < target_acceptance < 1:
            raise ValueError(f"target_acceptance must lie in (0, 1), got {target_acceptance}")
        if not (math.isfinite(adaptation_gain) and adaptation_gain > 0):
            raise ValueError(f"adaptation_gain must be positive and finite, got {adaptation_gain}")
        if not 0 <= resample_threshold <= 1:
            raise ValueError(f"resample_threshold must lie in [0, 1], got {resample_threshold}")
        self.target, self.kernel, self.moves, self.leapfrog_steps = target, kernel, moves, leapfrog_steps
        self.step_size, self.target_acceptance = float(step_size), float(target_acceptance)
        self.adapt_step_size, self.adaptation_gain = bool(adapt_step_size), float(adaptation_gain)
        self.preconditioning, self.resample_threshold = preconditioning, float(resample_threshold)
        self.dtype, self.device = _floating_dtype(target), _device(target)
        self.initial_mean = _per_coordinate(initial_mean, "initial_mean", dim, self.dtype, self.device)
        self.initial_std = _per_coordinate(initial_std, "initial_std", dim, self.dtype, self.device)
        if not (self.initial_std > 0).all():
            raise ValueError("initial_std must be positive")
        self.evaluations = 0

    @property
    def evaluations_per_move(self) -> int:
        """Target evaluations per particle and MCMC step: 1 for MALA, ``leapfrog_steps`` for HMC."""
        return self.leapfrog_steps if self.kernel == "hmc" else 1

    def estimate_log_z(
        self,
        particles: int = 2000,
        temperatures: int | Sequence[float] | None = None,
        target_cess: float = 0.5,
        seed: int | None = None,
        progress: bool = False,
    ) -> LogZEstimate:
        """``log Z`` from one SMC run (see :meth:`run`): ``log_z`` the SMC estimate, ``ess`` the final normalised
        ESS, ``n`` the particle count, ``evaluations`` the target evaluations of the run, ``elbo`` ``None``."""
        return self.run(particles, temperatures, target_cess, seed, progress).estimate

    def run(
        self,
        particles: int = 2000,
        temperatures: int | Sequence[float] | None = None,
        target_cess: float = 0.5,
        seed: int | None = None,
        progress: bool = False,
    ) -> SMCResult:
        """One SMC run.

        Args:
            particles: ``N``.
            temperatures: ``K`` (an int: ``beta_k = k / K``), an increasing sequence in ``(0, 1]`` ending at 1, or
                ``None`` for adaptive tempering.
            target_cess: the conditional ESS fraction of each adaptive step (ignored for fixed temperatures).
            seed: seeds the run's random numbers (``None``: torch's global generator).
            progress: show a progress bar over ``beta``.
        """
        if not isinstance(particles, int) or isinstance(particles, bool) or particles < 2:
            raise ValueError(f"particles must be an int >= 2, got {particles!r}")
        betas = None if temperatures is None else _schedule(temperatures)
        if betas is None and not 0 < target_cess < 1:
            raise ValueError(f"target_cess must lie in (0, 1), got {target_cess}")
        generator = None if seed is None else torch.Generator(self.device).manual_seed(seed)
        self.evaluations = 0
        moves_needed = betas is None or len(betas) > 1
        x = self.initial_mean + self.initial_std * self._randn(particles, generator)
        state = self._evaluate(x, with_score=moves_needed)
        log_w = torch.full((particles,), -math.log(particles), dtype=torch.float64, device=self.device)
        step_size = self.step_size
        path: list[float] = []  # the temperatures reached
        increments, resampled, step_sizes, acceptances = [], [], [], []
        beta, log_z = 0.0, 0.0
        bar = tqdm(total=1.0, desc="SMC", disable=not progress, bar_format="{l_bar}{bar}| beta {n:.4f} {postfix}")
        while beta < 1.0:
            log_ratio = state.log_rho - state.log_pi0  # log rho - log pi_0, float64
            if betas is None:
                next_beta = beta + _adaptive_increment(log_w, log_ratio, 1.0 - beta, target_cess)
            else:
                next_beta = betas[len(path)]
            increment = _scaled(log_ratio, next_beta - beta)
            log_z_step = float(torch.logsumexp(log_w + increment, 0))
            if log_z_step == -math.inf:
                raise TargetError(
                    f"{type(self.target).__name__}.log_prob returned -inf at every one of the {particles} particles "
                    f"at beta = {next_beta:.4g}: zero density everywhere the particles are; move or widen the "
                    "initial Gaussian (initial_mean, initial_std)"
                )
            log_z += log_z_step
            log_w = log_w + increment - log_z_step
            bar.update(next_beta - beta)
            beta = next_beta
            path.append(beta)
            increments.append(log_z_step)
            resample = beta < 1.0 and effective_sample_size(log_w) < self.resample_threshold
            resampled.append(resample)
            if resample:
                state = state.select(_systematic_resample(log_w, generator))
                log_w = torch.full_like(log_w, -math.log(particles))
            if beta < 1.0:
                scale = self._preconditioner(state.x, log_w)
                for _ in range(self.moves):
                    state, acceptance = self._move(state, beta, step_size, scale, generator)
                    step_sizes.append(step_size)
                    acceptances.append(acceptance)
                    if self.adapt_step_size:
                        step_size *= math.exp(self.adaptation_gain * (acceptance - self.target_acceptance))
                bar.set_postfix_str(f"log Z {log_z:.4f}, step {step_size:.3g}, acceptance {acceptance:.2f}")
        bar.close()
        estimate = LogZEstimate(
            log_z=log_z,
            elbo=None,
            ess=effective_sample_size(log_w),
            n=particles,
            log_z_exact=self.target.log_Z,
            evaluations=self.evaluations,
        )
        return SMCResult(estimate, state.x, log_w, path, increments, resampled, step_sizes, acceptances)

    # -- target evaluations ----------------------------------------------------------------------------------------

    def _evaluate(self, x: Tensor, with_score: bool = True) -> _State:
        """``log rho`` (float64) and, if asked, the score at ``x``, counted once per point (``x.shape[0]``)."""
        self.evaluations += x.shape[0]
        if not with_score:
            with torch.no_grad():
                log_rho = checked_log_prob(self.target, x)
            score = None
        elif type(self.target).score is not Target.score:  # a closed-form score: no autograd needed
            with torch.no_grad():
                log_rho = checked_log_prob(self.target, x)
                score = self.target.score(x)
        else:  # one autograd pass gives both
            with torch.enable_grad():
                inner = x.detach().requires_grad_(True)
                log_rho = checked_log_prob(self.target, inner)
                (score,) = torch.autograd.grad(log_rho.sum(), inner)
            log_rho = log_rho.detach()
        if score is not None:
            zero_density = log_rho == -math.inf
            bad = ~torch.isfinite(score).all(-1) & ~zero_density
            if bad.any():
                i = int(bad.nonzero()[0, 0])
                raise TargetError(
                    f"{type(self.target).__name__}: non-finite score at a point of finite log density "
                    f"{log_rho[i].item():.6g}, e.g. x = {x[i].detach().cpu().tolist()}"
                )
            score = torch.where(zero_density[:, None], torch.zeros_like(score), score)
        log_pi0 = self._log_pi0(x)
        return _State(x.detach(), log_rho.double(), score, log_pi0)

    # -- the path of densities ------------------------------------------------------------------------------------

    def _log_pi0(self, x: Tensor) -> Tensor:
        """``log N(x; m_0, s_0^2 I)`` in float64."""
        z = ((x - self.initial_mean) / self.initial_std).double()
        log_det = self.initial_std.double().log().sum()
        return -0.5 * z.square().sum(-1) - log_det - 0.5 * x.shape[1] * math.log(2 * math.pi)

    def _log_pi(self, state: _State, beta: float) -> Tensor:
        """``log pi_beta = (1 - beta) log pi_0 + beta log rho`` (float64; ``-inf`` where ``rho = 0``)."""
        return (1 - beta) * state.log_pi0 + _scaled(state.log_rho, beta)

    def _grad_log_pi(self, state: _State, beta: float) -> Tensor:
        grad_pi0 = -(state.x - self.initial_mean) / self.initial_std.square()
        return (1 - beta) * grad_pi0 + beta * state.score

    def _randn(self, n: int, generator: torch.Generator | None) -> Tensor:
        return torch.randn(n, self.target.dim, generator=generator, dtype=self.dtype, device=self.device)

    def _preconditioner(self, x: Tensor, log_w: Tensor) -> Tensor:
        """``s``: ones, or the weighted standard deviation of each coordinate (floored at 1e-8 of the largest)."""
        if self.preconditioning == "scalar":
            return torch.ones(x.shape[1], dtype=self.dtype, device=self.device)
        w = torch.softmax(log_w, 0)[:, None]
        mean = (w * x.double()).sum(0)
        std = (w * (x.double() - mean).square()).sum(0).sqrt()
        return std.clamp_min(1e-8 * float(std.max())).to(self.dtype)

    # -- MCMC kernels ---------------------------------------------------------------------------------------------

    def _move(
        self, state: _State, beta: float, step: float, scale: Tensor, generator: torch.Generator | None
    ) -> tuple[_State, float]:
        """One MCMC step leaving ``pi_beta`` invariant; returns the new state and the mean acceptance probability."""
        kernel = self._hmc if self.kernel == "hmc" else self._mala
        proposal, log_alpha = kernel(state, beta, step, scale, generator)
        log_u = torch.rand(log_alpha.shape, generator=generator, dtype=torch.float64, device=self.device).log()
        accept = log_u < log_alpha  # NaN (e.g. -inf - -inf) rejects
        acceptance = float(torch.nan_to_num(log_alpha, nan=-math.inf).clamp(max=0.0).exp().mean())
        mask = accept[:, None]
        new = _State(
            torch.where(mask, proposal.x, state.x),
            torch.where(accept, proposal.log_rho, state.log_rho),
            torch.where(mask, proposal.score, state.score),
            torch.where(accept, proposal.log_pi0, state.log_pi0),
        )
        return new, acceptance

    def _mala(
        self, state: _State, beta: float, step: float, scale: Tensor, generator: torch.Generator | None
    ) -> tuple[_State, Tensor]:
        r"""Proposal ``y = x + h^2/2 s^2 g(x) + h s xi`` and ``log alpha = log pi(y) - log pi(x) + log q(x | y) -
        log q(y | x)``, ``log q(y | x) = -|(y - x - h^2/2 s^2 g(x)) / (h s)|^2 / 2`` (+ a constant that cancels)."""
        variance = scale.square()
        drift_x = 0.5 * step**2 * variance * self._grad_log_pi(state, beta)
        y = state.x + drift_x + step * scale * self._randn(state.x.shape[0], generator)
        finite = torch.isfinite(y).all(-1)
        proposal = self._evaluate(torch.where(finite[:, None], y, state.x))
        drift_y = 0.5 * step**2 * variance * self._grad_log_pi(proposal, beta)
        log_q_forward = -0.5 * ((proposal.x - state.x - drift_x) / (step * scale)).double().square().sum(-1)
        log_q_backward = -0.5 * ((state.x - proposal.x - drift_y) / (step * scale)).double().square().sum(-1)
        log_alpha = self._log_pi(proposal, beta) - self._log_pi(state, beta) + log_q_backward - log_q_forward
        return proposal, torch.where(finite, log_alpha, -math.inf)

    def _hmc(
        self, state: _State, beta: float, step: float, scale: Tensor, generator: torch.Generator | None
    ) -> tuple[_State, Tensor]:
        r"""``leapfrog_steps`` leapfrog steps for ``H(x, p) = -log pi_beta(x) + |s p|^2 / 2`` from ``p = xi / s``;
        ``log alpha = H(x_0, p_0) - H(x_L, p_L)``. A trajectory that leaves the floating-point range is rejected."""
        variance = scale.square()
        momentum = self._randn(state.x.shape[0], generator) / scale
        energy_start = -self._log_pi(state, beta) + 0.5 * (scale * momentum).double().square().sum(-1)
        current, finite = state, torch.ones(state.x.shape[0], dtype=torch.bool, device=self.device)
        momentum = momentum + 0.5 * step * self._grad_log_pi(current, beta)
        for leapfrog in range(self.leapfrog_steps):
            x = current.x + step * variance * momentum
            finite &= torch.isfinite(x).all(-1) & torch.isfinite(momentum).all(-1)
            current = self._evaluate(torch.where(finite[:, None], x, state.x))
            kick = step if leapfrog < self.leapfrog_steps - 1 else 0.5 * step
            momentum = momentum + kick * self._grad_log_pi(current, beta)
        energy_end = -self._log_pi(current, beta) + 0.5 * (scale * momentum).double().square().sum(-1)
        return current, torch.where(finite, energy_start - energy_end, -math.inf)


def _scaled(log_values: Tensor, factor: float) -> Tensor:
    """``factor * log_values`` with ``0 * -inf = 0`` (at ``beta = 0`` a zero density does not count)."""
    return torch.where(log_values == -math.inf, -math.inf if factor > 0 else 0.0, factor * log_values)


def _conditional_ess(log_w: Tensor, increment: Tensor) -> float:
    """``(sum_i W_i w_i)^2 / sum_i W_i w_i^2`` for normalised ``log_w`` and incremental log weights ``increment``."""
    return float(torch.exp(2 * torch.logsumexp(log_w + increment, 0) - torch.logsumexp(log_w + 2 * increment, 0)))


def _adaptive_increment(log_w: Tensor, log_ratio: Tensor, max_increment: float, target_cess: float) -> float:
    r"""The temperature increment ``delta`` in ``(0, max_increment]`` whose conditional ESS equals ``target_cess``
    times the limit as ``delta -> 0`` (the weight fraction on particles of non-zero density), by bisection (60
    halvings: ``delta`` to 1e-18 relative); the whole remaining increment when its CESS is high enough. The CESS
    decreases in ``delta`` (it is the squared mean over the variance-plus-squared-mean of ``w``, whose spread grows
    with ``delta``)."""
    finite = log_ratio > -math.inf
    if not finite.any():
        return max_increment  # every particle has zero density: the caller raises
    attainable = float(torch.exp(torch.logsumexp(log_w[finite], 0)))
    goal = target_cess * attainable
    centred = torch.where(finite, log_ratio - log_ratio[finite].max(), -math.inf)  # the CESS is shift-invariant
    if _conditional_ess(log_w, _scaled(centred, max_increment)) >= goal:
        return max_increment
    low, high = 0.0, max_increment
    for _ in range(60):
        middle = 0.5 * (low + high)
        if _conditional_ess(log_w, _scaled(centred, middle)) >= goal:
            low = middle
        else:
            high = middle
    return low if low > 0 else high


def _systematic_resample(log_w: Tensor, generator: torch.Generator | None) -> Tensor:
    """Systematic resampling (Kitagawa 1996; Douc, Cappe & Moulines 2005): indices ``i_k`` with
    ``cumsum(W)[i_k - 1] <= (k + U) / N < cumsum(W)[i_k]``, one uniform ``U`` for all ``N``."""
    n = log_w.numel()
    cumulative = torch.cumsum(torch.softmax(log_w, 0), 0)
    cumulative = cumulative / cumulative[-1]  # exactly 1 at the end, whatever the rounding
    u = (torch.rand(1, generator=generator, dtype=torch.float64, device=log_w.device) + torch.arange(
        n, dtype=torch.float64, device=log_w.device)) / n
    return torch.searchsorted(cumulative, u, right=True).clamp_max(n - 1)


def _schedule(temperatures: int | Sequence[float]) -> list[float]:
    """``[1/K, ..., 1]`` for an int ``K``, or a validated increasing sequence in ``(0, 1]`` ending at 1."""
    if isinstance(temperatures, bool):
        raise ValueError(f"temperatures must be an int, a sequence of betas or None, got {temperatures!r}")
    if isinstance(temperatures, int):
        if temperatures < 1:
            raise ValueError(f"temperatures must be >= 1, got {temperatures}")
        return [k / temperatures for k in range(1, temperatures + 1)]
    betas = [float(b) for b in temperatures]
    if not betas or betas[-1] != 1.0 or betas[0] <= 0 or any(b >= c for b, c in zip(betas, betas[1:])):
        raise ValueError("temperatures as a sequence must increase strictly within (0, 1] and end at 1.0")
    return betas


def _per_coordinate(value: float | Tensor, name: str, dim: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A scalar or (dim,) value as a finite (dim,) tensor."""
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.ndim == 0:
        t = t.expand(dim).clone()
    if t.shape != (dim,) or not torch.isfinite(t).all():
        raise ValueError(f"{name} must be a finite scalar or a ({dim},) tensor, got {value!r}")
    return t


def _floating_dtype(target: Target) -> torch.dtype:
    for tensor in (*target.parameters(), *target.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def _device(target: Target) -> torch.device:
    for tensor in (*target.parameters(), *target.buffers()):
        return tensor.device
    return torch.device("cpu")
