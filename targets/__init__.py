"""Target densities for the samplers: the protocol and the benchmark targets."""

from sde_control.target import Target, TargetError
from targets.double_well import DoubleWell
from targets.funnel import Funnel
from targets.gaussian import Gaussian
from targets.gmm import GaussianMixture
from targets.logistic_regression import BayesianLogisticRegression
from targets.many_well import ManyWell

__all__ = [
    "BayesianLogisticRegression",
    "DoubleWell",
    "Funnel",
    "Gaussian",
    "GaussianMixture",
    "ManyWell",
    "Target",
    "TargetError",
]
