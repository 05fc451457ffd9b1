import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue
from scipy.integrate import quad
from scipy.spatial.distance import cdist
from torch.distributions import MultivariateNormal

from sde_control.baselines import SMC
from sde_control.target import validate_target
from sde_control.targets import LGCP

PINES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "pines.csv"
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "target"
pytestmark = pytest.mark.skipif(not PINES.is_file(), reason=f"the pines data is not at {PINES} (../shared/data)")


@pytest.fixture(scope="module")
def lgcp64() -> tuple[LGCP, LGCP]:
    """The benchmark target in float64, unwhitened and whitened."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return LGCP(PINES), LGCP(PINES, whitened=True)
    finally:
        torch.set_default_dtype(default)


def independent_pieces(grid: int = 40) -> tuple[np.ndarray, np.ndarray, float]:
    """Counts (from numpy's 2-d histogram), the covariance (scipy distances) and mu, computed without the target."""
    rows = np.loadtxt(PINES, delimiter=",", skiprows=1, usecols=(1, 2))
    counts, _, _ = np.histogram2d(rows[:, 0], rows[:, 1], bins=grid, range=[[0, 1], [0, 1]])
    i, j = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    cells = np.stack([i.ravel(), j.ravel()], axis=1)
    covariance = 1.91 * np.exp(-cdist(cells, cells) / (grid / 33.0))
    return counts.ravel(), covariance, math.log(126) - 1.91 / 2


def test_data_binned_on_the_grid(lgcp64):
    target, _ = lgcp64
    counts, _, _ = independent_pieces()
    assert target.dim == 1600 and target.grid == 40 and target.num_points == 126
    assert target.counts.shape == (1600,) and target.counts.sum().item() == 126
    np.testing.assert_array_equal(target.counts.numpy(), counts)
    assert target.cell_area == 1 / 1600 and target.mean == pytest.approx(math.log(126) - 1.91 / 2)


def test_log_density_against_an_independent_computation(lgcp64):
    target, whitened = lgcp64
    counts, covariance, mu = independent_pieces()
    prior = MultivariateNormal(torch.full((1600,), mu, dtype=torch.float64), torch.from_numpy(covariance))
    x = prior.sample((4,)) + 0.3 * torch.randn(4, 1600, dtype=torch.float64)
    y = torch.from_numpy(counts)
    expected = prior.log_prob(x) + (x * y - torch.exp(x) / 1600).sum(-1)
    torch.testing.assert_close(target.log_prob(x), expected, rtol=1e-10, atol=1e-8)
    # whitened: log rho_w(e) = log rho(L e + mu) + log |det L| (the same Z)
    e = torch.linalg.solve_triangular(target.scale_tril, (x - mu).T, upper=False).T
    half_log_det = 0.5 * torch.linalg.slogdet(torch.from_numpy(covariance)).logabsdet
    torch.testing.assert_close(whitened.log_prob(e), expected + half_log_det, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("whitened", [False, True])
def test_score_against_autograd(lgcp64, whitened):
    target = lgcp64[whitened]
    x = target.mean * (not whitened) + torch.randn(3, 1600, dtype=torch.float64)
    inner = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(target.log_prob(inner).sum(), inner)  # the rows are independent
    torch.testing.assert_close(target.score(x), expected, rtol=1e-10, atol=1e-9)
    assert target.log_prob(x).shape == (3,) and target.score(x).shape == (3, 1600)


def test_default_dtype_target_follows_the_protocol():
    target = LGCP(PINES)
    validate_target(target)
    assert target.scale_tril.dtype == torch.get_default_dtype() and not target.has_exact_samples
    assert (target.log_Z, target.log_Z_std_error) == (501.77, 0.12)  # benchmarks/reference_log_z.py --target lgcp
    assert LGCP(PINES, whitened=True).log_Z == 501.77  # the same Z


def test_one_cell_log_z_by_quadrature_and_smc():
    # grid = 1: one cell holding all 126 points, a = 1, x ~ N(mu, 1.91): log Z = log int N(x; mu, 1.91) e^{126 x - e^x}
    target = LGCP(PINES, grid=1)
    assert target.dim == 1 and target.counts.tolist() == [126.0] and target.log_Z is None
    mu, var = target.mean, 1.91

    def log_integrand(x):
        return -0.5 * (x - mu) ** 2 / var - 0.5 * math.log(2 * math.pi * var) + 126 * x - math.exp(x)

    peak = log_integrand(math.log(126))  # the likelihood's mode; the integrand's lies close by
    value, _ = quad(lambda x: math.exp(log_integrand(x) - peak), 2.0, 7.0, epsabs=0, epsrel=1e-12)
    log_z = peak + math.log(value)
    x = torch.tensor([[4.0], [4.9]])
    torch.testing.assert_close(target.log_prob(x), torch.tensor([log_integrand(4.0), log_integrand(4.9)]))
    # SMC from the prior's marginal: 6 runs, the error within 5 standard errors of their mean (t, 5 d.o.f.)
    smc = SMC(target, kernel="mala", initial_mean=mu, initial_std=math.sqrt(var))
    estimates = torch.tensor([smc.estimate_log_z(500, 50, seed=s).log_z for s in range(6)])
    assert abs(estimates.mean().item() - log_z) < 5 * estimates.std().item() / math.sqrt(6)
    assert estimates.std() < 0.1


def test_missing_or_malformed_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="sde_sampler"):
        LGCP(tmp_path / "nowhere.csv")
    plain = tmp_path / "plain.csv"
    plain.write_text("0.1,0.2\n0.5,1.0\n")  # two numbers per row, no header: accepted
    assert LGCP(plain, grid=2).counts.tolist() == [1.0, 0.0, 0.0, 1.0]  # (0.5, 1.0) lies on the upper edge
    outside = tmp_path / "outside.csv"
    outside.write_text("0.1,1.2\n")
    with pytest.raises(ValueError, match="unit square"):
        LGCP(outside)
    garbage = tmp_path / "garbage.csv"
    garbage.write_text("a,b\nc,d\n")
    with pytest.raises(ValueError, match="data_x"):
        LGCP(garbage)
    with pytest.raises(ValueError, match="grid"):
        LGCP(PINES, grid=0)


def test_config_needs_the_path():
    config = OmegaConf.load(CONFIGS / "lgcp.yaml")
    with pytest.raises(MissingMandatoryValue):
        instantiate(config)
    target = instantiate(config, path=str(PINES))
    assert isinstance(target, LGCP) and target.dim == 1600 and not target.whitened
