"""Closed-form transitions of the linear SDEs against simulation and against each other."""

import math

import pytest
import torch

from sde_control.sdes import VP, ScaledBrownian

f64 = dict(dtype=torch.float64)


def euler_maruyama_moments(sde, t0, t1, y0, n=50_000, steps=500):
    """Mean and variance of Y_t1 | Y_t0 = y0 from a fine Euler-Maruyama simulation."""
    y = torch.full((n,), y0, **f64)
    ts = torch.linspace(t0, t1, steps + 1, **f64)
    for a, b in zip(ts[:-1], ts[1:]):
        y = y + sde.f(a) * y * (b - a) + sde.g(a) * (b - a).sqrt() * torch.randn(n, **f64)
    return y.mean(), y.var()


@pytest.mark.parametrize("sde", [VP(), VP(0.1, 20.0), VP().time_flipped(), ScaledBrownian()])
def test_transition_matches_simulation(sde):
    t0, t1, y0 = 0.2 * sde.T, 0.7 * sde.T, 1.5
    a, gamma = sde.transition(torch.tensor(t0, **f64), torch.tensor(t1, **f64))
    n = 50_000
    mean, var = euler_maruyama_moments(sde, t0, t1, y0, n=n)
    # Five standard errors: sqrt(gamma / n) for the mean, sqrt(2 / n) relative for the variance;
    # the Euler bias (step 1e-3 T, beta h < 0.02) is an order of magnitude below that.
    assert mean == pytest.approx(float(a) * y0, abs=5 * math.sqrt(float(gamma) / n))
    assert var == pytest.approx(float(gamma), rel=5 * math.sqrt(2 / n))


def test_vp_closed_form():
    vp = VP(0.1, 10.0, 1.0)
    a, gamma = vp.transition(torch.tensor(0.0, **f64), torch.tensor(1.0, **f64))
    integral = 0.1 + (10.0 - 0.1) / 2  # int_0^1 beta
    assert float(a) == pytest.approx(math.exp(-integral / 2))
    assert float(gamma) == pytest.approx(1 - math.exp(-integral))
    assert float(vp.beta(torch.tensor(0.0))) == pytest.approx(0.1)
    assert float(vp.beta(torch.tensor(1.0))) == pytest.approx(10.0)


def test_transitions_compose():
    """Chapman-Kolmogorov: 0 -> 0.3 -> 0.8 equals 0 -> 0.8."""
    for sde in (VP(), VP().time_flipped(), ScaledBrownian(0.2, 5.0)):
        t = [torch.tensor(v * sde.T, **f64) for v in (0.0, 0.3, 0.8)]
        a1, g1 = sde.transition(t[0], t[1])
        a2, g2 = sde.transition(t[1], t[2])
        a, g = sde.transition(t[0], t[2])
        assert float(a1 * a2) == pytest.approx(float(a))
        assert float(a2**2 * g1 + g2) == pytest.approx(float(g))


def test_vp_is_variance_preserving_and_flip_reads_backwards():
    vp = VP()
    _, var = vp.marginal(torch.linspace(0, 1, 11, **f64), var0=1.0)
    torch.testing.assert_close(var, torch.ones(11, **f64))
    flipped = vp.time_flipped()
    t = torch.linspace(0, 1, 7, **f64)
    torch.testing.assert_close(flipped.beta(t), vp.beta(1 - t))


def test_marginal_of_brownian_from_origin():
    mean, var = ScaledBrownian(0.2, 5.0).marginal(torch.tensor(5.0), mean0=0.0, var0=0.0)
    assert float(var) == pytest.approx(1.0)
    assert float(mean) == 0.0


def test_invalid_parameters():
    with pytest.raises(ValueError):
        VP(beta_min=-1.0)
    with pytest.raises(ValueError):
        ScaledBrownian(sigma2=0.0)
