"""The reverse SDE and the probability-flow ODE: with the exact score of Gaussian data they return the data law
under every forward process, learned ones included."""

import pytest
import torch

from sde_control.generative import data
from sde_control.generative.sampling import (
    evaluations_per_step,
    probability_flow,
    reverse_paths,
    solve_ode_adaptive,
    time_grid,
)
from sde_control.generative.score_matching import gaussian_marginal, gaussian_score
from sde_control.sdes import VP

f64 = dict(dtype=torch.float64)
MEAN, COV = torch.tensor([1.0, -1.0], **f64), data.anisotropic_gaussian_covariance((1.0, 4.0), 30.0)


@pytest.mark.parametrize("method, solver, steps", [("ode", "heun", 100), ("em", "euler", 400)])
def test_exact_score_recovers_the_data_covariance(forward_process, method, solver, steps):
    sde = forward_process
    n, t_min = 4000, 1e-3
    mean_T, cov_T = gaussian_marginal(sde, torch.tensor(sde.T, **f64), MEAN, COV)
    x_T = mean_T + torch.randn(n, 2, **f64) @ torch.linalg.cholesky(cov_T).T  # the exact law of X_T
    with torch.no_grad():
        paths = reverse_paths(sde, gaussian_score(sde, MEAN, COV), x_T, steps, t_min, method=method, solver=solver)
    assert paths.shape == (steps + 1, n, 2)
    torch.testing.assert_close(paths[0], x_T)
    x = paths[-1]
    _, cov_end = gaussian_marginal(sde, torch.tensor(t_min, **f64), MEAN, COV)  # = COV + O(t_min)
    se_mean = (cov_end.diagonal() / n).sqrt()
    assert ((x.mean(0) - MEAN).abs() < 5 * se_mean + 0.02).all()
    # Five standard errors of each covariance entry plus 2 % of the largest for the time discretisation.
    se_cov = ((cov_end.diagonal()[:, None] * cov_end.diagonal()[None, :] + cov_end**2) / n).sqrt()
    assert ((x.T.cov() - cov_end).abs() < 5 * se_cov + 0.02 * cov_end.abs().max()).all()


def test_options_are_checked_and_seeds_fix_the_noise():
    sde, score, x_T = VP(), gaussian_score(VP(), MEAN, COV), torch.randn(8, 2, **f64)
    with torch.no_grad():
        a = reverse_paths(sde, score, x_T, 5, 1e-3, method="em", seed=3)
        b = reverse_paths(sde, score, x_T, 5, 1e-3, method="em", seed=3)
    torch.testing.assert_close(a, b)
    for kwargs, message in [(dict(method="flow"), "method must be one of"), (dict(solver="rk4"), "solver must be"),
                            (dict(steps=0), "steps must be a positive int"), (dict(t_min=0.0), "t_min must lie")]:
        options = dict(steps=5, t_min=1e-3) | kwargs
        with pytest.raises(ValueError, match=message):
            reverse_paths(sde, score, x_T, options.pop("steps"), options.pop("t_min"), **options)
    assert [evaluations_per_step(*a) for a in (("em",), ("ode", "euler"), ("ode", "heun"), ("gddim", "euler", False),
                                               ("gddim", "euler", True))] == [1, 1, 2, 1, 2]


def test_time_grids():
    uniform, quadratic = time_grid(1.0, 1e-3, 4, power=1.0), time_grid(1.0, 1e-3, 4)
    torch.testing.assert_close(uniform, torch.linspace(1.0, 1e-3, 5, **f64))
    torch.testing.assert_close(quadratic.sqrt(), torch.linspace(1.0, 1e-3**0.5, 5, **f64))
    with pytest.raises(ValueError, match="positive int"):
        time_grid(1.0, 1e-3, 0)


def test_the_adaptive_solver_follows_the_exact_flow():
    """For data N(mu, diag(c)) under VP the probability flow is known in closed form, coordinate by coordinate:
    (x_t - a_t mu) / sqrt(v_t) is constant along it, v_t = a_t^2 c + sigma_t^2. RK45 at rtol = atol = 1e-7 follows
    it to 1e-5 at every reported time, path by path; at rtol 1e-3 it is visibly coarser."""
    sde, c = VP(), torch.tensor([4.0, 0.01], **f64)

    def moments(t):
        a, s2 = sde.transition(torch.zeros_like(t), t)
        return a * MEAN, a**2 * c + s2

    def score(x, t):
        mean, var = moments(t)
        return -(x - mean) / var

    times = time_grid(sde.T, 1e-3, 4)
    mean_T, var_T = moments(times[0])
    x_T = mean_T + var_T.sqrt() * torch.randn(200, 2, **f64)
    exact = torch.stack([moments(t)[0] + (moments(t)[1] / var_T).sqrt() * (x_T - mean_T) for t in times])
    paths = solve_ode_adaptive(probability_flow(sde, score), x_T, times, rtol=1e-7, atol=1e-7)
    assert paths.shape == (5, 200, 2)
    assert float((paths - exact).abs().max()) < 1e-5
    coarse = solve_ode_adaptive(probability_flow(sde, score), x_T, times, rtol=1e-3, atol=1e-3)
    assert float((coarse - exact).abs().max()) > 1e-5
