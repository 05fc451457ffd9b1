import math

import pytest
import torch
from scipy import stats
from torch.distributions import Normal

from sde_control.target import validate_target
from sde_control.targets import Funnel, Target


def test_log_prob_is_the_funnel_formula():
    target = Funnel(dim=10)
    x = torch.randn(64, 10, dtype=torch.float64) * 2
    expected = Normal(0.0, 3.0).log_prob(x[:, 0]) + Normal(0.0, torch.exp(x[:, :1] / 2)).log_prob(x[:, 1:]).sum(1)
    torch.testing.assert_close(target.log_prob(x), expected)


def test_log_Z_by_importance_sampling():
    # Proposal q: x1 ~ N(0, 3.6^2), x_i | x1 ~ N(0, 1.5 exp(x1)). Both factors are wider than the target's, so
    # w = rho / q <= 1.2 * 1.5^(9/2) is bounded and its sample mean estimates Z = 1 with a trustworthy SE.
    torch.manual_seed(0)
    n, target = 200_000, Funnel(dim=10)
    x1_law = Normal(torch.tensor(0.0, dtype=torch.float64), 3.6)
    x1 = x1_law.sample((n, 1))
    rest_law = Normal(0.0, torch.sqrt(1.5 * torch.exp(x1)).expand(n, 9))
    rest = rest_law.sample()
    log_q = x1_law.log_prob(x1[:, 0]) + rest_law.log_prob(rest).sum(1)
    w = torch.exp(target.log_prob(torch.cat([x1, rest], dim=1)) - log_q)
    se = (w.std() / math.sqrt(n)).item()
    assert se < 0.01  # the check has power
    assert abs(w.mean().item() - math.exp(target.log_Z)) < 5 * se


def test_samples_have_the_funnel_law():
    torch.manual_seed(0)
    n = 50_000
    x = Funnel(dim=10).sample(n).double()
    x1 = x[:, 0]
    # x1 ~ N(0, 9): mean SE 3 / sqrt(n), variance SE 9 sqrt(2 / n); tolerance 5 SE. (Variance 1 would fail.)
    assert abs(x1.mean().item()) < 5 * 3 / math.sqrt(n)
    assert abs(x1.var().item() - 9.0) < 5 * 9 * math.sqrt(2 / n)
    # E[x_i^2] = E[exp(x1)] is heavy-tailed; instead x_i / exp(x1 / 2) must be standard normal, independent of x1.
    z = x[:, 1:] / torch.exp(x1 / 2)[:, None]
    assert stats.kstest(z.flatten().numpy(), "norm").pvalue > 1e-3
    assert abs(torch.corrcoef(torch.stack([x1, z[:, 0] ** 2]))[0, 1].item()) < 5 / math.sqrt(n)


def test_score_is_finite():
    torch.manual_seed(0)
    target = Funnel(dim=10)
    validate_target(target)
    x = target.sample(1000)
    assert torch.isfinite(target.score(x)).all()


@pytest.mark.parametrize("kwargs", [{"dim": 1}, {"dim": 2.5}, {"scale": 0.0}, {"scale": -3.0}, {"scale": math.inf}])
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        Funnel(**kwargs)


def test_closed_form_score_equals_autograd():
    target = Funnel(dim=5)
    x = torch.randn(64, 5, dtype=torch.float64) * torch.tensor([3.0, 1, 1, 1, 1], dtype=torch.float64)
    torch.testing.assert_close(target.score(x), Target.score(target, x))
