"""Generative diffusion models on the core's linear SDEs.

>>> from sde_control.generative import data, ScoreModel, MDM, NDM, VSDM, CLD
>>> x = data.spiral(20_000, stretch=8.0)
>>> model = ScoreModel(dim=2, sde=CLD())          # any linear forward process; auxiliary variables are added
>>> model.fit(x, iterations=5000)
>>> samples = model.sample(5000, steps=20, method="gddim")   # or "em", "ode"
>>> model.bits_per_dim(x[:1000]).mean

:class:`ScoreModel` is (hybrid) denoising score matching on any fixed linear forward SDE (VP by default; VE, CLD,
ALDA, MALDA and the auxiliary-variable diffusions of :mod:`sde_control.sdes`, re-exported here); :class:`MDM` learns
its auxiliary-variable diffusion with the score by the ELBO (Singhal et al. 2023); :class:`NDM` learns a
transformation of the data inside the forward process (Bartosh et al. 2024); :class:`VSDM` learns the forward
process's drift matrix (Deng et al., ICML 2024). :mod:`sde_control.generative.data` holds the 2-d data sets, the
digits and the validation of user data.
"""

from sde_control.sdes import ALDA, CLD, MALDA, VE, VP, AuxiliaryVariableSDE

from . import data, images
from .forward import TimeDependentVSDMForward, VSDMForward
from .likelihood import BoundEstimate
from .mdm import MDM
from .ndm import NDM
from .score_model import ScoreModel
from .vsdm import VSDM, fit_equal_budget

__all__ = ["ALDA", "CLD", "MALDA", "MDM", "NDM", "VE", "VP", "VSDM", "AuxiliaryVariableSDE", "BoundEstimate",
           "ScoreModel", "TimeDependentVSDMForward", "VSDMForward", "data", "fit_equal_budget"]
