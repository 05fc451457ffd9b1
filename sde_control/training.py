"""The one training loop: Adam, gradient-norm clipping, stepwise learning-rate decay, an EMA of
the weights, a guard against non-finite losses, periodic checkpoints and a progress bar.

Samplers and generative models each own a :class:`Trainer` per network and call
:meth:`Trainer.fit` with a loss closure; alternating schemes call several trainers in turn.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Hashable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from .graphs import DeferredSteps

LossFn = Callable[[int], tuple[Tensor, dict[str, float]]]
"""``loss_fn(iteration) -> (scalar loss, metrics to log)``."""


class TrainingDivergedError(RuntimeError):
    """The loss or its gradient became non-finite; no update with it was applied."""


def _warmup_ema(decay: float):
    """EMA update with decay ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early
    averages forget the initial weights quickly (the usual warm-up of weight averaging)."""

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        n = float(num_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1 + n) / (10 + n)))

    return update


class Trainer:
    """Optimises ``module`` with Adam.

    Args:
        module: the network.
        lr, weight_decay: Adam's (the DIS paper: 5e-3 and 1e-7).
        grad_clip: maximal gradient 2-norm (the DIS paper: 1); ``None`` disables.
        lr_final: learning-rate factor reached at the end of each :meth:`fit` call, in steps of
            ``lr_every`` iterations (the DIS paper: 1/50 every 100).
        ema_decay: decay of the weight average used for evaluation; ``None`` disables.
    """

    def __init__(
        self,
        module: nn.Module,
        lr: float = 5e-3,
        weight_decay: float = 1e-7,
        grad_clip: float | None = 1.0,
        lr_final: float = 0.02,
        lr_every: int = 100,
        ema_decay: float | None = 0.999,
    ):
        self.module, self.lr, self.grad_clip, self.lr_final, self.lr_every = module, lr, grad_clip, lr_final, lr_every
        self.ema_decay = ema_decay
        self.optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
        self.ema = None if ema_decay is None else AveragedModel(module, multi_avg_fn=_warmup_ema(ema_decay), use_buffers=True)
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self.run: dict[str, int] | None = None  # {"start", "iterations"} of the current fit call
        self.last_checkpoint: int | None = None

    def configure(self, lr: float, weight_decay: float, grad_clip: float | None, lr_final: float,
                  lr_every: int | None = None) -> None:
        """Change the optimiser settings (they apply from the next step on); ``lr_every=None`` keeps the current."""
        self.lr, self.grad_clip, self.lr_final = lr, grad_clip, lr_final
        if lr_every is not None:
            self.lr_every = lr_every
        for group in self.optimizer.param_groups:
            group["weight_decay"] = weight_decay

    @property
    def averaged(self) -> nn.Module:
        """The EMA of the module if there is one, else the module."""
        return self.module if self.ema is None else self.ema.module

    def learning_rate(self) -> float:
        """Stepwise decay within the current run: ``lr * lr_final ** (floor(j / every) * every / K)``."""
        j = self.iteration - self.run["start"]
        return self.lr * self.lr_final ** ((j // self.lr_every) * self.lr_every / self.run["iterations"])

    def fit(
        self,
        loss_fn: LossFn,
        iterations: int,
        *,
        resume: bool = False,
        progress: bool = True,
        description: str = "training",
        evaluate: Callable[[], dict[str, float]] | None = None,
        evaluate_every: int = 100,
        checkpoint: Callable[[], None] | None = None,
        checkpoint_every: int = 500,
        graph_key: Callable[[int], Hashable] | None = None,
        sync_every: int = 25,
    ) -> list[dict[str, Any]]:
        """Run ``iterations`` optimisation steps (with ``resume``, finish the interrupted run instead).

        ``evaluate()`` is called every ``evaluate_every`` steps and at the end (its time is kept
        out of the ``time`` column of the history); ``checkpoint()`` every ``checkpoint_every``
        steps and at the end. Raises :class:`TrainingDivergedError` on a non-finite loss or
        gradient, before that step's update.

        With ``graph_key`` (and a graph-safe ``loss_fn``), steps run without a host
        synchronisation: on a CUDA device captured in a CUDA graph, recaptured whenever
        ``graph_key(iteration)`` changes (:mod:`sde_control.graphs`). Losses are then read and
        checked every ``sync_every`` steps; a non-finite one restores the state of the last check.
        """
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be a positive int, got {iterations!r}")
        if not (resume and self.run is not None and self.run["iterations"] == iterations):
            self.run = {"start": self.iteration, "iterations": iterations}
        end = self.run["start"] + iterations
        elapsed = self.history[-1]["time"] if resume and self.history else 0.0
        bar = tqdm(total=iterations, initial=self.iteration - self.run["start"], desc=description, disable=not progress)
        postfix: dict[str, float] = {}
        deferred = None if graph_key is None else DeferredSteps(self, loss_fn, graph_key)
        try:
            while self.iteration < end:
                started = time.perf_counter()
                if deferred is None:
                    records = [self._step(loss_fn)]
                else:
                    deferred.step()
                    due = (self.iteration % sync_every == 0 or self.iteration == end
                           or (evaluate is not None and self.iteration % evaluate_every == 0)
                           or (checkpoint is not None and self.iteration % checkpoint_every == 0))
                    records = deferred.flush() if due else []
                elapsed += time.perf_counter() - started
                bar.update()
                for record in records:
                    record["time"] = elapsed
                    self.history.append(record)
                    postfix = {k: v for k, v in record.items() if k in ("loss", "log_z", "ess")} or postfix
                    bar.set_postfix(postfix, refresh=False)
                if not records:
                    continue
                done = self.iteration == end
                if evaluate is not None and (self.iteration % evaluate_every == 0 or done):
                    records[-1].update(evaluate())
                if checkpoint is not None and (self.iteration % checkpoint_every == 0 or done):
                    checkpoint()
                    self.last_checkpoint = self.iteration
        finally:
            bar.close()
        return self.history

    def _step(self, loss_fn: LossFn) -> dict[str, Any]:
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        self.optimizer.zero_grad(set_to_none=True)
        loss, metrics = loss_fn(self.iteration)
        self._check_finite("loss", loss)
        loss.backward()
        params = [p for p in self.module.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip is not None else math.inf)
        self._check_finite("gradient norm", grad_norm)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.module)
        self.iteration += 1
        return {"iteration": self.iteration, "loss": loss.item(), "grad_norm": grad_norm.item(),
                "lr": self.optimizer.param_groups[0]["lr"], **metrics}

    def _check_finite(self, what: str, value: Tensor) -> None:
        if not torch.isfinite(value).all():
            self.raise_diverged(self.iteration, what, value.detach().item(), weights_from=self.iteration)

    def raise_diverged(self, iteration: int, what: str, value: float, weights_from: int) -> None:
        """Raise :class:`TrainingDivergedError` for a non-finite ``what`` at ``iteration``."""
        saved = ("no checkpoint was written" if self.last_checkpoint is None
                 else f"the last checkpoint holds iteration {self.last_checkpoint}")
        raise TrainingDivergedError(
            f"training stopped at iteration {iteration}: the {what} is {value}. No update with it was kept, so "
            f"the weights are those of iteration {weights_from}; {saved}. Try a smaller learning rate, a tighter "
            f"clip, or check the target's log_prob for overflow."
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "iteration": self.iteration,
            "history": self.history,
            "run": self.run,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.iteration, self.history, self.run = state["iteration"], state["history"], state["run"]
        self.last_checkpoint = self.iteration
