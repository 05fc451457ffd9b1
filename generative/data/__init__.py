"""Data for the generative models.

:mod:`~sde_control.generative.data.points`: point clouds ``(n, d)``: the 2-d sets generated in code (spiral,
checkerboard, moons, anisotropic Gaussian, Gaussian mixture) and the validation and loading of a user's points.

:mod:`~sde_control.generative.data.images`: images ``(n, C, H, W)`` of integer grey levels: the embedded digits,
CIFAR-10 and image folders from local files, their loader, and :class:`ImageTransform` (dequantisation, the map to
``[-1, 1]`` and bits/dim).
"""

from .images import (
    ImageDataset,
    ImageFolder,
    Images,
    ImageTransform,
    cifar10,
    digits,
    image_loader,
    random_hflip,
)
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

__all__ = ["ImageDataset", "ImageFolder", "ImageTransform", "Images", "anisotropic_gaussian",
           "anisotropic_gaussian_covariance", "checkerboard", "cifar10", "digits", "gaussian_mixture", "image_loader",
           "load", "moons", "random_hflip", "spiral", "validate"]
