"""Shared test setup: one CPU thread (the operations are small, and threads only contend on a
shared 2-core machine) and a fixed seed per test; the simulation check of linear-SDE transitions."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@torch.no_grad()
def block_euler_maruyama(sde, t0, t1, z0, n=50_000, steps=500):
    """Fine Euler-Maruyama simulation of a K-block linear SDE with one channel, from ``z0`` (K,) at ``t0`` to ``t1``."""
    K = sde.K
    z = z0.expand(n, K).clone()
    ts = torch.linspace(t0, t1, steps + 1, dtype=torch.float64)
    for a, b in zip(ts[:-1], ts[1:]):
        F, GG = sde.drift_matrix(a), sde.noise_matrix(a)
        L = torch.linalg.cholesky(GG + 1e-12 * torch.eye(K, dtype=torch.float64))
        z = z + (b - a) * z @ F.T + (b - a).sqrt() * torch.randn(n, K, dtype=torch.float64) @ L.T
    return z


@pytest.fixture
def check_transition():
    """``check(sde, t0, t1, z0, n)``: the transition's mean and covariance against :func:`block_euler_maruyama`,
    within five standard errors plus an allowance for the Euler bias (0.01 on the mean, 2 % of the largest
    covariance entry, for 500 steps of ``|F| h`` at most a few hundredths)."""

    def check(sde, t0, t1, z0, n=50_000):
        with torch.no_grad():
            psi, sigma = sde.transition_matrices(torch.tensor(t0, dtype=torch.float64), torch.tensor(t1, dtype=torch.float64))
        z = block_euler_maruyama(sde, t0, t1, z0, n=n)
        n = z.shape[0]
        se_mean = (sigma.diagonal() / n).sqrt()
        assert ((z.mean(0) - psi @ z0).abs() < 5 * se_mean + 0.01).all()
        # Five standard errors of each covariance entry (sqrt((S_ii S_jj + S_ij^2) / n)), plus Euler bias.
        se_cov = ((sigma.diagonal()[:, None] * sigma.diagonal()[None, :] + sigma**2) / n).sqrt()
        assert ((torch.cov(z.T) - sigma).abs() < 5 * se_cov + 0.02 * sigma.abs().max()).all()

    return check
