"""Forward processes shared by the generative tests: scalar ones and VSDM's with fixed, non-trivial matrices."""

import pytest
import torch

from sde_control.generative import TimeDependentVSDMForward, VSDMForward
from sde_control.generative.diagonal import DiagonalVSDMForward
from sde_control.sdes import VP, SubVP

f64 = dict(dtype=torch.float64)


def _forward_process(name):
    if name == "vp":
        return VP(0.1, 10.0)
    if name == "subvp":
        return SubVP(0.1, 10.0)
    if name == "diagonal-dct":  # A_t diagonal in the 2-point DCT basis (a 45-degree rotation), three pieces
        sde = DiagonalVSDMForward((1, 1, 2), "dct", knots=3)
        with torch.no_grad():
            sde.weight.copy_(torch.tensor([[-0.3, 0.25], [0.2, -0.4], [0.1, 0.0]], **f64))
        return sde
    A = torch.tensor([[-0.3, 0.2], [0.1, 0.25]], **f64)
    if name == "learned-A":
        sde = VSDMForward(2)
        weight = A
    else:
        sde = TimeDependentVSDMForward(2, knots=3, grid_steps=200)
        weight = torch.stack([A, torch.tensor([[0.2, 0.0], [-0.2, -0.4]], **f64), torch.tensor([[0.0, 0.3], [0.1, 0.1]], **f64)])
    with torch.no_grad():
        sde.weight.copy_(weight)
    return sde


@pytest.fixture(params=["vp", "subvp", "learned-A", "learned-A_t", "diagonal-dct"])
def forward_process(request):
    """Every kind of forward process a score model may use (any learned matrices: these are fixed ones)."""
    return _forward_process(request.param)
