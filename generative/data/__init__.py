"""Data for the generative models.

:mod:`~sde_control.generative.data.points`: point clouds ``(n, d)``: the 2-d sets generated in code (spiral,
checkerboard, moons, anisotropic Gaussian, Gaussian mixture; rings, pinwheel, eight Gaussians, Swiss roll, banana)
and the validation and loading of a user's points.

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
    banana,
    checkerboard,
    eight_gaussians,
    gaussian_mixture,
    load,
    moons,
    pinwheel,
    rings,
    spiral,
    swiss_roll,
    validate,
)

__all__ = ["ImageDataset", "ImageFolder", "ImageTransform", "Images", "anisotropic_gaussian",
           "anisotropic_gaussian_covariance", "banana", "checkerboard", "cifar10", "digits", "eight_gaussians",
           "gaussian_mixture", "image_loader", "load", "moons", "pinwheel", "random_hflip", "rings", "spiral",
           "swiss_roll", "validate"]
