"""Training steps captured in a CUDA graph and replayed: the GPU path of :class:`~sde_control.training.Trainer`.

Small networks on a GPU are bound by kernel-launch latency: a DIS step at 200 time steps launches tens of
thousands of small kernels. :class:`CudaGraphStepper` captures the whole step (loss, backward, gradient clipping,
Adam) once in a CUDA graph and replays it, so each iteration is one launch. The loss must be *graph-safe* (no host
synchronisation, noise from the default generator: ``graph_safe=True`` in :mod:`sde_control.losses`).

What the eager step does is done without syncing: Adam is capturable with a device tensor as learning rate
(updated in place), the EMA update (:class:`~sde_control.ema.EMA`) counts on the host, and the losses stay on the
device until :meth:`CudaGraphStepper.flush`, when they are read and checked. A non-finite loss then restores the
weights, optimiser state and EMA of the last check and raises :class:`~sde_control.steppers.NonFiniteStep`.

On a CPU there is no graph to capture: the same bookkeeping runs with the step executed eagerly at each "replay",
so the path is exercised (and tested) without a GPU.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Hashable

import torch
from torch import Tensor, nn

from .ema import EMA
from .steppers import LossFn, NonFiniteStep, trainable

WARM_UP_STEPS = 3  # eager steps on a side stream before a capture, as CUDA graphs require


class CudaGraphStepper:
    """Steps of ``loss_fn`` as graph replays, recaptured when ``key(iteration)`` changes; losses checked at
    :meth:`flush` (the interface of :mod:`sde_control.steppers`)."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None, loss_fn: LossFn,
                 grad_clip: float | None, lr_at: Callable[[int], float], key: Callable[[int], Hashable]):
        self.module, self.optimizer, self.ema, self.loss_fn = module, optimizer, ema, loss_fn
        self.lr_at, self.key = lr_at, key
        self.grad_clip = math.inf if grad_clip is None else grad_clip
        self.params = trainable(module)
        self.cuda = self.params[0].is_cuda
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captured_key: Hashable = object()
        self.pending: list[tuple[int, float, Tensor, Tensor]] = []
        self.snapshot: dict[str, Any] | None = None
        if self.cuda:
            device = self.params[0].device
            self.lr = torch.tensor(0.0, device=device)
            for group in optimizer.param_groups:
                group["capturable"], group["lr"] = True, self.lr
            for state in optimizer.state.values():
                if "step" in state:
                    state["step"] = state["step"].to(device)

    def _body(self, iteration: int) -> tuple[Tensor, Tensor]:
        loss, _ = self.loss_fn(iteration)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        self.optimizer.step()
        return loss.detach(), grad_norm.detach()

    def _finish(self, iteration: int, loss: Tensor, grad_norm: Tensor) -> None:
        if self.ema is not None:
            self.ema.update(self.module)
        self.pending.append((iteration + 1, self.lr_at(iteration), loss.clone(), grad_norm.clone()))

    def _capture(self, iteration: int) -> int:
        """Warm up on a side stream (real training steps, counted as iterations), then record :meth:`_body` in a
        new CUDA graph; returns the number of warm-up steps."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for k in range(WARM_UP_STEPS):
                self.lr.fill_(self.lr_at(iteration + k))
                self.optimizer.zero_grad(set_to_none=True)
                self._finish(iteration + k, *self._body(iteration + k))
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static = self._body(iteration + WARM_UP_STEPS)
        return WARM_UP_STEPS

    def step(self, iteration: int) -> int:
        """One training step (preceded by the warm-up steps of a new capture), without syncing; returns the number
        of iterations taken."""
        if self.snapshot is None:
            self.snapshot = self._snapshot(iteration)
        if not self.cuda:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(iteration)
            self.optimizer.zero_grad(set_to_none=True)
            self._finish(iteration, *self._body(iteration))
            return 1
        warm_up = 0
        key = self.key(iteration)
        if key != self.captured_key:
            warm_up = self._capture(iteration)
            self.captured_key = key
        self.lr.fill_(self.lr_at(iteration + warm_up))
        self.graph.replay()
        self._finish(iteration + warm_up, *self.static)
        return warm_up + 1

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
                    raise NonFiniteStep(record["iteration"] - 1, what, value, weights_from=self._restore())
        self.snapshot = self._snapshot(records[-1]["iteration"])
        return records

    def _snapshot(self, iteration: int) -> dict[str, Any]:
        return {"iteration": iteration,
                "module": copy.deepcopy(self.module.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "ema": None if self.ema is None else copy.deepcopy(self.ema.state_dict())}

    def _restore(self) -> int:
        """Put back the weights, optimiser state and EMA of the last check; return its iteration."""
        snap = self.snapshot
        with torch.no_grad():
            for name, value in self.module.state_dict().items():
                value.copy_(snap["module"][name])
            if self.ema is not None:
                for name, value in self.ema.module.state_dict().items():
                    value.copy_(snap["ema"]["module"][name])
                self.ema.updates = snap["ema"]["updates"]
            for index, param in enumerate(self.params):  # state_dict numbers the parameters in this order
                for name, value in self.optimizer.state.get(param, {}).items():
                    if isinstance(value, Tensor):
                        value.copy_(snap["optimizer"]["state"][index][name])
        return snap["iteration"]
