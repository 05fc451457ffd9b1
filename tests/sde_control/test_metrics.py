import math
import warnings

import numpy as np
import ot
import pytest
import torch
from scipy.linalg import sqrtm
from scipy.stats import norm, qmc

from sde_control.metrics import (
    SinkhornNotConverged,
    entropic_mode_coverage,
    entropic_ot_gaussians,
    gaussian_sinkhorn_divergence,
    marginal_std_error,
    mode_fractions,
    sinkhorn,
    sinkhorn_divergence,
    wasserstein2_squared,
)
from sde_control.targets import GaussianMixture

# eps = 1 on clouds of 100 standard normal points: the dual objective settles in a few tens of iterations (0.2 s).
EPS, N = 1.0, 100


def normal_clouds(seed: int, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)


def entropic_ot_from_plan(x: np.ndarray, y: np.ndarray, eps: float) -> float:
    """<P, C> + eps KL(P | a x b) at the plan of POT's epsilon-scaling solver (stabilised kernel iterations, not the
    log-domain ones that sinkhorn uses): a second implementation."""
    cost = ot.dist(x, y)
    a, b = np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its marginal check at tol 1e-12 may not pass; the value has converged
        plan = ot.sinkhorn(a, b, cost, eps, method="sinkhorn_epsilon_scaling", stopThr=1e-12, numItermax=100_000)
    return float((plan * cost).sum() + eps * (plan * np.log(plan / np.outer(a, b))).sum())


def test_sinkhorn_of_diracs_is_the_squared_distance():
    # every coupling of two Diracs costs |x - y|^2 and the product coupling has KL 0; OT(x, x) = 0
    x, y = torch.tensor([[1.0, 2.0]]).repeat(10, 1), torch.tensor([[-1.0, 0.5]]).repeat(7, 1)
    assert sinkhorn_divergence(x, y) == pytest.approx(4.0 + 2.25, rel=1e-9)


@pytest.mark.parametrize("eps", [EPS, 1e-3])
def test_sinkhorn_of_a_translated_cloud_is_the_squared_shift(eps):
    # C(x_i, x_j + s) = C(x_i, x_j) - 2 s.(x_i - x_j) + |s|^2: the middle term averages to zero under any coupling of
    # equal marginals and the entropic term does not see it, so OT_eps(x, x + s) = OT_eps(x, x) + |s|^2 and
    # S_eps(x, x + s) = |s|^2 at every eps, exactly. At eps = 1e-3 the iterations stop 5e-5 short of it (measured:
    # 210 iterations; 1.7e-5 at tol 1e-6, 5.4e-6 at 1e-7), which the error estimate predicts.
    x, _ = normal_clouds(0)
    shift = torch.tensor([0.3, -0.4], dtype=torch.float64)
    result = sinkhorn(x, x + shift, eps=eps)
    assert abs(result.divergence - 0.25) <= 1.5 * result.error_estimate + 1e-7
    assert result.error_estimate < 1e-4


def test_sinkhorn_separates_same_from_shifted_distribution():
    x, y = normal_clouds(1)
    same = sinkhorn_divergence(x, y, eps=EPS)
    shifted = sinkhorn_divergence(x, y + 1.0, eps=EPS)  # population value |(1, 1)|^2 = 2
    assert 0.0 <= same < 0.1 * shifted
    assert shifted == pytest.approx(2.0, abs=0.5)


@pytest.mark.parametrize("eps", [EPS, 1e-3])
def test_sinkhorn_is_within_eps_log_n_of_exact_ot(eps):
    torch.manual_seed(0)
    target = GaussianMixture()
    x, y = target.sample(200).double(), target.sample(200).double()
    result = sinkhorn(x, y, eps=eps)
    assert result.w2_squared == pytest.approx(wasserstein2_squared(x, y), rel=1e-12)
    assert abs(result.divergence - result.w2_squared) <= eps * math.log(200)
    assert result.entropic_ot["xy"] >= result.w2_squared  # each OT_eps lies above W_2^2 ...
    assert result.entropic_ot["xy"] <= result.w2_squared + eps * math.log(200) + 1e-9  # ... by at most eps log n
    assert set(result.iterations) == {"xy", "xx", "yy"} and result.seconds > 0


def test_sinkhorn_agrees_with_a_second_implementation():
    # eps = 0.5, 300 points each: our log-domain iterations from the exact duals against POT's epsilon-scaling
    # solver's plans (measured agreement 5e-8) and, where installed, geomloss (cost |x - y|^2 / 2 on sqrt(2) x, blur
    # sqrt(eps), annealing factor 0.99; measured agreement 1e-5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=g, dtype=torch.float64)
    y = 1.5 * torch.randn(300, 2, generator=g, dtype=torch.float64) + 0.5
    eps = 0.5
    ours = sinkhorn_divergence(x, y, eps=eps, tol=1e-12)
    xs, ys = x.numpy(), y.numpy()
    pot = entropic_ot_from_plan(xs, ys, eps) - 0.5 * (entropic_ot_from_plan(xs, xs, eps) + entropic_ot_from_plan(ys, ys, eps))
    assert ours == pytest.approx(pot, rel=1e-6)
    geomloss = pytest.importorskip("geomloss")
    loss = geomloss.SamplesLoss("sinkhorn", p=2, blur=math.sqrt(eps), scaling=0.99, debias=True, backend="tensorized")
    assert ours == pytest.approx(loss(math.sqrt(2) * x, math.sqrt(2) * y).item(), rel=1e-4)


def test_gaussian_closed_form_limits_and_one_dimensional_case():
    # diagonal covariances: OT_eps is the sum over coordinates of the 1-d optimum over couplings N with correlation c:
    # (m - m')^2 + a + b - 2c - eps/2 log(1 - c^2 / (a b)), minimised at c = (sqrt(eps^2 + 16 a b) - eps) / 4
    def one_dimensional(a, b, m, m_, eps):
        c = (math.sqrt(eps**2 + 16 * a * b) - eps) / 4
        return (m - m_) ** 2 + a + b - 2 * c - eps / 2 * math.log(1 - c**2 / (a * b))

    mx, my, a, b = np.array([0.3, 1.0]), np.array([-0.2, 0.0]), np.array([0.7, 2.0]), np.array([1.5, 0.4])
    expected = sum(one_dimensional(a[k], b[k], mx[k], my[k], 0.8) for k in range(2))
    assert entropic_ot_gaussians(mx, np.diag(a), my, np.diag(b), 0.8) == pytest.approx(expected, rel=1e-12)
    # eps -> 0: the Bures-Wasserstein distance |m - m'|^2 + tr A + tr B - 2 tr (A^1/2 B A^1/2)^1/2
    A, B = np.array([[1.0, 0.3], [0.3, 0.5]]), np.array([[0.6, -0.2], [-0.2, 1.2]])
    root = sqrtm(A).real
    bures = 1.25 + np.trace(A + B) - 2 * np.trace(sqrtm(root @ B @ root).real)
    mx, my = np.zeros(2), np.array([1.0, -0.5])
    assert gaussian_sinkhorn_divergence(mx, A, my, B, 1e-9) == pytest.approx(bures, rel=1e-7)
    assert gaussian_sinkhorn_divergence(mx, A, mx, A, 2.0) == pytest.approx(0.0, abs=1e-12)


def test_sinkhorn_of_gaussian_samples_matches_the_closed_form():
    # Randomised quasi-Monte Carlo Gaussian samples (scrambled Sobol points through the normal quantile), 512 each, so
    # that the empirical measures are close to the Gaussians: over 4 pairs the estimate's error was 0.0035 on
    # average (spread 0.0034; i.i.d. samples spread 0.17 at n = 500). At eps = 2 the divergence (1.5599) lies 0.067
    # below W_2^2 (1.6270): the tolerance 0.02 separates the entropic quantity from the unregularised one.
    A, B = np.array([[1.0, 0.3], [0.3, 0.5]]), np.array([[0.6, -0.2], [-0.2, 1.2]])
    mx, my = np.zeros(2), np.array([1.0, -0.5])

    def gaussian(mean, cov, seed):
        return mean + norm.ppf(qmc.Sobol(2, scramble=True, seed=seed).random(512)) @ np.linalg.cholesky(cov).T

    result = sinkhorn(gaussian(mx, A, 0), gaussian(my, B, 1), eps=2.0)
    exact = gaussian_sinkhorn_divergence(mx, A, my, B, 2.0)
    assert abs(result.divergence - exact) < 0.02
    assert abs(result.divergence - exact) < 0.3 * abs(result.w2_squared - exact)  # nearer the closed form than W_2^2


def test_sinkhorn_raises_when_not_converged():
    torch.manual_seed(0)
    target = GaussianMixture()
    with pytest.raises(SinkhornNotConverged) as info:
        sinkhorn_divergence(target.sample(200), target.sample(200), eps=1e-3, tol=1e-15, max_iter=20)
    assert math.isfinite(info.value.value) and set(info.value.increases) <= {"xy", "xx", "yy"}
    assert info.value.increases


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (torch.zeros(5, 2), torch.zeros(5, 3)),  # dimensions differ
        (torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2)),
        (torch.zeros(5), torch.zeros(5)),  # not (n, d)
        (torch.zeros(0, 2), torch.zeros(3, 2)),
    ],
)
def test_ot_metrics_reject_bad_input(x, y):
    with pytest.raises(ValueError):
        sinkhorn_divergence(x, y)
    with pytest.raises(ValueError):
        sinkhorn_divergence(torch.zeros(3, 2), torch.ones(3, 2), eps=0.0)
    with pytest.raises(ValueError):
        wasserstein2_squared(x, y)


def test_wasserstein_in_1d_is_the_sorted_matching():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 1, generator=g, dtype=torch.float64)
    y = 2 * torch.rand(200, 1, generator=g, dtype=torch.float64)
    expected = ((x.sort(0).values - y.sort(0).values) ** 2).mean().item()
    assert wasserstein2_squared(x, y) == pytest.approx(expected, rel=1e-9)
    assert wasserstein2_squared(x.numpy(), y.numpy()) == pytest.approx(expected, rel=1e-9)


def test_marginal_std_error():
    g = torch.Generator().manual_seed(4)
    reference = torch.randn(1000, 3, generator=g)
    scaled = reference * torch.tensor([1.0, 2.0, 0.5])
    expected = (reference.std(0) * torch.tensor([0.0, 1.0, 0.5])).mean().item()
    assert marginal_std_error(scaled, reference) == pytest.approx(expected, rel=1e-5)
    assert marginal_std_error(reference, reference) == 0.0
    with pytest.raises(ValueError):
        marginal_std_error(reference, reference[:, :2])


def test_mode_fractions_of_exact_gmm_samples():
    torch.manual_seed(0)
    target, n = GaussianMixture(), 45_000
    fractions = mode_fractions(target.sample(n), target.means)
    assert fractions.shape == (9,) and fractions.sum().item() == pytest.approx(1.0)
    assert (fractions - 1 / 9).abs().max() < 5 * math.sqrt(1 / 9 * 8 / 9 / n)  # binomial SE, 5 of them
    assert entropic_mode_coverage(target.sample(n), target.means) > 0.999


def test_entropic_mode_coverage_extremes():
    means = GaussianMixture().means
    assert entropic_mode_coverage(means.repeat(7, 1), means) == pytest.approx(1.0)
    assert entropic_mode_coverage(means[4:5].repeat(50, 1) + 0.1, means) == 0.0
    two_modes = torch.cat([means[:1].repeat(30, 1), means[1:2].repeat(10, 1)])
    p = np.array([0.75, 0.25])
    assert entropic_mode_coverage(two_modes, means) == pytest.approx(-(p * np.log(p)).sum() / math.log(9))
    torch.testing.assert_close(mode_fractions(two_modes, means), torch.tensor([0.75, 0.25] + [0.0] * 7))
    with pytest.raises(ValueError):
        entropic_mode_coverage(means, means[:1])


def test_weighted_mode_fractions():
    means = torch.tensor([[-5.0, 0.0], [5.0, 0.0]])
    samples = torch.tensor([[-4.0, 0.0], [-6.0, 0.0], [-5.0, 1.0], [4.0, 0.0]])
    torch.testing.assert_close(mode_fractions(samples, means), torch.tensor([0.75, 0.25]))
    weights = torch.tensor([1.0, 1.0, 1.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(mode_fractions(samples, means, weights=weights), torch.tensor([0.5, 0.5], dtype=torch.float64))
