import math

import numpy as np
import pytest
import torch

from sde_control.metrics import (
    SinkhornNotConverged,
    entropic_mode_coverage,
    marginal_std_error,
    mode_fractions,
    sinkhorn_divergence,
    wasserstein2_squared,
)
from sde_control.targets import GaussianMixture

# eps = 1 on clouds of 100 standard normal points: POT's log-domain iterations converge to tol 1e-9 in about
# 100 iterations (0.2 s). At the benchmark setting (eps = 1e-3, 2000 points) they do not converge; see metrics.py.
EPS, N = 1.0, 100


def normal_clouds(seed: int, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)


def test_sinkhorn_of_diracs_is_the_squared_distance():
    x, y = torch.tensor([[1.0, 2.0]]).repeat(10, 1), torch.tensor([[-1.0, 0.5]]).repeat(7, 1)
    assert sinkhorn_divergence(x, y) == pytest.approx(4.0 + 2.25, rel=1e-9)


def test_sinkhorn_of_a_translated_cloud_is_the_squared_shift():
    # C(x_i, x_j + s) = C(x_i, x_j) - 2 s.(x_i - x_j) + |s|^2: the middle term is absorbed by the potentials and
    # averages to zero under any coupling of equal marginals, so S_eps(x, x + s) = |s|^2 at every eps, exactly.
    x, _ = normal_clouds(0)
    shift = torch.tensor([0.3, -0.4], dtype=torch.float64)
    assert sinkhorn_divergence(x, x + shift, eps=EPS) == pytest.approx(0.25, rel=1e-6)


def test_sinkhorn_separates_same_from_shifted_distribution():
    x, y = normal_clouds(1)
    same = sinkhorn_divergence(x, y, eps=EPS)
    shifted = sinkhorn_divergence(x, y + 1.0, eps=EPS)  # population value |(1, 1)|^2 = 2
    assert 0.0 <= same < 0.1 * shifted
    assert shifted == pytest.approx(2.0, abs=0.5)


def test_sinkhorn_is_within_eps_log_n_of_exact_ot():
    x, y = normal_clouds(2)
    assert abs(sinkhorn_divergence(x, y, eps=EPS) - wasserstein2_squared(x, y)) <= EPS * math.log(N)


def test_sinkhorn_raises_when_not_converged():
    torch.manual_seed(0)
    target = GaussianMixture()
    with pytest.raises(SinkhornNotConverged) as info:
        sinkhorn_divergence(target.sample(200), target.sample(200), eps=1e-3, max_iter=20)
    assert math.isfinite(info.value.value) and set(info.value.marginal_errors) == {"xy", "xx", "yy"}


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
