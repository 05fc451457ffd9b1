"""The samplers: a reference process, learned controls, and the shared training and estimation of :class:`Sampler`.

* :class:`PIS`, :class:`DDS`: a forward reference (Brownian motion from the origin; a stationary VP process) and a
  learned forward control;
* :class:`DIS`: the reversal of a VP noising process and a learned forward control (``underdamped=True``: on
  position and velocity, the reversal of Langevin dynamics for the prior);
* :class:`Bridge`: DIS's reference with a learned forward *and* backward control (``underdamped=True`` too);
* :class:`CMCD`: an annealed path of densities between the prior and the target, Langevin kernels both ways and a
  learned drift correction.

Every one of them is trained and evaluated through the one log-weight of :mod:`sde_control.weights`.

>>> from sde_control.targets import Funnel
>>> sampler = DIS(Funnel(dim=10))
>>> history = sampler.fit(iterations=5000, batch_size=512, loss="lv")
>>> x = sampler.sample(10_000)
>>> est = sampler.estimate_log_z(10_000)   # est.log_z, est.elbo, est.ess, est.eubo, est.evaluations
>>> sampler.save("funnel.pt"); sampler = DIS.load("funnel.pt")
"""

from __future__ import annotations

import abc
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from .checkpoints import Checkpointable
from .controls import (AnnealedLangevinControl, BridgeControls, Control, ControlMLP, Field, ScoreInformedControl,
                       path_controls)
from .device import like
from .estimators import LogZEstimate
from .integrate import simulate_chain
from .losses import LOSSES
from .references import (ForwardReference, Reference, TimeReversalReference, UnderdampedReference, time_grid)
from .sdes import VP, ScaledBrownian
from .target import CountingTarget, Target, TargetError, validate_target
from .training import TrainConfig, Trainer, config_from
from .weights import log_weight, target_path_log_weights


@dataclass
class SamplerTraining(TrainConfig):
    """A sampler's training run: the loop's settings (:class:`~sde_control.training.TrainConfig`) and

    Args:
        loss: ``"lv"`` (log-variance), ``"kl"`` (reverse KL through the path) or ``"kl_ld"`` (reverse KL by the
            log-derivative trick, :func:`~sde_control.losses.kl_log_derivative_loss`: for the samplers that learn a
            backward process, the Bridge and CMCD, on which the log-variance loss can drift).
        exploration: the log-variance loss's behaviour noise ``eta`` (the path's noise widened by ``sqrt(1 +
            eta^2)``, :func:`~sde_control.integrate.simulate_chain`); ``None``: the sampler's
            ``default_exploration`` for ``loss="lv"``, 0 for ``"kl"`` (whose paths are its own: it cannot explore).
        exploration_end: the exploration's factor at the end of the run: ``eta`` falls linearly to ``eta *
            exploration_end`` in ten equal steps (1: constant; each step is one CUDA-graph capture).
        detach_score: evaluate the control's score guidance on detached states, so that the KL loss's gradient
            through the path skips the score's derivative (the DDS authors' choice); the log-variance loss has no
            gradient through the path, so it changes nothing there.
        step_schedule: time-step counts used for equal shares of the run (the DIS paper: ``(100, 200, 400,
            800)``); ``None``: the sampler's ``steps`` throughout. Sampling and estimates then default to its last.
        clip_values, clip_from: the control's clipping ``clip_values[j]`` from the fraction ``clip_from[j]`` of the
            run on (the DIS paper: 10, then 50 after 200 and 250 after 400 of its 20,000 steps: ``(0, 0.01, 0.02)``).
        lr_every: the learning rate's decay steps, as a fraction of the run (the DIS paper: 100 of 20,000, 0.005;
            a value of 1 or more is a number of iterations).
        adjoint: the KL loss through ``torchsde.sdeint_adjoint`` (memory flat in the number of steps); the history
            then logs only the loss.
        lv_chunk: compute the log-variance loss in two passes, this many steps at a time (memory flat in the number
            of steps, :func:`~sde_control.losses.log_variance_loss`); ``None``: one pass.
        compile: evaluate the control networks' per-step MLP through ``torch.compile`` (eager where no compiler
            works, :mod:`sde_control.compilation`). Off by default: on this project's 2-core CPU the compiled
            training step is slower than the eager one (``benchmarks/speed.py --section levers``).
        evaluate_every: also estimate log Z from ``eval_samples`` fresh paths of the EMA control every so many
            iterations (and at the end); ``None``: never.
        eval_samples: paths of those estimates.
    """

    loss: str = "lv"
    exploration: float | None = None
    exploration_end: float = 0.0
    detach_score: bool = True
    step_schedule: tuple[int, ...] | None = None
    clip_values: tuple[float, ...] = (10.0, 50.0, 250.0)
    clip_from: tuple[float, ...] = (0.0, 0.01, 0.02)
    lr_every: float = 0.005
    adjoint: bool = False
    lv_chunk: int | None = None
    compile: bool = False
    evaluate_every: int | None = None
    eval_samples: int = 2000

    RESUMABLE: ClassVar[tuple[str, ...]] = TrainConfig.RESUMABLE + ("evaluate_every", "eval_samples", "compile")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.adjoint and self.loss != "kl":
            raise ValueError("adjoint=True applies to the KL loss only (the log-variance loss has no path gradient)")
        if self.adjoint and self.cuda_graph:
            raise ValueError("cuda_graph=True needs a graph-safe loss: the adjoint solver is not (use adjoint=False)")
        if self.exploration is not None and not self.exploration >= 0:
            raise ValueError(f"exploration must be non-negative or None, got {self.exploration}")
        if not 0 <= self.exploration_end <= 1:
            raise ValueError(f"exploration_end must be in [0, 1], got {self.exploration_end}")
        if self.exploration and self.loss != "lv":
            raise ValueError("exploration applies to the log-variance loss only: the KL loss differentiates through "
                             "paths drawn from its own control")
        if self.lv_chunk is not None and (self.loss != "lv" or self.lv_chunk < 1):
            raise ValueError(f"lv_chunk (a positive number of steps) applies to the log-variance loss, got "
                             f"{self.lv_chunk!r} with loss {self.loss!r}")
        if self.lv_chunk is not None and self.cuda_graph:
            raise ValueError("cuda_graph=True runs the one-pass log-variance loss (lv_chunk=None)")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2, got {self.batch_size}")
        for steps in self.step_schedule or ():
            if not isinstance(steps, int) or steps < 1:
                raise ValueError(f"step_schedule must hold positive ints, got {self.step_schedule!r}")
        if (len(self.clip_values) != len(self.clip_from) or not self.clip_from
                or list(self.clip_from) != sorted(self.clip_from) or not 0 <= self.clip_from[0] < 1
                or self.clip_from[-1] >= 1):
            raise ValueError(f"clip_values and clip_from must be non-empty and of equal length, clip_from increasing "
                             f"fractions of the run in [0, 1); got {self.clip_values!r}, {self.clip_from!r}")

    def steps_at(self, run_position: int, default: int) -> int:
        """The step count ``run_position`` iterations into the run."""
        schedule = self.step_schedule or (default,)
        phase = run_position * len(schedule) // self.iterations
        return schedule[min(phase, len(schedule) - 1)]

    def clip_at(self, run_position: int) -> float:
        """The clip ``run_position`` iterations into the run: ``clip_values[j]`` from iteration ``round(clip_from[j]
        * iterations)`` on."""
        value = self.clip_values[0]
        for start, clip in zip(self.clip_from, self.clip_values):
            if run_position >= round(start * self.iterations):
                value = clip
        return value

    def exploration_for(self, default: float, run_position: int = 0) -> float:
        """The behaviour noise ``run_position`` iterations into the run, given the sampler's default for the
        log-variance loss."""
        start = self.exploration if self.exploration is not None else default if self.loss == "lv" else 0.0
        phase = min(run_position * 10 // self.iterations, 9) / 9
        return start * (1 - (1 - self.exploration_end) * phase)


# ---------------------------------------------------------------------- guidance fields
def prior_score(reference: Reference) -> Field:
    """``phi(x, s) = grad log p_0(x) = -(x - m) / std^2``: the score of the reference's Gaussian prior."""
    return lambda x, s: -(x - like(reference.prior_mean, x)) / reference.prior_std**2


def interpolated_score(target: Target, reference: Reference) -> Field:
    """``psi(x, s) = lerp(grad log p_0, grad log rho, s / T)``: the prior's score at the start of generation, the
    target's at its end (DIS's guidance; CMCD's annealed score for the geometric path ``p_0^(1 - s/T) rho^(s/T)``)."""
    prior = prior_score(reference)
    return lambda x, s: torch.lerp(prior(x, s), target.score(x), s / reference.T)


def annealing_force(target: Target, reference: Reference) -> Field:
    """``psi(x, s) = (s / T)(grad log rho - grad log p_0)``: what turns Langevin dynamics for the prior into Langevin
    dynamics for the annealed density ``p_0^(1 - s/T) rho^(s/T)`` (the underdamped samplers' guidance; DIS's with
    ``guidance="annealed"``)."""
    prior = prior_score(reference)
    return lambda x, s: (s / reference.T) * (target.score(x) - prior(x, s))


def target_score(target: Target, reference: Reference) -> Field:
    """``psi(x, s) = grad log rho(x)`` (PIS, DDS)."""
    return lambda x, s: target.score(x)


class Sampler(Checkpointable):
    """Controls on a reference process toward ``target``, trained by a path-space loss.

    Subclasses build their reference (for the target's dimension, once the target is validated) and their networks
    (:meth:`_networks`): the forward control, and for a Bridge or CMCD a backward one, in one trained module
    (``self.control``). Every evaluation of the target goes through a counting view (``self.counted``; the training's
    count is :attr:`training_evaluations`). The subclasses' common arguments: ``steps`` (of sampling, and of training
    without a step schedule), ``control`` (``"score"``: the score-informed network; ``"mlp"``: a plain one; or an
    ``nn.Module`` mapping ``(z, s)`` to a control of shape ``(batch, dim)``), ``width`` and ``depth`` of the built
    networks, and ``clip_mode`` of their guidance (``"elementwise"`` or ``"norm"``,
    :func:`~sde_control.controls.clip_field`).
    """

    adjoint_method: ClassVar[str | None] = "reversible_heun"
    """Solver of ``fit(adjoint=True)`` (:func:`~sde_control.integrate.simulate_continuous`); ``None`` where the
    adjoint gives no usable gradient (:class:`DIS`) or does not apply (backward controls, underdamped states)."""

    adjoint_min_steps: ClassVar[int] = 1
    """Fewer steps than this make ``fit(adjoint=True)`` warn: its gradient error is then large (:class:`DDS`)."""

    default_exploration: ClassVar[float] = 1.0
    """The log-variance loss's behaviour noise ``eta`` when ``fit`` is not told one, decaying to 0 over the run:
    measured on the 9-mode GMM (``benchmarks/exploration.py``, table in ``benchmarks/RESULTS.md``)."""

    training_config_class = SamplerTraining

    def __init__(self, target: Target, reference: Callable[[int], Reference], *, steps: int):
        validate_target(target)
        self.target = target
        self.counted = CountingTarget(target)
        self.reference = reference(target.dim)
        time_grid(self.reference.T, steps)  # validates steps
        self.steps = steps
        self.control = self._networks()
        self._check_control()
        self.trainer = Trainer(self.control)
        self.training_evaluations = 0

    @abc.abstractmethod
    def _networks(self) -> nn.Module:
        """The trained module: a forward control, or a module with ``forward_control`` and ``backward_control``."""

    def _score_informed(self, control: str | nn.Module, guidance: Field, scale: Callable[[Tensor], Tensor] | None,
                        weight_bias: float, width: int, depth: int, clip_mode: str, base: Field | None = None
                        ) -> nn.Module:
        """The forward control: ``control="score"`` the score-informed network, ``"mlp"`` a plain one, or a module."""
        if isinstance(control, nn.Module):
            return control
        state_dim = self.reference.state_dim
        if control == "score":
            return ScoreInformedControl(self.target.dim, guidance, scale, weight_bias=weight_bias, width=width,
                                        depth=depth, state_dim=state_dim, clip_mode=clip_mode, base=base)
        if control == "mlp":
            return ControlMLP(self.target.dim, width, depth, in_dim=state_dim)
        raise ValueError(f"control must be 'score', 'mlp' or an nn.Module, got {control!r}")

    def _check_control(self) -> None:
        z = self.reference.sample_initial(4, self.device)
        for name, control in zip(("forward", "backward"), path_controls(self.control)):
            if control is None:
                continue
            with torch.no_grad():
                u = control(z, torch.zeros((), device=self.device))
            if u.shape != (4, self.target.dim):
                raise TargetError(f"the {name} control maps states of shape {tuple(z.shape)} to {tuple(u.shape)}; it "
                                  f"must return shape (batch, {self.target.dim})")

    @property
    def device(self) -> torch.device:
        return next(self.control.parameters(), torch.empty(0)).device

    @property
    def name(self) -> str:
        """The sampler's name for tables: its class, and ``(underdamped)`` on position and velocity."""
        return type(self).__name__ + (" (underdamped)" if self.reference.state_dim > self.target.dim else "")

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per training iteration (loss, gradient norm, learning rate, time, cumulative target
        evaluations, ...)."""
        return self.trainer.history

    @property
    def default_steps(self) -> int:
        """Steps of sampling and estimates: the last of the training's step schedule if it had one, else ``steps``."""
        schedule = getattr(self.training_config, "step_schedule", None)
        return schedule[-1] if schedule else self.steps

    def to(self, device: torch.device | str) -> Sampler:
        """Move target and networks (call before :meth:`fit`)."""
        self.target.to(device)
        self.control.to(device)
        if self.trainer.ema is not None:
            self.trainer.ema.to(device)
        return self

    # ------------------------------------------------------------------ training
    def fit(self, iterations: int, batch_size: int = 512, loss: str = "lv", *,
            checkpoint: str | os.PathLike | None = None, resume: bool = True, **options: Any) -> list[dict[str, Any]]:
        """Train the controls; returns the training history (also at :attr:`history`).

        ``options`` are the fields of :class:`SamplerTraining` (learning rate, schedules, exploration, adjoint,
        evaluation, ``cuda_graph``, ...). With ``checkpoint`` the state is written every ``checkpoint_every``
        iterations and at the end; with ``resume``, an existing file of the same run (same sampler, target and
        settings, apart from :attr:`SamplerTraining.RESUMABLE`) is continued, and a file of another run is refused
        with the differences named. ``cuda_graph=True`` on a CUDA device replays each step as a captured graph
        (losses read and checked every ``sync_every`` steps; the progress bar then shows no batch log Z); on a CPU
        the same deferred checks run with eager steps.

        Each record of the history holds the iteration's loss, gradient norm and learning rate; the batch's
        importance-sampled log Z and ESS (of the paths as drawn, exploration included; not with the adjoint, whose
        objective is not a weight); ``dropped``, the paths left out for a ``-inf`` log-weight; and ``evaluations``,
        the cumulative count of target evaluations of the training (periodic estimates included).
        """
        config = config_from(SamplerTraining, dict(iterations=iterations, batch_size=batch_size, loss=loss, **options))
        if config.adjoint and self.adjoint_method is None:
            raise ValueError(f"{type(self).__name__} cannot be trained through the adjoint (see its docstring); use "
                             f"adjoint=False")
        if config.adjoint and min(config.step_schedule or (self.steps,)) < self.adjoint_min_steps:
            warnings.warn(f"{type(self).__name__}'s {self.adjoint_method} adjoint has a gradient error that shrinks "
                          f"with the step only (see its docstring); with fewer than {self.adjoint_min_steps} steps it "
                          f"is large: use more steps or adjoint=False", stacklevel=2)
        resumed = checkpoint is not None and resume and self.resume_from(checkpoint, config)
        self.training_config = config
        trainer = self.trainer
        forward, backward = path_controls(self.control)
        self._set("detach_score", config.detach_score)
        for network in self._submodules(ControlMLP):
            network.compile_network = config.compile

        def key(iteration: int) -> tuple[int, float, float]:
            """What a captured step depends on: step count, clip and exploration at ``iteration``."""
            position = iteration - trainer.run["start"]
            return (config.steps_at(position, self.steps), config.clip_at(position),
                    config.exploration_for(self.default_exploration, position))

        ledger = EvaluationLedger(self.training_evaluations)

        def step_loss(iteration: int) -> tuple[Tensor, dict[str, float]]:
            before = self.counted.count
            steps, clip, exploration = key(iteration)
            self._set("clip", clip)
            grid = time_grid(self.reference.T, steps)
            x0 = self.reference.sample_initial(config.batch_size, self.device)
            if config.loss == "lv":
                options = {"exploration": exploration, "chunk": config.lv_chunk}
            elif config.adjoint:
                options = {"adjoint": True, "adjoint_method": self.adjoint_method}
            else:
                options = {}
            out = LOSSES[config.loss](self.counted, self.reference, forward, x0, grid, backward=backward,
                                      graph_safe=config.cuda_graph, **options)
            ledger.measure(iteration, key(iteration), self.counted.count - before)
            if config.cuda_graph or config.adjoint:
                return out.loss, {}
            batch = LogZEstimate.from_log_weights(out.log_weights)
            return out.loss, {"log_z": batch.log_z, "ess": batch.ess, "dropped": out.dropped}

        def annotate(record: dict[str, Any]) -> None:
            iteration = record["iteration"] - 1
            self.training_evaluations = record["evaluations"] = ledger.record(iteration, key(iteration))

        def evaluate() -> dict[str, float]:
            est = self.estimate_log_z(config.eval_samples, eubo=False)
            self.training_evaluations = ledger.total = est.evaluations
            return {"eval_log_z": est.log_z, "eval_elbo": est.elbo, "eval_ess": est.ess,
                    "evaluations": self.training_evaluations}

        return trainer.fit(
            step_loss, config, resume=resumed, description=f"{self.name} ({config.loss})",
            evaluate=evaluate if config.evaluate_every else None, evaluate_every=config.evaluate_every,
            checkpoint=None if checkpoint is None else lambda: self.save(checkpoint),
            graph_key=key, annotate=annotate,
        )

    def _submodules(self, kind: type[nn.Module]) -> list[nn.Module]:
        """The submodules of type ``kind`` of the networks and their average."""
        return [m for module in (self.control, self.trainer.averaged) for m in module.modules() if isinstance(m, kind)]

    def _set(self, name: str, value: Any) -> None:
        """Set a training-time attribute (``clip``, ``detach_score``) of the networks and their average."""
        for module in (self.control, self.trainer.averaged):
            if hasattr(module, name):
                setattr(module, name, value)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def weighted_samples(self, n: int, steps: int | None = None, batch_size: int = 10_000) -> tuple[Tensor, Tensor]:
        """``n`` samples of the trained (EMA) controls and their log importance weights (``-inf`` where the target's
        density is zero). Only what the weight needs is kept while simulating: memory does not grow with the
        number of steps."""
        grid = time_grid(self.reference.T, steps or self.default_steps)
        forward, backward = path_controls(self.trainer.averaged)
        samples, log_weights = [], []
        for size in _chunks(n, batch_size):
            trajectory = simulate_chain(forward, self.reference, self.reference.sample_initial(size, self.device),
                                        grid, backward=backward, keep_states=False)
            samples.append(self.reference.position(trajectory.terminal))
            log_weights.append(log_weight(self.counted, self.reference, trajectory))
        return torch.cat(samples), torch.cat(log_weights)

    def sample(self, n: int, steps: int | None = None) -> Tensor:
        """``n`` approximate samples from ``target``, shape (n, dim)."""
        return self.weighted_samples(n, steps)[0]

    @torch.no_grad()
    def estimate_log_z(self, n: int = 10_000, steps: int | None = None, eubo: bool = True) -> LogZEstimate:
        """Importance-sampled log Z, ELBO and ESS from ``n`` paths; the EUBO from ``n`` paths of
        the target-started backward process when the target has exact samples (and ``eubo``).

        ``evaluations`` counts the target evaluations of the training and of this estimate (not those of the EUBO,
        whose exact samples no user of a sampler has)."""
        before = self.counted.count
        _, log_weights = self.weighted_samples(n, steps)
        spent = self.counted.count - before
        target_log_weights = None
        if eubo and self.target.has_exact_samples:
            grid = time_grid(self.reference.T, steps or self.default_steps)
            forward, backward = path_controls(self.trainer.averaged)
            target_log_weights = torch.cat([
                target_path_log_weights(self.counted, self.reference, forward,
                                        self.target.sample(size).to(self.device), grid, backward)
                for size in _chunks(n, 10_000)
            ])
        estimate = LogZEstimate.from_log_weights(log_weights, target_log_weights, self.target.log_Z)
        return estimate.with_evaluations(self.training_evaluations + spent)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {"trainer": self.trainer.state_dict(), "evaluations": self.training_evaluations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state["trainer"])
        self.training_evaluations = state.get("evaluations", 0)


class EvaluationLedger:
    """The cumulative count of target evaluations of a training run, iteration by iteration.

    An iteration whose loss ran in Python is counted as measured (the counting target's increase, summed over its
    micro-batches). A CUDA-graph replay runs no Python: it is counted as what the last measured iteration with the
    same capture key (step count and clip) cost, the work the replay repeats.
    """

    def __init__(self, total: int = 0):
        self.total = total
        self._measured: dict[int, int] = {}
        self._by_key: dict[Any, int] = {}

    def measure(self, iteration: int, key: Any, count: int) -> None:
        """The loss of ``iteration`` (capture key ``key``) evaluated the target ``count`` times."""
        self._measured[iteration] = self._measured.get(iteration, 0) + count
        self._by_key[key] = self._measured[iteration]

    def record(self, iteration: int, key: Any) -> int:
        """Add the evaluations of the finished ``iteration``; returns the total."""
        self.total += self._measured.pop(iteration) if iteration in self._measured else self._by_key[key]
        return self.total


def _chunks(n: int, size: int) -> list[int]:
    if n < 1:
        raise ValueError(f"the number of samples must be positive, got {n}")
    return [min(size, n - i) for i in range(0, n, size)]


# ---------------------------------------------------------------------- the samplers
_UNDERDAMPED_T = 5.0


def _diffusion_samplers_reference(dim: int, underdamped: bool, beta_min: float, beta_max: float, T: float | None,
                                  integrator: str, friction: float, splitting: str, prior_std: float) -> Reference:
    """DIS's and the Bridge's reference: the reversal of VP from the prior ``N(0, prior_std^2 I)``, or Langevin
    dynamics for it."""
    if underdamped:
        return UnderdampedReference(dim, T=_UNDERDAMPED_T if T is None else T, friction=friction, splitting=splitting,
                                    prior_std=prior_std)
    return TimeReversalReference(VP(beta_min, beta_max, 1.0 if T is None else T), dim, integrator=integrator,
                                 prior_std=prior_std)


DIS_GUIDANCES = ("interpolated", "annealed")


class DIS(Sampler):
    r"""Time-reversed diffusion sampler (Berner, Richter, Ullrich): the reference is the time
    reversal of a VP noising SDE (``beta`` from ``beta_min`` to ``beta_max`` over ``[0, T]``, ``T = 1`` by default)
    started from the prior ``p_0 = N(0, prior_std^2 I)``, stepped by ``integrator``
    (:class:`~sde_control.references.TimeReversalReference`: ``"ancestral"``, ``"euler"`` or ``"exponential"``); the
    control's guidance is ``sigma(s) lerp(grad log p_0, grad log rho(x), s/T)`` under a learned weight that starts at
    1 (``guidance="interpolated"``, the DIS paper's), or (``guidance="annealed"``) the prior's score, fixed, plus the
    annealing force under a learned weight that starts at 0.01:
    ``sigma(s) [grad log p_0 + w(s) (s/T)(grad log rho - grad log p_0)]``. Both are exact for the target ``p_0`` with
    weight 1; the annealed one starts near the reference's optimal control for its own prior and learns how much of
    the target to add, where the interpolated one starts with the whole geometric annealing path, whose path KL on
    the many-well is large (MW-50, 128 steps, 200 iterations of batch 256: ELBO error 24.9 at the start and 20.8 after
    training, |log Z error| 6.3; annealed: 7.97, 1.47 and 0.18). Where the interpolated start is good already it
    estimates better (Funnel 0.43 against 1.04, DW-5 0.11 against 0.57) and the annealed one diverged in one Funnel
    run: it is an option, not the default (``benchmarks/RESULTS.md``, "DIS's guidance").

    ``underdamped=True``: the state is position and velocity, the reference Langevin dynamics for ``p_0`` with
    ``friction`` over ``[0, T]`` (``T = 5`` by default), split by ``splitting`` (``"OBAB"`` or ``"BAOAB"``:
    :class:`~sde_control.references.UnderdampedReference`); the control acts on the velocity. Its guidance starts it
    as Langevin dynamics for the annealed density ``p_0^(1 - s/T) rho^(s/T)`` (``sigma u = (s/T)(grad log rho -
    grad log p_0)`` under a learned weight that starts at 1, the drift of Blessing et al.'s annealed samplers).

    ``fit(adjoint=True)`` is refused: the continuous adjoint does not give usable gradients on
    DIS's strongly contracting guided drift. Reversible Heun reconstructs the path exactly but its
    forward solution is wrong (its parasitic mode grows: the KL objective of an untrained control
    on the GMM is 19.3 against 3.1 by backpropagation at 200 steps); the Euler adjoint re-solves the
    contracting state backwards and its gradient is off by a factor (relative error 9 on the GMM and
    47 on the Funnel at 200 steps, still 23 on the Funnel at 1600). Measured by
    ``benchmarks/adjoint_accuracy.py`` (table in ``benchmarks/RESULTS.md``). Train DIS by
    backpropagation.
    """

    adjoint_method = None

    def __init__(self, target: Target, *, steps: int = 200, beta_min: float = 0.1, beta_max: float = 10.0,
                 T: float | None = None, integrator: str = "ancestral", control: str | nn.Module = "score",
                 width: int = 64, depth: int = 4, underdamped: bool = False, friction: float = 1.0,
                 splitting: str = "OBAB", clip_mode: str = "elementwise", prior_std: float = 1.0,
                 guidance: str = "interpolated"):
        if guidance not in DIS_GUIDANCES:
            raise ValueError(f"guidance must be one of {DIS_GUIDANCES}, got {guidance!r}")
        if guidance == "annealed" and underdamped:
            raise ValueError("guidance='annealed' is the overdamped DIS's; the underdamped samplers anneal already")
        self._options = dict(control=control, width=width, depth=depth, clip_mode=clip_mode)
        self.underdamped, self.guidance = underdamped, guidance
        super().__init__(target, lambda dim: _diffusion_samplers_reference(
            dim, underdamped, beta_min, beta_max, T, integrator, friction, splitting, prior_std), steps=steps)

    def _forward_control(self) -> nn.Module:
        if self.underdamped:  # starts as underdamped Langevin for the annealed density: sigma u = psi
            sigma = float(self.reference.diffusion(torch.zeros(())))
            return self._score_informed(guidance=annealing_force(self.counted, self.reference),
                                        scale=lambda s: torch.full_like(s, 1 / sigma), weight_bias=1.0, **self._options)
        if self.guidance == "annealed":
            return self._score_informed(guidance=annealing_force(self.counted, self.reference),
                                        scale=self.reference.diffusion, weight_bias=0.01,
                                        base=prior_score(self.reference), **self._options)
        return self._score_informed(guidance=interpolated_score(self.counted, self.reference),
                                    scale=self.reference.diffusion, weight_bias=1.0, **self._options)

    def _networks(self) -> nn.Module:
        return self._forward_control()


class Bridge(DIS):
    r"""Diffusion bridge sampler (DBS; Richter & Berner 2024, "Improved sampling via learned diffusions"): DIS's
    reference and forward control, and a learned backward control ``w`` on the backward kernels,
    ``p(y|y') = N(b y' + beta w(z', s), c I)``: the target-started process is learned too, so the pair need not
    end in the prior exactly and the optimum is any bridge between prior and target. ``w`` is a plain Fourier MLP
    that starts at zero: training starts from DIS. ``underdamped=True``: on position and velocity (:class:`DIS`).
    No adjoint.
    """

    def _networks(self) -> nn.Module:
        width, depth = self._options["width"], self._options["depth"]
        backward = ControlMLP(self.target.dim, width, depth, in_dim=self.reference.state_dim)
        return BridgeControls(self._forward_control(), backward)


class PIS(Sampler):
    r"""Path integral sampler (Zhang & Chen): the reference is ``sigma W`` from the origin
    (``sigma^2 = 0.2``, ``T = 5``); the control's guidance is the target score.

    Its log-variance loss explores with ``eta = 2`` by default (the others: 1): started at a point with the
    terminal law ``N(0, I)``, it needs the wider paths to find the GMM's outer modes (``benchmarks/exploration.py``).
    """

    default_exploration = 2.0

    def __init__(self, target: Target, *, steps: int = 200, sigma2: float = 0.2, T: float = 5.0,
                 control: str | nn.Module = "score", width: int = 64, depth: int = 4,
                 clip_mode: str = "elementwise"):
        self._options = dict(control=control, width=width, depth=depth, clip_mode=clip_mode)
        super().__init__(target, lambda dim: ForwardReference(ScaledBrownian(sigma2, T), dim, initial_std=0.0),
                         steps=steps)

    def _networks(self) -> nn.Module:
        return self._score_informed(guidance=target_score(self.counted, self.reference), scale=None,
                                    weight_bias=0.01, **self._options)


class DDS(Sampler):
    r"""Denoising diffusion sampler (Vargas, Grathwohl, Doucet): the reference is the stationary
    VP/OU process from ``N(0, I)`` read from noise to data (``beta`` from ``beta_max`` down to
    ``beta_min``), stepped with its exact transition; the guidance is the target score.

    ``fit(adjoint=True)`` uses torchsde's Euler adjoint, and warns below 800 steps. Reversible Heun, PIS's
    adjoint, gives its own solver's gradient exactly, but on DDS's contracting drift its forward solution is wrong
    at coarse steps: at a near-optimal control on the 2-d Gaussian (ELBO 0.687 / 0.688 / 0.691 / 0.694 at 100 / 200 /
    400 / 800 steps) its continuous objective is 0.030 / 0.541 / 0.658 / 0.700, Euler's 0.630 / 0.690 / 0.693 /
    0.708. The Euler adjoint's gradient error against backpropagation through its solver falls with the step: 0.45 /
    0.20 / 0.10 / 0.031 / 0.028 at 100 / 200 / 400 / 800 / 1600 steps. Measured by
    ``benchmarks/adjoint_accuracy.py --table dds`` (table in ``benchmarks/RESULTS.md``).
    """

    adjoint_method = "euler"
    adjoint_min_steps = 800

    def __init__(self, target: Target, *, steps: int = 200, beta_min: float = 0.1, beta_max: float = 10.0,
                 T: float = 1.0, control: str | nn.Module = "score", width: int = 64, depth: int = 4,
                 clip_mode: str = "elementwise"):
        self._options = dict(control=control, width=width, depth=depth, clip_mode=clip_mode)
        super().__init__(target, lambda dim: ForwardReference(VP(beta_min, beta_max, T).time_flipped(), dim,
                                                              initial_std=1.0), steps=steps)

    def _networks(self) -> nn.Module:
        return self._score_informed(guidance=target_score(self.counted, self.reference), scale=None,
                                    weight_bias=0.01, **self._options)


class CMCD(Sampler):
    r"""Controlled Monte Carlo diffusion (Vargas, Padhy, Blessing, Nüsken 2024): the annealed densities
    ``pi_s = p_0^(1 - s/T) rho^(s/T) / Z_s`` from the prior ``p_0 = N(0, prior_std^2 I)`` to the target, unadjusted
    Langevin kernels for them in both directions and a learned drift correction ``NN``:

    .. math::  q(x'|x) = N\big(x + h (\nabla\log\pi_{s_k}(x) + NN(x, s_k)), 2 h I\big), \qquad
               p(x|x') = N\big(x' + h (\nabla\log\pi_{s_{k+1}}(x') - NN(x', s_{k+1})), 2 h I\big),

    i.e. a Brownian reference ``dX = sqrt(2) dW`` over ``[0, T]`` with the forward and backward controls of
    :class:`~sde_control.controls.AnnealedLangevinControl`. With ``NN = 0`` this is annealed importance sampling
    with unadjusted Langevin moves and its exact weights; the optimal ``NN`` makes the chain follow ``pi_s``.
    ``control="mlp"``: the network alone, without the annealed score. No adjoint.
    """

    adjoint_method = None

    def __init__(self, target: Target, *, steps: int = 200, T: float = 1.0, prior_std: float = 1.0,
                 control: str | nn.Module = "score", width: int = 64, depth: int = 4,
                 clip_mode: str = "elementwise"):
        self._options = dict(control=control, width=width, depth=depth, clip_mode=clip_mode)
        super().__init__(target, lambda dim: TimeReversalReference(ScaledBrownian(2.0, T), dim, prior_std=prior_std,
                                                                   integrator="euler"), steps=steps)

    def _networks(self) -> nn.Module:
        control, width, depth, clip_mode = (self._options[k] for k in ("control", "width", "depth", "clip_mode"))
        if isinstance(control, nn.Module):
            return control
        if control not in ("score", "mlp"):
            raise ValueError(f"control must be 'score', 'mlp' or an nn.Module, got {control!r}")
        guidance = interpolated_score(self.counted, self.reference)
        if control == "mlp":
            guidance = lambda x, s: torch.zeros_like(x)  # noqa: E731
        return AnnealedLangevinControl(self.target.dim, guidance, sigma=math.sqrt(2.0), width=width, depth=depth,
                                       clip_mode=clip_mode)
