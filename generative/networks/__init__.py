"""Networks of the generative models: noise predictions ``eps(x, t)``.

Vectors (2-d points and other low-dimensional data) use the core's Fourier-feature MLP,
:class:`~sde_control.controls.ControlMLP`, re-exported here as :class:`MLP`. Images use :class:`UNet`
(:mod:`~sde_control.generative.networks.unet`: diffusers' ``UNet2DModel``, the ``images`` extra). Forecast windows
conditioned on a context use :class:`~.timeseries.ContextDenoiser` (``eps(x, t, context)``).
"""

from sde_control.controls import ControlMLP as MLP

from .timeseries import ContextDenoiser
from .unet import UNet

__all__ = ["MLP", "ContextDenoiser", "UNet"]
