"""Integration through torchsde: same path as a hand-written loop, adjoint gradients."""

import math

import pytest
import torch

from sde_control.brownian import GridBrownian
from sde_control.controls import ControlMLP
from sde_control.integrate import simulate_chain, simulate_continuous, solve
from sde_control.references import ForwardReference, TimeReversalReference, time_grid
from sde_control.sdes import VP, ScaledBrownian


def random_control(dim, dtype=torch.float32):
    """A control network with a non-zero last layer (the default starts at zero)."""
    control = ControlMLP(dim, width=16, depth=3).to(dtype)
    torch.nn.init.normal_(control.body[-1][-1].weight, std=0.3)
    return control


REFERENCES = {
    "dis-euler": lambda d: TimeReversalReference(VP(), d, integrator="euler"),
    "dis-exponential": lambda d: TimeReversalReference(VP(), d, integrator="exponential"),
    "pis": lambda d: ForwardReference(ScaledBrownian(), d, initial_std=0.0),
    "dds": lambda d: ForwardReference(VP().time_flipped(), d, initial_std=1.0),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_torchsde_path_equals_hand_written_loop(name):
    dim, batch, steps = 3, 64, 25
    reference = REFERENCES[name](dim)
    control = random_control(dim, torch.float64)
    grid = time_grid(reference.T, steps)
    x0 = reference.sample_initial(batch).double()
    with torch.no_grad():
        path = simulate_chain(control, reference, x0, grid, seed=7)

        bm = GridBrownian((batch, dim), seed=7, dtype=torch.float64)
        coef = reference.forward_kernels(grid)
        x, control_term, noise_term = x0, torch.zeros(batch, dtype=torch.float64), torch.zeros(batch, dtype=torch.float64)
        states = [x]
        for k in range(steps):
            A, B, v = coef.scale[k], coef.control[k], coef.var[k]
            u, xi = control(x, grid[k]), bm(k, k + 1)
            x = A * x + B * u + v.sqrt() * xi
            control_term -= B**2 / (2 * v) * (u * u).sum(-1)
            noise_term += B / v.sqrt() * (u * xi).sum(-1)
            states.append(x)
    torch.testing.assert_close(path.states, torch.stack(states), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(path.control_cost, control_term, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(path.noise_cost, noise_term, rtol=1e-10, atol=1e-12)


def adjoint_and_backprop_gradients(method, steps, seed=3):
    dim, batch = 2, 16
    reference = TimeReversalReference(VP(), dim)
    control = random_control(dim, torch.float64)
    grid = time_grid(reference.T, steps)
    x0 = torch.randn(batch, dim, dtype=torch.float64)
    grads = []
    for adjoint in (True, False):
        control.zero_grad()
        x_T, energy = simulate_continuous(control, reference, x0, grid, seed=seed, method=method, adjoint=adjoint)
        (x_T.square().sum(-1) + energy).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in control.parameters()]))
    return grads


def test_reversible_heun_adjoint_matches_backpropagation():
    adjoint, backprop = adjoint_and_backprop_gradients("reversible_heun", steps=20)
    assert (adjoint - backprop).norm() <= 1e-8 * backprop.norm()


def test_euler_adjoint_error_shrinks_with_the_step():
    errors = []
    for steps in (10, 40, 160):
        adjoint, backprop = adjoint_and_backprop_gradients("euler", steps)
        errors.append(float((adjoint - backprop).norm() / backprop.norm()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < errors[0] / 4  # first order: 16 times smaller step, expect about 16 times smaller error


def test_grid_brownian_increments():
    bm = GridBrownian((20_000, 2), seed=1)
    torch.testing.assert_close(bm(3, 4), bm(3.0, 4.0))
    torch.testing.assert_close(bm(0, 3), bm(0, 1) + bm(1, 2) + bm(2, 3))
    assert not torch.equal(bm(0, 1), bm(1, 2))
    increments = bm(5, 6)
    # 40k standard normals: mean within 5 / sqrt(40k), variance within 5 sqrt(2 / 40k).
    assert abs(float(increments.mean())) < 5 / 200
    assert abs(float(increments.var()) - 1) < 5 * (2 / 40_000) ** 0.5
    with pytest.raises(ValueError, match="whole grid steps"):
        bm(0.5, 1.0)
    with pytest.raises(ValueError, match="backwards"):
        bm(2, 1)


def test_solve_ode_with_heun_is_second_order():
    """dx/ds = -x s on [0, 1]: x(1) = x0 exp(-1/2); Heun's error falls four-fold per halving."""
    x0 = torch.ones(1, 1, dtype=torch.float64)
    errors = []
    for steps in (20, 40, 80):
        grid = time_grid(1.0, steps)
        path = solve(lambda x, k: -x * grid[k], x0, grid, method="heun")
        assert path.shape == (steps + 1, 1, 1)
        errors.append(abs(float(path[-1, 0, 0]) - math.exp(-0.5)))
    assert 3.5 < errors[0] / errors[1] < 4.5 and 3.5 < errors[1] / errors[2] < 4.5


def test_solve_sde_equals_hand_written_loop_with_degenerate_noise():
    """Euler-Maruyama with noise on the second coordinate only (G = [0, 1]^T)."""
    grid = time_grid(1.0, 30)
    x0 = torch.randn(50, 2, dtype=torch.float64)
    drift = lambda x, k: torch.stack([x[:, 1], -x[:, 0] - x[:, 1]], dim=1)  # noqa: E731
    diffusion = lambda k, xi: torch.cat([torch.zeros_like(xi), xi], dim=1)  # noqa: E731
    path = solve(drift, x0, grid, diffusion=diffusion, noise_dim=1, seed=4)
    bm = GridBrownian((50, 1), seed=4, dtype=torch.float64)
    x, h = x0, 1 / 30
    for k in range(30):
        x = x + h * drift(x, k) + h**0.5 * diffusion(k, bm(k, k + 1))
    torch.testing.assert_close(path[-1], x, rtol=1e-12, atol=1e-12)


class NearOptimalDDSControl(torch.nn.Module):
    """DDS's optimal control for ``N((1, -0.5), 0.3 I)`` plus a small random network (float64)."""

    def __init__(self, reference):
        super().__init__()
        self.reference, self.mean = reference, torch.tensor([1.0, -0.5], dtype=torch.float64)
        self.a = 1 / 0.3 - 1 / reference.terminal_var
        self.network = random_control(2, torch.float64)
        torch.nn.init.normal_(self.network.body[-1][-1].weight, std=0.05)

    def forward(self, x, s):
        s = torch.as_tensor(s, dtype=torch.float64)
        e, gamma = self.reference.sde.transition(s, torch.tensor(1.0, dtype=torch.float64))
        c = self.mean / (0.3 * self.a)
        return self.reference.diffusion(s) * (-self.a * e * (e * x - c) / (1 + self.a * gamma)) + self.network(x, s)


def test_dds_euler_adjoint_at_a_near_optimal_control():
    """DDS near its optimum on the 2-d Gaussian: the Euler adjoint's continuous objective is within 0.08 of the
    discrete ELBO at 100 steps where reversible Heun's is off by more than 0.3 (its forward solution on the
    contracting drift; ``benchmarks/adjoint_accuracy.py --table dds``: 0.030 against 0.687, Euler 0.630), and the
    Euler adjoint's gradient error against backpropagation through the same solver falls with the step (there 0.45,
    0.20, 0.10 at 100, 200, 400 steps with 500 paths; here 100 paths at 50, 100, 200 steps); below 0.5 at 200."""
    from sde_control.losses import kl_loss
    from sde_control.targets import Gaussian
    from sde_control.weights import continuous_objective

    target = Gaussian(torch.tensor([1.0, -0.5], dtype=torch.float64), 0.3, log_Z=0.7)
    reference = REFERENCES["dds"](2)
    control = NearOptimalDDSControl(reference)
    x0 = reference.sample_initial(500).double()
    grid = time_grid(reference.T, 100)
    with torch.no_grad():
        elbo = float(kl_loss(target, reference, control, x0, grid).log_weights.mean())
        objective = {method: float(continuous_objective(target, reference, x0, *simulate_continuous(
            control, reference, x0, grid, method=method, adjoint=False, seed=1)).mean())
            for method in ("euler", "reversible_heun")}
    assert abs(objective["euler"] - elbo) < 0.08 and abs(objective["reversible_heun"] - elbo) > 0.3, (elbo, objective)
    errors = []
    for steps in (50, 100, 200):
        gradients = []
        for adjoint in (False, True):
            control.zero_grad()
            x_T, energy = simulate_continuous(control, reference, x0[:100], time_grid(1.0, steps), method="euler",
                                              adjoint=adjoint, seed=2)
            (-continuous_objective(target, reference, x0[:100], x_T, energy).mean()).backward()
            gradients.append(torch.cat([p.grad.flatten() for p in control.parameters()]))
        errors.append(float((gradients[1] - gradients[0]).norm() / gradients[0].norm()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.5, errors
