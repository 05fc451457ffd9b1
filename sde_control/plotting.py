"""Plots of sampler output against the target."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from sde_control.target import Target

_GRID_SIZE = 200


def plot_samples(
    target: Target, samples: Tensor, path: str | Path, exact: Tensor | None = None, title: str | None = None
) -> Path:
    """Write a PNG of ``samples`` against ``target`` to ``path`` and return the path.

    For ``dim == 2``: contours of the target density ``exp(log rho(x))`` on a 200 x 200 grid covering the samples
    (and ``exact``, if given), with the samples scattered on top. For ``dim > 2``: the first two coordinates of the
    samples over those of exact samples (``exact``, else ``target.sample(n)`` when the target has an exact
    sampler). Uses a bare :class:`~matplotlib.figure.Figure` (Agg canvas), so no pyplot global state is touched.
    """
    path = Path(path)
    model = samples.detach().cpu()
    if exact is None and target.dim > 2 and target.has_exact_samples:
        exact = target.sample(len(model))
    reference = None if exact is None else exact.detach().cpu()
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    if target.dim == 2:
        _density_contours(ax, target, model if reference is None else torch.cat([model, reference]))
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, alpha=0.3, color="tab:gray", label="exact")
    ax.scatter(model[:, 0], model[:, 1], s=2, alpha=0.5, color="tab:red", label="model")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title or f"{type(target).__name__} (d = {target.dim})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _density_contours(ax: Axes, target: Target, points: Tensor) -> None:
    """Contour lines of ``exp(log rho)`` on a grid spanning the finite ``points`` plus a 10 % margin on each side."""
    points = points[torch.isfinite(points).all(dim=1)]
    low, high = points.min(0).values, points.max(0).values
    margin = 0.1 * (high - low).clamp_min(1e-3)
    axes = [torch.linspace(lo, hi, _GRID_SIZE) for lo, hi in zip((low - margin).tolist(), (high + margin).tolist())]
    xx, yy = torch.meshgrid(*axes, indexing="xy")
    grid = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    buffer = next((b for b in target.buffers() if b.is_floating_point()), grid)
    with torch.no_grad():
        density = target.log_prob(grid.to(buffer)).exp().cpu().reshape(xx.shape)
    ax.contour(xx.numpy(), yy.numpy(), density.numpy(), levels=12, cmap="viridis", linewidths=0.8)
