"""Target densities for the samplers: the protocol and the benchmark targets."""

from sde_control.target import Target, TargetError
from targets.double_well import DoubleWell
from targets.funnel import Funnel
from targets.gaussian import Gaussian
from targets.gmm import GaussianMixture

__all__ = ["DoubleWell", "Funnel", "Gaussian", "GaussianMixture", "Target", "TargetError"]
