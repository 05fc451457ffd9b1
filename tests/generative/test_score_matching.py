"""Denoising score matching, hybrid on augmented states: its analytic minimum for Gaussian data, reached by the exact
score and by training; the lower variance of the hybrid target; the noise parameterisation of the score."""

import math

import pytest
import torch
from torch import nn

from sde_control.generative import ScoreModel, data
from sde_control.generative.augmented import augmented_gaussian, conditional_cholesky, embed, first_noised_block
from sde_control.generative.diagonal import DiagonalLinearSDE
from sde_control.generative.score_matching import (
    dsm_loss,
    gaussian_dsm_minimum,
    gaussian_marginal,
    gaussian_score,
    network_score,
    noise_to_score,
)
from sde_control.sdes import CLD, MALDA, VP, AuxiliaryVariableSDE, blockwise

f64 = dict(dtype=torch.float64)
STD, ANGLE, MEAN = (1.0, 3.0), 30.0, (1.0, -1.0)
COV = data.anisotropic_gaussian_covariance(STD, ANGLE)
MU = torch.tensor(MEAN, **f64)
T_MIN = 1e-3


def gaussian_data(n, seed):
    return data.anisotropic_gaussian(n, std=STD, angle=ANGLE, mean=MEAN, seed=seed)


def learned_mdm():
    sde = AuxiliaryVariableSDE(2, beta_min=0.1, beta_max=10.0)
    with torch.no_grad():
        sde.W.copy_(torch.tensor([[0.3, -0.8], [0.1, 0.2]], **f64))
        sde.d.copy_(torch.tensor([-0.5, 0.4], **f64))
    return sde


class ExactNoise(nn.Module):
    """``eps*(u, t) = -L_t^T grad log p_t(u)``: the minimiser of the DSM loss for Gaussian data (of the augmented
    state's marginal where the process has auxiliary variables)."""

    def __init__(self, sde):
        super().__init__()
        self.sde, self.score = sde, gaussian_score(sde, MU, COV)

    def forward(self, u, t):
        t = torch.as_tensor(t, **f64).expand(u.shape[0])
        score = self.score(u, t)
        if isinstance(self.sde, DiagonalLinearSDE):  # its L_t is the symmetric root B^T diag(sqrt(gamma)) B
            gamma = self.sde.transition(torch.zeros_like(t), t)[1]
            return -self.sde.basis.inverse(gamma.sqrt() * self.sde.basis(score)).to(u.dtype)
        _, chol = conditional_cholesky(self.sde, t)
        return -blockwise(chol.transpose(-1, -2), score).to(u.dtype)


def test_exact_score_attains_the_analytic_minimum(forward_process):
    sde = forward_process
    x0 = gaussian_data(100_000, seed=1).double()
    with torch.no_grad():
        chunks = torch.stack([dsm_loss(ExactNoise(sde), sde, chunk, T_MIN).mean() for chunk in x0.split(5_000)])
    standard_error = float(chunks.std() / len(chunks) ** 0.5)
    assert float(chunks.mean()) == pytest.approx(gaussian_dsm_minimum(sde, COV, T_MIN), abs=4 * standard_error)
    # and the exact score turned back from noise prediction is the Gaussian score
    x, t = gaussian_data(5, seed=2).double(), torch.tensor(0.3, **f64)
    torch.testing.assert_close(noise_to_score(sde, ExactNoise(sde)(x, t), t), gaussian_score(sde, MU, COV)(x, t))


@pytest.mark.parametrize("sde", [VP(0.1, 10.0), CLD(), MALDA(), learned_mdm()], ids=["vp", "cld", "malda", "mdm"])
@pytest.mark.parametrize("blocks", ["all", "noised"])
def test_hybrid_loss_at_the_exact_score_is_its_analytic_minimum(sde, blocks):
    """E|eps_hat* - eps|^2 over the regressed blocks is E_t sum_j (1 - (L^T C_t^{-1} L)_jj), eps_hat* = E[eps | u_t]."""
    n = 20_000
    with torch.no_grad():
        loss = dsm_loss(ExactNoise(sde), sde, gaussian_data(n, seed=0).double(), T_MIN, blocks=blocks)
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
    x = gaussian_data(n, seed=0).double()
    score = gaussian_score(sde, MU, COV)
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


def test_scores_batch_over_times_and_invert_the_noise_parameterisation():
    cld = CLD()
    ts = torch.tensor([0.1, 0.5, 0.9, 0.2, 0.7], **f64)
    u = torch.randn(5, 4, **f64)
    score = gaussian_score(cld, MU, COV)
    torch.testing.assert_close(score(u, ts), torch.cat([score(u[i : i + 1], ts[i]) for i in range(5)]))
    torch.testing.assert_close(network_score(ExactNoise(cld), cld)(u, ts), score(u, ts))
    # Without auxiliary variables the state is the data: the score is -C_t^{-1}(x - Psi_t mu).
    vp, x, t = VP(), torch.randn(5, 2, **f64), torch.tensor(0.4, **f64)
    mean, C = gaussian_marginal(vp, t, MU, COV)
    torch.testing.assert_close(gaussian_score(vp, MU, COV)(x, t), -torch.linalg.solve(C, (x - mean).T).T)


def test_bad_loss_options_are_refused():
    x = torch.zeros(4, 2, **f64)
    with pytest.raises(ValueError, match="blocks"):
        dsm_loss(lambda u, t: u, CLD(), x, T_MIN, blocks="velocity")
    with pytest.raises(ValueError, match="aux_init_cov must be 1 x 1"):
        dsm_loss(lambda u, t: u, CLD(), x, T_MIN, aux_init_cov=torch.eye(2))
    with pytest.raises(ValueError, match="t_min"):
        dsm_loss(lambda u, t: u, CLD(), x, 0.0)


def test_training_reaches_the_closed_form_score():
    """The loss exceeds its minimum by exactly ``E|eps_theta - eps*|^2`` (module docstring of score_matching).
    Untrained (``eps_theta = 0``) that excess is ``E|eps*|^2 = d - min``, about 0.96 here; a short run must bring
    it below 0.02, 2 % of that, and the Monte Carlo loss must sit at the minimum plus the measured excess."""
    sde = VP(0.1, 10.0)
    model = ScoreModel(2, sde, width=32, depth=3)
    model.fit(gaussian_data(20_000, seed=0), iterations=400, batch_size=512, lr=3e-3, progress=False)
    minimum = gaussian_dsm_minimum(sde, COV, model.t_min)
    x0 = gaussian_data(100_000, seed=3)
    with torch.no_grad():
        t = model.t_min + (1 - model.t_min) * torch.rand(len(x0), **f64)
        psi, sigma = sde.transition_matrices(torch.zeros_like(t), t)
        xt = blockwise(psi, x0) + blockwise(torch.linalg.cholesky(sigma), torch.randn_like(x0))
        excess = float((model.trainer.averaged(xt, t.float()) - ExactNoise(sde)(xt, t)).square().sum(-1).mean())
        loss = float(model.loss(x0, network=model.trainer.averaged))
    assert 0 <= excess < 0.02
    assert loss == pytest.approx(minimum + excess, abs=4 * 2 / len(x0) ** 0.5)
