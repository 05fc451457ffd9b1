"""gDDIM: DDIM for VP, exactness for point data, accuracy against Euler on Gaussian data, marginals with lam > 0,
and a cache keyed by the SDE's parameters.

For Gaussian data the exact score is linear, so the deterministic sampler is an affine map ``x_T -> A x_T + b``; we read
``A`` and ``b`` off the sampler's values at 0 and the unit vectors and push the exact law of ``u_T`` through it: the
law of the samples is then known exactly, with no Monte Carlo error.
"""

import math

import pytest
import torch

from sde_control.generative import VSDMForward
from sde_control.generative.augmented import augmented_gaussian, conditional_cholesky
from sde_control.generative.gddim import gddim_coefficients, gddim_sample, time_grid
from sde_control.generative.sampling import reverse_paths
from sde_control.generative.score_matching import gaussian_marginal, gaussian_score
from sde_control.sdes import CLD, MALDA, VP, AuxiliaryVariableSDE

f64 = dict(dtype=torch.float64)
MU = torch.tensor([0.5, -1.0], **f64)
NARROW = 0.01 * torch.tensor([[1.5, 0.3], [0.3, 0.5]], **f64)  # data concentrated against the prior's scale
T_MIN = 1e-3


def learned_mdm():
    sde = AuxiliaryVariableSDE(2, beta_min=0.1, beta_max=10.0)
    with torch.no_grad():
        sde.W.copy_(torch.tensor([[0.3, -0.8], [0.1, 0.2]], **f64))
        sde.d.copy_(torch.tensor([-0.5, 0.4], **f64))
    return sde


def vsdm():
    sde = VSDMForward(2)  # K = d = 2: the full 2 x 2 drift of VSDM, no auxiliary variables
    with torch.no_grad():
        sde.weight.copy_(torch.tensor([[-0.3, 0.2], [0.1, 0.25]], **f64))
    return sde


SDES = {"vp": lambda: VP(0.1, 10.0), "cld": CLD, "malda": MALDA, "mdm": learned_mdm, "vsdm": vsdm}


def test_order_one_on_vp_is_ddim():
    """u_t = alpha_t / alpha_s u_s + (sigma_t - alpha_t sigma_s / alpha_s) eps, eps = -sigma_s s(u_s, s)."""
    vp = VP(0.1, 10.0)

    def score(u, t):  # any score: gDDIM and DDIM must agree step by step
        return -u / (1 + t) + torch.sin(3 * u) * t

    x_T = torch.randn(50, 3, **f64)
    times = time_grid(1.0, T_MIN, 12)
    ours, path = gddim_sample(vp, score, x_T, 12, return_path=True)
    alpha = torch.exp(-0.5 * vp.schedule.integral(torch.zeros_like(times), times))
    sigma = (1 - alpha**2).sqrt()
    u = x_T
    for i in range(12):
        eps = -sigma[i] * score(u, times[i])
        u = alpha[i + 1] / alpha[i] * u + (sigma[i + 1] - alpha[i + 1] * sigma[i] / alpha[i]) * eps
        torch.testing.assert_close(path[i + 1], u, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours, u, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", SDES)
def test_point_data_is_recovered_exactly_in_one_step(name):
    """For data at one point the exact score makes eps = R_t^{-1}(u - Psi_t [x; 0]) constant along the probability
    flow: one deterministic step lands on Psi [x; 0] + R_{t_min} eps path by path; with lam > 0 the law is exact."""
    sde = SDES[name]()
    score = gaussian_score(sde, MU, torch.zeros(2, 2, **f64))
    D = 2 * (1 + sde.aux)
    m0, C0 = augmented_gaussian(sde, MU, torch.zeros(2, 2, **f64))
    mT, CT = gaussian_marginal(sde, torch.tensor(sde.T, **f64), m0, C0)
    m_end, C_end = gaussian_marginal(sde, torch.tensor(T_MIN, **f64), m0, C0)
    n = 20_000
    x_T = mT + torch.randn(n, D, **f64) @ torch.linalg.cholesky(CT).T
    for steps in (1, 3):
        coefficients = gddim_coefficients(sde, time_grid(sde.T, T_MIN, steps))
        out = gddim_sample(sde, score, x_T, steps)
        R_T, R_end = coefficients.R[0], coefficients.R[-1]
        eps = torch.linalg.solve(torch.kron(R_T, torch.eye(D // sde.K, **f64)), (x_T - mT).T).T
        expected = m_end + eps @ torch.kron(R_end, torch.eye(D // sde.K, **f64)).T
        # R comes from RK4 (128 substeps per step); MALDA's S_t near t_min has eigenvalue ratio 3e-10.
        torch.testing.assert_close(out, expected, atol=2e-5 if name == "malda" else 1e-6, rtol=1e-6)
        stochastic = gddim_sample(sde, score, x_T, steps, lam=0.7, generator=torch.Generator().manual_seed(steps))
        # Five standard errors per mean and covariance entry (n draws).
        se_mean = (C_end.diagonal() / n).sqrt()
        assert ((stochastic.mean(0) - m_end).abs() < 5 * se_mean).all()
        se_cov = ((C_end.diagonal()[:, None] * C_end.diagonal()[None, :] + C_end**2) / n).sqrt()
        assert ((torch.cov(stochastic.T) - C_end).abs() < 5 * se_cov).all()


def sampled_law(sampler, sde, data_cov):
    """The exact law (mean, covariance) of the deterministic sampler's output for u_T from its exact law."""
    D = 2 * (1 + sde.aux)
    m0, C0 = augmented_gaussian(sde, MU, data_cov)
    mT, CT = gaussian_marginal(sde, torch.tensor(sde.T, **f64), m0, C0)
    out = sampler(torch.cat([torch.zeros(1, D, **f64), torch.eye(D, **f64)]))
    A = (out[1:] - out[0]).T
    return A @ mT + out[0], A @ CT @ A.T


def data_kl(law, sde, data_cov=NARROW):
    """KL(sampled law || exact law at t_min) of the data block, both Gaussian."""
    m0, C0 = augmented_gaussian(sde, MU, data_cov)
    m_exact, C_exact = gaussian_marginal(sde, torch.tensor(T_MIN, **f64), m0, C0)
    m, C = law
    m, C, m_exact, C_exact = m[:2], C[:2, :2], m_exact[:2], C_exact[:2, :2]
    d = m - m_exact
    return float(0.5 * (torch.trace(torch.linalg.solve(C_exact, C)) + d @ torch.linalg.solve(C_exact, d) - 2
                        + torch.logdet(C_exact) - torch.logdet(C)))


# Measured (benchmarks/gddim_gaussian.py) KL of the data block at 10 steps, Gaussian data of standard deviation ~0.1
# (NARROW): order 1 / 2 / 3 against the Euler probability flow of generative/sampling.py (uniform grid): VP 0.10 /
# 0.039 / 0.023 against 0.19; CLD 0.46 / 0.32 / 0.25 against 1.6e4; MALDA 0.32 / 0.16 / 0.09 against 2.8e4. For data
# as wide as the prior (standard deviation ~1) Euler beats order 1 on VP (9e-4 against 3e-2 at 10 steps): DDIM's
# constant eps is a poor model of data that is not concentrated; order 3 is level with Euler there (7e-4).
EULER_RATIO = {"vp": 1.5, "cld": 1e3, "malda": 1e3}


@pytest.mark.parametrize("name", ["vp", "cld", "malda"])
def test_gddim_beats_euler_at_equal_evaluations(name):
    sde = SDES[name]()
    score = gaussian_score(sde, MU, NARROW)
    kl = {order: data_kl(sampled_law(lambda x: gddim_sample(sde, score, x, 10, order=order), sde, NARROW), sde)
          for order in (1, 2, 3)}
    euler = data_kl(sampled_law(lambda x: reverse_paths(sde, score, x, 10, T_MIN, method="ode")[-1], sde, NARROW), sde)
    assert kl[1] * EULER_RATIO[name] < euler, (kl, euler)
    assert kl[3] < kl[2] < kl[1], kl
    assert data_kl(sampled_law(lambda x: gddim_sample(sde, score, x, 50, order=3), sde, NARROW), sde) < 2e-3


def test_multistep_weights_integrate_polynomial_eps_exactly():
    """With eps(t) = a + b t along the path the order-2 corrector (every step) and the order-2 predictor (after its
    one-step warm-up) integrate the probability flow exactly: against RK4 on 20,000 log-spaced steps."""
    sde = CLD()
    times = time_grid(1.0, T_MIN, 8)
    c = gddim_coefficients(sde, times, order=2, corrector=True)
    a, b = torch.tensor([[0.3, -0.2, 0.5, 0.1]], **f64), torch.tensor([[-0.4, 0.6, 0.2, -0.3]], **f64)

    def R_at(t):
        return c.R[int(torch.isclose(times, torch.as_tensor(t, **f64)).nonzero()[0])]

    def score(u, t):  # s = -R_t^{-T} eps(t), on the grid
        eps = (a + b * float(t)).expand(u.shape[0], 4).reshape(-1, 2, 2)
        return -torch.linalg.solve(R_at(t).T, eps).reshape(-1, 4)

    def reference(u, t_start):
        """RK4 of du/dt = F u + G G^T R^{-T} eps(t) / 2 and dR/dt = F R + G G^T R^{-T} / 2 down to t_min on 8000
        log-spaced steps (converged to ~1e-5 relative; CLD's coefficients are constant)."""
        grid = torch.logspace(math.log10(t_start), math.log10(T_MIN), 16_001, **f64)
        F, GG = sde.drift_matrix(grid[0]).double(), sde.noise_matrix(grid[0]).double()
        R = R_at(t_start)

        def rate(k, u, R):
            R_inv_T = torch.linalg.inv(R).T
            eps = (a + b * grid[k]).reshape(-1, 2, 2)
            return (F @ u.reshape(-1, 2, 2) + 0.5 * GG @ R_inv_T @ eps).reshape(-1, 4), F @ R + 0.5 * GG @ R_inv_T

        for k in range(0, grid.numel() - 1, 2):
            h = grid[k + 2] - grid[k]
            k1 = rate(k, u, R)
            k2 = rate(k + 1, u + h / 2 * k1[0], R + h / 2 * k1[1])
            k3 = rate(k + 1, u + h / 2 * k2[0], R + h / 2 * k2[1])
            k4 = rate(k + 2, u + h * k3[0], R + h * k3[1])
            u = u + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
            R = R + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        return u

    x_T = torch.tensor([[0.7, -1.1, 0.4, 0.2]], **f64)
    # The path grows by e^8 backwards (|u| ~ 2e4 at t_min): relative agreement 1e-4, where order 1 is 4 % off.
    corrected = gddim_sample(sde, score, x_T, 8, order=2, corrector=True)
    torch.testing.assert_close(corrected, reference(x_T, times[0]), rtol=1e-4, atol=0)
    predicted, path = gddim_sample(sde, score, x_T, 8, order=2, return_path=True)
    torch.testing.assert_close(predicted, reference(path[1], times[1]), rtol=1e-4, atol=0)
    first_order = gddim_sample(sde, score, x_T, 8, order=1)
    assert ((first_order - corrected).abs() > 0.01 * corrected.abs()).any()


def full(matrix, m):
    return torch.kron(matrix.contiguous(), torch.eye(m, **f64))


def stochastic_law(sde, data_cov, steps, lam):
    """The exact law of the lam > 0 sampler's output for Gaussian data (its steps are affine plus Gaussian noise)."""
    m = 2 * (1 + sde.aux) // sde.K
    m0, C0 = augmented_gaussian(sde, MU, data_cov)
    mean, cov = gaussian_marginal(sde, torch.tensor(sde.T, **f64), m0, C0)
    times = time_grid(sde.T, T_MIN, steps)
    c = gddim_coefficients(sde, times, lam=lam)
    for i in range(steps):
        mt, Ct = gaussian_marginal(sde, times[i], m0, C0)
        A = -torch.linalg.inv(Ct)  # the exact score s = A u + b
        E = full(c.predictor[i, 0], m) @ -full(c.R[i].T, m)  # eps = -R^T s
        M = full(c.psi[i], m) + E @ A
        noise = full(c.noise[i], m)
        mean, cov = M @ mean - E @ A @ mt, M @ cov @ M.T + noise @ noise.T
    return mean, cov


@pytest.mark.parametrize("name", ["vp", "cld", "malda"])
def test_stochastic_sampler_converges_to_the_marginals(name):
    """lam = 1, exact score of wide Gaussian data: the sampled law's KL to the data's falls like 1/N^2 (measured
    VP 9e-2, 4.8e-3, 3.2e-4; CLD 0.20, 1.3e-2, 9e-4 at 10, 50, 200 steps), and the sampler's samples follow that law."""
    sde = SDES[name]()
    cov = torch.tensor([[1.5, 0.3], [0.3, 0.5]], **f64)
    kl = [data_kl(stochastic_law(sde, cov, steps, 1.0), sde, cov) for steps in (10, 50, 200)]
    assert kl[0] > 5 * kl[1] > 25 * kl[2] and kl[2] < 2e-3, kl
    mean, C = stochastic_law(sde, cov, 20, 1.0)
    n = 20_000
    x_T = torch.randn(n, C.shape[0], **f64)
    m0, C0 = augmented_gaussian(sde, MU, cov)
    mT, CT = gaussian_marginal(sde, torch.tensor(sde.T, **f64), m0, C0)
    out = gddim_sample(sde, gaussian_score(sde, MU, cov), mT + x_T @ torch.linalg.cholesky(CT).T, 20, lam=1.0,
                       generator=torch.Generator().manual_seed(0))
    # Five standard errors per mean and covariance entry.
    assert ((out.mean(0) - mean).abs() < 5 * (C.diagonal() / n).sqrt()).all()
    se = ((C.diagonal()[:, None] * C.diagonal()[None, :] + C**2) / n).sqrt()
    assert ((torch.cov(out.T) - C).abs() < 5 * se).all()


def test_cache_is_keyed_by_the_sdes_parameters():
    sde = learned_mdm()
    times = time_grid(1.0, T_MIN, 8)
    first = gddim_coefficients(sde, times, order=2)
    assert gddim_coefficients(sde, times, order=2) is first  # same parameters: served from the cache
    with torch.no_grad():
        sde.W[0, 1] += 0.5  # an optimiser step on the learned diffusion
    second = gddim_coefficients(sde, times, order=2)
    assert second is not first
    fresh = learned_mdm()
    with torch.no_grad():
        fresh.W.copy_(sde.W)
    torch.testing.assert_close(second.predictor, gddim_coefficients(fresh, times, order=2).predictor)
    assert not torch.allclose(second.predictor, first.predictor)
    # R R^T = S on the grid (the R parameterisation is consistent with the SDE it was computed for).
    _, chol = conditional_cholesky(sde, times)
    S = chol @ chol.transpose(-1, -2)
    torch.testing.assert_close(second.R @ second.R.transpose(-1, -2), S, rtol=1e-7, atol=1e-10)


def test_bad_arguments_are_refused():
    vp = VP()
    with pytest.raises(ValueError, match="order"):
        gddim_coefficients(vp, time_grid(1.0, T_MIN, 4), order=4)
    with pytest.raises(ValueError, match="lam"):
        gddim_coefficients(vp, time_grid(1.0, T_MIN, 4), lam=-1.0)
    with pytest.raises(ValueError, match="one-step"):
        gddim_coefficients(vp, time_grid(1.0, T_MIN, 4), lam=0.5, corrector=True)
    with pytest.raises(ValueError, match="one-step"):
        gddim_coefficients(vp, time_grid(1.0, T_MIN, 4), lam=0.5, order=2)
    with pytest.raises(ValueError, match="decrease"):
        gddim_coefficients(vp, torch.tensor([0.1, 0.5], **f64))
    with pytest.raises(ValueError, match="steps"):
        gddim_sample(vp, lambda u, t: u, torch.zeros(2, 2, **f64), 0)
    assert math.isclose(float(time_grid(1.0, T_MIN, 4)[-1]), T_MIN)
