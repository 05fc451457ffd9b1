"""Target densities for the samplers: the protocol and the benchmark targets."""

from sde_control.target import Target, TargetError
from sde_control.targets.double_well import DoubleWell
from sde_control.targets.funnel import Funnel
from sde_control.targets.gaussian import Gaussian
from sde_control.targets.gmm import GaussianMixture
from sde_control.targets.lgcp import LGCP
from sde_control.targets.logistic_regression import BayesianLogisticRegression
from sde_control.targets.many_well import ManyWell

__all__ = [
    "BayesianLogisticRegression",
    "DoubleWell",
    "Funnel",
    "Gaussian",
    "GaussianMixture",
    "LGCP",
    "ManyWell",
    "Target",
    "TargetError",
]
