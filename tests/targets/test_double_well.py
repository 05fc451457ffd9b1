import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from torch.distributions import Categorical, MixtureSameFamily, Normal

from sde_control.target import validate_target
from sde_control.targets import DoubleWell, Target

PRESETS = {"d5": DoubleWell.dis_d5, "d50": DoubleWell.dis_d50}


def well(x, delta):
    return np.exp(-((x**2 - delta) ** 2))


def test_presets():
    assert (DoubleWell.dis_d5().dim, DoubleWell.dis_d5().num_wells, DoubleWell.dis_d5().delta) == (5, 5, 4.0)
    assert (DoubleWell.dis_d50().dim, DoubleWell.dis_d50().num_wells, DoubleWell.dis_d50().delta) == (50, 5, 2.0)


@pytest.mark.parametrize("preset", PRESETS)
def test_log_Z_matches_independent_1d_quadrature(preset):
    target = PRESETS[preset]()
    z1, _ = quad(well, -np.inf, np.inf, args=(target.delta,), epsabs=0.0, epsrel=1e-12)
    m, d = target.num_wells, target.dim
    assert target.log_Z == pytest.approx(m * math.log(z1) + (d - m) / 2 * math.log(2 * math.pi), rel=1e-10)


@pytest.mark.parametrize("preset", PRESETS)
def test_log_Z_by_importance_sampling(preset):
    # Proposal: each well coordinate from 0.5 N(-sqrt(delta), s^2) + 0.5 N(sqrt(delta), s^2) with s^2 = 1 / (2 delta),
    # twice the wells' local variance 1 / (8 delta) in standard deviation, the rest N(0, 1); rho / q is bounded
    # (rho decays like exp(-x^4)), so r = rho / (q Z) has mean 1 and a trustworthy standard error.
    torch.manual_seed(0)
    target, n = PRESETS[preset](), 100_000
    m, root = target.num_wells, math.sqrt(target.delta)
    wells = MixtureSameFamily(
        Categorical(torch.tensor([0.5, 0.5], dtype=torch.float64)),
        Normal(torch.tensor([-root, root], dtype=torch.float64), math.sqrt(0.5 / target.delta)),
    )
    rest = Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    x = torch.cat([wells.sample((n, m)), rest.sample((n, target.dim - m))], dim=1)
    log_q = wells.log_prob(x[:, :m]).sum(1) + rest.log_prob(x[:, m:]).sum(1)
    r = torch.exp(target.log_prob(x) - log_q - target.log_Z)
    se = (r.std() / math.sqrt(n)).item()
    assert se < 0.02  # the check has power
    assert abs(r.mean().item() - 1.0) < 5 * se


def test_first_coordinate_histogram_matches_the_1d_density():
    torch.manual_seed(0)
    target, n = DoubleWell.dis_d5(), 200_000
    x = target.sample(n).double()
    edges = np.linspace(-3.5, 3.5, 71)
    z1, _ = quad(well, -np.inf, np.inf, args=(target.delta,))
    probs = np.array([quad(well, a, b, args=(target.delta,))[0] for a, b in zip(edges[:-1], edges[1:])]) / z1
    counts, _ = np.histogram(x[:, 0].numpy(), bins=edges)
    assert counts.sum() == n  # nothing outside [-3.5, 3.5], where the density is below e^-68
    # Per bin, binomial standard error sqrt(p (1 - p) / n); tolerance 5 SE plus 1e-4 for the inverse-CDF grid.
    assert np.all(np.abs(counts / n - probs) < 5 * np.sqrt(probs * (1 - probs) / n) + 1e-4)


def test_samples_cover_the_32_modes_equally_and_the_rest_is_standard_normal():
    torch.manual_seed(0)
    target, n = DoubleWell.dis_d50(), 100_000
    x = target.sample(n).double()
    pattern = ((x[:, :5] > 0).long() * 2 ** torch.arange(5)).sum(1)  # which of the 2^5 sign patterns
    fractions = torch.bincount(pattern, minlength=32) / n
    assert (fractions - 1 / 32).abs().max() < 5 * math.sqrt(1 / 32 * 31 / 32 / n)  # binomial SE, 5 of them
    rest = x[:, 5:]
    assert rest.mean(0).abs().max() < 5 / math.sqrt(n)  # 45 coordinates: 5 SE is ample
    assert (rest.var(0) - 1).abs().max() < 5 * math.sqrt(2 / n)


@pytest.mark.parametrize("preset", PRESETS)
def test_score_matches_the_derivative(preset):
    target = PRESETS[preset]()
    validate_target(target)
    x = torch.randn(32, target.dim, dtype=torch.float64) * 2
    torch.testing.assert_close(target.score(x), Target.score(target, x))  # closed form against autograd
    assert torch.isfinite(target.score(target.sample(100))).all()


@pytest.mark.parametrize(
    "kwargs",
    [{"dim": 0}, {"dim": 3, "num_wells": 4}, {"num_wells": 0}, {"delta": 0.0}, {"delta": -1.0}, {"delta": math.nan}],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        DoubleWell(**kwargs)
