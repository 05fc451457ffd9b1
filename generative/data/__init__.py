"""Data for the generative models.

:mod:`~sde_control.generative.data.points`: point clouds ``(n, d)``: the 2-d sets generated in code (spiral,
checkerboard, moons, anisotropic Gaussian, Gaussian mixture) and the validation and loading of a user's points.
"""

from .points import (
    anisotropic_gaussian,
    anisotropic_gaussian_covariance,
    checkerboard,
    gaussian_mixture,
    load,
    moons,
    spiral,
    validate,
)

__all__ = ["anisotropic_gaussian", "anisotropic_gaussian_covariance", "checkerboard", "gaussian_mixture", "load",
           "moons", "spiral", "validate"]
