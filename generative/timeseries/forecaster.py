r"""Probabilistic forecasting with a conditional diffusion model over the forecast window.

>>> from sde_control.generative.timeseries import Forecaster, macrodata, crps_sum
>>> data = macrodata()
>>> model = Forecaster(data.dim, context_length=16, prediction_length=4, process="vsdm")
>>> model.fit(data.train, iterations=2000, batch_size=64)
>>> context, future = data.windows(16).test_pairs()
>>> crps_sum(model.forecast(context, num_samples=100), future)

**The model.** Given the context ``c`` (the ``C`` steps before the window, ``D`` series), the window ``x`` (``P`` steps)
is drawn from a score model of ``p(x | c)``: the forward process acts on the window only, as a state of dimension
``P D`` laid out series-major (entry ``d P + p`` is step ``p`` of series ``d``: ``D`` blocks of ``P`` channels), and
the network (:class:`~sde_control.generative.networks.timeseries.ContextDenoiser`) sees the noisy window in its own
``(P, D)`` layout, the noising time and the context. It is trained by conditional denoising score matching on the
exact transitions of the forward process (:func:`sde_control.generative.score_matching.dsm_loss`, the context as the
condition): draw a training window and its context, ``t ~ U(t_min, T)``, ``eps ~ N(0, I)``,
``x_t = Psi_t x + L_t eps``, and regress ``eps`` from ``(x_t, t, c)``; its minimiser is the score of
``p_t(x_t | c)``. Forecasts integrate the reverse SDE (or the probability-flow ODE) of the same forward process
from its prior ``N(0, I)`` given each context.

**The processes.** ``process="vp"``: VP with ``beta`` from 0.1 to 10 over ``T = 1`` (the library's schedule,
docs/samplers.md; its total noise ``int beta = 5.05`` leaves the data a weight ``exp(-2.525) = 0.080`` at ``T``,
TimeGrad's 100-step schedule from 1e-4 to 0.1 leaves ``sqrt(prod(1 - beta_k)) = 0.075``), acting on every entry
alike. ``process="vsdm"``: VSDM (:class:`~sde_control.generative.vsdm.VSDM`) with a learned drift across the series,
``F(t) = beta(t) (A_t - I/2)`` with ``A_t`` a ``D x D`` matrix (piecewise linear between ``knots`` learned values)
acting on the ``D`` blocks and shared by the ``P`` steps (``A_t kron I_P``): the transitions are ``D x D`` moment-ODE
solutions, ``O(D^3)`` per time and independent of ``P``, so they stay closed-form and cheap at ``D`` up to a few
hundred, where a full ``P D x P D`` matrix (``O(P^3 D^3)``) would not. Both are one class: VP is VSDM with the forward
update switched off and ``A = 0`` (a ``1 x 1`` block: ``a = exp(-B/2)``, ``gamma = 1 - exp(-B)``, VP's transitions
exactly), the paper's own baseline (its stage 0); so the two train by the same loop with the same network, steps,
batches and learning-rate schedule (an equal budget by construction), and the checkpoint format is the same. The
score of the VSDM forecaster is fitted on the averaged forward process, its backward paths for the forward update
are drawn given contexts of the training range, and forecasts integrate that same process: one forward process for
training and sampling (the VSDM paper's time-series code trains on plain VP and samples from the learned prior).

**Scaling** (:class:`WindowScaling`), per series: the window is modelled as ``y = ((x - r) / s - loc) / spread``,
with ``s`` the mean of ``|x|`` over the context (TimeGrad's mean scaling, ``scaling="context"``) or over the
training range (``"train"``), ``r`` the last context value (``relative=True``: the model draws the change from the
last observation, whose spread does not depend on the level) or 0, and ``loc``, ``spread`` the mean and standard
deviation of ``(x - r) / s`` over the training windows, so that the model sees every series with zero mean and unit
variance (the smallest noise level ``sigma(t_min) = 0.01`` is then negligible; on raw changes of exchange rates, of
order 0.01 in mean-scaled units, it would double their variance). The network sees the context as
``(c / s - loc_c) / spread_c``, standardised the same way over the training contexts but not relative to its last
value, so that the level stays visible (a mean-reverting series needs it). All of it reads the context and the
training range, never the window being forecast; forecasts are mapped back to the original units.

**Missing values** are refused: a training series or a context with NaN or infinite entries raises ``ValueError``
naming its rows (the protocols' data sets have none; impute or cut them first).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from sde_control.checkpoints import Checkpointable
from sde_control.training import config_from

from ..networks.timeseries import ContextDenoiser
from ..vsdm import VSDM, VSDMTraining
from .data import ArrayLike, ForecastDataset, MeanScaler, Windows, validate_series

PROCESSES = ("vp", "vsdm")


@dataclass
class ForecastTraining(VSDMTraining):
    """A forecaster's training run: :class:`~sde_control.generative.vsdm.VSDMTraining` with defaults for windows
    (``iterations`` score-network steps on batches of ``batch_size`` windows over ``stages`` stages; the VSDM
    forecaster's forward update draws ``paths`` backward paths of ``path_steps`` steps after each stage but the
    last). For ``process="vp"`` ``forward_iterations`` is 0."""

    iterations: int = 2000
    batch_size: int = 64
    stages: int = 10
    paths: int = 128
    path_steps: int = 25


def to_state(window: Tensor) -> Tensor:
    """Windows ``(..., P, D)`` as the model's states ``(..., D P)``, series-major: entry ``d P + p`` is step ``p`` of
    series ``d`` (``D`` blocks of ``P`` channels, the layout of :func:`sde_control.sdes.blockwise`)."""
    return window.transpose(-1, -2).flatten(-2)


def from_state(state: Tensor, prediction_length: int) -> Tensor:
    """The inverse of :func:`to_state`: states ``(..., D P)`` as windows ``(..., P, D)``."""
    return state.unflatten(-1, (-1, prediction_length)).transpose(-1, -2)


class WindowNetwork(nn.Module):
    """``denoiser`` (a :class:`ContextDenoiser` on windows ``(n, P, D)``) on the score model's states ``(n, D P)``."""

    def __init__(self, denoiser: ContextDenoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        P = self.denoiser.prediction_length
        return to_state(self.denoiser(from_state(x, P), t, context))


class WindowScaling:
    r"""Windows ``y = ((x - r) / s - loc) / spread`` and back, contexts ``(c / s - loc_c) / spread_c``, per series
    (module docstring).

    ``s`` and ``r`` come from each context (``s`` from the training range with ``scaling="train"``), ``loc``,
    ``spread``, ``loc_c`` and ``spread_c`` ``(D,)`` from the training windows (:meth:`fit`); the window being
    forecast is never read.
    """

    def __init__(self, scaling: str = "context", relative: bool = True):
        self.scaler = MeanScaler(scaling)
        self.relative = bool(relative)
        self.loc: Tensor | None = None
        self.spread: Tensor | None = None
        self.context_loc: Tensor | None = None
        self.context_spread: Tensor | None = None

    @property
    def fitted(self) -> bool:
        return self.loc is not None

    def frame(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """``(r, s)``, each ``(B, 1, D)``, for contexts ``(B, C, D)``."""
        r = context[:, -1:] if self.relative else torch.zeros_like(context[:, -1:])
        return r, self.scaler(context)

    def fit(self, series: Sequence[Tensor], source: WindowSource, windows: int = 10_000) -> WindowScaling:
        """The training range's mean scale (``scaling="train"``) from ``series``, the other statistics from all
        training windows of ``source``, or ``windows`` of them drawn with a fixed seed where there are more."""
        if self.scaler.source == "train":
            self.scaler.fit(list(series))
        generator = torch.Generator().manual_seed(0)
        context, future = source.pairs(min(windows, len(source)), generator, everything=len(source) <= windows)
        r, s = self.frame(context)
        self.loc, self.spread = _standardisation((future - r) / s)
        self.context_loc, self.context_spread = _standardisation(context / s)
        return self

    def to_model(self, context: Tensor, future: Tensor | None = None
                 ) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor]]:
        """The context ``(B, C, D)`` and future ``(B, P, D)`` in the model's units, and the frame ``(r, s)``."""
        if not self.fitted:
            raise RuntimeError("the forecaster must be fit (or loaded) before it forecasts")
        r, s = self.frame(context)
        y_context = (context / s - self.context_loc.to(context)) / self.context_spread.to(context)
        y_future = None if future is None else ((future - r) / s - self.loc.to(future)) / self.spread.to(future)
        return y_context, y_future, (r, s)

    def to_data(self, y: Tensor, frame: tuple[Tensor, Tensor]) -> Tensor:
        """Samples ``(B, S, P, D)`` in the model's units back in the original units, ``x = r + s (loc + spread y)``."""
        r, s = (v[:, None] for v in frame)
        return r + s * (self.loc.to(y) + self.spread.to(y) * y)

    def state_dict(self) -> dict[str, Any]:
        return {"train_scale": self.scaler.train_scale, "loc": self.loc, "spread": self.spread,
                "context_loc": self.context_loc, "context_spread": self.context_spread}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.train_scale = state["train_scale"]
        self.loc, self.spread = state["loc"], state["spread"]
        self.context_loc, self.context_spread = state["context_loc"], state["context_spread"]


def _standardisation(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation ``(D,)`` of ``values`` ``(n, L, D)`` over windows and steps (a zero deviation
    replaced by 1)."""
    flat = values.flatten(0, 1).double()
    spread = flat.std(dim=0) if flat.shape[0] > 1 else torch.ones(flat.shape[1], dtype=torch.float64)
    return flat.mean(dim=0).float(), torch.where(spread > 0, spread, torch.ones_like(spread)).float()


class WindowSource:
    """Training windows of one or several series as a :class:`~sde_control.generative.score_model.BatchSource`:
    ``sample(n)`` draws ``n`` (context, future) pairs uniformly over all of them and returns the futures as model
    states ``(n, D P)`` with the contexts ``(n, C, D)``, both in the model's units."""

    def __init__(self, windows: Sequence[Windows], scaling: WindowScaling):
        self.windows, self.scaling = list(windows), scaling
        self.counts = torch.tensor([len(w) for w in self.windows])

    def __len__(self) -> int:
        return int(self.counts.sum())

    def pairs(self, n: int, generator: torch.Generator | None = None, everything: bool = False
              ) -> tuple[Tensor, Tensor]:
        """``n`` pairs (contexts ``(n, C, D)``, futures ``(n, P, D)``) in the original units, drawn with replacement
        (``everything``: all pairs in order, ``n`` ignored)."""
        if everything:
            pairs = [w.training_pairs() for w in self.windows]
            return torch.cat([c for c, _ in pairs]), torch.cat([f for _, f in pairs])
        index = torch.randint(0, len(self), (n,), generator=generator)
        ends = self.counts.cumsum(0)
        which = torch.searchsorted(ends, index, right=True)
        local = index - (ends - self.counts)[which]
        first = self.windows[0]
        D = first.dataset.dim
        contexts, futures = torch.empty(n, first.context_length, D), torch.empty(n, first.prediction_length, D)
        for k, windows in enumerate(self.windows):
            rows = (which == k).nonzero().flatten()
            if rows.numel():
                contexts[rows], futures[rows] = windows.training_pairs(local[rows])
        return contexts, futures

    def sample(self, batch_size: int) -> tuple[Tensor, Tensor]:
        context, future = self.pairs(batch_size)
        y_context, y_future, _ = self.scaling.to_model(context, future)
        return to_state(y_future), y_context


class Forecaster(Checkpointable):
    """A conditional diffusion model of the next ``prediction_length`` steps of ``dim`` series given the
    ``context_length`` steps before them (module docstring).

    Args:
        dim: the number of series ``D``.
        context_length: ``C``, the steps the model conditions on.
        prediction_length: ``P``, the steps it forecasts.
        process: ``"vp"`` or ``"vsdm"`` (a learned ``D x D`` drift ``A_t`` across the series).
        scaling: ``"context"`` (mean ``|x|`` of each context, TimeGrad's) or ``"train"`` (of the training range).
        relative: model the window relative to the last context value.
        beta_min, beta_max, T: the VP schedule both processes start from.
        knots, zeta, forward_ema_decay: VSDM's ``A_t`` (:class:`~sde_control.generative.vsdm.VSDM`).
        divergence: how VSDM's forward update evaluates its divergence term
            (:class:`~sde_control.generative.vsdm.VSDM`); ``"exact"`` (``tr A_t``) is the setting
            ``benchmarks/TIMESERIES.md`` measured.
        t_min, ema_decay: of the score model (:class:`~sde_control.generative.score_model.ScoreModel`).
        hidden_size, lstm_layers, channels, residual_blocks, cond_channels, time_features: the network's
            (:class:`~sde_control.generative.networks.timeseries.ContextDenoiser`; ``residual_blocks`` is its
            ``blocks``).
    """

    training_config_class = ForecastTraining

    def __init__(self, dim: int, context_length: int, prediction_length: int, process: str = "vp", *,
                 scaling: str = "context", relative: bool = True, beta_min: float = 0.1, beta_max: float = 10.0,
                 T: float = 1.0, knots: int = 3, zeta: float = 1.0, divergence: str = "exact", t_min: float = 1e-3,
                 ema_decay: float | None = 0.99, forward_ema_decay: float | None = 0.9, hidden_size: int = 64,
                 lstm_layers: int = 2, channels: int = 64, residual_blocks: int = 8, cond_channels: int = 8,
                 time_features: int = 64):
        for name, value in (("dim", dim), ("context_length", context_length), ("prediction_length", prediction_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if process not in PROCESSES:
            raise ValueError(f"process must be one of {PROCESSES}, got {process!r}")
        self.dim, self.context_length, self.prediction_length = dim, context_length, prediction_length
        self.process = process
        self.scaling = WindowScaling(scaling, relative)
        denoiser = ContextDenoiser(dim, prediction_length, hidden_size=hidden_size, lstm_layers=lstm_layers,
                                   channels=channels, blocks=residual_blocks, cond_channels=cond_channels,
                                   time_features=time_features)
        vsdm = process == "vsdm"
        self.model = VSDM(dim * prediction_length, blocks=dim if vsdm else 1, time_dependent=vsdm, knots=knots,
                          beta_min=beta_min, beta_max=beta_max, T=T, zeta=zeta, divergence=divergence,
                          network=WindowNetwork(denoiser), t_min=t_min, ema_decay=ema_decay,
                          forward_ema_decay=forward_ema_decay)

    @property
    def sde(self):
        """The forward process on the window's states: the one the score is fitted on and forecasts integrate."""
        return self.model.sde

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per score-network gradient step."""
        return self.model.history

    # ------------------------------------------------------------------ training
    def fit(self, series: ArrayLike | Sequence[ArrayLike], iterations: int | None = None,
            batch_size: int | None = None, *, checkpoint: str | os.PathLike | None = None, resume: bool = True,
            **options: Any) -> list[dict[str, Any]]:
        """Fit to the training windows of ``series``: one series ``(T, D)`` (tensor or array) or a list of them.

        Every (context, future) pair that lies inside a series is a training window (:class:`WindowSource`);
        ``iterations`` and ``batch_size`` (default: :class:`ForecastTraining`'s) and ``options`` (its other fields)
        set the run. With ``checkpoint`` the state is written after every stage; with ``resume`` an existing file of
        the same run is continued and one of another run refused, naming the differences. A model that has trained
        continues with more ``stages`` (and ``iterations`` in proportion), in the scaling it was trained in.
        Returns one record per stage (:meth:`~sde_control.generative.vsdm.VSDM.fit`).
        """
        given = {k: v for k, v in (("iterations", iterations), ("batch_size", batch_size)) if v is not None}
        config = config_from(ForecastTraining, {**given, **options})
        if self.process == "vp":
            config = config.replace(forward_iterations=0)
        items = self._training_series(series)
        source = WindowSource([ForecastDataset(s, len(s), self.prediction_length, ()).windows(self.context_length)
                               for s in items], self.scaling)
        if self.model.stage == 0:  # a trained model keeps the scaling it was trained in
            self.scaling.fit(items, source)
        self.training_config = config
        return self.model.fit(source, checkpoint=checkpoint, resume=resume, owner=self, **config.as_dict())

    def _training_series(self, series: ArrayLike | Sequence[ArrayLike]) -> list[Tensor]:
        many = isinstance(series, (list, tuple)) and len(series) > 0 and isinstance(series[0], (Tensor, np.ndarray))
        items = [validate_series(s, f"series {i}", dim=self.dim) for i, s in enumerate(series)] if many \
            else [validate_series(series, "series", dim=self.dim)]
        C, P = self.context_length, self.prediction_length
        for i, s in enumerate(items):
            name = f"series {i}" if many else "the series"
            if C > len(s):
                raise ValueError(f"context_length {C} is longer than {name} ({len(s)} steps)")
            if len(s) < C + P:
                raise ValueError(f"{name} has {len(s)} steps, fewer than context_length + prediction_length = {C} + "
                                 f"{P}: no training window fits")
        return items

    # ------------------------------------------------------------------ forecasting
    @torch.no_grad()
    def forecast(self, context: ArrayLike, num_samples: int = 100, *, steps: int = 100, method: str = "em",
                 seed: int | None = None) -> Tensor:
        """Sample paths ``(B, num_samples, P, D)`` of the windows following contexts ``(B, C', D)``, in the
        original units: ``steps`` Euler-Maruyama steps of the reverse SDE (``method="em"``) or Euler steps of the
        probability-flow ODE (``"ode"``) on the uniform grid from the prior, given each context. ``C'`` may exceed
        ``context_length``: the last ``context_length`` steps are used. ``seed`` fixes the draws."""
        context = torch.as_tensor(context, dtype=torch.float32, device=self.device)
        if context.ndim != 3 or context.shape[2] != self.dim:
            hint = " (one window: context[None])" if context.ndim == 2 else ""
            raise ValueError(f"context must have shape (B, C, D) with D = {self.dim} series (the forecaster's), got "
                             f"{tuple(context.shape)}{hint}")
        if context.shape[1] < self.context_length:
            raise ValueError(f"context has {context.shape[1]} steps, fewer than the context_length "
                             f"{self.context_length} the forecaster conditions on")
        if not torch.isfinite(context).all():
            bad = (~torch.isfinite(context)).any(dim=(1, 2)).nonzero().flatten().tolist()
            raise ValueError(f"context has NaN or infinite entries (windows {bad[:5]}); missing values are not "
                             "supported")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        context = context[:, -self.context_length:]
        B, S, P = context.shape[0], num_samples, self.prediction_length
        y_context, _, frame = self.scaling.to_model(context)
        states = self.model.sample(B * S, steps, method=method, grid="uniform", seed=seed,
                                   condition=y_context.repeat_interleave(S, dim=0))
        return self.scaling.to_data(from_state(states, P).reshape(B, S, P, self.dim), frame)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "scaling": self.scaling.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.scaling.load_state_dict(state["scaling"])
