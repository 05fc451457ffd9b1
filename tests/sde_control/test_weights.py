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

from sde_control.controls import ControlMLP
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
    "dis-ancestral": (lambda: dis_setup("ancestral"), (50, 200, 800)),
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


# ---------------------------------------------------------------------- DIS's variance floor
@pytest.mark.parametrize("integrator, ess_bounds", [("ancestral", (0.95, 1.0)), ("euler", (0.0, 0.1)),
                                                    ("exponential", (0.0, 0.1))])
def test_ancestral_dis_has_no_variance_floor(integrator, ess_bounds):
    """DIS on N(0, I_50) with the continuous-time optimal control ``u* = sigma(s) grad log p_{T-s} = -sigma(s) x``
    (every VP marginal of N(0, I) is N(0, I)), 128 steps. The ancestral step is the exact reversal of the noising
    kernel then, and every path has ``log w = log Z`` (measured ESS 1.000); Euler's and the exponential
    integrator's step variances differ from ``gamma_k`` and no control can fix a variance: ESS 0.024 and 0.0009
    (ELBO 3.4 nats below log Z)."""
    d = 50
    target = Gaussian(torch.zeros(d), 1.0, log_Z=0.3)
    reference = TimeReversalReference(VP(), d, integrator=integrator)
    with torch.no_grad():
        path = simulate_chain(lambda x, s: -reference.diffusion(s).to(x) * x, reference, reference.sample_initial(2000),
                              time_grid(1.0, 128), seed=0, keep_states=False)
        est = LogZEstimate.from_log_weights(log_weight(target, reference, path))
    assert ess_bounds[0] <= est.ess <= ess_bounds[1], est
    if integrator == "ancestral":
        assert abs(est.elbo - 0.3) < 1e-3


def perturbed(control, dim, scale=0.1, seed=0, in_dim=None):
    """``control`` plus a fixed random network (a 'perturbed control'); ``control=None``: the network alone."""
    torch.manual_seed(seed)
    network = ControlMLP(dim, width=16, depth=3, in_dim=in_dim).double()
    torch.nn.init.normal_(network.body[-1][-1].weight, std=scale)
    if control is None:
        return lambda z, s: network(z, s)
    return lambda z, s: control(z, s) + network(z, s)


def cmcd_optimal(T=1.0):
    r"""CMCD on ``pi_s ∝ N(0, I)^(1 - s/T) rho^(s/T)`` (Gaussian, precision ``P_s``, mean ``mu_s``): the drift
    correction ``NN = mu_s' + (v_s' / 2 v_s)(x - mu_s)`` keeps the marginals on ``pi_s`` in continuous time
    (it solves ``div(pi_s NN) = -d pi_s / ds``); returns the forward and backward controls
    ``(grad log pi_s +- NN) / sqrt(2)``."""

    def parts(s):
        lam = float(s) / T
        P, P_dot = (1 - lam) + lam / S2, (1 / S2 - 1) / T
        mu = lam * MEAN.double() / (S2 * P)
        mu_dot = (MEAN.double() / S2) * (P / T - lam * P_dot) / P**2
        return P, P_dot, mu, mu_dot

    def score(x, s):
        P, _, mu, _ = parts(s)
        return -P * (x - mu)

    def correction(x, s):
        P, P_dot, mu, mu_dot = parts(s)
        return mu_dot - P_dot / (2 * P) * (x - mu)

    return (lambda x, s: (score(x, s) + correction(x, s)) / math.sqrt(2),
            lambda x, s: (score(x, s) - correction(x, s)) / math.sqrt(2))


def cmcd_reference(T=1.0):
    return TimeReversalReference(ScaledBrownian(2.0, T), 2, integrator="euler")


def test_cmcd_optimal_correction_gives_constant_weights():
    """With the exact annealing drift correction the weights tend to ``Z`` path by path: the spread of ``log w``
    falls like ``sqrt(h)`` (measured 0.30, 0.13, 0.066 at 25, 100, 400 steps), while unadjusted Langevin annealing
    (no correction) stays near 2.3 whatever the step count."""
    reference = cmcd_reference()
    forward, backward = cmcd_optimal()
    spreads = []
    for steps in (25, 100, 400):
        with torch.no_grad():
            path = simulate_chain(forward, reference, reference.sample_initial(2000).double(),
                                  time_grid(1.0, steps), backward=backward, seed=steps, keep_states=False)
            log_w = log_weight(TARGET, reference, path)
        est = LogZEstimate.from_log_weights(log_w)
        assert abs(est.log_z - LOG_Z) < 5 * math.sqrt((1 / est.ess - 1) / 2000) + 1e-3
        spreads.append(float(log_w.std()))
    assert spreads[0] > 1.8 * spreads[1] > 1.8**2 * spreads[2]
    assert spreads[2] < 0.1


def _kick(d):
    return torch.tensor([[1.0, 0.0], [-d, 1.0]], dtype=torch.float64)


def _drift(d):
    return torch.tensor([[1.0, d], [0.0, 1.0]], dtype=torch.float64)


def underdamped_optimal(reference, grid):
    r"""The optimal forward kernels of the underdamped chain for the Gaussian target, from the target-started
    backward chain (every map is linear, so every law is Gaussian; per coordinate a 2-d state ``(x, v)``): at step
    ``k`` the control puts the mean of ``v'`` at its conditional mean given ``z~_k = (x, v)``,
    ``u = (E[v' | x, v] - A v) / B``. Returns it and ``log p*_0``, the backward chain's law of ``z_0``."""
    h = float(grid[1] - grid[0])
    kernels = reference.forward_kernels(grid)
    A, B, c = float(kernels.scale[0]), float(kernels.control[0]), float(kernels.var[0])
    if reference.splitting == "OBAB":
        before, after = torch.eye(2, dtype=torch.float64), _kick(h / 2) @ _drift(h) @ _kick(h / 2)
    else:
        before, after = _drift(h / 2) @ _kick(h / 2), _kick(h / 2) @ _drift(h / 2)
    mean = torch.stack([MEAN.double(), torch.zeros(2, dtype=torch.float64)], -1)  # (d, 2): per coordinate
    cov = torch.diag(torch.tensor([S2, 1.0], dtype=torch.float64))
    gains = [None] * (grid.numel() - 1)
    joint = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, A]], dtype=torch.float64)  # (x, v') -> (x, v', A v')
    for k in reversed(range(grid.numel() - 1)):
        undo = torch.linalg.inv(after)
        m, C = mean @ undo.T @ joint.T, joint @ undo @ cov @ undo.T @ joint.T
        C[2, 2] += c  # v = A v' + sqrt(c) eps
        kept = [0, 2]  # (x, v)
        gain = C[1, kept] @ torch.linalg.inv(C[kept][:, kept])
        gains[k] = (m[:, 1] - m[:, kept] @ gain, gain)
        undo_before = torch.linalg.inv(before)
        mean, cov = m[:, kept] @ undo_before.T, undo_before @ C[kept][:, kept] @ undo_before.T

    def control(z, s):
        offset, gain = gains[round(float(s) / h)]
        v = z[:, 2:]
        return (offset + gain[0] * z[:, :2] + gain[1] * v - A * v) / B

    def log_p0(z):
        diff = torch.stack([z[:, :2] - mean[:, 0], z[:, 2:] - mean[:, 1]], -1)
        quadratic = torch.einsum("ndi,ij,ndj->n", diff, torch.linalg.inv(cov), diff)
        return -0.5 * quadratic - diff.shape[1] * 0.5 * torch.logdet(2 * math.pi * cov)

    return control, log_p0


@pytest.mark.parametrize("splitting", ["OBAB", "BAOAB"])
def test_underdamped_optimal_control_gives_constant_weights(splitting):
    """The underdamped chain's weight pinned like the overdamped ones: with the optimal forward kernels of the
    Gaussian target (:func:`underdamped_optimal`), ``log w = log Z + log p*_0(z_0) - log p_0(z_0)`` up to the
    O-step's variance mismatch, whose spread falls like ``sqrt(h)`` (measured 0.40, 0.19, 0.092 at 25, 100, 400
    steps, both splittings); the importance-sampled estimate is ``log Z`` within its standard error."""
    from sde_control.references import UnderdampedReference

    reference = UnderdampedReference(2, T=5.0, splitting=splitting)
    spreads = []
    for steps in (25, 100, 400):
        grid = time_grid(reference.T, steps)
        control, log_p0 = underdamped_optimal(reference, grid)
        z0 = reference.sample_initial(2000).double()
        with torch.no_grad():
            log_w = log_weight(TARGET, reference, simulate_chain(control, reference, z0, grid, seed=1,
                                                                 keep_states=False))
        est = LogZEstimate.from_log_weights(log_w)
        assert abs(est.log_z - LOG_Z) < 5 * math.sqrt((1 / est.ess - 1) / 2000) + 1e-3, (steps, est)
        residual = log_w - (log_p0(z0) - reference.log_initial(z0))
        assert abs(float(residual.mean()) - LOG_Z) < 3 * float(residual.std()) / math.sqrt(2000) + 0.1
        spreads.append(float(residual.std()))
    assert spreads[0] > 1.8 * spreads[1] > 1.8**2 * spreads[2]


def _dis_optimal(reference):
    vp = reference.sde

    def control(x, s):
        a, g = vp.transition(torch.tensor(0.0, **f64), 1.0 - s.double())
        return (reference.diffusion(s) * -(x - a * MEAN) / (a**2 * S2 + g)).to(x)

    return control


def unbiased_setups():
    """``(reference, forward control, backward control, step counts)``: perturbed optimal controls where there is an
    optimum, random backward controls, every kind of chain."""
    from sde_control.references import UnderdampedReference

    dis = TimeReversalReference(VP(), 2)
    dis_euler = TimeReversalReference(VP(), 2, integrator="euler")
    pis = ForwardReference(ScaledBrownian(0.2, 5.0), 2, 0.0)
    dds = ForwardReference(VP().time_flipped(), 2, 1.0)
    cmcd = cmcd_reference()
    cmcd_forward, cmcd_backward = cmcd_optimal()
    underdamped, underdamped_baoab = UnderdampedReference(2), UnderdampedReference(2, splitting="BAOAB")
    return {
        "dis-ancestral": (dis, perturbed(_dis_optimal(dis), 2), None, (3, 10, 128)),
        "dis-euler": (dis_euler, perturbed(_dis_optimal(dis_euler), 2), None, (3, 10)),
        "bridge": (dis, perturbed(_dis_optimal(dis), 2), perturbed(None, 2, seed=1), (3, 10)),
        "pis": (pis, perturbed(forward_setup(ScaledBrownian(0.2, 5.0), 0.0)[1], 2), None, (3, 10)),
        "dds": (dds, perturbed(forward_setup(VP().time_flipped(), 1.0)[1], 2), None, (3, 10)),
        "cmcd": (cmcd, perturbed(cmcd_forward, 2), perturbed(cmcd_backward, 2, seed=1), (3, 10)),
        "dis-underdamped": (underdamped, lambda grid: perturbed(underdamped_optimal(underdamped, grid)[0], 2,
                                                                in_dim=4), None, (5, 10)),
        "bridge-underdamped-baoab": (underdamped_baoab, lambda grid: perturbed(
            underdamped_optimal(underdamped_baoab, grid)[0], 2, in_dim=4), perturbed(None, 2, seed=1, in_dim=4),
            (5, 10)),
    }


@pytest.mark.parametrize("name", sorted(unbiased_setups()))
def test_kernel_ratio_is_unbiased_at_coarse_steps(name):
    """``E[w] = Z`` at any step count, for any forward and backward controls: the importance-sampled estimate from
    40,000 paths is within five standard errors (delta method, ``sqrt((1/ESS - 1)/n)``) of ``log Z`` at 3 and 10
    steps (5 and 10 for the underdamped chains, whose leapfrog steps of ``h = 5/3`` leave no effective sample; 128
    too for DIS's ancestral step), for perturbed controls of every sampler's chain."""
    reference, forward, backward, step_counts = unbiased_setups()[name]
    n = 40_000
    for steps in step_counts:
        grid = time_grid(reference.T, steps)
        control = forward(grid) if name.startswith(("dis-under", "bridge-under")) else forward  # per-grid optimum
        with torch.no_grad():
            path = simulate_chain(control, reference, reference.sample_initial(n).double(), grid, backward=backward,
                                  seed=steps, keep_states=False)
            est = LogZEstimate.from_log_weights(log_weight(TARGET, reference, path))
        standard_error = math.sqrt((1 / est.ess - 1) / n)
        assert est.ess > 0.01, (steps, est)  # the check has power
        assert abs(est.log_z - LOG_Z) < 5 * standard_error + 1e-3, (steps, est, standard_error)
