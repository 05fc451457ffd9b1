"""The one training loop of samplers and generative models, and the typed configuration every run reads.

:class:`TrainConfig` holds the settings of a run (optimiser, schedules, cadences, precision); its defaults are
the library's, in one place: ``Sampler.fit``, the generative models' ``fit`` and the command lines' YAML all read
it (the samplers' and generative models' own configurations extend it). :class:`Trainer` owns one network with its
Adam optimiser and EMA and runs a loss closure for a number of iterations: the learning-rate schedule (warm-up and
stepwise decay), the progress bar, periodic evaluation and checkpoints (also when interrupted), resumption, and
the guard against non-finite losses. Steps are taken by a stepper (:mod:`sde_control.steppers`: eager, with mixed
precision and gradient accumulation; :mod:`sde_control.cuda_graphs`: captured in a CUDA graph). Alternating
schemes call several trainers in turn.

Distributed data parallel: when ``torch.distributed`` is initialised (``torchrun``), the trainer wraps its module
in ``DistributedDataParallel`` (:attr:`Trainer.training_module`, the module a loss must call), so gradients are
averaged over ranks; the EMA, the optimiser and the checkpoints hold the plain module, identical on every rank.
What each rank draws (data, noise) and which rank writes files is the caller's business
(:mod:`sde_control.generative.images` does both for images).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Hashable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
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
        warmup: iterations of linear learning-rate warm-up from the start of training, ``lr * min(1, (i + 1) /
            warmup)`` at iteration ``i`` (DDPM: 5000); 0 disables.
        progress: show a progress bar.
        checkpoint_every: iterations between checkpoints (when the run has a checkpoint file).
        precision: ``"float32"``, ``"float16"`` (with a gradient scaler) or ``"bfloat16"`` (autocast).
        accumulation: micro-batches per optimisation step (each of ``batch_size / accumulation``).
        cuda_graph: on a CUDA device, capture each step in a CUDA graph (:mod:`sde_control.cuda_graphs`).
        sync_every: with ``cuda_graph``, steps between reads and checks of the losses.
        nonfinite_patience: steps in a row with a non-finite loss or gradient that are skipped (no update) before
            training stops (:mod:`sde_control.steppers`); 0 stops at the first.
        log_every: the history keeps the record of every ``log_every``-th step (and of skipped, evaluated and
            checkpointed steps); 1 keeps all.
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
    warmup: int = 0
    nonfinite_patience: int = 0
    log_every: int = 1
    time_limit: float | None = None

    RESUMABLE: ClassVar[tuple[str, ...]] = ("iterations", "progress", "checkpoint_every", "sync_every",
                                            "nonfinite_patience", "log_every", "time_limit")
    """Fields a resumed run may change (a longer run extends a finished one); any other difference is refused."""

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "checkpoint_every", "accumulation", "sync_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("warmup", "nonfinite_patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
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
    """Optimises ``module`` with Adam and keeps an EMA of its weights (``ema_decay=None``: none).

    ``distribute=False`` keeps the module unwrapped under ``torch.distributed`` (a module every rank steps alike from
    statistics it has already reduced, e.g. VSDM's forward matrices).
    """

    def __init__(self, module: nn.Module, ema_decay: float | None = 0.999, *, distribute: bool = True):
        self.module = module
        self.distribute = distribute
        self._replica: DistributedDataParallel | None = None
        self.optimizer = torch.optim.Adam(module.parameters())  # lr and weight decay come from each run's config
        self.ema = None if ema_decay is None else EMA(module, ema_decay)
        self.scaler: torch.amp.GradScaler | None = None
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self.run: dict[str, int] | None = None  # {"start", "iterations"} of the current run
        self.last_checkpoint: int | None = None

    def to(self, device: torch.device | str) -> Trainer:
        """Move the module, its EMA and the optimiser's state to ``device`` (before any ``DistributedDataParallel``
        wrapper is made, i.e. before training under ``torch.distributed``)."""
        if self._replica is not None:
            raise RuntimeError("move the module before training: its DistributedDataParallel wrapper exists already")
        self.module.to(device)
        if self.ema is not None:
            self.ema.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    state[key] = value.to(device)
        return self

    @property
    def training_module(self) -> nn.Module:
        """The module a loss calls: under ``torch.distributed`` (and ``distribute``) its ``DistributedDataParallel``
        wrapper, made on first use (every rank must reach it: the wrapper broadcasts rank 0's weights), which
        averages gradients over ranks; otherwise the module itself."""
        if not (self.distribute and dist.is_available() and dist.is_initialized()):
            return self.module
        if self._replica is None:
            device = next(self.module.parameters()).device
            self._replica = DistributedDataParallel(self.module, device_ids=[device] if device.type == "cuda" else None)
        return self._replica

    @property
    def averaged(self) -> nn.Module:
        """The EMA of the module if there is one, else the module."""
        return self.module if self.ema is None else self.ema.module

    def learning_rate(self, config: TrainConfig, iteration: int | None = None) -> float:
        """Stepwise decay within the current run of ``K`` iterations, ``lr * lr_final ** (floor(j / every) * every /
        K)`` at its iteration ``j`` (``every = config.lr_block(K)``), times the warm-up factor ``min(1, (i + 1) /
        warmup)`` at the overall iteration ``i``."""
        i = self.iteration if iteration is None else iteration
        j = i - self.run["start"]
        every = config.lr_block(self.run["iterations"])
        lr = config.lr * config.lr_final ** ((j // every) * every / self.run["iterations"])
        return lr * min(1.0, (i + 1) / config.warmup) if config.warmup else lr

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
        unit: str = "it",
        unit_scale: int = 1,
        annotate: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Run ``config.iterations`` optimisation steps (with ``resume``, finish or extend the loaded run instead).

        ``evaluate()`` is called every ``evaluate_every`` steps and at the end, before the step's record enters the
        history; the metrics it returns are added to the record (its time is kept out of the ``time`` column).
        ``checkpoint()`` is called every ``config.checkpoint_every`` steps, at the end, and
        when the run is interrupted (``KeyboardInterrupt``, ``SystemExit``) after its last checkpoint. Raises
        :class:`TrainingDivergedError` when more than ``config.nonfinite_patience`` steps in a row have a non-finite
        loss or gradient, before any update with them is kept. The progress bar counts ``unit_scale`` ``unit`` per
        step (images per step: images/s and the ETA).
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
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        bar = tqdm(total=config.iterations * unit_scale, initial=(self.iteration - self.run["start"]) * unit_scale,
                   desc=description, disable=not config.progress or rank != 0, unit=unit,
                   unit_scale=config.iterations * unit_scale >= 100_000)  # 1.2M, not 1200000
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
                bar.update(taken * unit_scale)
                evaluation = evaluate() if due_eval else {}
                if evaluation:
                    records[-1].update(evaluation)
                kept = [r for r in records if r["iteration"] % config.log_every == 0 or "skipped" in r
                        or r is records[-1] and (done or evaluation or due_checkpoint)]
                for record in kept:
                    record["time"] = elapsed
                    if annotate is not None:
                        annotate(record)
                    self.history.append(record)
                    postfix = {k: v for k, v in record.items() if k in ("loss", "log_z", "ess")} or postfix
                    bar.set_postfix(postfix, refresh=False)
                if due_checkpoint:
                    checkpoint()
                    self.last_checkpoint = self.iteration
        except NonFiniteStep as error:
            self.iteration = error.weights_from
            saved = ("no checkpoint was written" if self.last_checkpoint is None
                     else f"the last checkpoint holds iteration {self.last_checkpoint}")
            streak = f" ({error.in_row} non-finite steps in a row)" if error.in_row > 1 else ""
            raise TrainingDivergedError(
                f"training stopped at iteration {error.iteration}: the {error.what} is {error.value}{streak}. No "
                f"update with it was kept, so the weights are those of iteration {error.weights_from}; {saved}. Try a "
                f"smaller learning rate, a tighter clip, or check the target's log_prob for overflow.") from None
        except (KeyboardInterrupt, SystemExit):
            if checkpoint is not None and self.last_checkpoint != self.iteration:
                checkpoint()
                self.last_checkpoint = self.iteration
            raise
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
            if config.precision != "float32" or config.accumulation != 1 or config.nonfinite_patience:
                raise ValueError("cuda_graph=True runs float32 steps without accumulation and stops at the first "
                                 "non-finite loss (nonfinite_patience=0)")
            return CudaGraphStepper(self.module, self.optimizer, self.ema, loss_fn, config.grad_clip, lr_at, graph_key)
        if config.precision == "float16" and self.scaler is None:
            self.scaler = torch.amp.GradScaler(next(self.module.parameters()).device.type)
        return EagerStepper(self.module, self.optimizer, self.ema, loss_fn, config.grad_clip, lr_at,
                            precision=config.precision, accumulation=config.accumulation,
                            scaler=self.scaler if config.precision == "float16" else None,
                            replica=self.training_module, patience=config.nonfinite_patience)

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
