"""The KL and log-variance losses against their definitions."""

import math

import torch
from torch import nn

from sde_control.controls import ControlMLP
from sde_control.integrate import simulate_chain
from sde_control.losses import kl_loss, log_variance_loss
from sde_control.references import ForwardReference, TimeReversalReference, time_grid
from sde_control.sdes import VP, ScaledBrownian
from sde_control.weights import log_weight
from sde_control.targets import Gaussian

TARGET = Gaussian(torch.tensor([1.0, -0.5]), 0.3, log_Z=0.7)


def random_control(dim):
    control = ControlMLP(dim, width=16, depth=3).double()
    nn.init.normal_(control.body[-1][-1].weight, std=0.3)
    return control


def grads(module):
    return torch.cat([p.grad.flatten() for p in module.parameters()])


def test_log_variance_gradient_is_that_of_the_variance_with_the_path_detached():
    """Recompute log w_u on the detached states of the same path, with the transition density
    written out independently, and differentiate its sample variance."""
    reference = TimeReversalReference(VP(), 2)
    control = random_control(2)
    grid = time_grid(1.0, 20)
    x0 = torch.randn(256, 2, dtype=torch.float64)
    torch.manual_seed(1)
    log_variance_loss(TARGET, reference, control, x0, grid).loss.backward()
    loss_grad = grads(control)

    torch.manual_seed(1)
    with torch.no_grad():
        states = simulate_chain(control, reference, x0, grid).states  # same seed: same path
    control.zero_grad()
    steps = reference.forward_kernels(grid)
    log_w = TARGET.log_prob(states[-1]) + reference.log_ratio(states, grid)
    for k in range(20):
        u = control(states[k], grid[k])
        mean = steps.scale[k] * states[k] + steps.control[k] * u
        log_q_u = torch.distributions.Normal(mean, steps.var[k].sqrt()).log_prob(states[k + 1]).sum(-1)
        log_q_0 = torch.distributions.Normal(steps.scale[k] * states[k], steps.var[k].sqrt()).log_prob(states[k + 1]).sum(-1)
        log_w = log_w + log_q_0 - log_q_u
    log_w.var().backward()
    torch.testing.assert_close(loss_grad, grads(control), rtol=1e-9, atol=1e-12)


def test_off_policy_weight_equals_on_policy_weight_at_u_equals_v():
    reference = ForwardReference(ScaledBrownian(), 2)
    control = random_control(2)
    grid = time_grid(reference.T, 30)
    x0 = reference.sample_initial(128).double()
    with torch.no_grad():
        on = log_weight(TARGET, reference, simulate_chain(control, reference, x0, grid, seed=5))
        off = log_weight(TARGET, reference, simulate_chain(control, reference, x0, grid, seed=5, detach_drift=True))
    torch.testing.assert_close(on, off, rtol=1e-12, atol=1e-12)


class ConstantControl(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([value], dtype=torch.float64))

    def forward(self, x, s):
        return self.theta.expand_as(x)


def test_expected_log_variance_gradient_is_twice_the_kl_gradient():
    """At v = u, E[grad Var(log w)] = 2 grad KL (1-d, constant control, PIS reference)."""
    target = Gaussian(torch.tensor([1.0], dtype=torch.float64), 0.5)
    reference = ForwardReference(ScaledBrownian(), 1)
    grid = time_grid(reference.T, 20)
    control = ConstantControl(0.1)
    lv, kl = [], []
    for _ in range(20):
        x0 = torch.zeros(2000, 1, dtype=torch.float64)
        control.zero_grad()
        log_variance_loss(target, reference, control, x0, grid).loss.backward()
        lv.append(float(control.theta.grad))
        control.zero_grad()
        kl_loss(target, reference, control, x0, grid).loss.backward()
        kl.append(2 * float(control.theta.grad))
    lv, kl = torch.tensor(lv), torch.tensor(kl)
    standard_error = math.sqrt(float(lv.var() + kl.var()) / 20)
    assert abs(float(lv.mean() - kl.mean())) < 5 * standard_error
    assert abs(float(kl.mean())) > 10 * standard_error  # the gradient is not trivially zero


def test_kl_loss_is_minus_the_elbo_and_adjoint_agrees_in_the_limit():
    """Without gradient, the KL loss is -mean(log w) up to the mean-zero noise term; its
    adjoint (continuous-time) value approaches it as the step shrinks."""
    reference = TimeReversalReference(VP(), 2, integrator="exponential")
    control = random_control(2)
    grid = time_grid(1.0, 400)
    x0 = reference.sample_initial(4000).double()
    with torch.no_grad():
        discrete = kl_loss(TARGET, reference, control, x0, grid)
        continuous = kl_loss(TARGET, reference, control, x0, grid, adjoint=True)
    spread = float(discrete.log_weights.std()) / math.sqrt(4000)
    assert abs(float(discrete.loss) + float(discrete.log_weights.mean())) < 5 * spread
    assert abs(float(discrete.loss) - float(continuous.loss)) < 5 * spread + 0.02
