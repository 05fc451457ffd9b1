"""The baselines: shapes and units, the bootstrap's support, VAR coefficient recovery, bad input."""

import numpy as np
import pytest
import torch

from sde_control.generative.timeseries import GaussianVAR, NaiveBootstrap

A_TRUE = np.array([[0.5, 0.2], [-0.3, 0.4]])
C_TRUE = np.array([1.0, 2.0])
SIGMA_TRUE = np.array([[1.0, 0.3], [0.3, 0.5]])


def simulate_var1(T=5000, seed=0):
    """x_t = c + A x_{t-1} + e_t, e_t ~ N(0, Sigma), started at the stationary mean, 200 burn-in steps dropped."""
    rng = np.random.default_rng(seed)
    x = np.linalg.solve(np.eye(2) - A_TRUE, C_TRUE)
    noise = rng.multivariate_normal(np.zeros(2), SIGMA_TRUE, size=T + 200)
    rows = []
    for e in noise:
        x = C_TRUE + A_TRUE @ x + e
        rows.append(x)
    return np.array(rows[200:])


def original_units(model):
    """The fitted coefficients and noise covariance in the data's units: the model works on y / s (s the training
    scales), where x_t = c + A x_{t-1} + e becomes y_t = S^-1 c + S^-1 A S y_{t-1} + S^-1 e."""
    s = model.scaler.train_scale.double().numpy()
    return s[:, None] * model.coefs[0] / s[None, :], s[:, None] * model.sigma * s[None, :]


@pytest.mark.parametrize("ridge", [False, True], ids=["statsmodels VAR by AIC", "ridge VAR(1)"])
def test_var_recovers_a_known_var1(ridge):
    """5000 steps: the least-squares coefficients have standard errors sqrt(Sigma_ii [Gamma^-1]_jj / T) of 0.01 to
    0.02 here, so 0.06 is three or more standard errors; Sigma's entries have errors near 0.02. The ridge penalty
    1e-4 n Var biases A by about 1e-4 relative, far below that."""
    series = torch.as_tensor(simulate_var1())
    model = (GaussianVAR(5, ridge_above=1, ridge=1e-4) if ridge else GaussianVAR(5, max_lags=5)).fit(series)
    assert model.order == 1
    A, sigma = original_units(model)
    assert np.abs(A - A_TRUE).max() < 0.06
    assert np.abs(sigma - SIGMA_TRUE).max() < 0.06


def test_var_forecast_mean_follows_the_fitted_recursion():
    """One step ahead the paths are N(c + A x_n, Sigma) of the fitted model (in its scaled units, times the scales):
    the mean of 4000 paths lies within 4 standard errors sqrt(Sigma_ii / 4000) of c + A x_n."""
    series = torch.as_tensor(simulate_var1())
    model = GaussianVAR(3, max_lags=5).fit(series[:-10])
    context = series[None, -10:]
    paths = model.forecast(context, num_samples=4000, seed=0).double()
    s = model.scaler.train_scale.double().numpy()
    expected = s * (model.intercept + model.coefs[0] @ (context[0, -1].numpy() / s))
    standard_error = s * np.sqrt(np.diag(model.sigma) / 4000)
    assert np.all(np.abs(paths[0, :, 0].mean(0).numpy() - expected) < 4 * standard_error)


@pytest.mark.parametrize("make", [lambda: NaiveBootstrap(4), lambda: GaussianVAR(4, max_lags=3)], ids=["naive", "var"])
def test_shapes_seeds_and_units(make):
    generator = torch.Generator().manual_seed(0)
    series = torch.randn(300, 3, generator=generator).cumsum(0) + 50
    model = make().fit(series)
    context = torch.stack([series[-20:], series[-40:-20]])
    paths = model.forecast(context, num_samples=30, seed=1)
    assert paths.shape == (2, 30, 4, 3) and paths.dtype == torch.float32
    assert torch.equal(paths, model.forecast(context, num_samples=30, seed=1))
    assert not torch.equal(paths, model.forecast(context, num_samples=30, seed=2))
    # Forecasts are in the data's units: refit on the series times 1000, same seed, paths times 1000.
    scaled = make().fit(series * 1000).forecast(context * 1000, num_samples=30, seed=1)
    assert torch.allclose(scaled, paths * 1000, rtol=1e-4)


def test_naive_bootstrap_steps_are_training_changes():
    """Changes of the training range are whole rows (+1, -1) or (-1, +1): every path moves by one of them per step."""
    steps = np.where(np.arange(100) % 3 == 0, 1.0, -1.0)
    series = torch.as_tensor(np.stack([steps, -steps], axis=1).cumsum(0) + 10)
    model = NaiveBootstrap(5).fit(series)
    paths = model.forecast(series[None, -8:], num_samples=200, seed=0).double()
    moves = torch.diff(torch.cat([series[-1:].expand(200, 1, 2), paths[0]], dim=1), dim=1)
    assert torch.allclose(moves.abs(), torch.ones_like(moves), atol=1e-5)
    assert torch.allclose(moves[..., 0], -moves[..., 1], atol=1e-5)


def test_bad_input_fails_with_clear_messages():
    series = torch.randn(200, 3).cumsum(0)
    with pytest.raises(RuntimeError, match="must be fit"):
        NaiveBootstrap(4).forecast(series[None, -10:])
    model = GaussianVAR(4, max_lags=3).fit(series)
    with pytest.raises(ValueError, match=r"D = 3"):
        model.forecast(torch.randn(2, 10, 4))
    with pytest.raises(ValueError, match="needs at least"):
        model.forecast(series[None, -model.order + 1:] if model.order > 1 else series[None, :0])
    bad = series.clone()
    bad[17] = float("nan")
    with pytest.raises(ValueError, match="rows 17"):
        NaiveBootstrap(4).fit(bad)
    with pytest.raises(ValueError, match="one series"):
        GaussianVAR(4).fit([series, series])
    with pytest.raises(ValueError, match="same number of columns"):
        NaiveBootstrap(4).fit([series, series[:, :2]])
