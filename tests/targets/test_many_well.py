import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy.integrate import quad

from sde_control.target import validate_target
from sde_control.targets import ManyWell, Target

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "target"


def well(x):
    """The unnormalised density of one x coordinate, exp(-x^4 + 6 x^2 + 0.5 x)."""
    return np.exp(-(x**4) + 6 * x**2 + 0.5 * x)


Z_X, _ = quad(well, -np.inf, np.inf, epsabs=0.0, epsrel=1e-13)


@pytest.mark.parametrize("dim", [2, 8, 32])
def test_log_Z_matches_independent_1d_quadrature(dim):
    target = ManyWell(dim)
    assert target.log_Z == pytest.approx(dim / 2 * (math.log(Z_X) + 0.5 * math.log(2 * math.pi)), rel=1e-10)
    assert target.num_pairs == dim // 2


def test_log_Z_32_is_the_conventions_value():
    target = ManyWell()
    assert target.dim == 32
    assert math.exp(target.log_z_x) == pytest.approx(11784.50927, rel=1e-9)  # FAB's convention: z_x = 11784.50927
    assert target.log_Z == pytest.approx(164.696, abs=5e-4)  # given there to 3 decimals


def test_log_Z_2d_by_grid_quadrature():
    # Riemann sum of rho over [-3.6, 3.6] x [-9, 9] (outside: log rho < 9.87 - 78, or y beyond 9 standard deviations);
    # exponentially accurate for a smooth, fast-decaying integrand. Checks log_prob and log_Z against each other,
    # the y normalisation included, without the 1-d decomposition.
    target, step = ManyWell(2), 0.01
    xs = torch.arange(-3.6, 3.6 + step / 2, step, dtype=torch.float64)
    ys = torch.arange(-9.0, 9.0 + step / 2, step, dtype=torch.float64)
    xx, yy = torch.meshgrid(xs, ys, indexing="ij")
    log_rho = target.log_prob(torch.stack([xx.flatten(), yy.flatten()], dim=1))
    assert (torch.logsumexp(log_rho, 0) + 2 * math.log(step)).item() == pytest.approx(target.log_Z, abs=1e-8)


def test_x_marginal_histogram_and_moments_match_the_1d_density():
    n = 20_000
    x = ManyWell().sample(n).double()
    wells = x[:, 0::2].flatten().numpy()  # 16 independent x coordinates: 320,000 draws of the 1-d law
    m = wells.size
    edges = np.linspace(-3.4, 3.4, 69)
    probs = np.array([quad(well, a, b)[0] for a, b in zip(edges[:-1], edges[1:])]) / Z_X
    counts, _ = np.histogram(wells, bins=edges)
    assert counts.sum() == m  # the sampler's grid is [-3.4, 3.4]
    # Per bin, binomial standard error sqrt(p (1 - p) / m); tolerance 5 SE plus 1e-4 for the inverse-CDF grid.
    assert np.all(np.abs(counts / m - probs) < 5 * np.sqrt(probs * (1 - probs) / m) + 1e-4)
    mean = quad(lambda t: t * well(t), -np.inf, np.inf)[0] / Z_X
    var = quad(lambda t: (t - mean) ** 2 * well(t), -np.inf, np.inf)[0] / Z_X
    assert abs(wells.mean() - mean) < 5 * math.sqrt(var / m)  # 5 standard errors of the mean
    p_right = quad(well, 0, np.inf)[0] / Z_X  # the tilt 0.5 x makes the right well heavier (p = 0.85)
    assert abs((wells > 0).mean() - p_right) < 5 * math.sqrt(p_right * (1 - p_right) / m)


def test_y_coordinates_are_standard_normal_and_all_coordinates_independent():
    n = 20_000
    x = ManyWell().sample(n).double()
    y = x[:, 1::2]
    assert y.mean(0).abs().max() < 5 / math.sqrt(n)  # 16 coordinates, 5 standard errors of the mean each
    assert (y.var(0) - 1).abs().max() < 5 * math.sqrt(2 / n)  # SE of a normal sample variance: sqrt(2 / n)
    # Under independence a sample correlation has standard error 1 / sqrt(n) whatever the marginals;
    # 496 pairs, 5 standard errors each.
    corr = torch.corrcoef(x.T)
    off_diagonal = corr[~torch.eye(32, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 5 / math.sqrt(n)


def test_two_to_the_num_pairs_modes_with_the_product_weights():
    target = ManyWell(8)
    # Every choice of a well per pair, with y = 0, is a stationary point (zero score) and a local maximum
    # (second derivative -12 x^2 + 12 < 0 at |x| > 1): 2^4 = 16 modes.
    signs = torch.tensor([[(p >> i) & 1 for i in range(4)] for p in range(16)], dtype=torch.bool)
    modes = torch.zeros(16, 8, dtype=torch.float64)
    left, right = (torch.tensor(m, dtype=torch.float64) for m in target.well_modes)
    modes[:, 0::2] = torch.where(signs, right, left)
    assert target.score(modes).abs().max() < 1e-12
    assert all(12 - 12 * m**2 < 0 for m in target.well_modes)
    # Sign patterns of exact samples: binomial fractions p_right^k (1 - p_right)^(4 - k), 5 standard errors each.
    n = 40_000
    x = target.sample(n)
    pattern = ((x[:, 0::2] > 0).long() * 2 ** torch.arange(4)).sum(1)
    fractions = (torch.bincount(pattern, minlength=16) / n).double()
    p_right = quad(well, 0, np.inf)[0] / Z_X
    expected = torch.tensor([p_right**k * (1 - p_right) ** (4 - k) for k in signs.sum(1).tolist()], dtype=torch.float64)
    assert ((fractions - expected).abs() < 5 * (expected * (1 - expected) / n).sqrt()).all()


def test_score_matches_autograd():
    target = ManyWell()
    validate_target(target)
    x = 2 * torch.randn(64, 32, dtype=torch.float64)
    torch.testing.assert_close(target.score(x), Target.score(target, x))
    assert torch.isfinite(target.score(target.sample(100))).all()


def test_config_builds_many_well_32():
    target = instantiate(OmegaConf.load(CONFIGS / "many_well_32.yaml"))
    assert isinstance(target, ManyWell) and target.dim == 32
    assert target.log_Z == ManyWell().log_Z


@pytest.mark.parametrize("dim", [0, 1, 3, -2, 32.0, True])
def test_invalid_dim_raises(dim):
    with pytest.raises(ValueError):
        ManyWell(dim)
