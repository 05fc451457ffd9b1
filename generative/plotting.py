"""Plots of generated points (and their sampling trajectories) against the data, and grids of generated images."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from matplotlib.figure import Figure
from torch import Tensor


def plot_trajectories(
    paths: Mapping[str, Tensor], path: str | Path, reference: Tensor | None = None, n_paths: int = 64,
    title: str | None = None,
) -> Path:
    """Write a PNG with one panel per entry of ``paths`` (name -> (N+1, n, 2) trajectories) to ``path``.

    Each panel shows ``reference`` points (e.g. held-out data) in gray, the trajectories' end points in red and
    the first ``n_paths`` trajectories as lines from their start (``o``) to their end; all panels share their
    axes, which span the reference and the end points. Bare :class:`~matplotlib.figure.Figure`, as
    :func:`sde_control.plotting.plot_samples`.
    """
    path = Path(path)
    trajectories = {name: p.detach().cpu() for name, p in paths.items()}
    for name, p in trajectories.items():
        if p.ndim != 3 or p.shape[-1] != 2:
            raise ValueError(f"paths[{name!r}] must have shape (N+1, n, 2), got {tuple(p.shape)}")
    ends = [p[-1] for p in trajectories.values()] + ([] if reference is None else [reference.detach().cpu()])
    points = torch.cat(ends)
    points = points[torch.isfinite(points).all(dim=1)]
    low, high = points.min(0).values, points.max(0).values
    margin = 0.05 * (high - low).clamp_min(1e-3)
    fig = Figure(figsize=(5 * len(trajectories), 5), dpi=100)
    for i, (name, p) in enumerate(trajectories.items()):
        ax = fig.add_subplot(1, len(trajectories), i + 1)
        if reference is not None:
            ax.scatter(reference[:, 0].cpu(), reference[:, 1].cpu(), s=2, alpha=0.3, color="tab:gray", label="data")
        ax.scatter(p[-1, :, 0], p[-1, :, 1], s=2, alpha=0.5, color="tab:red", label="samples")
        shown = p[:, :n_paths]
        ax.plot(shown[:, :, 0].numpy(), shown[:, :, 1].numpy(), color="tab:blue", linewidth=0.6, alpha=0.6)
        ax.scatter(shown[0, :, 0], shown[0, :, 1], s=6, marker="o", color="tab:blue")
        ax.set_xlim(float(low[0] - margin[0]), float(high[0] + margin[0]))
        ax.set_ylim(float(low[1] - margin[1]), float(high[1] + margin[1]))
        ax.set_title(name)
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.legend(loc="upper right", markerscale=4)
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def plot_point_samples(samples: Mapping[str, Tensor], path: str | Path, reference: Tensor | None = None,
                       title: str | None = None) -> Path:
    """Write a PNG with one panel per entry of ``samples`` (name -> (n, d) points; the first two coordinates are
    shown) over ``reference`` points in gray, all panels on the axes of the reference and the finite samples."""
    path = Path(path)
    clouds = {name: s.detach().cpu()[:, :2] for name, s in samples.items()}
    points = torch.cat([*clouds.values(), *([] if reference is None else [reference.detach().cpu()[:, :2]])])
    points = points[torch.isfinite(points).all(dim=1)]
    low, high = points.min(0).values, points.max(0).values
    margin = 0.05 * (high - low).clamp_min(1e-3)
    fig = Figure(figsize=(4 * len(clouds), 4), dpi=100)
    for i, (name, s) in enumerate(clouds.items()):
        ax = fig.add_subplot(1, len(clouds), i + 1)
        if reference is not None:
            ax.scatter(reference[:, 0].cpu(), reference[:, 1].cpu(), s=2, alpha=0.3, color="tab:gray", label="held out")
        ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.5, color="tab:red", label="samples")
        ax.set_xlim(float(low[0] - margin[0]), float(high[0] + margin[0]))
        ax.set_ylim(float(low[1] - margin[1]), float(high[1] + margin[1]))
        ax.set_title(name)
        ax.legend(loc="upper right", markerscale=4)
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def plot_image_grids(images: Mapping[str, Tensor], path: str | Path, columns: int = 10,
                     title: str | None = None) -> Path:
    """Write a PNG with one grid per entry of ``images`` (name -> uint8 (n, C, H, W), C = 1 or 3), ``columns``
    images a row, side by side."""
    path = Path(path)
    fig = Figure(figsize=(3.2 * len(images), 3.4), dpi=100)
    for i, (name, batch) in enumerate(images.items()):
        if batch.dim() != 4 or batch.dtype != torch.uint8 or batch.shape[1] not in (1, 3):
            raise ValueError(f"images[{name!r}] must be uint8 (n, 1 or 3, H, W), got {batch.dtype} "
                             f"{tuple(batch.shape)}")
        n, c, h, w = batch.shape
        rows = -(-n // columns)
        grid = torch.zeros(c, rows * (h + 1), columns * (w + 1), dtype=torch.uint8)
        for k in range(n):
            r, q = divmod(k, columns)
            grid[:, r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = batch[k]
        ax = fig.add_subplot(1, len(images), i + 1)
        ax.imshow(grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy(), cmap="gray" if c == 1 else None,
                  vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path
