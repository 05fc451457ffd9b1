"""The log-weight pinned by analytic optimal controls on a Gaussian target (docs/samplers.md, section 'The discrete-time weight').

For ``rho = Z N(m, s2 I)`` the optimal control of every reference is known in closed form. With
it, ``log w`` equals ``log h(X_0)`` path by path in the limit of small steps, where ``h(x) =
E[rho / pi (X_T) | X_0 = x]`` (a constant ``Z`` for PIS, which starts at a point, and for DIS
started from the exact law of ``Y_T``; a quadratic in ``x`` for DDS, whose ``N(0, I)`` start is
not the exact law). The kernel-ratio weight has ``E[w] = Z`` at every step count, so the
importance-sampled estimate is within its standard error of ``log Z``. Together these pin the
sign and scale of every term.
"""

import math

import pytest
import torch

from sde_control.estimators import LogZEstimate
from sde_control.integrate import simulate_chain
from sde_control.references import ForwardReference, TimeReversalReference, time_grid
from sde_control.sdes import VP, ScaledBrownian
from sde_control.weights import log_weight, trajectory_from_states, reference_paths_from
from sde_control.targets import Gaussian

MEAN, S2, LOG_Z = torch.tensor([1.0, -0.5]), 0.3, 0.7
TARGET = Gaussian(MEAN, S2, log_Z=LOG_Z)
f64 = dict(dtype=torch.float64)


def dis_setup(integrator):
    """DIS from the exact law of Y_T with u* = sigma(s) grad log p_{T-s}."""
    vp = VP()
    a_T, g_T = vp.transition(torch.tensor(0.0, **f64), torch.tensor(1.0, **f64))
    reference = TimeReversalReference(
        vp, 2, prior_mean=(a_T * MEAN).float(), prior_std=math.sqrt(a_T**2 * S2 + g_T), integrator=integrator
    )

    def control(x, s):
        a, g = vp.transition(torch.tensor(0.0, **f64), 1.0 - s.double())
        score = -(x - a * MEAN) / (a**2 * S2 + g)
        return (reference.diffusion(s) * score).to(x)

    return reference, control, lambda x0: torch.zeros(x0.shape[0])


def forward_setup(sde, initial_std):
    r"""PIS/DDS: u* = sigma grad log h(x, s), ``h`` the Gaussian integral of ``rho / pi_T``
    against the reference transition from ``s`` to ``T``; returns also the quadratic part of
    ``log h(x, 0)``."""
    reference = ForwardReference(sde, 2, initial_std)
    a = 1 / S2 - 1 / reference.terminal_var
    c = MEAN / (S2 * a)
    T = torch.tensor(sde.T, **f64)

    def log_h_quadratic(x, s):
        e, gamma = sde.transition(torch.as_tensor(s, **f64), T)
        return -a * (e * x - c).square().sum(-1) / (2 * (1 + a * gamma))

    def control(x, s):
        with torch.enable_grad():
            x = x.detach().double().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_h_quadratic(x, s).sum(), x)
        return (reference.diffusion(s) * grad).float()

    return reference, control, lambda x0: log_h_quadratic(x0.double(), 0.0).float()


SETUPS = {
    "dis-euler": (lambda: dis_setup("euler"), (50, 200, 800)),
    "dis-exponential": (lambda: dis_setup("exponential"), (50, 200, 800)),
    "pis": (lambda: forward_setup(ScaledBrownian(0.2, 5.0), 0.0), (100, 400, 1600)),
    "dds": (lambda: forward_setup(VP().time_flipped(), 1.0), (100, 400, 1600)),
}


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_optimal_control_gives_constant_weights(name):
    setup, step_counts = SETUPS[name]
    reference, control, log_h0 = setup()
    n = 2000
    spreads = []
    for steps in step_counts:
        grid = time_grid(reference.T, steps)
        with torch.no_grad():
            path = simulate_chain(control, reference, reference.sample_initial(n), grid, seed=steps)
            log_w = log_weight(TARGET, reference, path)
        est = LogZEstimate.from_log_weights(log_w)
        # Delta method: the relative variance of the normalised weights is 1/ESS - 1.
        standard_error = math.sqrt((1 / est.ess - 1) / n)
        assert abs(est.log_z - LOG_Z) < 5 * standard_error + 1e-3, (steps, est)
        residual = log_w - log_h0(path.states[0])
        spreads.append(float(residual.std()))
        # Flipping the sign of the noise term keeps the mean but inflates the spread.
        flipped = residual + 2 * path.noise_cost
        assert float(flipped.std()) > 5 * spreads[-1]
    assert spreads[0] > spreads[1] > spreads[2]
    assert spreads[2] < spreads[0] / 2.5  # steps grow 16-fold; the spread falls like sqrt(h) or faster


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_elbo_and_eubo_sandwich_log_z(name):
    """Paths of the target-started reference give the EUBO: ``ELBO <= log Z <= EUBO``; for the
    optimal control the two bounds close in as the weights become constant."""
    setup, step_counts = SETUPS[name]
    reference, control, _ = setup()
    grid = time_grid(reference.T, step_counts[-1])
    n = 2000
    with torch.no_grad():
        model_log_w = log_weight(TARGET, reference, simulate_chain(control, reference, reference.sample_initial(n), grid))
    states = reference_paths_from(reference, TARGET.sample(n), grid)
    target_log_w = log_weight(TARGET, reference, trajectory_from_states(control, reference, states, grid))
    est = LogZEstimate.from_log_weights(model_log_w, target_log_w)
    # Three standard errors of each mean (spreads below 0.3, n = 2000: under 0.02).
    assert est.elbo < LOG_Z + 3 * float(model_log_w.std()) / math.sqrt(n)
    assert est.eubo > LOG_Z - 3 * float(target_log_w.std()) / math.sqrt(n)
    # The gap is KL(model | target) + KL(target | model), about the variance of log w (< 0.07).
    assert est.eubo - est.elbo < 0.1
