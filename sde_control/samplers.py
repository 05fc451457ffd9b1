"""PIS, DIS and DDS: a reference process, a guidance for the control network, and the shared training and
estimation of :class:`Sampler`.

>>> from sde_control.targets import Funnel
>>> sampler = DIS(Funnel(dim=10))
>>> history = sampler.fit(iterations=5000, batch_size=512, loss="lv")
>>> x = sampler.sample(10_000)
>>> est = sampler.estimate_log_z(10_000)   # est.log_z, est.elbo, est.ess, est.eubo
>>> sampler.save("funnel.pt"); sampler = DIS.load("funnel.pt")
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from .checkpoints import Checkpointable
from .controls import ControlMLP, Field, ScoreInformedControl
from .device import like
from .estimators import LogZEstimate
from .integrate import simulate_chain
from .losses import LOSSES
from .references import ForwardReference, Reference, TimeReversalReference, time_grid
from .sdes import VP, ScaledBrownian
from .target import Target, TargetError, validate_target
from .training import TrainConfig, Trainer, config_from
from .weights import log_weight, reference_paths_from, trajectory_from_states



@dataclass
class SamplerTraining(TrainConfig):
    """A sampler's training run: the loop's settings (:class:`~sde_control.training.TrainConfig`) and

    Args:
        loss: ``"lv"`` (log-variance) or ``"kl"``.
        step_schedule: time-step counts used for equal shares of the run (the DIS paper: ``(100, 200, 400,
            800)``); ``None``: the sampler's ``steps`` throughout.
        clip_values, clip_from: the control's clipping ``clip_values[j]`` from iteration ``clip_from[j]`` on (the DIS
            paper: 10, then 50 after step 200, 250 after step 400).
        adjoint: the KL loss through ``torchsde.sdeint_adjoint`` (memory flat in the number of steps).
        evaluate_every: also estimate log Z from ``eval_samples`` fresh paths of the EMA control every so many
            iterations (and at the end); ``None``: never.
        eval_samples: paths of those estimates.
    """

    loss: str = "lv"
    step_schedule: tuple[int, ...] | None = None
    clip_values: tuple[float, ...] = (10.0, 50.0, 250.0)
    clip_from: tuple[int, ...] = (0, 200, 400)
    adjoint: bool = False
    evaluate_every: int | None = None
    eval_samples: int = 2000

    RESUMABLE: ClassVar[tuple[str, ...]] = TrainConfig.RESUMABLE + ("evaluate_every", "eval_samples")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.adjoint and self.loss != "kl":
            raise ValueError("adjoint=True applies to the KL loss only (the log-variance loss has no path gradient)")
        if self.adjoint and self.cuda_graph:
            raise ValueError("cuda_graph=True needs a graph-safe loss: the adjoint solver is not (use adjoint=False)")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2, got {self.batch_size}")
        for steps in self.step_schedule or ():
            if not isinstance(steps, int) or steps < 1:
                raise ValueError(f"step_schedule must hold positive ints, got {self.step_schedule!r}")
        if len(self.clip_values) != len(self.clip_from) or not self.clip_from or list(self.clip_from) != sorted(
                self.clip_from):
            raise ValueError(f"clip_values and clip_from must be non-empty and of equal length, clip_from increasing; "
                             f"got {self.clip_values!r}, {self.clip_from!r}")

    def steps_at(self, run_position: int, default: int) -> int:
        """The step count ``run_position`` iterations into the run."""
        schedule = self.step_schedule or (default,)
        phase = run_position * len(schedule) // self.iterations
        return schedule[min(phase, len(schedule) - 1)]

    def clip_at(self, iteration: int) -> float:
        value = self.clip_values[0]
        for start, clip in zip(self.clip_from, self.clip_values):
            if iteration >= start:
                value = clip
        return value


class Guidance(abc.ABC):
    """The score-informed term of the control ``lambda(s) NN_2(s) psi(x, s)`` (:mod:`sde_control.controls`)."""

    weight_bias: float
    """Initial value of the learned time weight ``NN_2``."""

    @abc.abstractmethod
    def field(self, target: Target, reference: Reference) -> Field:
        """``psi(x, s)``."""

    def scale(self, reference: Reference) -> Callable[[Tensor], Tensor] | None:
        """``lambda(s)``; ``None`` means 1."""
        return None


@dataclass(frozen=True)
class TargetScore(Guidance):
    """``psi = grad log rho`` (PIS, DDS)."""

    weight_bias: float = 0.01

    def field(self, target: Target, reference: Reference) -> Field:
        return lambda x, s: target.score(x)


@dataclass(frozen=True)
class InterpolatedScore(Guidance):
    """``psi = lerp(grad log p_0, grad log rho, s / T)`` scaled by ``sigma(s)`` (DIS, whose prior ``p_0`` is the
    Gaussian start of its reference)."""

    weight_bias: float = 1.0

    def field(self, target: Target, reference: TimeReversalReference) -> Field:
        def interpolated_score(x: Tensor, s: Tensor) -> Tensor:
            prior_score = -(x - like(reference.prior_mean, x)) / reference.prior_std**2
            return torch.lerp(prior_score, target.score(x), s / reference.T)

        return interpolated_score

    def scale(self, reference: Reference) -> Callable[[Tensor], Tensor]:
        return reference.diffusion


class Sampler(Checkpointable):
    """A controlled SDE from a reference process to ``target``, trained by a path-space loss.

    Subclasses (:class:`PIS`, :class:`DIS`, :class:`DDS`) hand over their reference (built for the target's
    dimension, once the target is validated) and their guidance. ``control`` is
    ``"score"`` (the score-informed network of the guidance), ``"mlp"`` (a plain network) or an ``nn.Module``
    mapping ``(x, s)`` to a control of ``x``'s shape; ``width`` and ``depth`` size the built networks.
    """

    adjoint_method: ClassVar[str | None] = "reversible_heun"
    """Solver of ``fit(adjoint=True)`` (:func:`~sde_control.integrate.simulate_continuous`); ``None`` where the
    adjoint gives no usable gradient (:class:`DIS`)."""

    training_config_class = SamplerTraining

    def __init__(self, target: Target, reference: Callable[[int], Reference], guidance: Guidance, *, steps: int,
                 control: str | nn.Module, width: int, depth: int):
        validate_target(target)
        reference = reference(target.dim)
        time_grid(reference.T, steps)  # validates steps
        self.target, self.reference, self.steps = target, reference, steps
        if isinstance(control, nn.Module):
            self.control = control
        elif control == "score":
            self.control = ScoreInformedControl(target.dim, guidance.field(target, reference), guidance.scale(reference),
                                                weight_bias=guidance.weight_bias, width=width, depth=depth)
        elif control == "mlp":
            self.control = ControlMLP(target.dim, width, depth)
        else:
            raise ValueError(f"control must be 'score', 'mlp' or an nn.Module, got {control!r}")
        self._check_control()
        self.trainer = Trainer(self.control)

    def _check_control(self) -> None:
        x = self.reference.sample_initial(4, self.device)
        with torch.no_grad():
            u = self.control(x, torch.zeros((), device=self.device))
        if u.shape != x.shape:
            raise TargetError(f"the control maps states of shape {tuple(x.shape)} to {tuple(u.shape)}; they must match")

    @property
    def device(self) -> torch.device:
        return next(self.control.parameters(), torch.empty(0)).device

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per training iteration (loss, gradient norm, learning rate, time, ...)."""
        return self.trainer.history

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
        """Train the control; returns the training history (also at :attr:`history`).

        ``options`` are the fields of :class:`SamplerTraining` (learning rate, schedules, adjoint, evaluation,
        ``cuda_graph``, ...). With ``checkpoint`` the state is written every ``checkpoint_every`` iterations and at
        the end; with ``resume``, an existing file of the same run (same sampler, target and settings, apart from
        :attr:`SamplerTraining.RESUMABLE`) is continued, and a file of another run is refused with the differences
        named. ``cuda_graph=True`` on a CUDA device replays each step as a captured graph (losses read and checked
        every ``sync_every`` steps; the progress bar then shows no batch log Z); on a CPU the same deferred checks
        run with eager steps.
        """
        config = config_from(SamplerTraining, dict(iterations=iterations, batch_size=batch_size, loss=loss, **options))
        if config.adjoint and self.adjoint_method is None:
            raise ValueError(f"{type(self).__name__} cannot be trained through the adjoint (see its docstring: the "
                             "gradient is unusable on its contracting drift); use adjoint=False")
        resumed = checkpoint is not None and resume and self.resume_from(checkpoint, config)
        self.training_config = config
        trainer = self.trainer

        def steps_at(iteration: int) -> int:
            return config.steps_at(iteration - trainer.run["start"], self.steps)

        def step_loss(iteration: int) -> tuple[Tensor, dict[str, float]]:
            self._set_clip(config.clip_at(iteration))
            grid = time_grid(self.reference.T, steps_at(iteration))
            x0 = self.reference.sample_initial(config.batch_size, self.device)
            adjoint = {"adjoint": True, "adjoint_method": self.adjoint_method} if config.adjoint else {}
            out = LOSSES[config.loss](self.target, self.reference, self.control, x0, grid,
                                      graph_safe=config.cuda_graph, **adjoint)
            if config.cuda_graph:
                return out.loss, {}
            batch = LogZEstimate.from_log_weights(out.log_weights)
            return out.loss, {"log_z": batch.log_z, "ess": batch.ess}

        def evaluate() -> dict[str, float]:
            est = self.estimate_log_z(config.eval_samples, eubo=False)
            return {"eval_log_z": est.log_z, "eval_elbo": est.elbo, "eval_ess": est.ess}

        return trainer.fit(
            step_loss, config, resume=resumed, description=f"{type(self).__name__} ({config.loss})",
            evaluate=evaluate if config.evaluate_every else None, evaluate_every=config.evaluate_every,
            checkpoint=None if checkpoint is None else lambda: self.save(checkpoint),
            graph_key=lambda it: (steps_at(it), config.clip_at(it)),
        )

    def _set_clip(self, value: float) -> None:
        for module in (self.control, self.trainer.averaged):
            if hasattr(module, "clip"):
                module.clip = value

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def weighted_samples(self, n: int, steps: int | None = None, batch_size: int = 10_000) -> tuple[Tensor, Tensor]:
        """``n`` samples ``X_T`` of the trained (EMA) control and their log importance weights."""
        grid = time_grid(self.reference.T, steps or self.steps)
        control = self.trainer.averaged
        samples, log_weights = [], []
        for size in _chunks(n, batch_size):
            trajectory = simulate_chain(control, self.reference, self.reference.sample_initial(size, self.device), grid)
            samples.append(trajectory.terminal)
            log_weights.append(log_weight(self.target, self.reference, trajectory))
        return torch.cat(samples), torch.cat(log_weights)

    def sample(self, n: int, steps: int | None = None) -> Tensor:
        """``n`` approximate samples from ``target``, shape (n, dim)."""
        return self.weighted_samples(n, steps)[0]

    @torch.no_grad()
    def estimate_log_z(self, n: int = 10_000, steps: int | None = None, eubo: bool = True) -> LogZEstimate:
        """Importance-sampled log Z, ELBO and ESS from ``n`` paths; the EUBO from ``n`` paths of
        the target-started reference when the target has exact samples (and ``eubo``)."""
        _, log_weights = self.weighted_samples(n, steps)
        target_log_weights = None
        if eubo and self.target.has_exact_samples:
            grid = time_grid(self.reference.T, steps or self.steps)
            target_log_weights = torch.cat([
                log_weight(self.target, self.reference, trajectory_from_states(
                    self.trainer.averaged, self.reference,
                    reference_paths_from(self.reference, self.target.sample(size).to(self.device), grid), grid))
                for size in _chunks(n, 10_000)
            ])
        return LogZEstimate.from_log_weights(log_weights, target_log_weights, self.target.log_Z)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {"trainer": self.trainer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state["trainer"])


def _chunks(n: int, size: int) -> list[int]:
    if n < 1:
        raise ValueError(f"the number of samples must be positive, got {n}")
    return [min(size, n - i) for i in range(0, n, size)]


class DIS(Sampler):
    r"""Time-reversed diffusion sampler (Berner, Richter, Ullrich): the reference is the time
    reversal of a VP noising SDE (``beta`` from ``beta_min`` to ``beta_max`` over ``[0, T]``)
    started from ``N(0, I)``; the control's guidance is ``sigma(s) lerp(-x, grad log rho(x), s/T)``.

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
                 T: float = 1.0, integrator: str = "euler", control: str | nn.Module = "score", width: int = 64,
                 depth: int = 4):
        super().__init__(target, lambda dim: TimeReversalReference(VP(beta_min, beta_max, T), dim, integrator=integrator),
                         InterpolatedScore(), steps=steps, control=control, width=width, depth=depth)


class PIS(Sampler):
    r"""Path integral sampler (Zhang & Chen): the reference is ``sigma W`` from the origin
    (``sigma^2 = 0.2``, ``T = 5``); the control's guidance is the target score."""

    def __init__(self, target: Target, *, steps: int = 200, sigma2: float = 0.2, T: float = 5.0,
                 control: str | nn.Module = "score", width: int = 64, depth: int = 4):
        super().__init__(target, lambda dim: ForwardReference(ScaledBrownian(sigma2, T), dim, initial_std=0.0),
                         TargetScore(), steps=steps, control=control, width=width, depth=depth)


class DDS(Sampler):
    r"""Denoising diffusion sampler (Vargas, Grathwohl, Doucet): the reference is the stationary
    VP/OU process from ``N(0, I)`` read from noise to data (``beta`` from ``beta_max`` down to
    ``beta_min``), stepped with its exact transition; the guidance is the target score."""

    def __init__(self, target: Target, *, steps: int = 200, beta_min: float = 0.1, beta_max: float = 10.0,
                 T: float = 1.0, control: str | nn.Module = "score", width: int = 64, depth: int = 4):
        super().__init__(target, lambda dim: ForwardReference(VP(beta_min, beta_max, T).time_flipped(), dim,
                                                              initial_std=1.0),
                         TargetScore(), steps=steps, control=control, width=width, depth=depth)

