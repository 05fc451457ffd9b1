"""Networks of the generative models: noise predictions ``eps(x, t)``.

Vectors (2-d points and other low-dimensional data) use the core's Fourier-feature MLP,
:class:`~sde_control.controls.ControlMLP`, re-exported here as :class:`MLP`.
"""

from sde_control.controls import ControlMLP as MLP

__all__ = ["MLP"]
