"""The conditional diffusion forecaster: layout, units, scaling, what it learns, one forward process for training
and sampling, persistence and bad input."""

import pytest
import torch
from torch import nn

from sde_control.checkpoints import CheckpointError
from sde_control.generative.score_matching import gaussian_marginal
from sde_control.generative.timeseries import Forecaster, ForecastTraining, WindowScaling
from sde_control.generative.timeseries.forecaster import from_state, to_state
from sde_control.sdes import VP, blockwise
from sde_control.training import Trainer

TINY = dict(hidden_size=8, lstm_layers=1, channels=8, residual_blocks=2, cond_channels=2, time_features=8)
QUICK = dict(stages=2, paths=8, path_steps=4, forward_iterations=2, progress=False)


def random_walks(T=300, D=3, level=50.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return level + torch.randn(T, D, generator=g).cumsum(0)


def test_state_layout_is_series_major_so_blocks_are_series():
    """Entry d P + p of a state is step p of series d: a D x D matrix acting blockwise mixes the series at every
    step alike (what VSDM's A_t does), and from_state inverts to_state."""
    window = torch.randn(5, 4, 3)  # (B, P, D)
    state = to_state(window)
    assert state[2, 1 * 4 + 3] == window[2, 3, 1]
    torch.testing.assert_close(from_state(state, 4), window)
    A = torch.randn(3, 3)
    torch.testing.assert_close(blockwise(A, state), to_state(window @ A.T))


def test_forecasts_have_the_api_shape_and_come_back_in_the_original_units():
    """Scaling a data set by 1000 scales the mean scale and the last value by 1000 and leaves the model's units
    unchanged, so the same seeds train the same network and the forecasts are 1000 times the others."""
    x = random_walks()
    forecasts = []
    for factor in (1.0, 1000.0):
        torch.manual_seed(0)
        model = Forecaster(3, context_length=6, prediction_length=4, **TINY)
        model.fit(factor * x, iterations=4, batch_size=16, **QUICK)
        forecasts.append(model.forecast(factor * x[None, -10:], num_samples=7, steps=5, seed=1))
    assert forecasts[0].shape == (1, 7, 4, 3) and forecasts[0].dtype == torch.float32
    torch.testing.assert_close(forecasts[1], 1000.0 * forecasts[0], rtol=1e-4, atol=0)
    assert float(forecasts[0].median()) > 20  # around the level (about 60), not in the model's units (about 0)


@pytest.mark.parametrize("scaling", ["context", "train"])
def test_scaling_never_reads_the_window_being_forecast(scaling):
    """The frame (last value, scale) and the context in model units depend on the context alone: replacing the
    future by anything changes only the future's image, by the affine map the context fixed; the context keeps its
    level (it is not taken relative to its last value)."""
    x = random_walks()
    scaling_map = WindowScaling(scaling, relative=True)
    model = Forecaster(3, 6, 4, scaling=scaling, **TINY)
    model.fit(x, iterations=2, batch_size=8, **QUICK)
    scaling_map.load_state_dict(model.scaling.state_dict())
    context, future = x[None, 100:106], x[None, 106:110]
    y_context, y_future, (r, s) = scaling_map.to_model(context, future)
    y_context_2, y_future_2, (r2, s2) = scaling_map.to_model(context, 100 * future - 7)
    torch.testing.assert_close(y_context_2, y_context)
    torch.testing.assert_close(y_context, (context / s - scaling_map.context_loc) / scaling_map.context_spread)
    assert torch.equal(r2, r) and torch.equal(s2, s)
    torch.testing.assert_close(y_future_2, ((100 * future - 7 - r) / s - scaling_map.loc) / scaling_map.spread)
    torch.testing.assert_close(scaling_map.to_data(y_future[:, None], (r, s))[:, 0], future)
    expected_scale = context.abs().mean(1, keepdim=True) if scaling == "context" else x.abs().mean(0)
    torch.testing.assert_close(s, expected_scale.expand_as(s))


def test_vp_is_vsdm_stage_zero_with_vp_transitions():
    """process="vp" runs VSDM's loop with the forward update off: its transitions are VP(0.1, 10)'s exactly and
    its drift matrix stays 0."""
    model = Forecaster(3, 6, 4, process="vp", **TINY)
    t = torch.tensor([1e-3, 0.3, 1.0], dtype=torch.float64)
    psi, sigma = model.sde.transition_matrices(torch.zeros_like(t), t)
    a, gamma = VP(0.1, 10.0).transition(torch.zeros_like(t), t)
    torch.testing.assert_close(psi[:, 0, 0], a, atol=1e-12, rtol=0)
    torch.testing.assert_close(sigma[:, 0, 0], gamma, atol=1e-12, rtol=0)
    model.fit(random_walks(), iterations=4, batch_size=8, **QUICK)
    assert model.training_config.forward_iterations == 0 and model.sde.K == 1
    assert float(model.sde.weight.abs().max()) == 0.0
    vsdm = Forecaster(3, 6, 4, process="vsdm", **TINY)
    assert vsdm.sde.K == 3 and vsdm.model.dim == 12  # a 3 x 3 A_t on 3 blocks of 4 steps


class ExactNoise(nn.Module):
    """The noise prediction of the exact conditional score of windows ``N(mu(c), S)`` under ``sde``, with ``mu(c)``
    the last context row repeated over the window: ``eps = -L_t^T s`` (``s = -L_t^{-T} eps`` inverted)."""

    def __init__(self, sde, cov, prediction_length):
        super().__init__()
        self.sde, self.cov, self.P = sde, cov, prediction_length

    def forward(self, x, t, context):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(())
        mean0 = to_state(context[:, -1:].expand(-1, self.P, -1)).double()
        with torch.no_grad():
            psi, sigma = self.sde.transition_matrices(torch.zeros(()), t)
            _, cov_t = gaussian_marginal(self.sde, t, torch.zeros(self.cov.shape[0], dtype=torch.float64), self.cov)
        score = -torch.linalg.solve(cov_t, (x.double() - blockwise(psi, mean0)).T).T
        return -blockwise(torch.linalg.cholesky(sigma).transpose(-1, -2), score).to(x.dtype)


def identity_scaled(process, **kwargs):
    """A forecaster whose model units are the original ones (unit scale, no shift), so forecasts are the score
    model's samples."""
    model = Forecaster(2, 2, 3, process=process, scaling="train", relative=False, **TINY, **kwargs)
    zero, one = torch.zeros(2), torch.ones(2)
    unit = {"loc": zero, "spread": one, "context_loc": zero, "context_spread": one}
    model.scaling.load_state_dict({"train_scale": torch.ones(2), **unit})
    return model


def test_vsdm_samples_with_the_forward_process_its_score_belongs_to():
    """One forward process for training and sampling. With the exact conditional score of Gaussian windows under a
    VSDM forward process with a non-zero A_t, forecasts recover the windows' law N(mu(c), S) for every context;
    the same score integrated under another forward process (plain VP, as the VSDM paper's time-series code does
    after training on VP) does not.

    Tolerances: 4000 samples per context, so the standard errors are at most sqrt(2.8 / 4000) = 0.026 for a mean
    and 0.063 for a covariance entry (variances up to 2.8); the bounds are four of them for the largest of the 12
    means and 42 covariance entries. The mismatched sampler's covariance error is above 0.5."""
    g = torch.Generator().manual_seed(0)
    L = torch.randn(6, 6, generator=g, dtype=torch.float64) / 2
    cov = L @ L.T + 0.3 * torch.eye(6, dtype=torch.float64)
    context = torch.tensor([[[0.0, 0.0], [1.0, -2.0]], [[0.0, 0.0], [-3.0, 0.5]]])  # mu: (1, -2) and (-3, 0.5)
    model = identity_scaled("vsdm")
    weights = torch.tensor([[[-0.3, 0.4], [-0.2, -0.5]], [[-0.4, -0.5], [0.3, -0.2]], [[-0.6, 0.3], [0.0, -0.3]]],
                           dtype=torch.float64)  # contracting more than VP: Psi_T ~ 0.01, so N(0, I) is X_T's law
    with torch.no_grad():
        model.model.forward_trainer.module.weight.copy_(weights)
        model.sde.weight.copy_(weights)  # the averaged forward process, the one the model samples with
    exact = ExactNoise(model.sde, cov, 3)
    model.model.trainer = Trainer(exact, ema_decay=None)
    mismatched = identity_scaled("vsdm")  # A = 0: plain VP
    mismatched.model.trainer = Trainer(exact, ema_decay=None)

    def errors(forecaster):
        samples = to_state(forecaster.forecast(context, num_samples=4000, steps=200, seed=0)).double()
        mean0 = to_state(context[:, -1:].expand(-1, 3, -1)).double()
        mean_error = (samples.mean(1) - mean0).abs().max()
        cov_error = max((s.T.cov() - cov).abs().max() for s in samples)
        return float(mean_error), float(cov_error)

    mean_error, cov_error = errors(model)
    assert mean_error < 0.1 and cov_error < 0.25
    _, wrong = errors(mismatched)
    assert wrong > 0.5


def var1(T, seed):
    """``x_t = mu + A (x_{t-1} - mu) + 0.3 e_t``: a stable VAR(1) around mu = (4, 2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(T, 2)
    x[0] = MU
    for t in range(1, T):
        x[t] = MU + A_VAR @ (x[t - 1] - MU) + 0.3 * torch.randn(2, generator=g)
    return x


MU, A_VAR = torch.tensor([4.0, 2.0]), torch.tensor([[0.7, 0.25], [-0.3, 0.5]])


def test_a_forecaster_learns_the_one_step_law_of_a_var1():
    """Trained on a VAR(1) series, the forecast of the next step given a context has the known conditional mean
    ``mu + A (x_n - mu)`` and standard deviation 0.3 (scaled by the training range, so that the level relative to
    ``mu`` is visible in the context; with each context's own mean scale it would not be).

    On 30 held-out contexts with 500 samples each, the Monte Carlo error of a forecast mean is 0.3 / sqrt(500) =
    0.013; the known means differ from the last values by 0.167 in root mean square and from ``mu`` by 0.244, so the
    bound 0.07 on the forecast means' error asks the model to have learned most of the dependence (measured: 0.047
    after 500 steps, 0.032 after 800)."""
    torch.manual_seed(0)
    model = Forecaster(2, 3, 1, scaling="train", relative=True, hidden_size=16, lstm_layers=1, channels=16,
                       residual_blocks=2, cond_channels=4, time_features=16)
    model.fit(var1(4000, seed=0), iterations=600, batch_size=128, stages=1, progress=False)
    held_out = var1(400, seed=1)
    starts = torch.arange(10, 400, 13)[:30]
    context = torch.stack([held_out[s - 3:s] for s in starts])
    known = MU + (context[:, -1] - MU) @ A_VAR.T
    samples = model.forecast(context, num_samples=500, steps=50, seed=0)[:, :, 0]  # (30, 500, 2)
    error = (samples.mean(1) - known).square().mean().sqrt()
    last_value_error = (context[:, -1] - known).square().mean().sqrt()
    assert error < 0.07 < 0.5 * last_value_error
    assert 0.24 < float(samples.std(1).mean()) < 0.36


def test_save_load_and_resume(tmp_path):
    x = random_walks()
    path = tmp_path / "forecaster.pt"
    torch.manual_seed(0)
    model = Forecaster(3, 6, 4, process="vsdm", **TINY)
    model.fit(x, iterations=4, batch_size=8, checkpoint=path, **QUICK)
    loaded = Forecaster.load(path)
    assert isinstance(loaded, Forecaster) and isinstance(loaded.training_config, ForecastTraining)
    assert loaded.process == "vsdm" and loaded.dim == 3 and len(loaded.model.stages) == 2
    context = x[None, -6:]
    forecast = model.forecast(context, 5, steps=3, seed=0)
    torch.testing.assert_close(loaded.forecast(context, 5, steps=3, seed=0), forecast)
    torch.testing.assert_close(loaded.sde.weight, model.sde.weight)

    again = Forecaster(3, 6, 4, process="vsdm", **TINY)  # the same run again: finished, so loaded as it is
    again.fit(x, iterations=4, batch_size=8, checkpoint=path, **QUICK)
    assert again.model.trainer.iteration == 4
    torch.testing.assert_close(again.forecast(context, 5, steps=3, seed=0), forecast)
    longer = Forecaster(3, 6, 4, process="vsdm", **TINY)
    longer.fit(x, iterations=8, batch_size=8, checkpoint=path, **{**QUICK, "stages": 4})  # two more stages
    assert [r["stage"] for r in longer.model.stages] == [1, 2, 3, 4] and longer.model.trainer.iteration == 8
    with pytest.raises(CheckpointError, match="batch_size: 8 in the file, 16 now"):
        Forecaster(3, 6, 4, process="vsdm", **TINY).fit(x, iterations=8, batch_size=16, checkpoint=path,
                                                         **{**QUICK, "stages": 4})
    with pytest.raises(CheckpointError, match="process: 'vsdm' in the file, 'vp' now"):
        Forecaster(3, 6, 4, process="vp", **TINY).fit(x, iterations=8, batch_size=8, checkpoint=path,
                                                       **{**QUICK, "stages": 4})


def test_a_list_of_series_gives_windows_from_each():
    short, long = random_walks(T=12, seed=1), random_walks(T=40, seed=2)
    model = Forecaster(3, 6, 4, **TINY)
    model.fit([short, long.numpy()], iterations=2, batch_size=8, **QUICK)
    assert model.model.trainer.iteration == 2


@pytest.mark.parametrize("series, message", [
    (torch.cat([random_walks(T=50), torch.full((1, 3), float("nan")), random_walks(T=50)]),
     r"NaN or infinite entries in 1 of 101 rows \(rows 50\)"),
    (random_walks(T=5), "context_length 6 is longer than the series"),
    (random_walks(T=8), "the series has 8 steps, fewer than context_length \\+ prediction_length = 6 \\+ 4"),
    (random_walks(D=2), "series has 2 series \\(columns\\) but 3 were expected"),
    (torch.zeros(20), r"must have shape \(T, D\)"),
])
def test_bad_training_series_fail_with_clear_messages(series, message):
    with pytest.raises(ValueError, match=message):
        Forecaster(3, 6, 4, **TINY).fit(series, iterations=2, batch_size=8, **QUICK)


def test_bad_forecast_input_and_options_fail_with_clear_messages():
    model = Forecaster(3, 6, 4, **TINY)
    with pytest.raises(RuntimeError, match="must be fit"):
        model.forecast(torch.zeros(1, 6, 3))
    model.fit(random_walks(), iterations=2, batch_size=8, **QUICK)
    with pytest.raises(ValueError, match=r"shape \(B, C, D\) with D = 3 series .* got \(2, 6, 4\)"):
        model.forecast(torch.zeros(2, 6, 4))
    with pytest.raises(ValueError, match=r"one window: context\[None\]"):
        model.forecast(torch.zeros(6, 3))
    with pytest.raises(ValueError, match="context has 5 steps, fewer than the context_length 6"):
        model.forecast(torch.zeros(2, 5, 3))
    nan = torch.zeros(2, 6, 3)
    nan[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite entries \(windows \[1\]\)"):
        model.forecast(nan)
    assert model.forecast(torch.ones(2, 9, 3), 3, steps=2).shape == (2, 3, 4, 3)  # a longer context: its tail
    with pytest.raises(ValueError, match=r"method must be one of \('em', 'ode', 'gddim'\).*'sde' is now 'em'"):
        model.forecast(torch.ones(2, 6, 3), 3, steps=2, method="sde")
    with pytest.raises(ValueError, match="process must be one of"):
        Forecaster(3, 6, 4, process="ddpm")
    with pytest.raises(ValueError, match="context_length must be a positive int"):
        Forecaster(3, 0, 4)
    with pytest.raises(TypeError, match="unknown training option"):
        model.fit(random_walks(), iterations=2, batch_size=8, stagez=2)
