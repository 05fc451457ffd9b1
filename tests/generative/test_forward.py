"""VSDM's forward processes: VP at A = 0, closed forms, simulation, and the time-dependent A_t."""

import math

import pytest
import torch

from sde_control.generative import TimeDependentVSDMForward, VSDMForward
from sde_control.sdes import VP

f64 = dict(dtype=torch.float64)


def with_weight(sde, weight):
    with torch.no_grad():
        sde.weight.copy_(weight)
    return sde


def test_zero_matrix_is_vp():
    t0, t1 = torch.tensor([0.0, 0.2, 0.0], **f64), torch.tensor([1.0, 0.7, 1e-3], **f64)
    vp = VP(0.1, 10.0)
    expected = [torch.kron(m, torch.eye(2, **f64)) for m in vp.transition_matrices(t0, t1)]
    for sde in (VSDMForward(2), TimeDependentVSDMForward(2, knots=3)):
        for ours, theirs in zip(sde.transition_matrices(t0, t1), expected):
            torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-10)


def test_diagonal_matrix_has_the_closed_form():
    """dx_i = beta (a_i - 1/2) x_i dt + sqrt(beta) dW: Psi = e^{(a - 1/2) B}, Sigma = (1 - e^{(2a - 1) B}) / (1 - 2a)."""
    a = torch.tensor([-0.4, 0.2], **f64)
    sde = with_weight(VSDMForward(2), torch.diag(a))
    B = 0.1 * 0.8 + (10.0 - 0.1) * 0.8**2 / 2  # int_0^0.8 beta
    psi, sigma = sde.transition_matrices(torch.tensor(0.0, **f64), torch.tensor(0.8, **f64))
    torch.testing.assert_close(psi, torch.diag(torch.exp((a - 0.5) * B)))
    torch.testing.assert_close(sigma, torch.diag(-torch.expm1((2 * a - 1) * B) / (1 - 2 * a)))


def random_time_dependent(seed=0):
    g = torch.Generator().manual_seed(seed)
    return with_weight(TimeDependentVSDMForward(2, knots=3), 0.4 * torch.randn(3, 2, 2, generator=g, **f64))


@pytest.mark.parametrize(
    "sde",
    [with_weight(VSDMForward(2), torch.tensor([[0.3, -0.5], [0.2, -1.0]], **f64)), random_time_dependent()],
    ids=["time-invariant", "time-dependent"],
)
def test_transition_matches_simulation(sde, check_transition):
    check_transition(sde, 0.1, 0.7, torch.tensor([2.0, -1.0], **f64), n=20_000)


def test_time_dependent_matrix_interpolates_its_knots():
    sde = random_time_dependent(seed=1)
    knots = sde.weight.detach()
    torch.testing.assert_close(sde.A(torch.tensor([0.0, 0.5, 1.0], **f64)), knots)
    torch.testing.assert_close(sde.A(torch.tensor(0.25, **f64)), (knots[0] + knots[1]) / 2)
    torch.testing.assert_close(sde.time_averaged_A(), (knots[0] + 2 * knots[1] + knots[2]) / 4)
    same = with_weight(TimeDependentVSDMForward(2, knots=2), knots[1].expand(2, 2, 2))
    constant = with_weight(VSDMForward(2), knots[1])
    t0, t1 = torch.tensor([0.0, 0.3], **f64), torch.tensor([0.9, 0.6], **f64)
    for ours, theirs in zip(same.transition_matrices(t0, t1), constant.transition_matrices(t0, t1)):
        torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-10)
    with pytest.raises(ValueError, match="at least 2 knots"):
        TimeDependentVSDMForward(2, knots=1)


def test_matrix_gets_gradients_through_the_transition():
    for sde in (VSDMForward(2), TimeDependentVSDMForward(2, knots=2, grid_steps=100)):
        sigma = sde.transition_matrices(torch.tensor(0.0, **f64), torch.tensor(1.0, **f64))[1]
        (grad,) = torch.autograd.grad(sigma.trace(), sde.weight)
        # Raising A's diagonal weakens the contraction, so the terminal variance grows.
        assert (grad.reshape(-1, 4)[:, [0, 3]] > 0).all() and math.isfinite(float(grad.abs().sum()))
