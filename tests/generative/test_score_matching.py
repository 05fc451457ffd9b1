"""Denoising score matching: its analytic minimum for Gaussian data, reached by the exact score and by training."""

import pytest
import torch
from torch import nn

from sde_control.generative import ScoreModel, data
from sde_control.generative.diagonal import DiagonalLinearSDE
from sde_control.generative.score_matching import dsm_loss, gaussian_dsm_minimum, gaussian_marginal, gaussian_score, noise_to_score
from sde_control.sdes import VP, blockwise

f64 = dict(dtype=torch.float64)
STD, ANGLE, MEAN = (1.0, 3.0), 30.0, (1.0, -1.0)
COV = data.anisotropic_gaussian_covariance(STD, ANGLE)


def gaussian_data(n, seed):
    return data.anisotropic_gaussian(n, std=STD, angle=ANGLE, mean=MEAN, seed=seed)


class ExactNoise(nn.Module):
    """``eps*(x, t) = -L_t^T grad log p_t(x)``: the minimiser of the DSM loss for Gaussian data."""

    def __init__(self, sde):
        super().__init__()
        self.sde = sde

    def forward(self, x, t):
        t = torch.as_tensor(t, **f64).expand(x.shape[0])
        mean, cov = gaussian_marginal(self.sde, t, torch.tensor(MEAN, **f64), COV)
        score = torch.linalg.solve(cov, (mean - x.double()).unsqueeze(-1)).squeeze(-1)
        if isinstance(self.sde, DiagonalLinearSDE):  # its L_t is the symmetric root B^T diag(sqrt(gamma)) B
            gamma = self.sde.transition(torch.zeros_like(t), t)[1]
            return -self.sde.basis.inverse(gamma.sqrt() * self.sde.basis(score)).to(x.dtype)
        chol = torch.linalg.cholesky(self.sde.transition_matrices(torch.zeros_like(t), t)[1])
        return -blockwise(chol.transpose(-1, -2), score).to(x.dtype)


def test_exact_score_attains_the_analytic_minimum(forward_process):
    sde = forward_process
    x0, t_min = gaussian_data(100_000, seed=1).double(), 1e-3
    with torch.no_grad():
        chunks = torch.stack([dsm_loss(ExactNoise(sde), sde, chunk, t_min) for chunk in x0.split(5_000)])
    standard_error = float(chunks.std() / len(chunks) ** 0.5)
    assert float(chunks.mean()) == pytest.approx(gaussian_dsm_minimum(sde, COV, t_min), abs=4 * standard_error)
    # and the exact score turned back from noise prediction is the Gaussian score
    x, t = gaussian_data(5, seed=2).double(), torch.tensor(0.3, **f64)
    torch.testing.assert_close(noise_to_score(sde, ExactNoise(sde)(x, t), t),
                               gaussian_score(sde, torch.tensor(MEAN, **f64), COV)(x, t))


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
        loss = float(model.loss(x0, model.trainer.averaged))
    assert 0 <= excess < 0.02
    assert loss == pytest.approx(minimum + excess, abs=4 * 2 / len(x0) ** 0.5)
