"""Generative diffusion models on the core's linear SDEs.

>>> from sde_control.generative import data, VSDM
>>> x = data.spiral(20_000, stretch=8.0)
>>> model = VSDM(dim=2)
>>> model.fit(x, stages=20, score_iterations=500)
>>> samples, paths = model.sample(5000, steps=20, return_paths=True)

:class:`ScoreModel` is denoising score matching on any fixed linear forward SDE (VP by default); :class:`VSDM`
learns the forward process's drift matrix as well (Deng et al., ICML 2024). :mod:`sde_control.generative.data` holds the
2-d data sets and the validation of user data.
"""

from . import data, images
from .forward import TimeDependentVSDMForward, VSDMForward
from .score_model import ScoreModel
from .vsdm import VSDM, fit_equal_budget

__all__ = ["VSDM", "ScoreModel", "TimeDependentVSDMForward", "VSDMForward", "data", "fit_equal_budget"]
