r"""Control networks ``u(z, s)`` (generation time ``s``, state ``z``: a position, or position and velocity), as in
the PIS and DIS papers, and the pairs of forward and backward controls of the Bridge (:class:`BridgeControls`) and
CMCD (:class:`AnnealedLangevinControl`); :func:`path_controls` reads the pair off a sampler's networks.

:class:`ScoreInformedControl` is

.. math::  u(x, s) = \mathrm{clip}_c\big(\mathrm{NN}_1(x, s)\big)
           + \lambda(s)\, \Big[\mathrm{clip}_c\big(\mathrm{NN}_2(s)\big)\, \mathrm{clip}_c\big(\psi(x, s)\big)
           + \mathrm{clip}_c\big(\phi(x, s)\big)\Big],

where ``psi`` is a guidance field supplied by the sampler (PIS/DDS: the target score; DIS: the
interpolation ``lerp(prior score, target score, s / T)``, or with ``guidance="annealed"`` the annealing force
``(s / T)(target score - prior score)``), ``phi`` an optional fixed field (DIS annealed: the prior score; otherwise
absent), ``lambda(s)`` a fixed scale (DIS: ``sigma(s)``, otherwise 1), ``NN_1`` a Fourier-feature MLP and ``NN_2`` a
time network. The last
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

from .compilation import compiled
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
    """Fourier-feature MLP ``NN(z, s)``: ``depth`` layers of ``width`` GELU units, last layer zero; inputs of
    ``in_dim`` (default ``dim``: a position; ``2 dim`` for position and velocity), outputs of ``dim``.

    ``compile_network`` (an attribute training sets, not saved) evaluates the per-step network through ``torch.compile``
    (:mod:`sde_control.compilation`; the eager network where no compiler works).
    """

    def __init__(self, dim: int, width: int = 64, depth: int = 4, clip: float = 1e4, in_dim: int | None = None):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be at least 2, got {depth}")
        self.dim, self.in_dim = dim, in_dim or dim
        self.register_buffer("clip_value", torch.tensor(float(clip)))  # saved with the weights
        self._clip = float(clip)  # read without touching the (maybe device) buffer
        self.input = nn.Linear(self.in_dim, width)
        self.time = TimeNetwork(width, width, depth=2)
        self.body = nn.Sequential(nn.GELU(), _mlp([width] * (depth - 1) + [dim], nn.GELU))
        _init_last(self.body[-1][-1], 0.0)
        self._compiled = None

    @property
    def compile_network(self) -> bool:
        return self._compiled is not None

    @compile_network.setter
    def compile_network(self, value: bool) -> None:
        if not value:
            self._compiled = None
        elif self._compiled is None:
            self._compiled = compiled(self._evaluate, self.clip_value.device.type)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)  # a copy (the EMA's, a pickle) compiles its own network when asked to
        state["_compiled"] = None
        return state

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
        evaluate = self._compiled or self._evaluate
        return lambda x, k: evaluate(x, features[k], c)

    def _evaluate(self, x: Tensor, features: Tensor, c: float) -> Tensor:  # not `_apply`: nn.Module uses that name
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"control expects states of dimension {self.in_dim}, got shape {tuple(x.shape)}")
        return self.body(self.input(x) + features).clamp(-c, c)


def clip_field(value: Tensor, c: float, mode: str) -> Tensor:
    """``clip_c``: each entry to ``[-c, c]`` (``"elementwise"``), or the vector's norm to ``c sqrt(d)``
    (``"norm"``: the direction kept; the same ``c`` bounds the root-mean-square entry)."""
    if mode == "elementwise":
        return value.clamp(-c, c)
    bound = c * value.shape[-1] ** 0.5
    return value * (bound / value.norm(dim=-1, keepdim=True).clamp_min(bound))


CLIP_MODES = ("elementwise", "norm")


class ScoreInformedControl(nn.Module):
    """``clip(NN_1(z, s)) + lambda(s) clip(NN_2(s)) clip(psi(x, s))`` (module docstring), ``x`` the position part of
    the state ``z``.

    Args:
        dim: position dimension ``d`` (of the control's output and the guidance).
        guidance: ``psi(x, s)``, e.g. the target score.
        scale: ``lambda(s)``; ``None`` means 1.
        weight_bias: initial value of ``NN_2`` (DIS 1, PIS/DDS 0.01).
        width, depth: of both networks.
        clip: ``c``.
        state_dim: dimension of the state ``z`` (default ``dim``; ``2 dim`` with a velocity).
        clip_mode: ``"elementwise"`` or ``"norm"`` (:func:`clip_field`), for the guidance.
        base: ``phi(x, s)``, a fixed field added to the weighted guidance under the scale (default none).

    ``detach_score`` (an attribute training sets) evaluates the guidance at ``x.detach()``: a loss that
    differentiates through the path then sees the guidance as a given field, without its second-order term.
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
        state_dim: int | None = None,
        clip_mode: str = "elementwise",
        base: Field | None = None,
    ):
        super().__init__()
        if clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {clip_mode!r}")
        self.dim = dim
        self.network = ControlMLP(dim, width, depth, clip, in_dim=state_dim)
        self.weight = TimeNetwork(1, width, depth, last_bias=weight_bias)
        self.guidance, self.scale, self.clip_mode, self.base = guidance, scale, clip_mode, base
        self.detach_score = False

    @property
    def clip(self) -> float:
        return self.network.clip

    @clip.setter
    def clip(self, value: float) -> None:
        self.network.clip = value

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        return self.on_grid(torch.as_tensor(s).reshape(1))(x, 0)

    def guidance_on_grid(self, times: Tensor, field: Field | None = None) -> Callable[[Tensor, int], Tensor]:
        """``(z, k) -> clip(psi(x, times[k]))`` (or of another ``field``: the base)."""
        c, mode, detach = self.clip, self.clip_mode, self.detach_score
        field = self.guidance if field is None else field

        def guidance(z: Tensor, k: int) -> Tensor:
            x = z[..., : self.dim]
            return clip_field(field(x.detach() if detach else x, times[k]), c, mode)

        return guidance

    def on_grid(self, times: Tensor) -> Callable[[Tensor, int], Tensor]:
        """``(z, k) -> u(z, times[k])``; the time networks run once on all grid times."""
        c = self.clip
        network = self.network.on_grid(times)
        guidance = self.guidance_on_grid(times)
        weight = self.weight(times).clamp(-c, c)
        scale = torch.ones_like(weight) if self.scale is None else self.scale(times).to(weight).reshape(-1, 1)
        weight = scale * weight
        if self.base is None:
            return lambda z, k: torch.addcmul(network(z, k), weight[k], guidance(z, k))  # one kernel for the sum
        base = self.guidance_on_grid(times, self.base)
        return lambda z, k: torch.addcmul(torch.addcmul(network(z, k), scale[k], base(z, k)), weight[k], guidance(z, k))


class BridgeControls(nn.Module):
    """The forward and backward controls of a sampler that learns both (the Bridge): two networks trained together.

    ``forward_control`` is a :class:`ScoreInformedControl`, ``backward_control`` any control (the Bridge: a plain
    :class:`ControlMLP`, zero at the start, so that training starts from the reference's own backward kernels).
    """

    def __init__(self, forward_control: nn.Module, backward_control: nn.Module):
        super().__init__()
        self.forward_control, self.backward_control = forward_control, backward_control

    @property
    def clip(self) -> float:
        return self.forward_control.clip

    @clip.setter
    def clip(self, value: float) -> None:
        for control in (self.forward_control, self.backward_control):
            control.clip = value

    @property
    def detach_score(self) -> bool:
        return self.forward_control.detach_score

    @detach_score.setter
    def detach_score(self, value: bool) -> None:
        self.forward_control.detach_score = value


class _SignedView:
    """One of the two controls of :class:`AnnealedLangevinControl`: ``(a(x, s) + sign NN(z, s)) / sigma``."""

    def __init__(self, owner: AnnealedLangevinControl, sign: float):
        self.owner, self.sign = owner, sign

    def __call__(self, z: Tensor, s: Tensor) -> Tensor:
        return self.on_grid(torch.as_tensor(s).reshape(1))(z, 0)

    def on_grid(self, times: Tensor) -> Callable[[Tensor, int], Tensor]:
        owner, sign = self.owner, self.sign
        network, guidance = owner.network.on_grid(times), owner.guidance_on_grid(times)
        return lambda z, k: (guidance(z, k) + sign * network(z, k)) / owner.sigma


class AnnealedLangevinControl(nn.Module):
    r"""CMCD's pair of controls from one network (Vargas et al. 2024, "Transport meets variational inference:
    controlled Monte Carlo diffusions"): on a Brownian reference of diffusion ``sigma``,

    .. math::  u(x, s) = \big(a(x, s) + \mathrm{NN}(x, s)\big) / \sigma, \qquad
               w(x, s) = \big(a(x, s) - \mathrm{NN}(x, s)\big) / \sigma,

    where ``a = clip(grad log pi_s)`` is the score of the annealed density ``pi_s`` (the guidance, e.g.
    ``lerp(grad log p_0, grad log rho, s / T)``): with ``NN = 0`` the forward and backward kernels are both
    unadjusted Langevin steps for ``pi_s``, and ``NN`` is the learned drift correction that transports ``pi_0`` to
    ``pi_T``. ``NN`` starts at zero.
    """

    def __init__(self, dim: int, guidance: Field, sigma: float, width: int = 64, depth: int = 4, clip: float = 1e4,
                 clip_mode: str = "elementwise"):
        super().__init__()
        if clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {clip_mode!r}")
        self.dim, self.sigma, self.guidance, self.clip_mode = dim, float(sigma), guidance, clip_mode
        self.network = ControlMLP(dim, width, depth, clip)
        self.detach_score = False

    @property
    def clip(self) -> float:
        return self.network.clip

    @clip.setter
    def clip(self, value: float) -> None:
        self.network.clip = value

    guidance_on_grid = ScoreInformedControl.guidance_on_grid

    @property
    def forward_control(self) -> _SignedView:
        return _SignedView(self, 1.0)

    @property
    def backward_control(self) -> _SignedView:
        return _SignedView(self, -1.0)


def path_controls(module: nn.Module) -> tuple[Control, Control | None]:
    """The forward and backward controls of a sampler's networks: those of a module that has both
    (:class:`BridgeControls`, :class:`AnnealedLangevinControl`), else the module itself and no backward control."""
    if hasattr(module, "backward_control"):
        return module.forward_control, module.backward_control
    return module, None
