"""Small constants (time grids, per-step coefficients, prior means) on the device of a computation.

Time grids and the coefficients derived from them live on the CPU in float64, where turning them
into Python numbers costs nothing. Computations on a GPU need device copies: :func:`like` makes
them once per distinct value and returns the same tensor afterwards, so a training step copies
nothing to the device after its first call, which also keeps the step capturable in a CUDA graph.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.lru_cache(maxsize=1024)
def _device_copy(values: tuple[float, ...], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device).reshape(shape)


def like(value: Tensor, reference: Tensor) -> Tensor:
    """``value`` (a CPU tensor) with the dtype and device of ``reference``; device copies are cached by value."""
    if reference.device.type == "cpu":
        return value.to(reference.dtype)
    return _device_copy(tuple(value.detach().cpu().flatten().tolist()), tuple(value.shape), reference.device,
                        reference.dtype)
