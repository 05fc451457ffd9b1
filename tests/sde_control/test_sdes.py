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


def block_euler_maruyama(sde, t0, t1, z0, n=50_000, steps=500):
    """Fine Euler-Maruyama simulation of a K-block SDE with one channel."""
    K = sde.K
    z = z0.expand(n, K).clone()
    ts = torch.linspace(t0, t1, steps + 1, **f64)
    for a, b in zip(ts[:-1], ts[1:]):
        F, GG = sde.drift_matrix(a), sde.noise_matrix(a)
        L = torch.linalg.cholesky(GG + 1e-12 * torch.eye(K, **f64))
        z = z + (b - a) * z @ F.T + (b - a).sqrt() * torch.randn(n, K, **f64) @ L.T
    return z


def test_van_loan_transition_matches_simulation():
    """A damped oscillator with noise in the second block only (degenerate G, as in CLD)."""
    sde = Constant(torch.tensor([[0.0, 1.0], [-1.0, -2.0]], **f64), torch.tensor([[0.0, 0.0], [0.0, 4.0]], **f64),
                   beta_min=1.0, beta_max=3.0)
    z0 = torch.tensor([1.0, -0.5], **f64)
    psi, sigma = sde.transition_matrices(torch.tensor(0.1, **f64), torch.tensor(0.6, **f64))
    z = block_euler_maruyama(sde, 0.1, 0.6, z0)
    n = z.shape[0]
    se_mean = (sigma.diagonal() / n).sqrt()
    assert ((z.mean(0) - psi @ z0).abs() < 5 * se_mean + 0.01).all()
    # Five standard errors of each covariance entry (sqrt((S_ii S_jj + S_ij^2) / n)), plus Euler bias.
    se_cov = ((sigma.diagonal()[:, None] * sigma.diagonal()[None, :] + sigma**2) / n).sqrt()
    assert ((torch.cov(z.T) - sigma).abs() < 5 * se_cov + 0.02 * sigma.abs().max()).all()


def test_auxiliary_variable_diffusion_keeps_the_standard_normal_stationary():
    """F = -(Q + D) with Q skew and D positive definite, G G^T = 2 D: N(0, I) is stationary."""
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(3, 3, generator=g, **f64), torch.randn(3, 3, generator=g, **f64)
    Q, D = A - A.T, B @ B.T + 0.1 * torch.eye(3, **f64)
    sde = Constant(-(Q + D), 2 * D)
    _, cov = sde.marginal_matrices(torch.tensor([0.2, 1.0], **f64), cov0=torch.eye(3, **f64))
    torch.testing.assert_close(cov, torch.eye(3, **f64).expand(2, 3, 3))
