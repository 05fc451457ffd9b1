"""The one training loop of samplers and generative models, and the typed configuration every run reads.

:class:`TrainConfig` holds the settings of a run (optimiser, schedules, cadences, precision); its defaults are
the library's, in one place: ``Sampler.fit``, the generative models' ``fit`` and the command lines' YAML all read
it (the samplers' and generative models' own configurations extend it). :class:`Trainer` owns one network with its
Adam optimiser and EMA and runs a loss closure for a number of iterations: the learning-rate schedule, the
progress bar, periodic evaluation and checkpoints, resumption, and the guard against non-finite losses. Steps are
taken by a stepper (:mod:`sde_control.steppers`: eager, with mixed precision and gradient accumulation;
:mod:`sde_control.cuda_graphs`: captured in a CUDA graph). Alternating schemes call several trainers in turn.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Hashable

import torch
from torch import nn
from tqdm.auto import tqdm

from .cuda_graphs import CudaGraphStepper
from .ema import EMA
from .steppers import EagerStepper, LossFn, NonFiniteStep

__all__ = ["LossFn", "TrainConfig", "Trainer", "TrainingDivergedError"]


class TrainingDivergedError(RuntimeError):
    """The loss or its gradient became non-finite; no update with it was kept."""


@dataclass
class TrainConfig:
    """Settings of one training run.

    Args:
        iterations: optimisation steps of the run.
        batch_size: samples (paths, data points) per step.
        lr, weight_decay: Adam's (the DIS paper: 5e-3 and 1e-7).
        grad_clip: maximal gradient 2-norm (the DIS paper: 1); ``None`` disables.
        lr_final: learning-rate factor reached at the end of the run, in steps of ``lr_every`` (the DIS
            paper: 1/50 in steps of 100 of its 20,000 iterations).
        lr_every: length of a step of the learning-rate decay: a number of iterations, or, below 1, a fraction of the
            run (:meth:`lr_block`).
        progress: show a progress bar.
        checkpoint_every: iterations between checkpoints (when the run has a checkpoint file).
        precision: ``"float32"``, ``"float16"`` (with a gradient scaler) or ``"bfloat16"`` (autocast).
        accumulation: micro-batches per optimisation step (each of ``batch_size / accumulation``).
        cuda_graph: on a CUDA device, capture each step in a CUDA graph (:mod:`sde_control.cuda_graphs`).
        sync_every: with ``cuda_graph``, steps between reads and checks of the losses.
        time_limit: stop the run once its training time (evaluations excluded) reaches this many seconds, after
            a last evaluation and checkpoint as at its end (a budget; ``None``: no limit). The schedules keep their
            length: a stopped run stops where it was in them.
    """

    iterations: int = 1000
    batch_size: int = 512
    lr: float = 5e-3
    weight_decay: float = 1e-7
    grad_clip: float | None = 1.0
    lr_final: float = 0.02
    lr_every: float = 100
    progress: bool = True
    checkpoint_every: int = 500
    precision: str = "float32"
    accumulation: int = 1
    cuda_graph: bool = False
    sync_every: int = 25
    time_limit: float | None = None

    RESUMABLE: ClassVar[tuple[str, ...]] = ("iterations", "progress", "checkpoint_every", "sync_every", "time_limit")
    """Fields a resumed run may change (a longer run extends a finished one); any other difference is refused."""

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "checkpoint_every", "accumulation", "sync_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.lr_every, bool) or not (0 < self.lr_every < 1 or float(self.lr_every).is_integer()):
            raise ValueError(f"lr_every must be a whole number of iterations or a fraction of the run in (0, 1), got "
                             f"{self.lr_every!r}")
        if not self.lr > 0 or not self.lr_final > 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0, lr_final > 0, weight_decay >= 0, got {self.lr}, {self.lr_final}, "
                             f"{self.weight_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit must be a positive number of seconds or None, got {self.time_limit}")

    def lr_block(self, run_iterations: int) -> int:
        """Iterations per step of the learning-rate decay in a run of ``run_iterations``: ``lr_every`` itself, or
        ``lr_every`` times the run's length (at least 1) when ``lr_every < 1``."""
        if self.lr_every >= 1:
            return int(self.lr_every)
        return max(1, round(self.lr_every * run_iterations))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)

    def loop(self, **changes: Any) -> TrainConfig:
        """The loop's part of an extended configuration, as a plain :class:`TrainConfig`, with ``changes``: the
        settings of an inner run (a stage of an alternating scheme)."""
        base = {field.name: getattr(self, field.name) for field in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{**base, **changes})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from(cls: type[TrainConfig], options: dict[str, Any]) -> TrainConfig:
    """``cls(**options)`` with an error that names unknown options and lists the known ones."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown training option(s) {', '.join(unknown)}; {cls.__name__} has {', '.join(sorted(known))}")
    return cls(**options)


class Trainer:
    """Optimises ``module`` with Adam and keeps an EMA of its weights (``ema_decay=None``: none)."""

    def __init__(self, module: nn.Module, ema_decay: float | None = 0.999):
        self.module = module
        self.optimizer = torch.optim.Adam(module.parameters())  # lr and weight decay come from each run's config
        self.ema = None if ema_decay is None else EMA(module, ema_decay)
        self.scaler: torch.amp.GradScaler | None = None
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self.run: dict[str, int] | None = None  # {"start", "iterations"} of the current run
        self.last_checkpoint: int | None = None

    @property
    def averaged(self) -> nn.Module:
        """The EMA of the module if there is one, else the module."""
        return self.module if self.ema is None else self.ema.module

    def learning_rate(self, config: TrainConfig, iteration: int | None = None) -> float:
        """Stepwise decay within the current run of ``K`` iterations: ``lr * lr_final ** (floor(j / every) * every /
        K)`` at its iteration ``j``, ``every = config.lr_block(K)``."""
        j = (self.iteration if iteration is None else iteration) - self.run["start"]
        every = config.lr_block(self.run["iterations"])
        return config.lr * config.lr_final ** ((j // every) * every / self.run["iterations"])

    def fit(
        self,
        loss_fn: LossFn,
        config: TrainConfig,
        *,
        resume: bool = False,
        description: str = "training",
        evaluate: Callable[[], dict[str, float]] | None = None,
        evaluate_every: int | None = None,
        checkpoint: Callable[[], None] | None = None,
        graph_key: Callable[[int], Hashable] | None = None,
        annotate: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Run ``config.iterations`` optimisation steps (with ``resume``, finish or extend the loaded run instead).

        ``evaluate()`` is called every ``evaluate_every`` steps and at the end (its time is kept out of the
        ``time`` column of the history); ``checkpoint()`` every ``config.checkpoint_every`` steps and at the end.
        Raises :class:`TrainingDivergedError` on a non-finite loss or gradient, before its update is kept.
        ``graph_key`` (with ``config.cuda_graph`` and a graph-safe ``loss_fn``) keys the CUDA-graph captures: a
        new graph is captured whenever it changes. ``annotate(record)`` may add fields to each iteration's record
        before it is stored (a sampler's count of target evaluations).
        """
        if resume and self.run is not None:
            self.run["iterations"] = config.iterations
        else:
            self.run = {"start": self.iteration, "iterations": config.iterations}
        end = self.run["start"] + config.iterations
        if resume and self.iteration >= end:
            warnings.warn(f"the loaded run is finished ({self.iteration} of {config.iterations} iterations): nothing "
                          f"to train; ask for more iterations to extend it", stacklevel=3)
        for group in self.optimizer.param_groups:
            group["weight_decay"] = config.weight_decay
        stepper = self._stepper(loss_fn, config, graph_key)
        deferred = isinstance(stepper, CudaGraphStepper)
        elapsed = self.history[-1]["time"] if resume and self.history else 0.0
        bar = tqdm(total=config.iterations, initial=self.iteration - self.run["start"], desc=description,
                   disable=not config.progress)
        postfix: dict[str, float] = {}
        out_of_time = config.time_limit is not None and elapsed >= config.time_limit
        try:
            while self.iteration < end and not out_of_time:
                started = time.perf_counter()
                taken = stepper.step(self.iteration)
                self.iteration += taken
                out_of_time = config.time_limit is not None and elapsed + time.perf_counter() - started >= \
                    config.time_limit
                done = self.iteration >= end or out_of_time
                due_eval = evaluate is not None and (done or self.iteration % evaluate_every == 0)
                due_checkpoint = checkpoint is not None and (done or self.iteration % config.checkpoint_every == 0)
                due = not deferred or done or due_eval or due_checkpoint or self.iteration % config.sync_every == 0
                records = stepper.flush() if due else []
                elapsed += time.perf_counter() - started
                bar.update(taken)
                for record in records:
                    record["time"] = elapsed
                    if annotate is not None:
                        annotate(record)
                    self.history.append(record)
                    postfix = {k: v for k, v in record.items() if k in ("loss", "log_z", "ess")} or postfix
                    bar.set_postfix(postfix, refresh=False)
                if due_eval:
                    records[-1].update(evaluate())
                if due_checkpoint:
                    checkpoint()
                    self.last_checkpoint = self.iteration
        except NonFiniteStep as error:
            self.iteration = error.weights_from
            saved = ("no checkpoint was written" if self.last_checkpoint is None
                     else f"the last checkpoint holds iteration {self.last_checkpoint}")
            raise TrainingDivergedError(
                f"training stopped at iteration {error.iteration}: the {error.what} is {error.value}. No update with "
                f"it was kept, so the weights are those of iteration {error.weights_from}; {saved}. Try a smaller "
                f"learning rate, a tighter clip, or check the target's log_prob for overflow.") from None
        finally:
            bar.close()
        return self.history

    def _stepper(self, loss_fn: LossFn, config: TrainConfig, graph_key: Callable[[int], Hashable] | None):
        def lr_at(iteration: int) -> float:
            return self.learning_rate(config, iteration)

        if config.cuda_graph:
            if not next(self.module.parameters()).is_cuda:
                warnings.warn("cuda_graph=True without a CUDA device: no graph is captured, the steps run eagerly "
                              "with the same deferred loss checks", stacklevel=4)
            if graph_key is None:
                raise ValueError("cuda_graph=True needs a graph key (the losses' capture-relevant settings)")
            if config.precision != "float32" or config.accumulation != 1:
                raise ValueError("cuda_graph=True runs float32 steps without accumulation")
            return CudaGraphStepper(self.module, self.optimizer, self.ema, loss_fn, config.grad_clip, lr_at, graph_key)
        if config.precision == "float16" and self.scaler is None:
            self.scaler = torch.amp.GradScaler(next(self.module.parameters()).device.type)
        return EagerStepper(self.module, self.optimizer, self.ema, loss_fn, config.grad_clip, lr_at,
                            precision=config.precision, accumulation=config.accumulation,
                            scaler=self.scaler if config.precision == "float16" else None)

    def state_dict(self) -> dict[str, Any]:
        return {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "iteration": self.iteration,
            "history": self.history,
            "run": self.run,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        if state["scaler"] is not None:
            self.scaler = torch.amp.GradScaler(next(self.module.parameters()).device.type)
            self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.history, self.run = state["iteration"], state["history"], state["run"]
        self.last_checkpoint = self.iteration
