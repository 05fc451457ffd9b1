"""Sample quality against held-out data, shared by the command line and the benchmark."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from sde_control.metrics import histogram_distance, straightness, wasserstein2_squared

from .score_model import ScoreModel


def evaluate(model: ScoreModel, reference: Tensor, steps: int, method: str = "ode", solver: str = "euler",
             seed: int | None = None) -> tuple[dict[str, Any], Tensor, Tensor]:
    """Draw as many samples as ``reference`` has points with ``steps`` steps of ``method`` and compare.

    Returns the metrics, the samples (n, d) and their paths (steps + 1, n, d), on the CPU. Metrics: ``w2``, the
    exact squared 2-Wasserstein distance to ``reference``; ``tv``, the total variation between their histograms;
    ``straightness`` of the paths (``None`` for the reverse SDE, whose paths have no meaningful length).
    """
    samples, paths = model.sample(len(reference), steps, method=method, solver=solver, return_paths=True, seed=seed)
    samples, paths = samples.cpu(), paths.cpu()
    metrics = {"w2": wasserstein2_squared(samples, reference), "tv": histogram_distance(samples, reference),
               "straightness": straightness(paths) if method == "ode" else None}
    return metrics, samples, paths
