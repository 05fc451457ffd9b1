"""The exponential moving average of a network's weights, the one update rule of every training path."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    r"""An averaged copy of ``module``: after ``n`` updates, :meth:`update` moves each floating parameter and buffer
    toward the module's by

    .. math::  \bar\theta \leftarrow \bar\theta + (1 - \delta_n)(\theta - \bar\theta), \qquad
               \delta_n = \min\big(\delta, \tfrac{1 + n}{10 + n}\big), \quad \delta_0 = 0,

    so the first update copies and early averages forget the initial weights quickly (the usual warm-up). The
    update count lives on the host, so an update needs no synchronisation with a device (CUDA-graph training).
    """

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"the EMA decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.updates = 0

    def _tensors(self, module: nn.Module) -> list[torch.Tensor]:
        return [t.detach() for t in (*module.parameters(), *module.buffers())]

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        """One averaging step toward ``source`` (the module being trained)."""
        n = self.updates
        averaged, current = self._tensors(self.module), self._tensors(source)
        if n == 0:
            torch._foreach_copy_(averaged, current)
        else:
            floating = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
            torch._foreach_lerp_([a for a, _ in floating], [c for _, c in floating],
                                 1.0 - min(self.decay, (1 + n) / (10 + n)))
            for a, c in zip(averaged, current):
                if not a.is_floating_point():
                    a.copy_(c)
        self.updates += 1

    def to(self, device: torch.device | str) -> EMA:
        self.module.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
