import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from sde_control.metrics import entropic_mode_coverage, nearest_mode
from sde_control.target import validate_target
from sde_control.targets import GaussianMixture, Target

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "target"
K = 40
SCALE = 1.3132616875182228  # softplus(1) = log(1 + e)


def float64_gmm40(dim: int) -> GaussianMixture:
    target = GaussianMixture.gmm40(dim)
    return GaussianMixture(target.means.double(), covariance=torch.full((dim,), SCALE**2, dtype=torch.float64))


def emc_sampling_tolerance(n: int) -> float:
    """Bound on ``1 - EMC`` of ``n`` samples when each of the K modes holds exactly 1/K of the mass.

    ``2 n (log K - H(p_hat))`` is the G-test statistic of the counts against the uniform law, asymptotically
    chi^2 with K - 1 degrees of freedom (mean K - 1, standard deviation sqrt(2 (K - 1))); so
    ``1 - EMC = G / (2 n log K)`` stays below its mean plus five standard deviations of G over ``2 n log K``.
    """
    return (K - 1 + 5 * math.sqrt(2 * (K - 1))) / (2 * n * math.log(K))


@pytest.fixture(scope="module")
def grid_2d():
    """log rho of the 2-d GMM40 on a 0.25-spaced grid over [-55, 55]^2 (every mean is in [-40, 40]^2; 15 / 1.31 =
    11 standard deviations of margin leave < e^-60 of the mass outside), with each point's nearest mode."""
    target, step = float64_gmm40(2), 0.25
    axis = torch.arange(-55.0, 55.0 + step / 2, step, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    x = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    return target, step, target.log_prob(x), nearest_mode(x, target.means)


@pytest.mark.parametrize("dim", [2, 50])
def test_means_are_fab_s_and_reproducible(dim):
    target = GaussianMixture.gmm40(dim)
    u = torch.rand(K, dim, generator=torch.Generator().manual_seed(0))
    assert torch.equal(target.means, (u - 0.5) * 2 * 40)
    assert torch.equal(GaussianMixture.gmm40(dim).means, target.means)
    assert target.means.shape == (K, dim) and target.means.abs().max() <= 40
    assert target.dim == dim and target.log_Z == 0.0
    torch.testing.assert_close(target.weights, torch.full((K,), 1 / K))
    torch.testing.assert_close(target.scale_tril, SCALE * torch.eye(dim))  # per-coordinate scale softplus(1)
    validate_target(target)


def test_means_are_the_same_numbers_in_float64():
    # torch.manual_seed(0); torch.rand(...) starts 0.4963, 0.7682, 0.0885, 0.1320 (FAB draws in float32).
    expected = (torch.tensor([[0.4962566, 0.7682218], [0.08847743, 0.13203049]]) - 0.5) * 80
    torch.testing.assert_close(GaussianMixture.gmm40(2).means[:2], expected)
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        means64 = GaussianMixture.gmm40(2).means
    finally:
        torch.set_default_dtype(default)
    assert means64.dtype == torch.float64
    assert torch.equal(means64.float(), GaussianMixture.gmm40(2).means)


def test_log_Z_2d_by_grid_quadrature(grid_2d):
    # The Riemann sum of a smooth, fast-decaying density is exponentially accurate: for a Gaussian of standard
    # deviation 1.31 sampled every 0.25 the error is of order exp(-2 pi^2 (1.31 / 0.25)^2), nothing.
    _, step, log_rho, _ = grid_2d
    assert (torch.logsumexp(log_rho, 0) + 2 * math.log(step)).item() == pytest.approx(0.0, abs=1e-8)


def test_log_prob_50d_equals_an_independent_mixture():
    target = float64_gmm40(50)
    reference = MixtureSameFamily(
        Categorical(logits=torch.zeros(K, dtype=torch.float64)),
        Independent(Normal(target.means, SCALE), 1),
    )
    x = torch.cat([target.sample(64), 40 * torch.rand(16, 50, dtype=torch.float64)])  # near the modes and between
    torch.testing.assert_close(target.log_prob(x), reference.log_prob(x))
    # At a mean every other component is >= 126 standard deviations away: log rho = log(1/40) + log N(0; 0, S).
    expected = -math.log(K) - 50 * (math.log(SCALE) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(target.log_prob(target.means), torch.full((K,), expected, dtype=torch.float64))
    torch.testing.assert_close(target.score(x), Target.score(target, x))


def test_exact_samples_cover_all_modes_50d():
    # In 50-d the nearest other mean is >= 126 standard deviations away, so the nearest-mode label of an exact
    # sample is its component (a mislabel needs a 63-sigma excursion) and the counts are multinomial(n, 1/40).
    n = 20_000
    emc = entropic_mode_coverage(GaussianMixture.gmm40(50).sample(n), GaussianMixture.gmm40(50).means)
    assert 1 - emc < emc_sampling_tolerance(n)  # 5.6e-4


def test_exact_samples_cover_all_modes_2d(grid_2d):
    # In 2-d two means are only 0.9 standard deviations apart, so nearest-mode cells do not hold exactly 1/40 each.
    # Their masses p_k come from the quadrature grid; then 1 - EMC(samples) = (1 - H(p) / log K) (the cells'
    # deficit, ~5e-6) + (H(p) - H(p_hat)) / log K, whose linear part has standard deviation sd_k(log p_k) / sqrt(n)
    # (k ~ p) and whose quadratic part is the chi^2 bound of the uniform case.
    target, step, log_rho, nearest = grid_2d
    p = torch.bincount(nearest, weights=log_rho.exp() * step**2, minlength=K)
    cells_deficit = 1 + (p * p.log()).sum().item() / math.log(K)
    linear_sd = math.sqrt((p * (p.log() - (p * p.log()).sum()) ** 2).sum().item())
    n = 20_000
    emc = entropic_mode_coverage(target.sample(n), target.means)
    tolerance = cells_deficit + 5 * linear_sd / math.sqrt(n) / math.log(K) + emc_sampling_tolerance(n)
    assert 1 - emc < tolerance  # ~8e-4


@pytest.mark.parametrize(("dim", "mode"), [(50, 0), (2, 13)])
def test_samples_of_one_component_have_zero_coverage(dim, mode):
    # Mode 13 is the most isolated of the 2-d means: 12.6 standard deviations from the nearest other, so a sample
    # of its component lands in another cell only after a 6.3-sigma excursion (probability 2e-10 each).
    target = GaussianMixture.gmm40(dim)
    x = target.means[mode] + SCALE * torch.randn(5_000, dim)
    assert entropic_mode_coverage(x, target.means) == 0.0


@pytest.mark.parametrize(("name", "dim"), [("gmm40_2d", 2), ("gmm40_50d", 50)])
def test_config_builds_the_target(name, dim):
    target = instantiate(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    assert isinstance(target, GaussianMixture) and target.dim == dim
    assert torch.equal(target.means, GaussianMixture.gmm40(dim).means)


@pytest.mark.parametrize("dim", [0, -2, 2.0, True])
def test_invalid_dim_raises(dim):
    with pytest.raises(ValueError):
        GaussianMixture.gmm40(dim)
