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
micro-batches (the loss function is called once per micro-batch and draws its own), and a module wrapped in
``DistributedDataParallel`` (gradients are synchronised on the last micro-batch only). The CUDA-graph stepper of
:mod:`sde_control.cuda_graphs` replays a captured step and checks every few steps.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .ema import EMA

LossFn = Callable[[int], tuple[Tensor, dict[str, float]]]
"""``loss_fn(iteration) -> (scalar loss, metrics to log)``."""

PRECISIONS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


class NonFiniteStep(RuntimeError):
    """The loss or gradient norm of the step at ``iteration`` was ``value``; the module holds the weights of
    iteration ``weights_from`` (no update with the bad value was kept)."""

    def __init__(self, iteration: int, what: str, value: float, weights_from: int):
        super().__init__(f"non-finite {what} ({value}) at iteration {iteration}")
        self.iteration, self.what, self.value, self.weights_from = iteration, what, value, weights_from


def trainable(module: nn.Module) -> list[Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


class EagerStepper:
    """One eager optimisation step per call (module docstring).

    Args:
        module: the trained network (possibly a ``DistributedDataParallel`` wrapper).
        optimizer: its optimiser.
        ema: its weight average, updated after each step (``None``: none).
        loss_fn: the loss of one (micro-)batch at a given iteration.
        grad_clip: maximal gradient 2-norm; ``None`` disables clipping.
        lr_at: the learning rate of an iteration.
        precision: ``"float32"``, ``"float16"`` (autocast with a gradient scaler) or ``"bfloat16"`` (autocast).
        accumulation: micro-batches per step; their losses are averaged.
        scaler: the gradient scaler of ``float16`` training (kept by the caller, so that it is checkpointed).
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None, loss_fn: LossFn,
                 grad_clip: float | None, lr_at: Callable[[int], float], *, precision: str = "float32",
                 accumulation: int = 1,
                 scaler: torch.amp.GradScaler | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if not isinstance(accumulation, int) or accumulation < 1:
            raise ValueError(f"accumulation must be a positive int, got {accumulation!r}")
        if precision == "float16" and scaler is None:
            raise ValueError("float16 training needs a gradient scaler (torch.amp.GradScaler)")
        self.module, self.optimizer, self.ema, self.loss_fn, self.lr_at = module, optimizer, ema, loss_fn, lr_at
        self.grad_clip = math.inf if grad_clip is None else grad_clip
        self.dtype, self.accumulation, self.scaler = PRECISIONS[precision], accumulation, scaler
        self.params = trainable(module)
        self.records: list[dict[str, Any]] = []

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.params[0].device.type, dtype=self.dtype)

    def _backward(self, micro: int, iteration: int) -> tuple[float, dict[str, float]]:
        last = micro == self.accumulation - 1
        sync = contextlib.nullcontext() if last or not hasattr(self.module, "no_sync") else self.module.no_sync()
        with sync:
            with self._autocast():
                loss, metrics = self.loss_fn(iteration)
            if not torch.isfinite(loss).all():
                raise NonFiniteStep(iteration, "loss", loss.detach().item(), weights_from=iteration)
            scaled = loss / self.accumulation if self.accumulation > 1 else loss
            (scaled if self.scaler is None else self.scaler.scale(scaled)).backward()
        return loss.item(), metrics

    def step(self, iteration: int) -> int:
        lr = self.lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        losses, metrics = [], {}
        for micro in range(self.accumulation):
            loss, metrics = self._backward(micro, iteration)
            losses.append(loss)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.params if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler is None and not torch.isfinite(grad_norm):
            raise NonFiniteStep(iteration, "gradient norm", grad_norm.item(), weights_from=iteration)
        if self.scaler is None:
            self.optimizer.step()
        else:  # the scaler skips the update when the unscaled gradients are not finite, and lowers its scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.module)
        loss = losses[0] if self.accumulation == 1 else sum(losses) / self.accumulation
        self.records.append({"iteration": iteration + 1, "loss": loss, "grad_norm": grad_norm.item(), "lr": lr,
                             **metrics})
        return 1

    def flush(self) -> list[dict[str, Any]]:
        records, self.records = self.records, []
        return records
