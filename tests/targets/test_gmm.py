import math

import pytest
import torch

from sde_control.target import validate_target
from sde_control.targets import GaussianMixture, Target


def float64_gmm() -> GaussianMixture:
    return GaussianMixture(GaussianMixture().means.double())


def test_default_is_the_nine_mode_grid():
    target = GaussianMixture()
    assert target.dim == 2 and target.log_Z == 0.0
    assert target.means.shape == (9, 2)
    assert set(target.means.flatten().tolist()) == {-5.0, 0.0, 5.0}
    torch.testing.assert_close(target.weights, torch.full((9,), 1 / 9))
    validate_target(target)


def test_log_Z_matches_grid_quadrature():
    # Riemann sum over [-10, 10]^2 (modes at +-5 with std 0.55 leave < e^-40 of the mass outside).
    step = 0.02
    axis = torch.arange(-10.0, 10.0 + step / 2, step, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    log_rho = float64_gmm().log_prob(torch.stack([xx.flatten(), yy.flatten()], dim=1))
    assert (torch.logsumexp(log_rho, 0) + 2 * math.log(step)).item() == pytest.approx(0.0, abs=1e-6)


def test_log_prob_is_the_mixture_formula():
    target = GaussianMixture(torch.tensor([[0.0, 0.0], [2.0, 1.0]]), covariance=torch.tensor([0.5, 2.0]),
                             weights=torch.tensor([1.0, 3.0]))
    x = torch.randn(8, 2)
    scale = torch.tensor([0.5, 2.0]).sqrt()
    components = [torch.distributions.Normal(m, scale).log_prob(x).sum(1) for m in target.means]
    expected = torch.logaddexp(math.log(0.25) + components[0], math.log(0.75) + components[1])
    torch.testing.assert_close(target.log_prob(x), expected)


def test_log_prob_and_score_stable_far_from_the_modes():
    target = GaussianMixture()
    x = torch.tensor([[1e3, 1e3], [-1e3, 5.0], [0.0, -1e3]])
    log_p = target.log_prob(x)
    assert torch.isfinite(log_p).all() and torch.isfinite(target.score(x)).all()
    # Far away the nearest mode dominates: log rho = log(1/9) - log(2 pi 0.3) - |x - mu*|^2 / 0.6.
    nearest = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -5.0]])
    expected = -math.log(9) - math.log(2 * math.pi * 0.3) - ((x - nearest) ** 2).sum(1) / 0.6
    torch.testing.assert_close(log_p, expected, rtol=1e-6, atol=0.0)


def test_samples_sit_on_the_modes_with_the_component_law():
    torch.manual_seed(0)
    n = 90_000
    target = GaussianMixture()
    x = target.sample(n)
    nearest = torch.cdist(x, target.means).argmin(1)
    residual = x - target.means[nearest]  # mis-assignment needs a 4.5-sigma excursion: negligible
    # Residuals are N(0, 0.3 I): mean SE sqrt(0.3 / n), variance SE 0.3 sqrt(2 / n); tolerance 5 SE.
    assert (residual.mean(0).abs() < 5 * math.sqrt(0.3 / n)).all()
    assert ((residual.var(0) - 0.3).abs() < 5 * 0.3 * math.sqrt(2 / n)).all()
    # Each mode holds 1/9 of the samples: binomial SE sqrt(p (1 - p) / n).
    fractions = torch.bincount(nearest, minlength=9) / n
    assert ((fractions - 1 / 9).abs() < 5 * math.sqrt(1 / 9 * 8 / 9 / n)).all()


def test_unequal_weights_are_normalised_and_sampled():
    torch.manual_seed(1)
    target = GaussianMixture(torch.tensor([[-5.0], [5.0]]), covariance=1.0, weights=torch.tensor([2.0, 6.0]))
    torch.testing.assert_close(target.weights, torch.tensor([0.25, 0.75]))
    n = 40_000
    fraction = (target.sample(n) > 0).double().mean().item()
    assert abs(fraction - 0.75) < 5 * math.sqrt(0.75 * 0.25 / n)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"means": torch.zeros(3)},  # not (K, d)
        {"means": torch.zeros(0, 2)},
        {"means": torch.tensor([[0.0, float("nan")]])},
        {"weights": torch.ones(8)},  # wrong length
        {"weights": torch.tensor([-1.0] + [1.0] * 8)},
        {"weights": torch.zeros(9)},
        {"covariance": 0.0},
        {"covariance": torch.ones(3)},
        {"covariance": torch.tensor([[1.0, 2.0], [2.0, 1.0]])},
    ],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        GaussianMixture(**kwargs)


def test_closed_form_score_equals_autograd():
    means = torch.tensor([[-5.0, 0.0], [0.0, 5.0], [5.0, 5.0]], dtype=torch.float64)
    target = GaussianMixture(means, covariance=torch.tensor([0.3, 0.7], dtype=torch.float64))
    x = 4 * torch.randn(64, 2, dtype=torch.float64)
    torch.testing.assert_close(target.score(x), Target.score(target, x))
    far = torch.tensor([[1e3, -1e3]], dtype=torch.float64)
    assert torch.isfinite(target.score(far)).all()
