r"""Control networks ``u(x, s)`` (generation time ``s``), as in the PIS and DIS papers.

:class:`ScoreInformedControl` is

.. math::  u(x, s) = \mathrm{clip}_c\big(\mathrm{NN}_1(x, s)\big)
           + \lambda(s)\, \mathrm{clip}_c\big(\mathrm{NN}_2(s)\big)\, \mathrm{clip}_c\big(\psi(x, s)\big),

where ``psi`` is a guidance field supplied by the sampler (PIS/DDS: the target score; DIS: the
interpolation ``lerp(prior score, target score, s / T)``), ``lambda(s)`` a fixed scale (DIS:
``sigma(s)``, otherwise 1), ``NN_1`` a Fourier-feature MLP and ``NN_2`` a time network. The last
layer of ``NN_1`` and the last weights of ``NN_2`` start at zero, so training starts from the
reference process plus the guidance term with the weight's initial bias. ``clip`` (``c``) is an
attribute that training schedules may change (saved with the weights).

Networks that depend on time through separate time features provide ``on_grid(times)``, which
evaluates those features for all grid times in one batch and returns the per-step control
``(x, k) -> u(x, times[k])``; the integrators use it through :func:`on_grid`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .specs import Specified

Field = Callable[[Tensor, Tensor], Tensor]

Control = Callable[[Tensor, Tensor], Tensor]
"""``u(x, s)``: states (batch, dim) and a 0-dim generation time ``s`` -> controls (batch, dim)."""


def on_grid(control: Control, times: Tensor) -> Callable[[Tensor, int], Tensor]:
    """The per-step control ``(x, k) -> u(x, times[k])``; networks with an ``on_grid`` method batch their time
    features over the grid."""
    if hasattr(control, "on_grid"):
        return control.on_grid(times)
    return lambda x, k: control(x, times[k])


class FourierTimeEmbedding(nn.Module):
    r"""``[sin(omega s + phi), cos(omega s + phi)]``, ``omega = linspace(0.1, 100, channels)``, learned ``phi``."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("frequencies", torch.linspace(0.1, 100.0, channels), persistent=False)
        self.phase = nn.Parameter(torch.randn(channels))

    def forward(self, s: Tensor) -> Tensor:
        angle = torch.as_tensor(s, dtype=self.phase.dtype, device=self.phase.device).reshape(-1, 1) * self.frequencies
        angle = angle + self.phase
        return torch.cat([angle.sin(), angle.cos()], dim=-1)


def _mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    """Linear layers with ``activation`` between them (not after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i > 0:
            layers.append(activation())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def _init_last(layer: nn.Linear, bias: float) -> None:
    nn.init.zeros_(layer.weight)
    nn.init.constant_(layer.bias, bias)


class TimeNetwork(nn.Module):
    """``s -> MLP(Fourier(s))`` with ``depth`` linear layers of ``width`` channels and ``out`` outputs."""

    def __init__(self, out: int, width: int = 64, depth: int = 4, last_bias: float | None = None):
        super().__init__()
        self.embedding = FourierTimeEmbedding(width)
        self.mlp = _mlp([2 * width] + [width] * (depth - 1) + [out], nn.GELU)
        if last_bias is not None:
            _init_last(self.mlp[-1], last_bias)

    def forward(self, s: Tensor) -> Tensor:
        return self.mlp(self.embedding(s))


class ControlMLP(Specified, nn.Module):
    """Fourier-feature MLP ``NN(x, s)``: ``depth`` layers of ``width`` GELU units, last layer zero."""

    def __init__(self, dim: int, width: int = 64, depth: int = 4, clip: float = 1e4):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be at least 2, got {depth}")
        self.dim = dim
        self.register_buffer("clip_value", torch.tensor(float(clip)))  # saved with the weights
        self._clip = float(clip)  # read without touching the (maybe device) buffer
        self.input = nn.Linear(dim, width)
        self.time = TimeNetwork(width, width, depth=2)
        self.body = nn.Sequential(nn.GELU(), _mlp([width] * (depth - 1) + [dim], nn.GELU))
        _init_last(self.body[-1][-1], 0.0)

    @property
    def clip(self) -> float:
        return self._clip

    @clip.setter
    def clip(self, value: float) -> None:
        self._clip = float(value)
        self.clip_value.fill_(value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._clip = float(self.clip_value)

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        """``NN(x, s)`` for one time ``s`` (0-dim) or one time per row of ``x`` (shape ``(batch,)``)."""
        return self._evaluate(x, self.time(torch.as_tensor(s).reshape(-1)), self.clip)

    def on_grid(self, times: Tensor) -> Callable[[Tensor, int], Tensor]:
        """``(x, k) -> u(x, times[k])`` with the time features of all grid times computed at once."""
        features, c = self.time(times), self.clip
        return lambda x, k: self._evaluate(x, features[k], c)

    def _evaluate(self, x: Tensor, features: Tensor, c: float) -> Tensor:  # not `_apply`: nn.Module uses that name
        if x.shape[-1] != self.dim:
            raise ValueError(f"control expects states of dimension {self.dim}, got shape {tuple(x.shape)}")
        return self.body(self.input(x) + features).clamp(-c, c)


class ScoreInformedControl(nn.Module):
    """``clip(NN_1(x, s)) + lambda(s) clip(NN_2(s)) clip(psi(x, s))`` (module docstring).

    Args:
        dim: state dimension.
        guidance: ``psi(x, s)``, e.g. the target score.
        scale: ``lambda(s)``; ``None`` means 1.
        weight_bias: initial value of ``NN_2`` (DIS 1, PIS/DDS 0.01).
        width, depth: of both networks.
        clip: ``c``.
    """

    def __init__(
        self,
        dim: int,
        guidance: Field,
        scale: Callable[[Tensor], Tensor] | None = None,
        weight_bias: float = 0.01,
        width: int = 64,
        depth: int = 4,
        clip: float = 1e4,
    ):
        super().__init__()
        self.network = ControlMLP(dim, width, depth, clip)
        self.weight = TimeNetwork(1, width, depth, last_bias=weight_bias)
        self.guidance, self.scale = guidance, scale

    @property
    def clip(self) -> float:
        return self.network.clip

    @clip.setter
    def clip(self, value: float) -> None:
        self.network.clip = value

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        return self.on_grid(torch.as_tensor(s).reshape(1))(x, 0)

    def on_grid(self, times: Tensor) -> Callable[[Tensor, int], Tensor]:
        """``(x, k) -> u(x, times[k])``; the time networks run once on all grid times."""
        c = self.clip
        network = self.network.on_grid(times)
        weight = self.weight(times).clamp(-c, c)
        if self.scale is not None:
            weight = self.scale(times).to(weight).reshape(-1, 1) * weight
        return lambda x, k: network(x, k) + weight[k] * self.guidance(x, times[k]).clamp(-c, c)
