import math

import pytest
import torch

from sde_control.baselines import SMC, _adaptive_increment, _conditional_ess, _systematic_resample
from sde_control.estimators import LogZEstimate
from sde_control.metrics import mode_fractions
from sde_control.target import Target, TargetError
from sde_control.targets import Gaussian, GaussianMixture

RUNS = 6  # independent runs per configuration: the standard error of their mean comes from their spread
# |mean - log Z| < 5 s.e.: with 6 runs the studentised error has a t distribution with 5 degrees of freedom, which
# exceeds 5 with probability 0.004 (the seeds are fixed, so each case passes or fails deterministically).
T_BOUND = 5.0


def rotation(dim: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)))
    return q


def anisotropic_gaussian(dim: int) -> Gaussian:
    """N(m, Q diag(lambda) Q^T) with eigenvalues from 0.4 to 1.6 in a random basis, |m| ~ 0.3 per coordinate and a
    free log Z; the eigenvalues stay below 2 so that the importance weights from N(0, I) have finite variance."""
    eigenvalues = torch.linspace(0.4, 1.6, dim)
    q = rotation(dim, dim)
    mean = 0.3 * torch.cos(torch.arange(dim, dtype=torch.float32))
    return Gaussian(mean, q @ torch.diag(eigenvalues) @ q.T, log_Z=1.3)


def runs(smc: SMC, particles: int, temperatures, **kwargs) -> torch.Tensor:
    return torch.tensor([smc.estimate_log_z(particles, temperatures, seed=s, **kwargs).log_z for s in range(RUNS)])


@pytest.mark.parametrize("dim", [2, 10])
@pytest.mark.parametrize("kernel", ["mala", "hmc"])
@pytest.mark.parametrize("temperatures", [1, 10, 100, None])
def test_log_z_of_anisotropic_gaussians_at_any_number_of_temperatures(dim, kernel, temperatures):
    if kernel == "hmc" and temperatures == 1:
        pytest.skip("one temperature is plain importance sampling: no kernel runs")
    target = anisotropic_gaussian(dim)
    estimates = runs(SMC(target, kernel=kernel, leapfrog_steps=3), 300, temperatures)
    std_error = estimates.std().item() / math.sqrt(RUNS)
    assert abs(estimates.mean().item() - target.log_Z) < T_BOUND * std_error
    assert estimates.std() < 0.25  # the check has power: one run's error is small


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_diagonal_preconditioning_on_a_badly_scaled_gaussian(kernel):
    # standard deviations 0.1, 1 and 10: the weighted particle spread sets the per-coordinate step
    target = Gaussian([0.0, 1.0, -3.0], torch.tensor([0.1, 1.0, 10.0]) ** 2, log_Z=-0.4)
    smc = SMC(target, kernel=kernel, leapfrog_steps=3, preconditioning="diagonal",
              initial_std=torch.tensor([1.0, 1.0, 10.0]))
    estimates = runs(smc, 500, 20)
    assert abs(estimates.mean().item() - target.log_Z) < T_BOUND * estimates.std().item() / math.sqrt(RUNS)
    assert estimates.std() < 0.1


def test_gmm_log_z_and_mode_weights():
    # From N(0, 5^2 I) (covering the modes at {-5, 0, 5}^2); 2000 particles, 30 temperatures, MALA. Dropping a mode
    # would cost log(9/8) = 0.118 (CONVENTIONS section 5); the weighted particles put 1/9 on each mode, up to the
    # resampling noise of 2000 particles (binomial s.e. 0.007).
    target = GaussianMixture()
    result = SMC(target, kernel="mala", initial_std=5.0).run(2000, 30, seed=0)
    assert abs(result.estimate.log_z - target.log_Z) < math.log(9 / 8)
    fractions = mode_fractions(result.particles, target.means, weights=torch.softmax(result.log_weights, 0))
    assert (fractions - 1 / 9).abs().max() < 0.04


class Truncated(Target):
    """N(0, I_2) restricted to x_1 > 0 (log rho = -inf elsewhere): Z = 1/2."""

    dim = 2
    log_Z = math.log(0.5)

    def log_prob(self, x):
        log_normal = -0.5 * x.square().sum(-1) - math.log(2 * math.pi)
        return torch.where(x[:, 0] > 0, log_normal, -math.inf)


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_zero_density_regions_get_zero_weight(kernel):
    target = Truncated()
    estimates = runs(SMC(target, kernel=kernel), 500, 10)
    assert abs(estimates.mean().item() - target.log_Z) < T_BOUND * estimates.std().item() / math.sqrt(RUNS)
    result = SMC(target, kernel=kernel).run(500, 10, seed=0)
    zero_density = result.particles[:, 0] <= 0  # any left there by the last reweighting have weight zero
    assert (result.log_weights[zero_density] == -math.inf).all()
    assert (result.log_weights > -math.inf).sum() > 200  # about half: those drawn where x_1 > 0


class CountingGaussian(Gaussian):
    """Counts the points at which log rho is computed (the score, closed form, is computed at the same points)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.points = 0

    def log_prob(self, x):
        self.points += x.shape[0]
        return super().log_prob(x)


class CountingAutogradTarget(Target):
    """A Gaussian without a closed-form score (autograd), counting its log-density points."""

    dim = 3
    log_Z = 0.0

    def __init__(self):
        super().__init__()
        self.points = 0

    def log_prob(self, x):
        self.points += x.shape[0]
        return -0.5 * x.square().sum(-1) - 1.5 * math.log(2 * math.pi)


@pytest.mark.parametrize("make_target", [lambda: CountingGaussian([0.5, 0.0], 0.7), CountingAutogradTarget])
@pytest.mark.parametrize(("kernel", "moves", "per_move"), [("mala", 3, 1), ("hmc", 2, 4)])
@pytest.mark.parametrize("temperatures", [1, 5, None])
def test_evaluations_follow_the_formula(make_target, kernel, moves, per_move, temperatures):
    # N at beta = 0, then per temperature below 1: moves x (1 for MALA, the leapfrog steps for HMC) x N
    target = make_target()
    smc = SMC(target, kernel=kernel, moves=moves, leapfrog_steps=per_move)
    target.points = 0  # validate_target's probe is not part of the run
    result = smc.run(100, temperatures, seed=1)
    expected = 100 * (1 + (len(result.betas) - 1) * moves * per_move)
    assert result.estimate.evaluations == expected == target.points
    assert len(result.acceptance) == (len(result.betas) - 1) * moves


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_step_size_adapts_toward_the_target_acceptance(kernel):
    target = anisotropic_gaussian(2)
    smc = SMC(target, kernel=kernel, step_size=5.0, leapfrog_steps=5)  # far too large a start
    result = smc.run(1000, 100, seed=0)
    late = torch.tensor(result.acceptance[50:])
    assert abs(late.mean().item() - smc.target_acceptance) < 0.05
    assert result.step_sizes[-1] < 2.5 and result.acceptance[0] < 0.2


def test_estimate_fields_and_dtypes():
    target = anisotropic_gaussian(2)
    result = SMC(target).run(200, None, seed=0)
    estimate = result.estimate
    assert isinstance(estimate, LogZEstimate)
    assert estimate.elbo is None and estimate.n == 200 and estimate.log_z_exact == target.log_Z
    assert 0 < estimate.ess <= 1 and estimate.evaluations > 0 and estimate.error is not None
    assert result.log_weights.dtype == torch.float64
    assert torch.logsumexp(result.log_weights, 0).item() == pytest.approx(0.0, abs=1e-12)
    assert result.particles.dtype == torch.float32 and result.particles.shape == (200, 2)
    betas = torch.tensor(result.betas)
    assert betas[-1] == 1.0 and (betas.diff() > 0).all()
    assert SMC(target).estimate_log_z(200, None, seed=0).log_z == estimate.log_z  # seeded runs repeat exactly


def test_adaptive_increment_hits_the_conditional_ess():
    g = torch.Generator().manual_seed(0)
    log_w = torch.log_softmax(torch.randn(500, generator=g, dtype=torch.float64), 0)
    log_ratio = 30 * torch.randn(500, generator=g, dtype=torch.float64)
    delta = _adaptive_increment(log_w, log_ratio, 1.0, 0.7)
    assert 0 < delta < 1
    assert _conditional_ess(log_w, delta * log_ratio) == pytest.approx(0.7, rel=1e-9)
    assert _adaptive_increment(log_w, 1e-6 * log_ratio, 1.0, 0.7) == 1.0  # flat increments: straight to the end


def test_systematic_resampling_counts():
    # systematic resampling gives particle i either floor(N W_i) or ceil(N W_i) copies
    g = torch.Generator().manual_seed(0)
    log_w = torch.log_softmax(2 * torch.randn(1000, generator=g, dtype=torch.float64), 0)
    counts = torch.bincount(_systematic_resample(log_w, g), minlength=1000)
    expected = 1000 * log_w.exp()
    assert counts.sum() == 1000
    assert ((counts >= expected.floor()) & (counts <= expected.ceil())).all()


class NaNTarget(Target):
    dim = 2

    def log_prob(self, x):
        return torch.where(x[:, 0] > 1.5, float("nan"), -0.5 * x.square().sum(-1))


class Nowhere(Target):
    dim = 2

    def log_prob(self, x):
        return torch.full((x.shape[0],), -math.inf) + 0 * x.sum(-1)


class BadScore(Target):
    dim = 2

    def log_prob(self, x):
        return -0.5 * x.square().sum(-1)

    def score(self, x):
        return torch.where(x[:, :1] > 1.0, float("inf"), -x)


def test_bad_targets_raise_target_errors():
    with pytest.raises(TargetError, match="NaN|nan"):
        SMC(NaNTarget()).run(500, 10, seed=0)
    with pytest.raises(TargetError, match="-inf at every"):
        SMC(Nowhere()).run(100, 5, seed=0)
    with pytest.raises(TargetError, match="non-finite score"):
        SMC(BadScore()).run(500, 5, seed=0)
    with pytest.raises(TargetError):
        SMC(object())  # not a Target


@pytest.mark.parametrize(
    ("options", "run_options"),
    [
        ({"kernel": "nuts"}, {}),
        ({"preconditioning": "full"}, {}),
        ({"moves": 0}, {}),
        ({"leapfrog_steps": 1.5}, {}),
        ({"step_size": -0.1}, {}),
        ({"target_acceptance": 1.0}, {}),
        ({"resample_threshold": 1.5}, {}),
        ({"initial_std": -1.0}, {}),
        ({"initial_mean": torch.zeros(3)}, {}),
        ({}, {"particles": 1}),
        ({}, {"temperatures": 0}),
        ({}, {"temperatures": [0.5]}),
        ({}, {"temperatures": [0.5, 0.3, 1.0]}),
        ({}, {"temperatures": None, "target_cess": 1.0}),
    ],
)
def test_bad_options_raise_value_errors(options, run_options):
    target = anisotropic_gaussian(2)
    with pytest.raises(ValueError):
        SMC(target, **options).run(**{"particles": 50, "temperatures": 3, **run_options})
