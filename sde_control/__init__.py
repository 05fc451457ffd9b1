"""sde-control: sampling and generative modelling as stochastic optimal control.

The sampler side: :class:`PIS`, :class:`DIS`, :class:`DDS` draw samples from an unnormalised
density (a :class:`~sde_control.target.Target`) and estimate its log normalising constant.
"""

from .estimators import LogZEstimate
from .samplers import DDS, DIS, PIS, Sampler
from .target import Target, TargetError
from .training import TrainingDivergedError

__all__ = ["DDS", "DIS", "PIS", "LogZEstimate", "Sampler", "Target", "TargetError", "TrainingDivergedError"]
__version__ = "0.1.0"
