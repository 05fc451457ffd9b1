r"""The noise-prediction network of a conditional diffusion model over a forecast window.

``eps_theta(x_t, t, context)``: the noisy future window ``x_t`` ``(B, P, D)``, the noising time ``t`` ``(B,)`` and
the observed context ``(B, C, D)`` (both in the forecaster's scaled units) give the noise prediction ``(B, P, D)``.

The default follows the choices of VSDM's time-series code (WayneDW/Variational_Schrodinger_Diffusion_Model, branch
``time_series``, ``module.py``: a 2-layer LSTM of hidden size 64 encodes the past) and TimeGrad's denoiser
(zalandoresearch/pytorch-ts, ``pts/model/time_grad/epsilon_theta.py``: DiffWave-style residual blocks with dilated
convolutions, gated ``tanh * sigmoid`` units, a diffusion-time projection and a conditioner projection per block,
residual and skip outputs). Those models are autoregressive: one diffusion per time step, over the ``D`` values of
that step, the convolutions running along the series axis. Here one diffusion covers the whole window, so the
convolutions run along the window's ``P`` steps, the ``D`` series being channels (the series axis has no order in
general, time has). Sizes (defaults):

* context encoder: ``LSTM(D -> 64, 2 layers)`` over the ``C`` context steps; its last top-layer state ``h``
  ``(B, 64)`` is mapped by ``Linear(64, 64) - LeakyReLU(0.4) - Linear(64, 8 P)`` to ``8`` conditioning channels at
  each of the ``P`` steps (TimeGrad's ``CondUpsampler`` does this along its series axis with one channel);
* time: :class:`sde_control.controls.TimeNetwork` (Fourier features of ``t``, 2 GELU layers) to 64 features;
* denoiser: ``Conv1d(D -> 64, 1)``, 8 residual blocks of 64 channels with kernel-3 convolutions dilated
  1, 2, 4, 1, 2, 4, 1, 2 (zero padding, so the receptive field spans 35 steps), then
  ``Conv1d(64 -> 64, 1) - ReLU - Conv1d(64 -> D, 1)`` on the skip sum; the last convolution starts at zero, so the
  initial noise prediction is 0. Each block: ``y = x + W_t tau``, ``y = dilated_conv(y) + W_c cond``,
  ``y = tanh(y_a) * sigmoid(y_b)``, ``(residual, skip) = Conv1d(y)``, output ``(x + residual) / sqrt 2``; the skips
  are summed and divided by ``sqrt(blocks)``.

With these defaults the network has 0.40 M parameters at ``D = 8``, ``P = 30`` and 0.76 M at ``D = 963``, ``P = 24``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sde_control.controls import TimeNetwork


class ContextEncoder(nn.Module):
    """``LSTM(D -> hidden, layers)`` over a context ``(B, C, D)``; returns its last top-layer state ``(B, hidden)``."""

    def __init__(self, dim: int, hidden_size: int = 64, num_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden_size, num_layers=num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)

    def forward(self, context: Tensor) -> Tensor:
        _, (hidden, _) = self.lstm(context)
        return hidden[-1]


class ResidualBlock(nn.Module):
    """One gated, dilated residual block along the window's steps (module docstring)."""

    def __init__(self, channels: int, time_features: int, cond_channels: int, dilation: int):
        super().__init__()
        self.time_projection = nn.Linear(time_features, channels)
        self.dilated_conv = nn.Conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        self.cond_projection = nn.Conv1d(cond_channels, 2 * channels, 1)
        self.output_projection = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, x: Tensor, time_features: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        y = x + self.time_projection(time_features)[:, :, None]
        y = self.dilated_conv(y) + self.cond_projection(cond)
        a, b = y.chunk(2, dim=1)
        residual, skip = self.output_projection(torch.tanh(a) * torch.sigmoid(b)).chunk(2, dim=1)
        return (x + residual) / math.sqrt(2.0), skip


class ContextDenoiser(nn.Module):
    r"""``eps_theta(x_t (B, P, D), t (B,) or (), context (B, C, D)) -> (B, P, D)`` (module docstring).

    Args:
        dim: the number of series ``D``.
        prediction_length: the window length ``P`` (the conditioner has one set of channels per step).
        hidden_size, lstm_layers, dropout: the context LSTM's (VSDM's code: 64, 2; its dropout 0.1, ours 0).
        channels: residual channels.
        blocks: residual blocks; ``dilation_cycle``: their dilations are ``2^(i mod cycle)``.
        cond_channels: conditioning channels per window step.
        time_features: width of the time embedding.
    """

    def __init__(self, dim: int, prediction_length: int, *, hidden_size: int = 64, lstm_layers: int = 2,
                 dropout: float = 0.0, channels: int = 64, blocks: int = 8, dilation_cycle: int = 3,
                 cond_channels: int = 8, time_features: int = 64):
        super().__init__()
        if dim < 1 or prediction_length < 1:
            raise ValueError(f"dim and prediction_length must be positive, got {dim} and {prediction_length}")
        self.dim, self.prediction_length, self.cond_channels = dim, prediction_length, cond_channels
        self.encoder = ContextEncoder(dim, hidden_size, lstm_layers, dropout)
        self.cond_upsampler = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.LeakyReLU(0.4),
                                            nn.Linear(hidden_size, cond_channels * prediction_length))
        self.time_embedding = TimeNetwork(time_features, width=time_features, depth=2)
        self.input_projection = nn.Conv1d(dim, channels, 1)
        self.blocks = nn.ModuleList(ResidualBlock(channels, time_features, cond_channels, 2 ** (i % dilation_cycle))
                                    for i in range(blocks))
        self.skip_projection = nn.Conv1d(channels, channels, 1)
        self.output_projection = nn.Conv1d(channels, dim, 1)
        nn.init.zeros_(self.output_projection.weight)
        nn.init.zeros_(self.output_projection.bias)

    def forward(self, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        B, P, D = x.shape if x.ndim == 3 else (None, None, None)
        if x.ndim != 3 or (P, D) != (self.prediction_length, self.dim):
            raise ValueError(f"x must have shape (B, {self.prediction_length}, {self.dim}), got {tuple(x.shape)}")
        if context.ndim != 3 or context.shape[0] != B or context.shape[2] != D:
            raise ValueError(f"context must have shape ({B}, C, {D}), got {tuple(context.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
        if t.numel() not in (1, B):
            raise ValueError(f"t must be one time or one per window ({B}), got {t.numel()}")
        t = t.expand(B)
        cond = self.cond_upsampler(self.encoder(context)).view(B, self.cond_channels, P)
        cond = F.leaky_relu(cond, 0.4)
        tau = self.time_embedding(t)
        h = F.leaky_relu(self.input_projection(x.transpose(1, 2)), 0.4)
        skips = 0.0
        for block in self.blocks:
            h, skip = block(h, tau, cond)
            skips = skips + skip
        h = F.relu(self.skip_projection(skips / math.sqrt(len(self.blocks))))
        return self.output_projection(h).transpose(1, 2)
