"""Forward processes diagonal in an orthonormal basis: the DCT, and closed-form transitions that equal the matrix
exponential of the same process written densely, piece by piece."""

import math

import pytest
import scipy.fft
import torch

from sde_control.generative import VSDMForward
from sde_control.generative.diagonal import DiagonalVSDMForward, OrthonormalBasis, dct_matrix
from sde_control.sdes import VP

f64 = dict(dtype=torch.float64)


def test_the_dct_is_orthonormal_and_is_scipys():
    D = dct_matrix(7)
    torch.testing.assert_close(D @ D.T, torch.eye(7, **f64))
    torch.testing.assert_close(D, torch.from_numpy(scipy.fft.dct(torch.eye(7, **f64).numpy(), axis=0, norm="ortho")))
    x = torch.randn(5, 2 * 4 * 6, **f64)
    basis = OrthonormalBasis("dct", (2, 4, 6))
    z = basis(x)
    expected = scipy.fft.dctn(x.reshape(5, 2, 4, 6).numpy(), axes=(2, 3), norm="ortho").reshape(5, -1)
    torch.testing.assert_close(z, torch.from_numpy(expected))
    torch.testing.assert_close(basis.inverse(z), x)
    torch.testing.assert_close(basis.matrix() @ x.T, z.T)
    torch.testing.assert_close(OrthonormalBasis("pixel", (2, 4, 6))(x), x)


def process(basis="dct", knots=3, seed=0, scale=0.6):
    sde = DiagonalVSDMForward((1, 2, 3), basis, knots=knots)
    with torch.no_grad():
        sde.weight.copy_(scale * torch.randn(knots, 6, generator=torch.Generator().manual_seed(seed), **f64))
        sde.weight[0, 0] = 0.5  # c = 1 - 2 lambda = 0: the removable singularity of (1 - e^{-cb}) / c
    return sde


def dense(sde, piece):
    """The same process on one piece, written as a full matrix A = B^T diag(lambda_j) B (matrix exponential)."""
    full = VSDMForward(sde.dim, sde.schedule.beta_0, sde.schedule.beta_T, sde.T)
    B = sde.basis.matrix()
    with torch.no_grad():
        full.weight.copy_(B.T @ torch.diag(sde.weight[piece]) @ B)
    return full


@pytest.mark.parametrize("basis", ["dct", "pixel"])
def test_transitions_within_a_piece_are_the_matrix_exponential(basis):
    sde = process(basis, knots=1)
    t0, t1 = torch.tensor([0.0, 0.2, 0.5], **f64), torch.tensor([0.3, 0.9, 1.0], **f64)
    psi, sigma = sde.transition_matrices(t0, t1)
    psi_ref, sigma_ref = dense(sde, 0).transition_matrices(t0, t1)
    torch.testing.assert_close(psi, psi_ref)
    torch.testing.assert_close(sigma, sigma_ref)


def test_transitions_across_pieces_compose_the_pieces_exact_transitions():
    sde = process(knots=3)  # pieces [0, 1/3), [1/3, 2/3), [2/3, 1]
    t0, t1 = torch.tensor(0.1, **f64), torch.tensor(0.95, **f64)
    psi, sigma = torch.eye(6, **f64), torch.zeros(6, 6, **f64)
    for piece, (lo, hi) in enumerate([(0.1, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 0.95)]):
        p, s = dense(sde, piece).transition_matrices(torch.tensor(lo, **f64), torch.tensor(hi, **f64))
        psi, sigma = p @ psi, p @ sigma @ p.T + s
    got_psi, got_sigma = sde.transition_matrices(t0, t1)
    torch.testing.assert_close(got_psi, psi)
    torch.testing.assert_close(got_sigma, sigma)


def test_zero_A_is_vp_and_operators_match_the_dense_matrices():
    sde = DiagonalVSDMForward((1, 2, 3), "dct", knots=2)
    t = torch.tensor([0.0, 0.4, 1.0], **f64)
    a, gamma = sde.transition(torch.zeros_like(t), t)
    a_vp, gamma_vp = VP(0.1, 10.0).transition(torch.zeros_like(t), t)
    torch.testing.assert_close(a, a_vp[:, None].expand(3, 6))
    torch.testing.assert_close(gamma, gamma_vp[:, None].expand(3, 6))

    sde = process(knots=3)
    x0, eps, times = torch.randn(4, 6, **f64), torch.randn(4, 6, **f64), torch.tensor([0.05, 0.3, 0.6, 0.99], **f64)
    psi, sigma = sde.transition_matrices(torch.zeros_like(times), times)
    values, vectors = torch.linalg.eigh(sigma)
    root = vectors @ torch.diag_embed(values.sqrt()) @ vectors.transpose(-1, -2)  # the symmetric L_t
    expected = (psi @ x0[..., None] + root @ eps[..., None]).squeeze(-1)
    torch.testing.assert_close(sde.perturb(x0, times, eps), expected)
    torch.testing.assert_close(sde.noise_to_score(eps, times), -torch.linalg.solve(root, eps[..., None]).squeeze(-1))
    torch.testing.assert_close(sde.drift(x0, times), (sde.drift_matrix(times) @ x0[..., None]).squeeze(-1))


def test_gradients_of_the_transition_are_finite_differences():
    sde = process(knots=2, scale=0.3)

    def gamma_sum(w):
        with torch.no_grad():
            sde.weight.copy_(w)
        return sde.transition(torch.tensor(0.2, **f64), torch.tensor(0.8, **f64))[1].sum()

    loss = sde.transition(torch.tensor(0.2, **f64), torch.tensor(0.8, **f64))[1].sum()
    (grad,) = torch.autograd.grad(loss, sde.weight)
    base = sde.weight.detach().clone()
    h = 1e-6
    for index in [(0, 0), (1, 3), (0, 5)]:
        up, down = base.clone(), base.clone()
        up[index] += h
        down[index] -= h
        with torch.no_grad():
            numeric = (gamma_sum(up) - gamma_sum(down)) / (2 * h)
        assert float(grad[index]) == pytest.approx(float(numeric), rel=1e-6, abs=1e-9)
    assert math.isfinite(float(grad[0, 0]))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="basis must be one of"):
        DiagonalVSDMForward((1, 2, 2), "fourier")
    with pytest.raises(ValueError, match=r"needs the image shape \(C, H, W\)"):
        DiagonalVSDMForward((4,), "dct")
    with pytest.raises(ValueError, match="acts on vectors of dimension 4"):
        OrthonormalBasis("dct", (1, 2, 2))(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="0 <= t0 <= t1 <= T"):
        DiagonalVSDMForward((1, 2, 2)).transition(torch.tensor(0.5), torch.tensor(0.2))


# ---------------------------------------------------------------------------------------------- VSDM in the basis
from sde_control.generative import VSDM, ScoreModel, data, images  # noqa: E402
from sde_control.generative.diagonal import backward_statistics, diagonal_objective, path_statistics  # noqa: E402
from sde_control.generative.score_matching import gaussian_marginal, gaussian_score  # noqa: E402
from sde_control.generative.vsdm import variational_objective  # noqa: E402

# Data stretched along (1, 1) / sqrt 2, the first vector of the 2-point DCT: axis-aligned in the basis.
COV = data.anisotropic_gaussian_covariance((0.5, 16.0), -45.0)
MEAN = torch.zeros(2, **f64)


def test_the_objective_in_statistics_is_the_dense_objective():
    sde = process(knots=3)
    g = torch.Generator().manual_seed(3)
    times = torch.linspace(1.0, 1e-3, 9, **f64)  # crosses all three pieces
    X, S = torch.randn(9, 50, 6, generator=g, **f64), torch.randn(9, 50, 6, generator=g, **f64)
    weights = torch.rand(9, generator=g, **f64)
    V = S - torch.einsum("kij,kpj->kpi", sde.A(times), X)
    current = sde.weight.detach().clone()
    stats = path_statistics(sde, X, S, times, weights)
    with torch.no_grad():
        sde.weight.copy_(torch.randn(3, 6, generator=g, **f64))  # evaluate J at another lambda than A^cur
    for zeta in (1.0, 0.75):
        dense = variational_objective(sde.A(times), X, V, weights, zeta)
        torch.testing.assert_close(diagonal_objective(sde, zeta, stats)(0)[0], dense)
    assert not torch.equal(current, sde.weight)


def test_forward_update_has_the_fixed_point_and_the_pull_in_the_basis():
    """As the full-matrix objective (tests/generative/test_vsdm.py): from the forward marginals with the exact score
    the gradient ``R + zeta W`` vanishes at zeta = 1; from N(0, I) it pushes the long axis towards more contraction."""
    sde = DiagonalVSDMForward((1, 1, 2), "dct", knots=2)
    score = gaussian_score(sde, MEAN, COV)
    times = torch.linspace(1.0, 1e-3, 41, **f64)
    weights = sde.g2(times) * float(times[0] - times[1])
    weights[[0, -1]] /= 2
    with torch.no_grad():
        mean, cov = gaussian_marginal(sde, times, MEAN, COV)
        X = mean[:, None] + torch.randn(41, 20_000, 2, **f64) @ torch.linalg.cholesky(cov).transpose(-1, -2)
        S = torch.stack([score(X[k], times[k]) for k in range(41)])
    stats = path_statistics(sde, X, S, times, weights)
    gradient = stats.products + stats.weights[:, None]  # dJ/dlambda at lambda = 0, zeta = 1
    # Monte Carlo error of E[z s] per time about 1.5 / sqrt(20000); 5 % of the weight is a wide margin.
    assert (gradient.abs() < 0.05 * stats.weights[:, None]).all()
    backward = backward_statistics(sde, score, 20_000, 40, 1e-3, dtype=torch.float64)
    gradient = backward.products + backward.weights[:, None]
    long, short = gradient[:, 0].sum(), gradient[:, 1].sum()  # z_0 is the long axis
    assert float(long) > 0.1 * float(backward.weights.sum()) > abs(float(short))


class ExactNoise(torch.nn.Module):
    """The noise prediction of the exact score of N(MEAN, COV) under ``sde`` (L_t = B^T diag(sqrt gamma) B)."""

    def __init__(self, sde):
        super().__init__()
        self.sde, self.score = sde, gaussian_score(sde, MEAN, COV)

    def forward(self, x, t):
        t = torch.as_tensor(t, **f64)
        _, gamma = self.sde.transition(torch.zeros_like(t), t)
        return -self.sde.basis.inverse(gamma.sqrt() * self.sde.basis(self.score(x, t)))


def test_every_sampler_integrates_the_learned_A_t():
    """The VSDM reference code's image sampler ignores its learned A: with the exact score of a process whose A_t is
    far from 0, integrating VP's drift instead gives the wrong law; ours returns the data's covariance with the
    reverse SDE, the probability-flow ODE and gDDIM's exponential integrator. (A_t: strong contraction of the long
    axis and expansion of the short one on [0, T/2), VP after, so that the terminal law is N(0, I) within 2 % and the
    prior draw is exact enough.)"""
    model = VSDM(2, basis="dct", image_shape=(1, 1, 2), knots=2, ema_decay=None, forward_ema_decay=None)
    with torch.no_grad():
        model.sde.weight.copy_(torch.tensor([[-1.5, 0.3], [0.0, 0.0]], **f64))
    _, terminal = gaussian_marginal(model.sde, torch.tensor(1.0, **f64), MEAN, COV)
    assert (terminal - torch.eye(2, **f64)).abs().max() < 0.02
    model.network = model.trainer.module = ExactNoise(model.sde)
    vp = ScoreModel(2, VP(0.1, 10.0), ExactNoise(model.sde), ema_decay=None)  # the same network, A ignored
    n = 4000
    # The reverse drift expands the long axis at rate beta (1/2 - lambda) <= 10: Euler-Maruyama needs fine steps,
    # Heun's second order far fewer.
    for method, steps, solver in (("em", 600, "euler"), ("ode", 100, "heun"), ("gddim", 100, None)):
        with torch.no_grad():
            if method == "gddim":  # the exponential integrator integrates the linear part exactly
                x, wrong = (images.sample(m, n, steps, "gddim", seed=0).double() for m in (model, vp))
            else:
                x = model.sample(n, steps, method=method, solver=solver, seed=0).double()
                wrong = vp.sample(n, steps, method=method, solver=solver, seed=0).double()
        # Five standard errors of each covariance entry, plus 3 % of the largest entry for the time discretisation.
        se = ((COV.diagonal()[:, None] * COV.diagonal()[None, :] + COV**2) / n).sqrt()
        assert ((x.T.cov() - COV).abs() < 5 * se + 0.03 * 16.0**2).all(), (method, x.T.cov())
        assert (wrong.T.cov() - COV).abs().max() > 0.3 * 16.0**2, (method, wrong.T.cov())  # 10 times too small


def test_a_short_run_contracts_the_long_axis_in_the_basis():
    x = data.anisotropic_gaussian(20_000, std=(0.5, 16.0), angle=-45.0, seed=0)
    model = VSDM(2, basis="dct", image_shape=(1, 1, 2), knots=2, width=32, depth=3)
    options = dict(forward_iterations=30, paths=400, path_steps=40, lr=3e-3, progress=False)
    model.fit(x, 100, stages=1, **options)
    kl0 = model.prior_kl(x)
    model.fit(x, 400, stages=4, **options)
    lam = model.sde.weight.detach()
    assert lam[:, 0].mean() < 0 and (lam[:, 0] < lam[:, 1]).all()  # more contraction along the long axis
    assert model.prior_kl(x) < 0.8 * kl0


@pytest.mark.parametrize("knots", [1, 3])
def test_the_exponential_sampler_is_gddim_of_order_one_on_the_dense_form(knots):
    from sde_control.generative.diagonal import exponential_sample
    from sde_control.generative.gddim import gddim_sample, time_grid

    sde = process(knots=knots)  # d = 6, DCT of (1, 2, 3), lambda random on each piece
    mean, factor = torch.linspace(-1, 1, 6, **f64), torch.randn(6, 6, generator=torch.Generator().manual_seed(5), **f64)
    score = gaussian_score(sde, mean, factor @ factor.T / 6 + 0.1 * torch.eye(6, **f64))
    x_T = torch.randn(50, 6, generator=torch.Generator().manual_seed(6), **f64)
    times = time_grid(sde.T, 1e-3, 12)
    ours = exponential_sample(sde, score, x_T, times)
    # gDDIM's R is the Cholesky factor at T propagated by RK4 in log t (128 substeps), ours the symmetric root in
    # closed form: with A constant the iterates agree to RK4's error; where A_t jumps inside a step, RK4 loses its
    # order on the substep that holds the jump (an error of order the substep times the jump: 1e-3 here).
    tolerance = 1e-6 if knots == 1 else 3e-3
    torch.testing.assert_close(ours, gddim_sample(sde, score, x_T, 12, times=times), rtol=0, atol=tolerance)


def test_model_sample_takes_the_exponential_sampler_for_gddim_of_order_one():
    """``model.sample(method="gddim")`` on a process diagonal in a basis is :func:`exponential_sample` from the same
    prior draw on the same grid (``O(d)`` per step at any ``d``), with one network evaluation per step counted; its
    path ends at the sample. Other gDDIM options take the dense integrator (small ``d`` only)."""
    from sde_control.generative import VSDM
    from sde_control.generative.diagonal import exponential_sample
    from sde_control.generative.gddim import time_grid

    model = VSDM(6, basis="dct", image_shape=(1, 2, 3), width=8, depth=2)
    y, paths = model.sample(40, 9, method="gddim", seed=4, return_paths=True)
    assert model.last_nfe == 9 and paths.shape == (10, 40, 6)
    torch.testing.assert_close(paths[-1], y)
    x_T = torch.randn(40, 6, generator=torch.Generator().manual_seed(4))
    times = time_grid(model.sde.T, model.t_min, 9)
    torch.testing.assert_close(y, exponential_sample(model.sde, model.score, x_T, times))
    assert model.sample(40, 9, method="gddim", order=2, seed=4).shape == (40, 6) and model.last_nfe == 9
