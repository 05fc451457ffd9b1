"""Training steps without a host synchronisation per step: the GPU path of :class:`Trainer.fit`.

Small networks on a GPU are bound by kernel-launch latency: a DIS step at 200 time steps
launches tens of thousands of small kernels. :class:`DeferredSteps` captures the whole step
(loss, backward, gradient clipping, Adam) once in a CUDA graph and replays it, so each
iteration is one launch. The loss must be *graph-safe* (no host synchronisation, noise from the
default generator: ``graph_safe=True`` in :mod:`sde_control.losses`).

What the eager loop does per step is done without syncing: Adam is capturable with a device
tensor as learning rate (updated in place), the EMA of the weights is a foreach lerp with a
host-side counter, and the losses stay on the device until every ``sync_every`` steps, when they
are read and checked. A non-finite loss then restores the weights, optimiser state and EMA of
the last check and raises :class:`~sde_control.training.TrainingDivergedError`.

On a CPU there is no graph to capture: the same bookkeeping runs with the step executed eagerly
at each "replay", so the path is exercised (and tested) without a GPU.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Callable, Hashable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .training import LossFn, Trainer

WARM_UP_STEPS = 3  # eager steps on a side stream before a capture, as CUDA graphs require


class DeferredSteps:
    """Run ``trainer``'s steps of ``loss_fn`` as graph replays; recapture when ``key(iteration)`` changes."""

    def __init__(self, trainer: Trainer, loss_fn: LossFn, key: Callable[[int], Hashable]):
        self.trainer, self.loss_fn, self.key = trainer, loss_fn, key
        self.params = list(trainer.module.parameters())
        self.cuda = self.params[0].is_cuda
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captured_key: Hashable = object()
        self.pending: list[tuple[int, float, Tensor, Tensor]] = []
        self.ema_updates = 0 if trainer.ema is None else int(trainer.ema.n_averaged)
        self.snapshot = self._snapshot()
        if self.cuda:
            device = self.params[0].device
            self.lr = torch.tensor(trainer.learning_rate(), device=device)
            for group in trainer.optimizer.param_groups:
                group["capturable"], group["lr"] = True, self.lr
            for state in trainer.optimizer.state.values():
                if "step" in state:
                    state["step"] = state["step"].to(device)

    # ------------------------------------------------------------------ one step
    def _body(self) -> tuple[Tensor, Tensor]:
        trainer = self.trainer
        loss, _ = self.loss_fn(trainer.iteration)
        loss.backward()
        clip = trainer.grad_clip if trainer.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip, foreach=True)
        trainer.optimizer.step()
        return loss.detach(), grad_norm.detach()

    def _capture(self) -> None:
        """Warm up on a side stream, then record :meth:`_body` in a new CUDA graph."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARM_UP_STEPS):
                self.lr.fill_(self.trainer.learning_rate())
                self.trainer.optimizer.zero_grad(set_to_none=True)
                self._finish(*self._body())
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.trainer.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static = self._body()

    def step(self) -> None:
        """One training step (the warm-up steps of a new capture included), without syncing."""
        trainer = self.trainer
        if not self.cuda:
            for group in trainer.optimizer.param_groups:
                group["lr"] = trainer.learning_rate()
            trainer.optimizer.zero_grad(set_to_none=True)
            return self._finish(*self._body())
        key = self.key(trainer.iteration)
        if key != self.captured_key:
            self._capture()
            self.captured_key = key
        self.lr.fill_(trainer.learning_rate())
        self.graph.replay()
        self._finish(*self.static)

    @torch.no_grad()
    def _finish(self, loss: Tensor, grad_norm: Tensor) -> None:
        """EMA update and bookkeeping after the optimiser step."""
        trainer = self.trainer
        if trainer.ema is not None:  # the warm-up EMA of training.py, with the count kept on the host
            n = self.ema_updates
            decay = 0.0 if n == 0 else min(trainer.ema_decay, (1 + n) / (10 + n))
            torch._foreach_lerp_(list(trainer.ema.module.parameters()), self.params, 1.0 - decay)
            trainer.ema.n_averaged += 1
            self.ema_updates += 1
        lr = trainer.learning_rate()
        trainer.iteration += 1
        self.pending.append((trainer.iteration, lr, loss.clone(), grad_norm.clone()))

    # ------------------------------------------------------------------ checks
    def flush(self) -> list[dict[str, Any]]:
        """Read the pending losses (one host synchronisation), check them, and return their records."""
        if not self.pending:
            return []
        values = torch.stack([torch.stack([loss, norm]) for _, _, loss, norm in self.pending]).tolist()
        records = [{"iteration": it, "loss": loss, "grad_norm": norm, "lr": lr}
                   for (it, lr, _, _), (loss, norm) in zip(self.pending, values)]
        self.pending = []
        for record in records:
            for what, value in (("loss", record["loss"]), ("gradient norm", record["grad_norm"])):
                if not math.isfinite(value):
                    self.trainer.raise_diverged(record["iteration"] - 1, what, value, weights_from=self._restore())
        self.snapshot = self._snapshot()
        return records

    def _snapshot(self) -> dict[str, Any]:
        trainer = self.trainer
        return {"iteration": trainer.iteration, "ema_updates": self.ema_updates,
                "module": copy.deepcopy(trainer.module.state_dict()),
                "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
                "ema": None if trainer.ema is None else copy.deepcopy(trainer.ema.state_dict())}

    def _restore(self) -> int:
        """Put back the weights, optimiser state and EMA of the last check; return its iteration."""
        trainer, snap = self.trainer, self.snapshot
        with torch.no_grad():
            for name, value in trainer.module.state_dict().items():
                value.copy_(snap["module"][name])
            if trainer.ema is not None:
                for name, value in trainer.ema.state_dict().items():
                    value.copy_(snap["ema"][name])
            for index, param in enumerate(self.params):  # state_dict numbers the parameters in this order
                for name, value in trainer.optimizer.state.get(param, {}).items():
                    if isinstance(value, Tensor):
                        value.copy_(snap["optimizer"]["state"][index][name])
        trainer.iteration, self.ema_updates = snap["iteration"], snap["ema_updates"]
        return snap["iteration"]
