import math

import pytest
import torch

from sde_control.target import Target, validate_target
from sde_control.targets import Gaussian

MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)
FULL_COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)


def grid_log_integral(target: Target, half_width: float = 7.0, step: float = 0.01) -> float:
    """log of the Riemann sum of rho over [-w, w]^2 (exponentially accurate for a smooth, fast-decaying rho)."""
    axis = torch.arange(-half_width, half_width + step / 2, step, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    log_rho = target.log_prob(torch.stack([xx.flatten(), yy.flatten()], dim=1))
    return (torch.logsumexp(log_rho, 0) + 2 * math.log(step)).item()


@pytest.mark.parametrize("covariance", [0.3, torch.tensor([0.3, 0.6]), FULL_COV])
def test_log_Z_matches_grid_quadrature(covariance):
    target = Gaussian(MEAN, covariance, log_Z=0.7)
    assert target.log_Z == 0.7
    assert grid_log_integral(target) == pytest.approx(0.7, abs=1e-6)


def test_covariance_forms_agree():
    x = torch.randn(5, 2, dtype=torch.float64)
    scalar, vector = Gaussian(MEAN, 0.3), Gaussian(MEAN, torch.full((2,), 0.3))
    matrix = Gaussian(MEAN, 0.3 * torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(scalar.log_prob(x), matrix.log_prob(x))
    torch.testing.assert_close(vector.log_prob(x), matrix.log_prob(x))


def test_sample_moments():
    torch.manual_seed(0)
    n = 100_000
    x = Gaussian(MEAN, FULL_COV).sample(n)
    var = torch.diag(FULL_COV)
    # Standard errors: mean_i sqrt(S_ii / n); covariance S_ij sqrt((S_ii S_jj + S_ij^2) / n). Tolerance 5 of them.
    assert ((x.mean(0) - MEAN).abs() < 5 * (var / n).sqrt()).all()
    cov_se = ((var[:, None] * var[None, :] + FULL_COV**2) / n).sqrt()
    assert ((torch.cov(x.T) - FULL_COV).abs() < 5 * cov_se).all()


def test_closed_form_score_equals_autograd():
    target = Gaussian(MEAN, FULL_COV, log_Z=0.7)
    x = torch.randn(16, 2, dtype=torch.float64)
    torch.testing.assert_close(target.score(x), Target.score(target, x))
    assert torch.isfinite(target.score(target.sample(16))).all()


def test_score_is_differentiable_along_a_graph():
    target = Gaussian(MEAN, FULL_COV)
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(target.score(x).sum(), x)
    # d/dx of -(x - mu)^T P summed over outputs is -P 1 for every row.
    torch.testing.assert_close(grad, -torch.linalg.inv(FULL_COV).sum(1).expand(4, 2))


def test_protocol_and_buffers():
    target = Gaussian(MEAN, FULL_COV)
    validate_target(target)
    assert target.dim == 2 and target.mean.dtype == torch.float64
    assert {"mean", "scale_tril", "precision"} <= set(target.state_dict())
    assert target.to(torch.float32).sample(3).dtype == torch.float32


@pytest.mark.parametrize(
    ("mean", "covariance", "log_Z"),
    [
        (torch.zeros(2, 2), 1.0, 0.0),  # mean not a vector
        (torch.zeros(0), 1.0, 0.0),  # empty mean
        (torch.tensor([0.0, float("nan")]), 1.0, 0.0),
        (torch.zeros(2), -1.0, 0.0),  # negative variance
        (torch.zeros(2), torch.tensor([1.0, 0.0]), 0.0),  # singular
        (torch.zeros(2), torch.ones(3), 0.0),  # wrong shape
        (torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]), 0.0),  # indefinite
        (torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]), 0.0),  # not symmetric
        (torch.zeros(2), 1.0, float("inf")),
    ],
)
def test_invalid_arguments_raise(mean, covariance, log_Z):
    with pytest.raises(ValueError):
        Gaussian(mean, covariance, log_Z)
