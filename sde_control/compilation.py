"""``torch.compile`` where it works, the eager function where it does not.

Inductor needs a C++ compiler on the CPU (and Triton on a GPU); :func:`compiler_available` finds out once per device
type by compiling and running a one-line function, and :func:`compiled` falls back to the eager function, with a
warning that says why, where that failed. Compiled and eager functions compute the same values up to the rounding
of fused kernels (``tests/sde_control/test_compilation.py``).
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


@functools.cache
def _compiler_failure(device_type: str) -> str | None:
    """``None`` where a compiled function runs on ``device_type``, else the reason it does not."""
    try:
        probe = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2 + 1, dynamic=False)
        probe(torch.ones(4, device=device_type))
    except Exception as error:  # noqa: BLE001 - any failure of the toolchain means: run eagerly
        torch._dynamo.reset()
        first_line = next(iter(str(error).strip().splitlines()), "")
        return f"{type(error).__name__}: {first_line}"
    return None


def compiler_available(device_type: str = "cpu") -> bool:
    """Whether ``torch.compile`` works on ``device_type`` here (a C++ compiler on the CPU, Triton on a GPU)."""
    return _compiler_failure(device_type) is None


def compiled(function: F, device_type: str = "cpu") -> F:
    """``torch.compile(function, dynamic=False)``, or ``function`` itself (with a warning) where no compiler works."""
    failure = _compiler_failure(device_type)
    if failure is not None:
        warnings.warn(f"torch.compile is unavailable on {device_type} ({failure}); running eagerly", stacklevel=2)
        return function
    return torch.compile(function, dynamic=False)  # type: ignore[return-value]
