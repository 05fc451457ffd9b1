"""A Brownian motion on the solver's fixed grid, for ``torchsde`` (its ``bm=`` argument).

``torchsde``'s default ``BrownianInterval`` builds a dependency tree on every query and makes a
fixed-step solve much slower than a hand-written loop (1.53x at batch 2048 and 200 steps, more for small
problems: ``benchmarks/speed.py --section step``). All the
solvers here step on a fixed grid, so the only queries are whole grid steps; this class answers
them by regenerating the step's increment from a per-step seed. Nothing is stored: memory is
independent of the number of steps, and the adjoint's backward pass sees exactly the increments
of the forward pass.

Integration runs in *step-index time* ``tau in {0, 1, ..., N}`` (exact in floating point);
``W(k + 1) - W(k) ~ N(0, I)``. The physical step size enters through the SDE's coefficients.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchsde import BaseBrownian


class GridBrownian(BaseBrownian):
    """Brownian motion of shape ``(batch, channels)`` with unit-variance increments per index step.

    Args:
        shape: ``(batch, channels)``.
        seed: base seed; step ``k``'s increment is drawn from a generator seeded ``(seed, k)``.
            ``None``: each query draws fresh increments from torch's default generator (no
            regeneration: for solvers that query each step once, such as Euler, and for CUDA
            graphs, which replay the default generator correctly but not per-step generators).
        dtype, device: of the increments.
    """

    __slots__ = ("_shape", "_dtype", "_device", "_seed")

    def __init__(self, shape: tuple[int, int], seed: int | None, dtype: torch.dtype = torch.float32, device=None):
        self._shape = torch.Size(shape)
        self._dtype = dtype
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._seed = None if seed is None else int(seed)

    def increment(self, k: int) -> Tensor:
        """``W(k + 1) - W(k)``."""
        if self._seed is None:
            return torch.randn(self._shape, dtype=self._dtype, device=self._device)
        generator = torch.Generator(self._device).manual_seed(hash((self._seed, k)) & 0x7FFF_FFFF_FFFF_FFFF)
        return torch.randn(self._shape, generator=generator, dtype=self._dtype, device=self._device)

    def __call__(self, ta, tb=None, return_U=False, return_A=False) -> Tensor:
        if return_U or return_A:
            raise ValueError("GridBrownian provides no space-time Levy area; use method='euler' or 'reversible_heun'")
        if tb is None:
            ta, tb = 0, ta
        k0, k1 = _index(ta), _index(tb)
        if k1 < k0:
            raise ValueError(f"GridBrownian queried backwards: [{ta}, {tb}]")
        if k1 == k0 + 1:
            return self.increment(k0)
        return sum((self.increment(k) for k in range(k0, k1)), torch.zeros(self._shape, dtype=self._dtype, device=self._device))

    def __repr__(self) -> str:
        return f"GridBrownian(shape={tuple(self._shape)}, seed={self._seed})"

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def shape(self) -> torch.Size:
        return self._shape

    @property
    def levy_area_approximation(self) -> str:
        return "none"


def _index(t) -> int:
    """Grid index of a step-index time, which must be an integer."""
    value = float(t)
    k = round(value)
    if abs(value - k) > 1e-6:
        raise ValueError(f"GridBrownian only answers whole grid steps, got time {value}")
    return k
