"""Neural diffusion models: with F the identity the NELBO is the continuous-time VP bound; the generative ODE/SDE
transport point data exactly; the objective is differentiable in both networks."""

import copy
import math

import pytest
import torch
from torch import nn

from sde_control.controls import ControlMLP
from sde_control.generative import NDM, ScoreModel, data, likelihood, ndm
from sde_control.sdes import CLD, VP

f64 = dict(dtype=torch.float64)
T_MIN = 1e-3


class Denoiser(nn.Module):
    """A fixed nonlinear x_hat(z, t), enough to make every term non-trivial."""

    def forward(self, z, t):
        return 0.8 * z + 0.1 * torch.sin(3 * z) * torch.as_tensor(t, **f64).reshape(-1, 1)


class Bend(nn.Module):
    """G(x, t) = sin(x) + 0.5 t: F(x, t) = x + t G(x, t) bends the data in time."""

    def forward(self, x, t):
        return torch.sin(x) + 0.5 * torch.as_tensor(t, **f64).reshape(-1, 1)


def identity():
    transform = ndm.NeuralTransform(2).double()  # the zero-initialised G: F(x, t) = x exactly
    assert all(float(p.detach().abs().max()) == 0 for p in transform.network.body[-1][-1].parameters())
    return transform


def vdm_terms(vp, denoiser, x, t, eps, eps_rec):
    """The continuous-time VP bound of Kingma et al. 2021 (eq. 17 with the decoder N(x_hat, 1/SNR)), written
    independently: SNR(t) = alpha^2 / sigma^2, and its time derivative by autograd."""
    t = t.clone().requires_grad_(True)
    alpha, var = vp.transition(torch.zeros_like(t), t)
    snr = alpha**2 / var
    (dsnr,) = torch.autograd.grad(snr.sum(), t)
    with torch.no_grad():
        z = alpha[:, None] * x + var.sqrt()[:, None] * eps
        diffusion = -0.5 * dsnr * (x - denoiser(z, t)).square().sum(-1)
        a, v = vp.transition(torch.zeros(()), torch.tensor(T_MIN, **f64))
        z0 = a * x + v.sqrt() * eps_rec
        rec = torch.distributions.Normal(denoiser(z0, torch.full((x.shape[0],), T_MIN, **f64)), (v / a**2).sqrt())
        aT, vT = vp.transition(torch.zeros(()), torch.tensor(vp.T, **f64))
        prior = torch.distributions.kl_divergence(torch.distributions.Normal(aT * x, vT.sqrt()),
                                                  torch.distributions.Normal(0.0, 1.0)).sum(-1)
    return diffusion, rec.log_prob(x).sum(-1), prior


def test_with_identity_transform_the_nelbo_is_the_vp_bound():
    vp, denoiser, transform = VP(0.1, 10.0), Denoiser(), identity()
    g = torch.Generator().manual_seed(0)
    n = 256
    x = torch.randn(n, 2, generator=g, **f64) + torch.tensor([1.0, -0.5], **f64)
    t = T_MIN + (1 - T_MIN) * torch.rand(n, generator=g, **f64)
    eps, eps_rec = torch.randn(n, 2, generator=g, **f64), torch.randn(n, 2, generator=g, **f64)
    with torch.no_grad():
        ours = (ndm.diffusion_integrand(transform, denoiser, vp, x, t, eps),
                ndm.reconstruction_log_likelihood(transform, denoiser, vp, x, T_MIN, eps_rec),
                ndm.prior_kl(transform, vp, x))
    for mine, theirs in zip(ours, vdm_terms(vp, denoiser, x, t, eps, eps_rec)):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10)

    # The same bound as generative/likelihood.py's on VP with the score s = -(z - alpha x_hat) / sigma^2: term by
    # term at the same (x, t, noise), and the whole estimator draw for draw.
    def score(z, tt):
        alpha, var = vp.transition(torch.zeros_like(tt), tt)
        tt = torch.as_tensor(tt, **f64).expand(z.shape[0])
        alpha, var = (torch.as_tensor(v, **f64).expand(z.shape[0])[:, None] for v in (alpha, var))
        return -(z - alpha * denoiser(z, tt)) / var

    with torch.no_grad():
        torch.testing.assert_close(likelihood.diffusion_integrand(score, vp, x, t, eps), ours[0], rtol=1e-9, atol=1e-9)
        torch.manual_seed(7)
        mine = ndm.negative_elbo(transform, denoiser, vp, x, T_MIN)
        torch.manual_seed(7)
        theirs = likelihood.negative_elbo(score, vp, x, T_MIN)
    torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-9)


def test_time_derivative_of_the_transform():
    transform = ndm.NeuralTransform(2, network=Bend())
    x, t = torch.randn(5, 2, **f64), torch.rand(5, **f64)
    F, F_dot = ndm.transform_with_time_derivative(transform, x, t)
    torch.testing.assert_close(F, x + t[:, None] * (torch.sin(x) + 0.5 * t[:, None]))
    torch.testing.assert_close(F_dot, torch.sin(x) + t[:, None])  # d/dt [t sin x + t^2 / 2]
    torch.testing.assert_close(transform(x, torch.zeros(5, **f64)), x)  # F(x, 0) = x


@pytest.mark.parametrize("eta", [0.0, 1.0], ids=["ode", "sde"])
def test_generative_process_transports_point_data(eta):
    """Data at one point x0 and the exact x_hat = x0: the ODE carries alpha_T F(x0, T) + sigma_T eps along
    alpha_t F(x0, t) + sigma_t eps (path by path), the SDE keeps the law N(alpha_t F(x0, t), sigma_t^2 I)."""
    vp = VP(0.1, 10.0)
    transform = ndm.NeuralTransform(2, network=Bend())
    x0 = torch.tensor([0.7, -1.2], **f64)

    def denoiser(z, t):
        return x0.expand(z.shape[0], 2)

    n = 1000 if eta == 0 else 10_000
    eps = torch.randn(n, 2, **f64)
    T = torch.full((1,), 1.0, **f64)
    aT, vT = vp.transition(torch.zeros(()), T)
    z_T = aT * transform(x0[None], T) + vT.sqrt() * eps
    # The uniform grid cannot follow sigma_t ~ sqrt(beta_0 t) down to 1e-3 at this accuracy: stop at 0.02.
    steps, t_end = (500, 0.02) if eta == 0 else (500, T_MIN)
    path = ndm.sample(transform, denoiser, vp, z_T, steps, eta=eta, t_min=t_end, solver="heun" if eta == 0 else "euler",
                      seed=0)
    t_end = torch.full((1,), t_end, **f64)
    a, v = vp.transition(torch.zeros(()), t_end)
    mean = a * transform(x0[None], t_end)
    if eta == 0:
        torch.testing.assert_close(path[-1], mean + v.sqrt() * eps, atol=1e-4, rtol=0)  # Heun, 500 steps: 3e-5
    else:
        z = path[-1]
        # Five standard errors, plus the Euler-Maruyama bias at 500 steps (a few 1e-4 on these scales).
        assert ((z.mean(0) - mean[0]).abs() < 5 * math.sqrt(float(v) / n) + 5e-4).all()
        assert ((z.var(0) - v).abs() < 5 * float(v) * math.sqrt(2 / n) + 5e-4).all()


def test_the_objective_trains_both_networks():
    vp = VP(0.1, 10.0)
    transform = ndm.NeuralTransform(2, width=16, depth=2).double()
    denoiser = ndm.NeuralTransform(2, width=16, depth=2).double()  # any network (z, t) -> x_hat
    x = torch.randn(64, 2, **f64)
    proposal = likelihood.TimeProposal(vp, T_MIN)

    def objective():
        torch.manual_seed(3)
        return ndm.negative_elbo(transform, denoiser, vp, x, T_MIN, proposal).mean()

    loss = objective()
    loss.backward()
    bias = transform.network.body[-1][-1].bias
    assert float(bias.grad.abs().max()) > 0 and float(denoiser.network.body[-1][-1].bias.grad.abs().max()) > 0
    with torch.no_grad():  # central difference of the transform's bias (the JVP's gradient is right)
        bias[0] += 1e-6
        plus = objective()
        bias[0] -= 2e-6
        minus = objective()
        bias[0] += 1e-6
    assert float(bias.grad[0]) == pytest.approx(float(plus - minus) / 2e-6, rel=1e-5, abs=1e-9)


def test_bad_input_is_refused():
    transform = identity()
    with pytest.raises(TypeError, match="VP"):
        ndm.negative_elbo(transform, Denoiser(), CLD(), torch.zeros(3, 2, **f64))
    with pytest.raises(ValueError, match="t_min"):
        ndm.negative_elbo(transform, Denoiser(), VP(), torch.zeros(3, 2, **f64), t_min=0.0)
    with pytest.raises(ValueError, match="eta"):
        ndm.sample(transform, Denoiser(), VP(), torch.zeros(3, 2, **f64), 4, eta=-1.0)


def test_the_model_with_identity_transform_is_the_vp_score_model():
    """NDM(dim) starts with F the identity (zero-initialised G) and x_hat from a noise-prediction network: with the
    same network weights its bits/dim equals the VP score model's, row by row at the same draws (the whole bound
    of the VP model, not just one term), and so does the ODE it samples by."""
    torch.manual_seed(0)
    network = ControlMLP(2, 16, 2)
    with torch.no_grad():
        network.body[-1][-1].weight.normal_(0, 0.3)  # a non-trivial eps_hat
    vp_model = ScoreModel(2, VP(0.1, 10.0), copy.deepcopy(network))
    model = NDM(2, network=copy.deepcopy(network))
    x = data.moons(500)
    ours, theirs = model.bits_per_dim(x, seed=3), vp_model.bits_per_dim(x, seed=3)
    # float32 networks: the two parameterisations round differently, and the residual s + eps / sigma cancels about
    # log10(1 / sigma_{t_min}) = 1.5 digits near t_min; 1e-4 of a bit is far below any difference of substance.
    torch.testing.assert_close(ours.per_sample, theirs.per_sample, rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(model.sample(100, steps=20, seed=1), vp_model.sample(100, steps=20, seed=1),
                               rtol=1e-4, atol=1e-4)


def test_the_model_trains_both_networks_samples_and_saves(tmp_path):
    torch.manual_seed(0)
    x = data.moons(2000)
    model = NDM(2, width=32, depth=2)
    history = model.fit(x, iterations=150, batch_size=256, lr=3e-3, progress=False, checkpoint=tmp_path / "ndm.pt")
    first, last = (sum(r["loss"] for r in part) / len(part) for part in (history[:20], history[-20:]))
    assert last < first - 1.0, (first, last)  # nats per dimension
    assert float(model.transform.network.body[-1][-1].weight.abs().max()) > 0  # F_phi moved off the identity
    for options, nfe in ((dict(method="em"), 6), (dict(method="ode"), 6), (dict(method="ode", solver="heun"), 12)):
        assert model.sample(40, steps=6, seed=0, **options).shape == (40, 2)
        assert model.last_nfe == nfe
    assert model.sample(40, steps=2, solver="rk45", rtol=1e-3, atol=1e-3).shape == (40, 2)
    with pytest.raises(ValueError, match=r"method must be one of \('em', 'ode'\) for NDM"):
        model.sample(10, method="gddim")
    loaded = NDM.load(tmp_path / "ndm.pt")
    torch.testing.assert_close(loaded.sample(30, steps=4, seed=2), model.sample(30, steps=4, seed=2))
    assert loaded.bits_per_dim(x[:100], seed=0).mean == pytest.approx(model.bits_per_dim(x[:100], seed=0).mean)
