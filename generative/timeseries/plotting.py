"""Fan charts of probabilistic forecasts against the truth."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor


def plot_fan_chart(samples: Tensor, target: Tensor, path: str | Path, context: Tensor | None = None,
                   series: Sequence[int] | None = None, names: Sequence[str] | None = None,
                   title: str | None = None) -> Path:
    """Write a PNG with one panel per series of one window: the median of the sample paths, their 50 % and 90 %
    central bands (quantiles 0.25-0.75 and 0.05-0.95 at each step) and the true future, after the context.

    Args:
        samples: ``(S, P, D)`` sample paths of one window (one entry of a forecaster's ``(B, S, P, D)`` output).
        target: the true future ``(P, D)``.
        path: the PNG to write (its folder is created).
        context: the ``(C, D)`` steps before the window, drawn in front of it (optional).
        series: which series to draw (default: all, at most 16 panels: the first 16).
        names: one name per series of ``D`` (default: ``series d``).

    A bare :class:`~matplotlib.figure.Figure`, as :func:`sde_control.plotting.plot_samples`, so no pyplot state.
    """
    samples, target = torch.as_tensor(samples).detach().cpu().double(), torch.as_tensor(target).detach().cpu().double()
    if samples.ndim != 3 or target.shape != samples.shape[1:]:
        raise ValueError(f"samples must be (S, P, D) and target (P, D) with the same P and D, got "
                         f"{tuple(samples.shape)} and {tuple(target.shape)}")
    S, P, D = samples.shape
    if context is not None:
        context = torch.as_tensor(context).detach().cpu().double()
        if context.ndim != 2 or context.shape[1] != D:
            raise ValueError(f"context must be (C, {D}), got {tuple(context.shape)}")
    shown = list(range(min(D, 16))) if series is None else list(series)
    if not shown or not all(0 <= d < D for d in shown):
        raise ValueError(f"series must be indices in [0, {D}), got {shown}")
    if names is not None and len(names) != D:
        raise ValueError(f"names must name all {D} series, got {len(names)}")
    levels = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    q05, q25, median, q75, q95 = torch.quantile(samples, levels, dim=0)  # each (P, D)
    C = 0 if context is None else context.shape[0]
    steps = torch.arange(C, C + P)
    columns = min(len(shown), 4)
    rows = math.ceil(len(shown) / columns)
    fig = Figure(figsize=(4 * columns, 2.8 * rows), dpi=100)
    for i, d in enumerate(shown):
        ax = fig.add_subplot(rows, columns, i + 1)
        if context is not None:
            ax.plot(torch.arange(C), context[:, d], color="black", linewidth=1)
        ax.fill_between(steps, q05[:, d], q95[:, d], color="tab:blue", alpha=0.2, linewidth=0, label="90 %")
        ax.fill_between(steps, q25[:, d], q75[:, d], color="tab:blue", alpha=0.4, linewidth=0, label="50 %")
        ax.plot(steps, median[:, d], color="tab:blue", linewidth=1.2, label="median")
        ax.plot(steps, target[:, d], color="black", linestyle="--", linewidth=1, label="truth")
        ax.set_title(names[d] if names is not None else f"series {d}", fontsize=9)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
