"""ScoreModel: construction checks, sampling output, the prior KL, persistence and resumption."""

import math

import pytest
import torch
from torch import nn

from sde_control.generative import ScoreModel, VSDMForward, data
from sde_control.sdes import VP

f64 = dict(dtype=torch.float64)


def test_construction_is_checked():
    with pytest.raises(ValueError, match="2 x 2 blocks, which cannot act on data of dimension 3"):
        ScoreModel(3, VSDMForward(2))
    with pytest.raises(ValueError, match="t_min must lie"):
        ScoreModel(2, t_min=0.0)
    with pytest.raises(ValueError, match="dim must be a positive int"):
        ScoreModel(0)


def test_sample_shapes_and_seeds():
    model = ScoreModel(2, width=16, depth=2)
    samples, paths = model.sample(30, steps=7, return_paths=True, seed=2)
    assert samples.shape == (30, 2) and paths.shape == (8, 30, 2)
    torch.testing.assert_close(paths[-1], samples)
    torch.testing.assert_close(model.sample(30, steps=7, method="sde", seed=2), model.sample(30, steps=7, method="sde", seed=2))
    with pytest.raises(ValueError, match="positive int"):
        model.sample(0)
    with pytest.raises(ValueError, match="method must be one of"):
        model.sample(5, method="flow")


def test_prior_kl_is_the_gaussian_kl_of_the_terminal_moments():
    model = ScoreModel(2, VP(0.1, 10.0))
    x = data.anisotropic_gaussian(200_000, std=(1.0, 16.0), angle=0.0)
    decay = math.exp(-(0.1 + 9.9 / 2))  # Psi_T^2 for VP: exp(-int beta)
    variances = [1.0 * decay + 1 - decay, 256.0 * decay + 1 - decay]
    expected = sum(0.5 * (v - 1 - math.log(v)) for v in variances)
    assert model.prior_kl(x) == pytest.approx(expected, rel=0.02)
    assert model.prior_kl(torch.randn(200_000, 2)) < 1e-3  # N(0, I) data stays N(0, I) under VP


def test_save_load_and_a_finished_checkpoint_is_not_retrained(tmp_path):
    x = data.moons(1000)
    model = ScoreModel(2, width=16, depth=2)
    model.fit(x, iterations=6, batch_size=64, progress=False, checkpoint=tmp_path / "m.pt", checkpoint_every=2)
    loaded = ScoreModel.load(tmp_path / "m.pt")
    assert loaded.trainer.iteration == 6 and isinstance(loaded.sde, VP)
    torch.testing.assert_close(loaded.sample(20, steps=4, seed=0), model.sample(20, steps=4, seed=0))
    with pytest.warns(UserWarning, match="nothing to train"):
        loaded.fit(x, iterations=6, batch_size=64, progress=False, checkpoint=tmp_path / "m.pt")
    assert loaded.trainer.iteration == 6


class ConditionalMLP(nn.Module):
    """``eps(x, t, c)``: an MLP on the state, the time and the condition (zero last layer)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x, t, condition):
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        return self.net(torch.cat([x, t[:, None], condition], dim=1))


class ShiftedPairs:
    """Batches of ``x0 = c + 0.1 z`` with the condition ``c = +-2`` (a BatchSource)."""

    def sample(self, batch_size):
        c = 4.0 * torch.randint(0, 2, (batch_size, 1)).float() - 2.0
        return c + 0.1 * torch.randn(batch_size, 1), c


def test_a_conditional_model_learns_the_law_given_its_condition():
    """Trained on x0 = c + 0.1 z through a BatchSource, samples given c = +2 and c = -2 sit at +2 and -2: their mean
    is within 0.2 of c (the data's spread is 0.1; the tolerance allows for the short training)."""
    torch.manual_seed(0)
    model = ScoreModel(1, network=ConditionalMLP())
    model.fit(ShiftedPairs(), iterations=600, batch_size=256, lr=3e-3, progress=False)
    for c in (2.0, -2.0):
        samples = model.sample(500, steps=40, seed=1, condition=torch.full((500, 1), c))
        assert abs(float(samples.mean()) - c) < 0.2
    with pytest.raises(ValueError, match="one row per sample"):
        model.sample(10, steps=4, condition=torch.zeros(3, 1))
