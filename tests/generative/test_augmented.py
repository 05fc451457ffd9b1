"""Hybrid score matching on the augmented state: its minimum at the exact score, its lower variance, the layout."""

import math

import pytest
import torch

from sde_control.generative.augmented import (
    augmented_gaussian,
    conditional_cholesky,
    embed,
    first_noised_block,
    gaussian_marginal_score,
    hybrid_noise_to_score,
    hybrid_score_matching_loss,
    network_score,
)
from sde_control.generative.score_matching import gaussian_marginal, gaussian_score, noise_to_score
from sde_control.sdes import ALDA, CLD, MALDA, VP, AuxiliaryVariableSDE

f64 = dict(dtype=torch.float64)
MU = torch.tensor([0.5, -1.0], **f64)
COV = torch.tensor([[1.5, 0.3], [0.3, 0.5]], **f64)
T_MIN = 1e-3


def learned_mdm():
    sde = AuxiliaryVariableSDE(2, beta_min=0.1, beta_max=10.0)
    with torch.no_grad():
        sde.W.copy_(torch.tensor([[0.3, -0.8], [0.1, 0.2]], **f64))
        sde.d.copy_(torch.tensor([-0.5, 0.4], **f64))
    return sde


def exact_noise_network(sde):
    """eps_hat = -L_t^T s*(u, t): the noise prediction of the exact marginal score of data N(MU, COV)."""
    score = gaussian_marginal_score(sde, MU, COV)

    def network(u, t):
        _, chol = conditional_cholesky(sde, t.double())
        return -(chol.transpose(-1, -2) @ score(u, t.double()).reshape(u.shape[0], sde.K, -1)).reshape(u.shape)

    return network


def data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MU + torch.randn(n, 2, generator=g, **f64) @ torch.linalg.cholesky(COV).T


@pytest.mark.parametrize("sde", [VP(0.1, 10.0), CLD(), MALDA(), learned_mdm()], ids=["vp", "cld", "malda", "mdm"])
@pytest.mark.parametrize("blocks", ["all", "noised"])
def test_loss_at_the_exact_score_is_its_analytic_minimum(sde, blocks):
    """E|eps_hat* - eps|^2 over the regressed blocks is E_t sum_j (1 - (L^T C_t^{-1} L)_jj), eps_hat* = E[eps | u_t]."""
    n = 20_000
    with torch.no_grad():
        loss = hybrid_score_matching_loss(exact_noise_network(sde), sde, data(n), T_MIN, blocks=blocks)
    times = torch.linspace(T_MIN, sde.T, 2001, **f64)
    with torch.no_grad():
        _, chol = conditional_cholesky(sde, times)
        m0, C0 = augmented_gaussian(sde, MU, COV)
        _, C = gaussian_marginal(sde, times, m0, C0)
    D = C.shape[-1]
    m = D // sde.K
    L = torch.einsum("tij,ab->tiajb", chol.double(), torch.eye(m, **f64)).reshape(-1, D, D)
    explained = (L.transpose(-1, -2) @ torch.linalg.solve(C, L)).diagonal(dim1=-2, dim2=-1)
    first = first_noised_block(sde) * m if blocks == "noised" else 0
    expected = float(torch.trapezoid((1 - explained[:, first:]).sum(-1), times)) / (sde.T - T_MIN)
    # Monte Carlo over n draws of (x, t, eps): within 4 standard errors.
    assert abs(float(loss.mean()) - expected) < 4 * float(loss.std()) / math.sqrt(n), (float(loss.mean()), expected)


def test_the_hybrid_target_has_lower_variance_than_the_full_conditional_one():
    """Rao-Blackwell: grad log q(u_t | x) = E[grad log q(u_t | x, y_0) | u_t, x], so its G G^T-weighted squared
    distance to the marginal score is smaller, per state; for CLD most where the noise injected so far is small
    against the initial velocity variance 0.01."""
    sde, n = CLD(), 50_000
    x = data(n)
    score = gaussian_marginal_score(sde, MU, COV)
    for t, most in ((0.002, 0.85), (0.3, 1.0)):
        t = torch.tensor(t, **f64)
        psi, sigma = sde.transition_matrices(torch.zeros_like(t), t)
        u0 = embed(x, sde)
        u0[:, 2:] = 0.1 * torch.randn(n, 2, **f64)  # v_0 ~ N(0, 0.01)
        full_mean, hybrid_mean = (psi @ u0.reshape(n, 2, 2)), (psi @ embed(x, sde).reshape(n, 2, 2))
        ut = full_mean + torch.linalg.cholesky(sigma) @ torch.randn(n, 2, 2, **f64)
        _, chol = conditional_cholesky(sde, t)
        full_target = -torch.linalg.solve(sigma, ut - full_mean)
        hybrid_target = -torch.linalg.solve(chol @ chol.T, ut - hybrid_mean)
        GG = sde.noise_matrix(t).double()
        s = score(ut.reshape(n, 4), t).reshape(n, 2, 2)

        def weighted(target):
            residual = target - s
            return (residual * (GG @ residual)).sum((-1, -2))

        gain = weighted(full_target) - weighted(hybrid_target)
        # Paired difference over n states: positive by more than 4 standard errors (21 % of it at t = 0.002).
        assert float(gain.mean()) > 4 * float(gain.std()) / math.sqrt(n)
        assert float(weighted(hybrid_target).mean()) < most * float(weighted(full_target).mean())


def test_scores_and_layout():
    vp, cld = VP(), CLD()
    x = data(5)
    # aux = 0: hybrid score matching is plain DSM, and the parameterisations agree.
    eps = torch.randn(5, 2, **f64)
    t = torch.tensor(0.4, **f64)
    torch.testing.assert_close(hybrid_noise_to_score(vp, eps, t), noise_to_score(vp, eps, t))
    torch.testing.assert_close(gaussian_marginal_score(vp, MU, COV)(x, t), gaussian_score(vp, MU, COV)(x, t))
    # Batched times equal one time at a time.
    ts = torch.tensor([0.1, 0.5, 0.9, 0.2, 0.7], **f64)
    u = torch.randn(5, 4, **f64)
    score = gaussian_marginal_score(cld, MU, COV)
    torch.testing.assert_close(score(u, ts), torch.cat([score(u[i : i + 1], ts[i]) for i in range(5)]))
    # network_score inverts the noise parameterisation.
    network = exact_noise_network(cld)
    torch.testing.assert_close(network_score(network, cld)(u, ts), score(u, ts))
    # Layout: data first, then the auxiliary blocks of d channels; u_0's law.
    torch.testing.assert_close(embed(x, cld), torch.cat([x, torch.zeros(5, 2, **f64)], 1))
    m0, C0 = augmented_gaussian(MALDA(), MU, COV)
    torch.testing.assert_close(m0, torch.cat([MU, torch.zeros(4, **f64)]))
    torch.testing.assert_close(C0, torch.block_diag(COV, 0.01 * torch.eye(4, **f64)))
    assert [first_noised_block(s) for s in (vp, cld, MALDA(), ALDA(), learned_mdm())] == [0, 1, 1, 2, 0]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="singular to float64"):
        conditional_cholesky(ALDA(), torch.tensor([1e-3, 0.5], **f64))
    conditional_cholesky(ALDA(), torch.tensor(0.05, **f64))  # fine from t ~ 0.03
    with pytest.raises(ValueError, match="blocks"):
        hybrid_score_matching_loss(lambda u, t: u, CLD(), data(4), T_MIN, blocks="velocity")
    with pytest.raises(ValueError, match="aux_init_cov must be 1 x 1"):
        hybrid_score_matching_loss(lambda u, t: u, CLD(), data(4), T_MIN, aux_init_cov=torch.eye(2))
    with pytest.raises(ValueError, match="t_min"):
        hybrid_score_matching_loss(lambda u, t: u, CLD(), data(4), 0.0)

    class Odd(AuxiliaryVariableSDE):
        aux = property(lambda self: 1, lambda self, value: None)

    with pytest.raises(ValueError, match="K = 1 \\+ aux"):
        embed(data(3), Odd(3))
