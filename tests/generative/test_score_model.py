"""ScoreModel: construction checks, generation from the process's own prior (the exact score recovers the data law
under VP, VE, CLD and auxiliary-variable diffusions), every sampler through one entry point with honest NFE, the
prior KL, the bound in bits per dimension, image data, persistence and conditions."""

import math

import pytest
import torch
from torch import nn

from sde_control.generative import ALDA, CLD, MALDA, VE, VP, AuxiliaryVariableSDE, ScoreModel, VSDMForward, data
from sde_control.generative.augmented import augmented_gaussian, conditional_cholesky
from sde_control.generative.score_matching import gaussian_marginal, gaussian_score
from sde_control.sdes import blockwise

f64 = dict(dtype=torch.float64)
MU = torch.tensor([0.5, -0.5], **f64)
COV = data.anisotropic_gaussian_covariance((1.0, 2.0), 30.0)  # variances 1 and 4 along rotated axes


def learned_auxiliary():
    sde = AuxiliaryVariableSDE(3, beta_min=0.1, beta_max=10.0)
    with torch.no_grad():
        sde.W.copy_(torch.tensor([[0.3, -0.8, 0.2], [0.1, 0.2, -0.4], [0.5, 0.0, 0.1]], **f64))
        sde.d.copy_(torch.tensor([1.0, 0.5, 1.5], **f64))
    return sde


class ExactNoise(nn.Module):
    """``eps*(u, t) = -L_t^T grad log p_t(u)`` for data N(MU, COV): the exact score as a noise-prediction network."""

    def __init__(self, sde):
        super().__init__()
        self.sde, self.score = sde, gaussian_score(sde, MU, COV)
        self.unused = nn.Parameter(torch.zeros(()))  # a trainer needs one parameter

    def forward(self, u, t):
        t = torch.as_tensor(t, **f64)
        t = t.reshape(-1)[0] if bool((t == t.reshape(-1)[0]).all()) else t  # one time for the batch: one transition
        _, chol = conditional_cholesky(self.sde, t)
        return -blockwise(chol.transpose(-1, -2), self.score(u.double(), t)).to(u.dtype)


def test_construction_is_checked():
    assert ScoreModel(2, CLD()).state_dim == 4 and ScoreModel(2, MALDA()).state_dim == 6  # data plus velocities
    assert ScoreModel(4, VSDMForward(2)).state_dim == 4  # a 2 x 2 drift on 2 blocks of 2 channels
    with pytest.raises(ValueError, match="which cannot act on data of dimension 3"):
        ScoreModel(3, VSDMForward(2))
    with pytest.raises(ValueError, match="t_min must lie"):
        ScoreModel(2, t_min=0.0)
    with pytest.raises(ValueError, match="dim must be a positive int"):
        ScoreModel(0)
    with pytest.raises(ValueError, match="ALDA with beta from 0.1 needs t_min >= 0.03"):
        ScoreModel(2, ALDA())
    ScoreModel(2, ALDA(), t_min=0.05)


@pytest.mark.parametrize("sde", [VP(0.1, 20.0), VE(0.01, 50.0), CLD(), MALDA(), learned_auxiliary()],
                         ids=["vp", "ve", "cld", "malda", "learned-auxiliary"])
def test_the_exact_score_recovers_the_data_law_from_the_process_prior(sde):
    """Samples start from the process's own prior (VE: N(0, (50^2 - 0.01^2) I); CLD: N(0, diag(1, m)) on position
    and velocity; the auxiliary diffusions: N(0, I) on every block) and follow the exact score of N(MU, COV) by gDDIM
    (order 3, 50 steps: within 1 % of RK45 at rtol 1e-5 here). The mean is within 5 standard errors plus 0.03 and
    every covariance entry within 5 standard errors plus 3 % of the largest (what the prior misses of the law at T:
    at most 0.02 in the mean, for VE; the time discretisation; the law at t_min is COV + O(t_min)). With the old
    N(0, I) start, VE's samples had variances of order 1e-3."""
    model = ScoreModel(2, sde, network=ExactNoise(sde))
    n = 3000
    m0, C0 = augmented_gaussian(sde, MU, COV)
    cov_end = gaussian_marginal(sde, torch.tensor(model.t_min, **f64), m0, C0)[1][:2, :2]
    se_mean = (cov_end.diagonal() / n).sqrt()
    se_cov = ((cov_end.diagonal()[:, None] * cov_end.diagonal()[None, :] + cov_end**2) / n).sqrt()
    x = model.sample(n, steps=50, method="gddim", order=3, seed=0).double()
    assert ((x.mean(0) - MU).abs() < 5 * se_mean + 0.03).all(), x.mean(0)
    assert ((x.T.cov() - cov_end).abs() < 5 * se_cov + 0.03 * cov_end.abs().max()).all(), x.T.cov()


def test_the_prior_is_the_process_own():
    """Without training (eps_hat = 0, score 0) the first state of every path is a draw of the prior."""
    n = 20_000
    for sde, variance in ((VE(0.01, 50.0), 2500.0 - 1e-4), (CLD(), 1.0), (VP(), 1.0)):
        _, paths = ScoreModel(2, sde, width=8, depth=2).sample(n, steps=2, return_paths=True, seed=1)
        # the sample variance of n normal draws has relative standard error sqrt(2 / n) = 0.01
        assert paths[0].var(0).double().div(variance).sub(1).abs().max() < 0.05


def test_every_sampler_counts_its_evaluations():
    model = ScoreModel(2, CLD(), width=16, depth=2)
    cases = [(dict(method="em"), 7), (dict(method="ode"), 7), (dict(method="ode", solver="heun"), 14),
             (dict(method="gddim"), 7), (dict(method="gddim", order=3), 7), (dict(method="gddim", corrector=True), 14),
             (dict(method="gddim", lam=1.0), 7)]
    for options, nfe in cases:
        samples, paths = model.sample(30, steps=7, return_paths=True, seed=2, **options)
        assert samples.shape == (30, 2) and paths.shape == (8, 30, 2), options
        torch.testing.assert_close(paths[-1], samples)
        assert model.last_nfe == nfe, options
    model.sample(30, steps=3, method="ode", solver="rk45", rtol=1e-3, atol=1e-3)
    assert model.last_nfe >= 6 and model.last_nfe % 6 == 2  # RK45: 6 evaluations per attempted step, plus 2 to start
    torch.testing.assert_close(model.sample(30, steps=7, method="em", seed=2),
                               model.sample(30, steps=7, method="em", seed=2))
    torch.testing.assert_close(model.sample(30, steps=7, method="gddim", lam=0.5, seed=2),
                               model.sample(30, steps=7, method="gddim", lam=0.5, seed=2))


@pytest.mark.parametrize("options, message", [
    (dict(n=0), "positive int"), (dict(method="rk4"), r"method must be one of \('em', 'ode', 'gddim'\)"),
    (dict(method="sde"), "'sde' is now 'em'"),
    (dict(method="em", solver="heun"), "takes solver in"), (dict(method="ode", order=2), "gDDIM's options"),
    (dict(grid="cosine"), "grid must be one of"), (dict(method="gddim", order=4), "order must be 1, 2 or 3"),
])
def test_bad_sampling_options_are_named(options, message):
    model = ScoreModel(2, width=8, depth=2)
    with pytest.raises(ValueError, match=message):
        model.sample(**{"n": 5, "steps": 3, **options})


def test_prior_kl_is_the_gaussian_kl_of_the_terminal_moments():
    model = ScoreModel(2, VP(0.1, 10.0))
    x = data.anisotropic_gaussian(200_000, std=(1.0, 16.0), angle=0.0)
    decay = math.exp(-(0.1 + 9.9 / 2))  # Psi_T^2 for VP: exp(-int beta)
    variances = [1.0 * decay + 1 - decay, 256.0 * decay + 1 - decay]
    expected = sum(0.5 * (v - 1 - math.log(v)) for v in variances)
    assert model.prior_kl(x) == pytest.approx(expected, rel=0.02)
    assert model.prior_kl(torch.randn(200_000, 2)) < 1e-3  # N(0, I) data stays N(0, I) under VP
    # CLD at T = 1 (beta = 4) has forgotten the data's moments; standard data keeps a small KL in the velocity block.
    assert ScoreModel(2, CLD()).prior_kl(torch.randn(200_000, 2)) < 0.01


def test_bits_per_dim_of_the_exact_score_on_gaussian_data():
    """With the exact score of N(MU, COV) the bound per dimension, averaged over data, is the entropy of the data
    plus the prior and decoder mismatches (tests/generative/test_likelihood.py), about 0.002 nats here: its mean in
    bits/dim lies within 4 standard errors of H / (2 ln 2) + mismatch."""
    sde = VP(0.1, 10.0)
    model = ScoreModel(2, sde, network=ExactNoise(sde))
    x = (MU + torch.randn(3000, 2, **f64) @ torch.linalg.cholesky(COV).T).float()
    estimate = model.bits_per_dim(x, seed=0)
    entropy = 0.5 * float(torch.logdet(2 * math.pi * math.e * COV))
    expected = (entropy + model.prior_kl(x)) / (2 * math.log(2))
    assert estimate.per_sample.shape == (3000,)
    assert abs(estimate.mean - expected) < 4 * estimate.standard_error + 0.005, (estimate.mean, expected)
    assert estimate.standard_error == pytest.approx(float(estimate.per_sample.std()) / math.sqrt(3000))
    again = model.bits_per_dim(x, seed=0)
    assert again.mean == estimate.mean  # the seed fixes every draw


def test_images_carry_their_transform_into_bits_per_dim_and_the_checkpoint(tmp_path):
    digits = data.digits("train")
    model = ScoreModel(64, width=16, depth=2)
    model.fit(digits, iterations=3, batch_size=32, progress=False, checkpoint=tmp_path / "digits.pt")
    assert model.data_transform == digits.transform and model.data_transform.levels == 17
    held_out = data.digits("held_out")
    levels = held_out.images[:40].flatten(1)
    estimate = model.bits_per_dim(levels, seed=0)
    # bits/dim of the levels = (nll(y) - 64 log(2 / 17)) / (64 ln 2): the transform's log2(17 / 2) = 3.09 bits
    torch.manual_seed(0)
    y = digits.transform.to_model(levels)
    nats = model.negative_elbo(y).double()
    torch.testing.assert_close(estimate.per_sample, (nats - 64 * math.log(2 / 17)) / (64 * math.log(2)))
    loaded = ScoreModel.load(tmp_path / "digits.pt")
    assert loaded.data_transform == digits.transform
    assert loaded.bits_per_dim(held_out, seed=1).per_sample.shape == (len(held_out),)
    with pytest.raises(ValueError, match="integer levels"):
        model.bits_per_dim(y)
    with pytest.raises(ValueError, match="give it an image data set"):
        model.fit(torch.randn(100, 64), iterations=1)


def test_save_load_and_a_finished_checkpoint_is_not_retrained(tmp_path):
    x = data.moons(1000)
    model = ScoreModel(2, CLD(), width=16, depth=2)
    model.fit(x, iterations=6, batch_size=64, progress=False, checkpoint=tmp_path / "m.pt", checkpoint_every=2)
    loaded = ScoreModel.load(tmp_path / "m.pt")
    assert loaded.trainer.iteration == 6 and isinstance(loaded.sde, CLD)
    torch.testing.assert_close(loaded.sample(20, steps=4, seed=0), model.sample(20, steps=4, seed=0))
    with pytest.warns(UserWarning, match="nothing to train"):
        loaded.fit(x, iterations=6, batch_size=64, progress=False, checkpoint=tmp_path / "m.pt")
    assert loaded.trainer.iteration == 6


def test_the_elbo_objective_trains_and_falls():
    x = data.moons(2000)
    model = ScoreModel(2, width=32, depth=2)
    history = model.fit(x, iterations=150, batch_size=256, lr=3e-3, progress=False, objective="elbo")
    first, last = (sum(r["loss"] for r in part) / len(part) for part in (history[:20], history[-20:]))
    assert last < first - 1.0, (first, last)  # nats per dimension; untrained the bound is about 4 nats higher
    with pytest.raises(ValueError, match="objective must be one of"):
        model.fit(x, iterations=1, objective="kl")


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
