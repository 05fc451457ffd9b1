"""Sample quality of generated points against held-out data, shared by the command line and the benchmarks:
the exact squared 2-Wasserstein distance, the total variation between histograms, and the straightness of
sampling trajectories (measured on probability-flow ODE paths: reverse-SDE paths grow without bound in length as
the step shrinks)."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from sde_control.metrics import point_clouds, wasserstein2_squared

from ..model import GenerativeModel


def evaluate(model: GenerativeModel, reference: Tensor, steps: int, *, seed: int | None = None,
             **sampling: Any) -> tuple[dict[str, Any], Tensor, Tensor]:
    """Draw as many samples as ``reference`` has points with ``steps`` steps of ``model.sample`` (``sampling``: its
    options, e.g. ``method="gddim", order=2``) and compare.

    Returns the metrics, the samples (n, d) and their paths (steps + 1, n, d), on the CPU. Metrics: ``w2``, the
    exact squared 2-Wasserstein distance to ``reference``; ``tv``, the total variation between their histograms;
    ``straightness`` of the paths of a deterministic sampler (``None`` for the stochastic ones, whose paths have no
    meaningful length); ``nfe``, the network evaluations the sampling took.
    """
    samples, paths = model.sample(len(reference), steps, return_paths=True, seed=seed, **sampling)
    samples, paths = samples.cpu(), paths.cpu()
    deterministic = sampling.get("method", "ode") in ("ode", "gddim") and not sampling.get("lam", 0)
    metrics = {"w2": wasserstein2_squared(samples, reference), "tv": histogram_distance(samples, reference),
               "straightness": straightness(paths) if deterministic else None, "nfe": model.last_nfe}
    return metrics, samples, paths


def histogram_distance(x: Tensor | np.ndarray, y: Tensor | np.ndarray, bins: int = 50, margin: float = 0.1) -> float:
    r"""Total variation ``1/2 sum_i |p_i - q_i|`` between the histograms of ``x`` (samples) and ``y`` (reference).

    The grid has ``bins`` equal cells per coordinate over the bounding box of ``y`` widened by ``margin`` times
    its side on each end; one extra cell holds everything outside it, so mass that a model puts far from the data
    counts in full. In ``[0, 1]``: 0 for identical histograms, 1 for disjoint ones. For low dimensions only
    (``bins ** d`` cells).
    """
    xs, ys = point_clouds(x, y)
    if bins < 1 or margin < 0:
        raise ValueError(f"need bins >= 1 and margin >= 0, got {bins}, {margin}")
    low, high = ys.min(0), ys.max(0)
    pad = margin * np.maximum(high - low, 1e-12)
    edges = [np.linspace(lo, hi, bins + 1) for lo, hi in zip(low - pad, high + pad)]

    def masses(points: np.ndarray) -> np.ndarray:
        counts, _ = np.histogramdd(points, bins=edges)
        inside = counts.ravel() / len(points)
        return np.append(inside, 1.0 - inside.sum())

    return float(0.5 * np.abs(masses(xs) - masses(ys)).sum())


def straightness(paths: Tensor) -> float:
    r"""Mean over trajectories of ``|x_N - x_0| / sum_k |x_{k+1} - x_k|`` for ``paths`` of shape (N+1, batch, d).

    1 for straight lines travelled in one direction, smaller the more a trajectory bends (a ratio of lengths, so
    it does not depend on the data's scale). Reverse-SDE paths grow in length without bound as the step shrinks;
    measure probability-flow ODE paths.
    """
    if paths.ndim != 3 or paths.shape[0] < 2:
        raise ValueError(f"paths must have shape (N+1, batch, d) with N >= 1, got {tuple(paths.shape)}")
    paths = paths.detach().double()
    length = (paths[1:] - paths[:-1]).norm(dim=-1).sum(0)
    chord = (paths[-1] - paths[0]).norm(dim=-1)
    return (chord / length.clamp_min(1e-300)).mean().item()
