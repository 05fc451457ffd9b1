"""CRPS-sum and CRPS against gluonts' own evaluator; the energy score against closed forms."""

import json
import math
from pathlib import Path

import pytest
import torch

from sde_control.generative.timeseries import QUANTILES, crps, crps_sum, energy_score
from sde_control.generative.timeseries.metrics import sample_quantile_index

FIXTURE = json.loads((Path(__file__).resolve().parent / "gluonts_fixture.json").read_text())
f64 = dict(dtype=torch.float64)


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: f"S={len(c['samples'][0])}")
def test_crps_sum_and_crps_match_gluonts_multivariate_evaluator(case):
    samples, target = torch.tensor(case["samples"], **f64), torch.tensor(case["target"], **f64)
    assert FIXTURE["quantiles"] == pytest.approx(QUANTILES, abs=0)
    assert crps_sum(samples, target) == pytest.approx(case["m_sum_mean_wQuantileLoss"], abs=1e-6, rel=1e-6)
    assert crps(samples, target) == pytest.approx(case["mean_wQuantileLoss"], abs=1e-6, rel=1e-6)


def test_sample_quantile_index_rounds_halves_to_even_like_numpy():
    assert sample_quantile_index(10, 0.5) == 4  # 4.5 -> 4
    assert sample_quantile_index(7, 0.25) == 2 and sample_quantile_index(7, 0.75) == 4  # 1.5 -> 2, 4.5 -> 4
    assert [sample_quantile_index(100, q) for q in (0.05, 0.5, 0.95)] == [5, 50, 94]  # 4.95, 49.5, 94.05


def test_windows_are_pooled_not_averaged():
    """sum of quantile losses over windows / sum of |target|, which differs from the mean of per-window scores."""
    generator = torch.Generator().manual_seed(0)
    target = torch.tensor([[[1.0, 2.0]], [[100.0, 50.0]]], **f64)  # (B=2, P=1, D=2), windows of different size
    spread = torch.tensor([1.0, 20.0], **f64)[:, None, None, None]
    samples = target[:, None] + spread * torch.randn(2, 50, 1, 2, generator=generator, **f64)
    pooled = crps_sum(samples, target)
    per_window = [crps_sum(samples[b:b + 1], target[b:b + 1]) for b in range(2)]
    weights = target.sum(-1).abs().flatten()
    assert pooled == pytest.approx(float((torch.tensor(per_window, **f64) * weights).sum() / weights.sum()), rel=1e-12)
    assert pooled != pytest.approx(sum(per_window) / 2, rel=1e-2)


def test_a_point_forecast_scores_its_normalised_absolute_error():
    """All samples at c: QL_q = 2 |y - c| (1 - q) or 2 |y - c| q, whose mean over the symmetric levels is |y - c|."""
    target = torch.tensor([[[1.0, -2.0], [3.0, 0.5]]], **f64)
    point = target + torch.tensor([[[0.3, -0.1], [-1.0, 0.2]]], **f64)
    samples = point[:, None].expand(1, 5, 2, 2)
    assert crps(samples, target) == pytest.approx(float((point - target).abs().sum() / target.abs().sum()))
    assert crps_sum(samples, target) == pytest.approx(
        float((point.sum(-1) - target.sum(-1)).abs().sum() / target.sum(-1).abs().sum()))
    assert crps(target[:, None].expand(1, 5, 2, 2), target) == 0.0


def gaussian_crps(mu, s, y):
    """CRPS of N(mu, s^2) at y: s [z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)], z = (y - mu) / s."""
    z = (y - mu) / s
    normal = torch.distributions.Normal(0.0, 1.0)
    return s * (z * (2 * normal.cdf(z) - 1) + 2 * normal.log_prob(z).exp() - 1 / math.sqrt(math.pi))


def test_energy_score_of_a_one_dimensional_gaussian_is_its_crps():
    """2000 windows, each with its own outcome, scored from 100 samples of N(0.5, 1.5^2). The estimator is unbiased,
    so the per-window errors have mean 0; 4 standard errors of their mean bound it (a false alarm about 1 in 16000)."""
    generator = torch.Generator().manual_seed(1)
    B, S, mu, s = 2000, 100, 0.5, 1.5
    y = mu + 3 * torch.randn(B, generator=generator, **f64)
    samples = mu + s * torch.randn(B, S, 1, 1, generator=generator, **f64)
    errors = energy_score(samples, y[:, None, None], reduction="none") - gaussian_crps(mu, s, y)
    assert abs(errors.mean()) < 4 * errors.std() / math.sqrt(B)
    assert energy_score(samples, y[:, None, None]) == pytest.approx(float(gaussian_crps(mu, s, y).mean()),
                                                                     abs=float(4 * errors.std() / math.sqrt(B)))


def test_energy_score_of_an_isotropic_gaussian_window_at_its_mean():
    """X ~ N(mu, s^2 I_d), y = mu: |X - y| = s chi_d and |X - X'| = sqrt(2) s chi_d, so
    ES = s m_d (1 - 1/sqrt 2) with m_d = E chi_d = sqrt(2) Gamma((d + 1)/2) / Gamma(d/2). Window P x D = 3 x 2."""
    generator = torch.Generator().manual_seed(2)
    B, S, P, D, s = 1000, 50, 3, 2, 0.7
    mu = torch.randn(B, P, D, generator=generator, **f64)
    samples = mu[:, None] + s * torch.randn(B, S, P, D, generator=generator, **f64)
    d = P * D
    m_d = math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))
    scores = energy_score(samples, mu, reduction="none")
    expected = s * m_d * (1 - 1 / math.sqrt(2))
    assert abs(scores.mean() - expected) < 4 * scores.std() / math.sqrt(B)  # same 4-standard-error rule


def test_bad_forecasts_fail_with_clear_messages():
    samples, target = torch.randn(2, 10, 3, 4), torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"\(B, S, P, D\)"):
        crps_sum(samples[0], target)
    with pytest.raises(ValueError, match="target must have shape"):
        crps(samples, target[:, :2])
    bad = samples.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        crps_sum(bad, target)
    with pytest.raises(ValueError, match="zero everywhere"):
        crps(samples, torch.zeros_like(target))
    with pytest.raises(ValueError, match="at least 2 samples"):
        energy_score(samples[:, :1], target)
