"""Optimisation steps: the small interface between the training loop and the ways of taking a step.

A stepper is built for one training run from the module, its optimiser, its EMA and the loss, and has two methods:

* ``step(iteration) -> int``: one optimisation step (loss, backward, gradient clipping, optimiser, EMA) at the
  learning rate ``lr_at(iteration)``; returns the number of iterations taken (a CUDA-graph capture adds its
  warm-up steps);
* ``flush()``: the records (iteration, loss, gradient norm, learning rate, the loss's metrics) of the steps taken
  since the last flush.

A non-finite loss or gradient raises :class:`NonFiniteStep` before its update is applied (or, where the check is
deferred, after the weights of the last check are restored), saying which weights the module now holds.

:class:`EagerStepper` runs each step eagerly and checks it at once; it also takes the options of large-scale
training: mixed precision (``float16`` with a gradient scaler, ``bfloat16``), gradient accumulation over
micro-batches (the loss function is called once per micro-batch and draws its own), a module wrapped in
``DistributedDataParallel`` (gradients are synchronised on the last micro-batch only; the logged loss is the mean
over ranks), and a patience for non-finite steps: such a step is skipped (no update, no EMA update; under
``float16`` the scaler lowers its scale) and only more than ``patience`` of them in a row stop training. The
CUDA-graph stepper of :mod:`sde_control.cuda_graphs` replays a captured step and checks every few steps.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .ema import EMA

LossFn = Callable[[int], tuple[Tensor, dict[str, float]]]
"""``loss_fn(iteration) -> (scalar loss, metrics to log)``."""

PRECISIONS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


class NonFiniteStep(RuntimeError):
    """The loss or gradient norm of the step at ``iteration`` was ``value``; the module holds the weights of
    iteration ``weights_from`` (no update with the bad value was kept)."""

    def __init__(self, iteration: int, what: str, value: float, weights_from: int, in_row: int = 1):
        super().__init__(f"non-finite {what} ({value}) at iteration {iteration}")
        self.iteration, self.what, self.value, self.weights_from = iteration, what, value, weights_from
        self.in_row = in_row


def trainable(module: nn.Module) -> list[Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


class EagerStepper:
    """One eager optimisation step per call (module docstring).

    Args:
        module: the trained network (its parameters are stepped and averaged into ``ema``).
        optimizer: its optimiser.
        ema: its weight average, updated after each step (``None``: none).
        loss_fn: the loss of one (micro-)batch at a given iteration.
        grad_clip: maximal gradient 2-norm; ``None`` disables clipping.
        lr_at: the learning rate of an iteration.
        precision: ``"float32"``, ``"float16"`` (autocast with a gradient scaler) or ``"bfloat16"`` (autocast).
        accumulation: micro-batches per step; their losses are averaged.
        scaler: the gradient scaler of ``float16`` training (kept by the trainer, so that it is checkpointed).
        replica: the module the loss calls, when it is not ``module`` itself: its ``DistributedDataParallel``
            wrapper, whose gradient synchronisation is skipped on all but the last micro-batch and whose ranks'
            losses are averaged for the record.
        patience: non-finite steps in a row that are skipped before :class:`NonFiniteStep` is raised (0: the first
            raises). Under ``float16`` a non-finite gradient with a finite loss is the scaler's overflow, part of
            its calibration: it counts only once the scale has fallen below 1 (the gradient overflows unscaled).
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None, loss_fn: LossFn,
                 grad_clip: float | None, lr_at: Callable[[int], float], *, precision: str = "float32",
                 accumulation: int = 1, scaler: torch.amp.GradScaler | None = None, replica: nn.Module | None = None,
                 patience: int = 0):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if not isinstance(accumulation, int) or accumulation < 1:
            raise ValueError(f"accumulation must be a positive int, got {accumulation!r}")
        if precision == "float16" and scaler is None:
            raise ValueError("float16 training needs a gradient scaler (torch.amp.GradScaler)")
        self.module, self.optimizer, self.ema, self.loss_fn, self.lr_at = module, optimizer, ema, loss_fn, lr_at
        self.replica = module if replica is None else replica
        self.grad_clip = math.inf if grad_clip is None else grad_clip
        self.dtype, self.accumulation, self.scaler = PRECISIONS[precision], accumulation, scaler
        self.patience = patience
        self.params = trainable(module)
        self.records: list[dict[str, Any]] = []
        self.skipped_in_row = 0

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.params[0].device.type, dtype=self.dtype)

    def _backward(self, micro: int, iteration: int) -> tuple[Tensor, dict[str, float]]:
        last = micro == self.accumulation - 1
        sync = contextlib.nullcontext() if last or not hasattr(self.replica, "no_sync") else self.replica.no_sync()
        with sync:
            with self._autocast():
                loss, metrics = self.loss_fn(iteration)
            scaled = loss / self.accumulation if self.accumulation > 1 else loss
            (scaled if self.scaler is None else self.scaler.scale(scaled)).backward()
        return loss.detach().float(), metrics

    def _mean_loss(self, losses: list[Tensor]) -> float:
        """The step's loss: the mean over micro-batches and, under ``DistributedDataParallel``, over ranks (a NaN
        or infinity on any rank makes it non-finite on every rank, so all ranks skip the same steps)."""
        loss = torch.stack(losses).mean()
        if isinstance(self.replica, DistributedDataParallel):
            dist.all_reduce(loss)
            loss = loss / dist.get_world_size()
        return loss.item()

    def step(self, iteration: int) -> int:
        lr = self.lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        losses, metrics = [], {}
        for micro in range(self.accumulation):
            loss, metrics = self._backward(micro, iteration)
            losses.append(loss)
        loss = self._mean_loss(losses)
        scale = None
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.params if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip).item()
        record = {"iteration": iteration + 1, "loss": loss, "grad_norm": grad_norm, "lr": lr, **metrics}
        if math.isfinite(loss) and math.isfinite(grad_norm):
            if self.scaler is None:
                self.optimizer.step()
            else:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.module)
            self.skipped_in_row = 0
        else:
            self._skip(iteration, loss, grad_norm, scale)
            record["skipped"] = 1
        self.records.append(record)
        return 1

    def _skip(self, iteration: int, loss: float, grad_norm: float, scale: float | None) -> None:
        """No update for a non-finite step; count it (module docstring) and raise past the patience."""
        counted = True
        if self.scaler is not None:
            if math.isfinite(loss):  # the scaler's overflow: it skips the update and lowers the scale
                self.scaler.step(self.optimizer)
                self.scaler.update()
                counted = scale < 1.0
            else:
                self.scaler.update(new_scale=scale * self.scaler.get_backoff_factor())
        self.optimizer.zero_grad(set_to_none=True)
        if counted:
            self.skipped_in_row += 1
        if self.skipped_in_row > self.patience:
            what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", grad_norm)
            raise NonFiniteStep(iteration, what, value, weights_from=iteration, in_row=self.skipped_in_row)

    def flush(self) -> list[dict[str, Any]]:
        records, self.records = self.records, []
        return records
