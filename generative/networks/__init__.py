"""Networks of the generative models: noise predictions ``eps(x, t)``.

Vectors (2-d points and other low-dimensional data) use the core's Fourier-feature MLP,
:class:`~sde_control.controls.ControlMLP`, re-exported here as :class:`MLP`. Images use :class:`UNet`
(:mod:`~sde_control.generative.networks.unet`: diffusers' ``UNet2DModel``, the ``images`` extra).
"""

from sde_control.controls import ControlMLP as MLP

from .unet import UNet

__all__ = ["MLP", "UNet"]
