"""Closed-form transitions of the linear SDEs against simulation and against each other."""

import math

import pytest
import torch

from sde_control.sdes import VE, VP, ScaledBrownian, ScheduledLinearSDE, SubVP

f64 = dict(dtype=torch.float64)


def euler_maruyama_moments(sde, t0, t1, y0, n=50_000, steps=500):
    """Mean and variance of Y_t1 | Y_t0 = y0 from a fine Euler-Maruyama simulation."""
    y = torch.full((n,), y0, **f64)
    ts = torch.linspace(t0, t1, steps + 1, **f64)
    for a, b in zip(ts[:-1], ts[1:]):
        y = y + sde.f(a) * y * (b - a) + sde.g(a) * (b - a).sqrt() * torch.randn(n, **f64)
    return y.mean(), y.var()


@pytest.mark.parametrize("sde", [VP(), VP(0.1, 20.0), VP().time_flipped(), ScaledBrownian(), SubVP(), VE(0.1, 5.0)])
def test_transition_matches_simulation(sde):
    t0, t1, y0 = 0.2 * sde.T, 0.7 * sde.T, 1.5
    a, gamma = sde.transition(torch.tensor(t0, **f64), torch.tensor(t1, **f64))
    n = 50_000
    mean, var = euler_maruyama_moments(sde, t0, t1, y0, n=n)
    # Five standard errors: sqrt(gamma / n) for the mean, sqrt(2 / n) relative for the variance;
    # the Euler bias (step 1e-3 T, beta h < 0.02) is an order of magnitude below that.
    assert mean == pytest.approx(float(a) * y0, abs=5 * math.sqrt(float(gamma) / n))
    assert var == pytest.approx(float(gamma), rel=5 * math.sqrt(2 / n))


def test_vp_closed_form():
    vp = VP(0.1, 10.0, 1.0)
    a, gamma = vp.transition(torch.tensor(0.0, **f64), torch.tensor(1.0, **f64))
    integral = 0.1 + (10.0 - 0.1) / 2  # int_0^1 beta
    assert float(a) == pytest.approx(math.exp(-integral / 2))
    assert float(gamma) == pytest.approx(1 - math.exp(-integral))
    assert float(vp.beta(torch.tensor(0.0))) == pytest.approx(0.1)
    assert float(vp.beta(torch.tensor(1.0))) == pytest.approx(10.0)


def test_transitions_compose():
    """Chapman-Kolmogorov: 0 -> 0.3 -> 0.8 equals 0 -> 0.8."""
    for sde in (VP(), VP().time_flipped(), ScaledBrownian(0.2, 5.0), SubVP(), VE()):
        t = [torch.tensor(v * sde.T, **f64) for v in (0.0, 0.3, 0.8)]
        a1, g1 = sde.transition(t[0], t[1])
        a2, g2 = sde.transition(t[1], t[2])
        a, g = sde.transition(t[0], t[2])
        assert float(a1 * a2) == pytest.approx(float(a))
        assert float(a2**2 * g1 + g2) == pytest.approx(float(g))


def test_vp_is_variance_preserving_and_flip_reads_backwards():
    vp = VP()
    _, var = vp.marginal(torch.linspace(0, 1, 11, **f64), var0=1.0)
    torch.testing.assert_close(var, torch.ones(11, **f64))
    flipped = vp.time_flipped()
    t = torch.linspace(0, 1, 7, **f64)
    torch.testing.assert_close(flipped.beta(t), vp.beta(1 - t))


def test_marginal_of_brownian_from_origin():
    mean, var = ScaledBrownian(0.2, 5.0).marginal(torch.tensor(5.0), mean0=0.0, var0=0.0)
    assert float(var) == pytest.approx(1.0)
    assert float(mean) == 0.0


def test_invalid_parameters():
    with pytest.raises(ValueError):
        VP(beta_min=-1.0)
    with pytest.raises(ValueError):
        ScaledBrownian(sigma2=0.0)


class Constant(ScheduledLinearSDE):
    def __init__(self, M, N, **schedule):
        super().__init__(M.shape[0], **schedule)
        self.M, self.N = M, N

    def matrices(self):
        return self.M, self.N


def test_scheduled_sde_with_scalar_matrices_is_vp():
    vp = VP(0.1, 20.0)
    same = Constant(torch.tensor([[-0.5]], **f64), torch.tensor([[1.0]], **f64), beta_min=0.1, beta_max=20.0)
    t0, t1 = torch.tensor([0.0, 0.3], **f64), torch.tensor([0.5, 0.9], **f64)
    for ours, theirs in zip(same.transition_matrices(t0, t1), vp.transition_matrices(t0, t1)):
        torch.testing.assert_close(ours, theirs)


def test_van_loan_transition_matches_simulation(check_transition):
    """A damped oscillator with noise in the second block only (degenerate G, as in CLD)."""
    sde = Constant(torch.tensor([[0.0, 1.0], [-1.0, -2.0]], **f64), torch.tensor([[0.0, 0.0], [0.0, 4.0]], **f64),
                   beta_min=1.0, beta_max=3.0)
    check_transition(sde, 0.1, 0.6, torch.tensor([1.0, -0.5], **f64))


def test_auxiliary_variable_diffusion_keeps_the_standard_normal_stationary():
    """F = -(Q + D) with Q skew and D positive definite, G G^T = 2 D: N(0, I) is stationary."""
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(3, 3, generator=g, **f64), torch.randn(3, 3, generator=g, **f64)
    Q, D = A - A.T, B @ B.T + 0.1 * torch.eye(3, **f64)
    sde = Constant(-(Q + D), 2 * D)
    _, cov = sde.marginal_matrices(torch.tensor([0.2, 1.0], **f64), cov0=torch.eye(3, **f64))
    torch.testing.assert_close(cov, torch.eye(3, **f64).expand(2, 3, 3))


# ---------------------------------------------------------------- multivariate processes (K x K blocks)
from sde_control.sdes import CLD, AuxiliaryVariableSDE, MomentODELinearSDE, blockwise  # noqa: E402


def random_auxiliary(K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    sde = AuxiliaryVariableSDE(K, beta_min=0.5, beta_max=5.0)
    with torch.no_grad():
        sde.W.copy_(torch.randn(K, K, generator=g, **f64))
        sde.d.copy_(torch.randn(K, generator=g, **f64))
    return sde


@pytest.mark.parametrize("sde", [CLD(), random_auxiliary()], ids=["cld", "learned-auxiliary"])
def test_multivariate_transition_matches_simulation(sde, check_transition):
    check_transition(sde, 0.1, 0.6, torch.linspace(1.0, -0.5, sde.K, **f64), n=20_000)


def test_cld_closed_form_and_stationary_law():
    """Stationary N(0, diag(1, m)); from a point, position and velocity decorrelate into it."""
    cld = CLD(mass=0.25)
    M, N = cld.matrices()
    stationary = cld.stationary_covariance()
    torch.testing.assert_close(M @ stationary + stationary @ M.T + N, torch.zeros(2, 2, **f64))  # Lyapunov
    t = torch.tensor([0.3, 1.0, 3.0], **f64)
    _, cov = cld.marginal_matrices(t, cov0=stationary)
    torch.testing.assert_close(cov, stationary.expand(3, 2, 2))
    # Critically damped: the drift matrix has the double eigenvalue -Gamma / (2 m) = -2 (times beta = 4).
    torch.testing.assert_close(torch.linalg.eigvals(M).real, torch.tensor([-2.0, -2.0], **f64))
    psi, sigma = cld.transition_matrices(torch.tensor(0.0, **f64), torch.tensor(4.0, **f64))
    assert psi.abs().max() < 1e-10 and torch.allclose(sigma, stationary, atol=1e-10)


def test_learned_auxiliary_diffusion_is_stationary_and_converges():
    sde = random_auxiliary(K=3, seed=1)
    F, N = sde.matrices()
    eye = torch.eye(3, **f64)
    torch.testing.assert_close(F + F.T + N, torch.zeros(3, 3, **f64))  # N(0, I) stationary for any W, d
    _, cov = sde.marginal_matrices(torch.tensor([0.4, 1.0], **f64), cov0=eye)
    torch.testing.assert_close(cov, eye.expand(2, 3, 3))
    # From a data-like covariance the law converges to N(0, I) (int beta = 2.75 here, D >= 1e-3).
    data_like = torch.diag(torch.tensor([25.0, 1.0, 0.01], **f64))
    errors = [(sde.marginal_matrices(torch.tensor(t, **f64), cov0=data_like)[1] - eye).abs().max() for t in (0.2, 0.5, 1.0)]
    assert errors[0] > errors[1] > errors[2]
    long = AuxiliaryVariableSDE(3, beta_min=5.0, beta_max=5.0, T=4.0)
    with torch.no_grad():
        long.load_state_dict(sde.state_dict())
    _, cov = long.marginal_matrices(torch.tensor(4.0, **f64), cov0=data_like)
    assert (cov - eye).abs().max() < 1e-3


def test_fixed_auxiliary_diffusion_is_validated():
    Q = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], **f64)
    # Noise on one coordinate only, mixed by Q (hypoelliptic, like CLD): Hurwitz, accepted.
    sde = AuxiliaryVariableSDE(2, Q=Q, D=torch.diag(torch.tensor([0.0, 1.0], **f64)))
    assert (torch.linalg.eigvals(sde.matrices()[0]).real < 0).all()
    with pytest.raises(ValueError, match="not Hurwitz"):
        AuxiliaryVariableSDE(2, Q=torch.zeros(2, 2, **f64), D=torch.diag(torch.tensor([1.0, 0.0], **f64)))
    with pytest.raises(ValueError, match="not Hurwitz"):
        AuxiliaryVariableSDE(2, Q=Q, D=torch.zeros(2, 2, **f64))  # a pure rotation never forgets its start
    with pytest.raises(ValueError, match="skew"):
        AuxiliaryVariableSDE(2, Q=torch.ones(2, 2, **f64), D=torch.eye(2, **f64))
    with pytest.raises(ValueError, match="positive semi-definite"):
        AuxiliaryVariableSDE(2, Q=Q, D=-torch.eye(2, **f64))
    with pytest.raises(ValueError, match="both"):
        AuxiliaryVariableSDE(2, Q=Q)


class NumericalConstant(MomentODELinearSDE):
    """A constant-matrix process solved through the moment ODEs, for comparison with the matrix exponential."""

    def __init__(self, exact, grid_steps=500):
        super().__init__(exact.K, exact.T, grid_steps)
        self.exact = exact

    def drift_matrix(self, t):
        return self.exact.drift_matrix(t)

    def noise_matrix(self, t):
        return self.exact.noise_matrix(t)


def test_moment_ode_matches_the_matrix_exponential():
    exact = Constant(torch.tensor([[-0.3, 0.8], [-0.5, -1.0]], **f64), torch.tensor([[1.0, 0.2], [0.2, 0.5]], **f64),
                     beta_min=0.1, beta_max=10.0)
    numerical = NumericalConstant(exact)
    t0, t1 = torch.tensor([0.0, 0.0, 0.001, 0.3, 0.5], **f64), torch.tensor([1.0, 0.0013, 0.0013, 0.7, 0.5], **f64)
    for ours, theirs in zip(numerical.transition_matrices(t0, t1), exact.transition_matrices(t0, t1)):
        # RK4 and cubic Hermite interpolation, both O(h^4): far below the 1e-9 asked here, relative to each entry.
        torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="0 <= t0 <= t1 <= T"):
        numerical.transition_matrices(torch.tensor(0.5, **f64), torch.tensor(0.2, **f64))
    # The marginals from 0 read the table directly; with a start covariance they add Psi cov0 Psi^T.
    cov0 = torch.tensor([[0.0, 0.0], [0.0, 0.01]], **f64)
    for ours, theirs in zip(numerical.marginal_matrices(t1, cov0), exact.marginal_matrices(t1, cov0)):
        torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="0 <= t <= T"):
        numerical.marginal_matrices(torch.tensor(1.5, **f64))


def test_moment_ode_is_differentiable_and_caches_when_frozen():
    class Scaled(MomentODELinearSDE):
        def __init__(self):
            super().__init__(2, 1.0, grid_steps=100)
            self.a = torch.nn.Parameter(torch.tensor(0.3, **f64))

        def drift_matrix(self, t):
            t = torch.as_tensor(t, **f64)
            return (-1 + self.a * t)[..., None, None] * torch.tensor([[1.0, 0.5], [0.0, 1.0]], **f64)

        def noise_matrix(self, t):
            return torch.eye(2, **f64).expand(*torch.as_tensor(t).shape, 2, 2)

    sde = Scaled()

    def terminal_variance():
        return sde.transition_matrices(torch.tensor(0.0, **f64), torch.tensor(0.9, **f64))[1].sum()

    (grad,) = torch.autograd.grad(terminal_variance(), sde.a)
    with torch.no_grad():
        sde.a += 1e-5
        plus = terminal_variance()
        sde.a -= 2e-5
        minus = terminal_variance()
        sde.a += 1e-5
    assert float(grad) == pytest.approx(float(plus - minus) / 2e-5, rel=1e-5)
    with torch.no_grad():
        first = sde.moments()
        assert sde.moments() is first  # frozen: one solve
        sde.a.add_(0.1)
        assert sde.moments() is not first  # an in-place update invalidates the table


def test_blockwise_acts_on_blocks():
    x = torch.arange(12.0).reshape(2, 6)
    M = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    expected = (M @ x.reshape(2, 2, 3)).reshape(2, 6)  # K = 2 blocks of 3 channels
    torch.testing.assert_close(blockwise(M, x), expected)
    torch.testing.assert_close(blockwise(torch.tensor([[2.0]]), x), 2 * x)
    torch.testing.assert_close(blockwise(torch.stack([M, 2 * M]), x), torch.stack([expected[0], 2 * expected[1]]))
    with pytest.raises(ValueError, match="multiple of 4"):
        blockwise(torch.eye(4), x[:, :5])


# ---------------------------------------------------------------- prior laws, initial laws, ALDA and MALDA
from sde_control.sdes import ALDA, MALDA, SubVP as _SubVP  # noqa: E402


def test_fallback_priors_are_the_time_T_law_from_zero():
    """VE, Brownian motion and sub-VP have no stationary law: their prior is Sigma(0 -> T)."""
    torch.testing.assert_close(VE(0.01, 50.0).prior_covariance(), torch.tensor([[50.0**2 - 0.01**2]], **f64))
    torch.testing.assert_close(ScaledBrownian(0.2, 5.0).prior_covariance(), torch.tensor([[1.0]], **f64))
    B = 0.1 + (20.0 - 0.1) / 2  # int_0^1 beta
    torch.testing.assert_close(_SubVP(0.1, 20.0).prior_covariance(), torch.tensor([[(1 - math.exp(-B)) ** 2]], **f64))
    torch.testing.assert_close(VP(0.1, 10.0).prior_covariance(), torch.ones(1, 1, **f64))  # stationary, not the T-law
    rotation = Constant(torch.tensor([[0.0, 1.0], [-1.0, 0.0]], **f64), torch.diag(torch.tensor([0.0, 1.0], **f64)))
    T = torch.tensor(rotation.T, **f64)  # not Hurwitz: no limit, so the time-T law from 0
    torch.testing.assert_close(rotation.prior_covariance(), rotation.transition_matrices(torch.zeros_like(T), T)[1])


HURWITZ = {"vp": VP(), "cld": CLD(), "alda": ALDA(), "malda": MALDA(), "malda-4": MALDA(4),
           "learned": random_auxiliary(K=3, seed=2)}


@pytest.mark.parametrize("name", HURWITZ)
def test_prior_is_stationary_and_the_limit_of_the_transitions(name):
    sde = HURWITZ[name]
    S = sde.prior_covariance()
    F, GG = sde.drift_matrix(torch.tensor(0.3, **f64)).double(), sde.noise_matrix(torch.tensor(0.3, **f64)).double()
    torch.testing.assert_close(F @ S + S @ F.T + GG, torch.zeros_like(S), atol=1e-12, rtol=0)  # stationary
    # Push I and a data-like covariance (one stretched, one tiny direction) through a long horizon of the same
    # matrices (constant beta = 5, int beta = 50: ALDA's slowest mode 0.215 beta leaves exp(-21.5) ~ 5e-10).
    M, N = sde.matrices() if name != "vp" else (torch.tensor([[-0.5]], **f64), torch.tensor([[1.0]], **f64))
    long = Constant(M.detach().clone(), N.detach().clone(), beta_min=5.0, beta_max=5.0, T=10.0)
    data_like = torch.diag(torch.tensor([25.0] + [0.01] * (sde.K - 1), **f64))
    for cov0 in (torch.eye(sde.K, **f64), data_like):
        times = torch.tensor([0.05, 0.2, 10.0], **f64)
        errors = (long.marginal_matrices(times, cov0=cov0)[1] - S).abs().amax((-1, -2))
        # Either already the prior (I for the N(0, I)-stationary processes) and kept, or converging to it.
        assert errors[2] < 1e-6 and (errors.max() < 1e-12 or errors[0] > errors[1]), errors


def test_cld_prior_and_velocity_law_are_the_papers():
    cld = CLD(mass=0.25)
    torch.testing.assert_close(cld.prior_covariance(), torch.diag(torch.tensor([1.0, 0.25], **f64)))
    torch.testing.assert_close(cld.initial_covariance(), torch.diag(torch.tensor([0.0, 0.04 * 0.25], **f64)))
    assert cld.aux == 1 and VP().aux == 0 and VE().aux == 0


def test_alda_and_malda_are_the_reference_codes_processes():
    """The matrices of rajesh-lab/MultivariateDiffusionModels (mdm/models/alda.py, malda.py) at M = 1."""
    alda, malda = ALDA(), MALDA()
    F, N = alda.matrices()
    torch.testing.assert_close(-F - N / 2, torch.tensor([[0.0, -1, 0], [1, 0, -1], [0, 1, 0]], **f64))  # Q
    torch.testing.assert_close(N / 2, torch.diag(torch.tensor([0.0, 0, 1], **f64)))  # D
    F, N = malda.matrices()
    torch.testing.assert_close(-F - N / 2, torch.tensor([[0.0, -1, -1], [1, 0, -1], [1, 1, 0]], **f64))
    torch.testing.assert_close(N / 2, torch.diag(torch.tensor([0.0, 2, 2], **f64)))
    for sde in (alda, malda, MALDA(5), ALDA(gamma=2.0, psi=0.5)):
        F, N = sde.matrices()
        torch.testing.assert_close(F + F.T + N, torch.zeros_like(F))  # the MDM constraint: N(0, I) stationary
        assert (torch.linalg.eigvals(F).real < 0).all()
        assert sde.aux == sde.K - 1
        torch.testing.assert_close(sde.initial_covariance(), torch.diag(torch.tensor([0.0] + [0.01] * sde.aux, **f64)))
        assert (sde.schedule.beta_0, sde.schedule.beta_T, sde.T) == (0.1, 10.0, 1.0)
    with pytest.raises(ValueError, match="K >= 2"):
        MALDA(1)
    with pytest.raises(ValueError, match="gamma > 0"):
        ALDA(gamma=0.0)


@pytest.mark.parametrize("sde", [ALDA(), MALDA()], ids=["alda", "malda"])
def test_alda_malda_transitions_match_simulation(sde, check_transition):
    check_transition(sde, 0.1, 0.6, torch.tensor([1.0, -0.5, 0.3], **f64), n=20_000)


def test_conditional_law_given_the_data_carries_the_auxiliary_start():
    """N(Psi [x; 0], Psi diag(0, Sigma_aux0) Psi^T + Sigma): against states started from random auxiliaries."""
    sde, n = MALDA(), 200_000
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(n, 3, generator=g, **f64) @ sde.initial_covariance().sqrt()
    z0[:, 0] = 1.5  # the data block
    t = torch.tensor(0.05, **f64)
    psi, sigma = sde.transition_matrices(torch.zeros_like(t), t)
    zt = z0 @ psi.T + torch.randn(n, 3, generator=g, **f64) @ torch.linalg.cholesky(sigma).T
    _, cov = sde.marginal_matrices(t, cov0=sde.initial_covariance())
    # Five standard errors of each covariance entry, sqrt((C_ii C_jj + C_ij^2) / n).
    se = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert ((torch.cov(zt.T) - cov).abs() < 5 * se).all()
    se_mean = float(cov.diagonal().max().sqrt()) / n**0.5
    torch.testing.assert_close(zt.mean(0), psi[:, 0] * 1.5, atol=5 * se_mean, rtol=0)
