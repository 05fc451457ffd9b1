"""How good generated data is.

:mod:`~sde_control.generative.evaluation.points`: point clouds against held-out points (exact W2^2, histogram
total variation, trajectory straightness).
"""

from .points import evaluate, histogram_distance, straightness

__all__ = ["evaluate", "histogram_distance", "straightness"]
