import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy.special import log_expit
from scipy.stats import multivariate_normal

from sde_control.target import validate_target
from sde_control.targets import BayesianLogisticRegression, Target

sklearn_datasets = pytest.importorskip("sklearn.datasets")

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "target"


@pytest.fixture(scope="module")
def target64() -> BayesianLogisticRegression:
    """The target built in float64 (data standardised in float64 and kept so)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return BayesianLogisticRegression()
    finally:
        torch.set_default_dtype(default)


@pytest.fixture(scope="module")
def laplace(target64):
    return target64.laplace()


def numpy_log_rho(w: np.ndarray) -> np.ndarray:
    """log N(w; 0, I) + sum_i [y_i log sigmoid(x_i.w) + (1 - y_i) log sigmoid(-x_i.w)], from scikit-learn's data
    with scipy: an implementation independent of the target's."""
    data = sklearn_datasets.load_breast_cancer()
    features = (data.data - data.data.mean(0)) / data.data.std(0)
    design = np.hstack([np.ones((len(features), 1)), features])
    logits = w @ design.T
    y = data.target
    log_lik = (y * log_expit(logits) + (1 - y) * log_expit(-logits)).sum(-1)
    return multivariate_normal(np.zeros(31), np.eye(31)).logpdf(w) + log_lik


def test_design_matrix_and_protocol(target64):
    assert target64.dim == 31 and target64.num_data == 569
    x = target64.features
    assert torch.equal(x[:, 0], torch.ones(569, dtype=torch.float64))  # the intercept column comes first
    torch.testing.assert_close(x[:, 1:].mean(0), torch.zeros(30, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(x[:, 1:].var(0, unbiased=False), torch.ones(30, dtype=torch.float64))
    assert set(target64.labels.tolist()) == {0.0, 1.0}
    assert not target64.has_exact_samples
    with pytest.raises(NotImplementedError):
        target64.sample(10)
    validate_target(BayesianLogisticRegression())  # the default-dtype (float32) target too


def test_log_prob_equals_an_independent_scipy_computation(target64):
    w = np.random.default_rng(0).normal(size=(6, 31)) * np.array([[0.1], [0.5], [1.0], [2.0], [5.0], [20.0]])
    expected = numpy_log_rho(w)
    np.testing.assert_allclose(target64.log_prob(torch.from_numpy(w)).numpy(), expected, rtol=1e-12)
    # float32 target: relative error at the level of float32 rounding of 569 summed terms
    actual32 = BayesianLogisticRegression().log_prob(torch.from_numpy(w).float()).double().numpy()
    np.testing.assert_allclose(actual32, expected, rtol=1e-5)


def test_log_prob_and_score_are_finite_far_out(target64):
    w = 1e3 * torch.randn(16, 31, dtype=torch.float64)  # logits of order 1e4: softplus, not log(sigmoid)
    assert torch.isfinite(target64.log_prob(w)).all() and torch.isfinite(target64.score(w)).all()
    w32 = 1e3 * torch.randn(16, 31)
    target = BayesianLogisticRegression()
    assert torch.isfinite(target.log_prob(w32)).all() and torch.isfinite(target.score(w32)).all()


def test_closed_form_score_equals_autograd(target64):
    w = torch.randn(32, 31, dtype=torch.float64) * torch.logspace(-1, 1, 32, dtype=torch.float64)[:, None]
    torch.testing.assert_close(target64.score(w), Target.score(target64, w))


def test_laplace_mode_and_hessian(target64, laplace):
    mode, covariance = laplace
    assert target64.score(mode[None]).abs().max() < 1e-9  # a stationary point; log rho is strictly concave
    hessian = torch.autograd.functional.hessian(lambda w: target64.log_prob(w[None])[0], mode)
    torch.testing.assert_close(target64.neg_hessian(mode), -hessian)
    torch.testing.assert_close(covariance @ target64.neg_hessian(mode), torch.eye(31, dtype=torch.float64))


def test_stored_log_Z_agrees_with_a_quick_importance_sampling_estimate(target64, laplace):
    # Proposal: multivariate t, 10 degrees of freedom, at the mode with 1.5^2 times the Laplace covariance (one of
    # the reference run's cross-checks, with far fewer draws). rho <= N(w; 0, I) has Gaussian tails and q
    # polynomial ones, so rho / q is bounded and the delta-method standard error sqrt(var(w) / n) / mean(w) is
    # valid (the reference run measures a Pareto tail shape below 0.5 for this proposal: the variance estimate is
    # trustworthy). Tolerance: 5 standard errors, the stored value's own added in quadrature.
    assert math.isfinite(target64.log_Z) and 0 < target64.log_Z_std_error < 0.01
    mode, covariance = laplace
    df, n, d = 10.0, 40_000, 31
    scale_tril = 1.5 * torch.linalg.cholesky(covariance)
    z = torch.randn(n, d, dtype=torch.float64)
    chi2 = torch.distributions.Chi2(torch.tensor(df, dtype=torch.float64)).sample((n,))
    x = mode + (z @ scale_tril.T) / torch.sqrt(chi2 / df)[:, None]
    log_q = (
        math.lgamma((df + d) / 2) - math.lgamma(df / 2) - d / 2 * math.log(df * math.pi)
        - scale_tril.diagonal().log().sum()
        - (df + d) / 2 * torch.log1p(z.square().sum(1) / chi2)  # (x - m)^T S^{-1} (x - m) / df = |z|^2 / chi2
    )
    log_w = target64.log_prob(x) - log_q
    w = torch.exp(log_w - log_w.max())
    estimate = (torch.logsumexp(log_w, 0) - math.log(n)).item()
    std_error = (w.std() / math.sqrt(n) / w.mean()).item()
    assert std_error < 0.1  # the check has power
    assert abs(estimate - target64.log_Z) < 5 * math.hypot(std_error, target64.log_Z_std_error)


def test_config_builds_the_target():
    target = instantiate(OmegaConf.load(CONFIGS / "logistic_breast_cancer.yaml"))
    assert isinstance(target, BayesianLogisticRegression) and target.dim == 31


def test_unknown_dataset_raises():
    with pytest.raises(ValueError, match="unknown dataset"):
        BayesianLogisticRegression("iris_typo")


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `from sklearn import ...` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "sde-control\[data\]"'):
        BayesianLogisticRegression()
