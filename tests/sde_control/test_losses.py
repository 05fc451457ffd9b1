"""The KL and log-variance losses against their definitions."""

import math

import pytest
import torch
from torch import nn

from sde_control.controls import ControlMLP
from sde_control.integrate import simulate_chain
from sde_control.losses import kl_log_derivative_loss, kl_loss, log_variance_loss
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


def bridge_setup():
    """DIS's reference with random forward and backward controls (float64)."""
    reference = TimeReversalReference(VP(), 2)
    torch.manual_seed(3)
    return reference, random_control(2), random_control(2)


def flat_gradients(modules):
    return torch.cat([p.grad.flatten() for m in modules for p in m.parameters()])


def test_two_pass_log_variance_equals_the_one_pass_loss_and_gradient():
    """``chunk`` computes the variance without gradients and its gradient as that of ``sum_i c_i l_i`` from the
    stored states, chunk by chunk (7 steps at a time of 20: the last chunk is short); on the same paths (same seed)
    value and gradient equal the one-pass loss's, with a backward control and exploration in play."""
    reference, forward, backward = bridge_setup()
    grid = time_grid(1.0, 20)
    x0 = reference.sample_initial(128).double()
    results = []
    for chunk in (None, 7):
        for module in (forward, backward):
            module.zero_grad()
        torch.manual_seed(11)
        out = log_variance_loss(TARGET, reference, forward, x0, grid, backward=backward, exploration=0.7, chunk=chunk)
        out.loss.backward()
        results.append((out.loss.detach(), flat_gradients([forward, backward]), out.log_weights))
    (one_loss, one_grad, one_w), (two_loss, two_grad, two_w) = results
    torch.testing.assert_close(two_loss, one_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(two_grad, one_grad, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(two_w, one_w, rtol=1e-10, atol=1e-10)
    assert one_grad.norm() > 0


def test_exploration_gradient_matches_finite_differences_on_frozen_paths():
    r"""With exploration the paths come from ``\bar u = u.detach() + e zeta``, so ``C = c(|u|^2 - 2 u . \bar u)``
    keeps a gradient. Freeze one batch of explored paths (states and noise), score them with the control by the
    kernel densities written out independently (:func:`trajectory_from_states`: the increment form), and compare
    the loss's gradient with central finite differences of the variance in a few parameter directions."""
    from sde_control.weights import trajectory_from_states

    reference = ForwardReference(ScaledBrownian(), 2)
    control = random_control(2)
    grid = time_grid(reference.T, 15)
    x0 = reference.sample_initial(64).double()
    torch.manual_seed(5)
    control.zero_grad()
    log_variance_loss(TARGET, reference, control, x0, grid, exploration=1.5).loss.backward()
    gradient = grads(control)
    torch.manual_seed(5)
    with torch.no_grad():
        states = simulate_chain(control, reference, x0, grid, exploration=1.5, detach_drift=True).states

    def variance() -> float:
        with torch.no_grad():
            return float(log_weight(TARGET, reference, trajectory_from_states(control, reference, states, grid)).var())

    params = list(control.parameters())
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        directions = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
        eps = 1e-5
        with torch.no_grad():
            for p, d in zip(params, directions):
                p += eps * d
            plus = variance()
            for p, d in zip(params, directions):
                p -= 2 * eps * d
            minus = variance()
            for p, d in zip(params, directions):
                p += eps * d
        finite_difference = (plus - minus) / (2 * eps)
        analytic = float(gradient @ torch.cat([d.flatten() for d in directions]))
        assert abs(finite_difference - analytic) < 1e-6 * max(1.0, abs(analytic)), (finite_difference, analytic)


class TruncatedGaussian(Gaussian):
    """``TARGET`` with zero density where ``x_0 > 1.5`` (``log_prob = -inf`` there)."""

    def log_prob(self, x):
        value = super().log_prob(x)
        return torch.where(x[:, 0] > self.cut, torch.full_like(value, -math.inf), value)

    cut = 1.5


def test_paths_with_zero_target_density_are_dropped_from_the_losses_and_kept_as_zero_weights():
    """A target that is ``-inf`` beyond ``x_0 = 1.5`` (a fifth of its mass): the losses leave those paths out
    (counted) and stay finite with finite gradients; the estimators keep them as ``w = 0``, so the importance-sampled
    ``log Z`` is that of the truncated density, ``log Z + log Phi((1.5 - 1)/sqrt(0.3))`` (dropping them would give
    the untruncated ``log Z``: biased upward by 0.20)."""
    from sde_control.estimators import LogZEstimate

    target = TruncatedGaussian(torch.tensor([1.0, -0.5], dtype=torch.float64), 0.3, log_Z=0.7)
    reference = TimeReversalReference(VP(), 2)
    control = random_control(2)
    grid = time_grid(1.0, 20)
    x0 = reference.sample_initial(512).double()
    for loss in (log_variance_loss, kl_loss):
        control.zero_grad()
        out = loss(target, reference, control, x0, grid)
        assert out.dropped > 10 and torch.isfinite(out.loss)
        out.loss.backward()
        assert torch.isfinite(grads(control)).all()
        assert torch.isinf(out.log_weights).sum() == out.dropped

    vp = reference.sde

    def optimal(x, s):
        a, g = vp.transition(torch.tensor(0.0, dtype=torch.float64), 1.0 - s.double())
        return reference.diffusion(s) * -(x - a * target.mean) / (a**2 * 0.3 + g)

    n = 20_000
    with torch.no_grad():
        log_w = log_weight(target, reference, simulate_chain(optimal, reference, reference.sample_initial(n).double(),
                                                             time_grid(1.0, 100), seed=0, keep_states=False))
    est = LogZEstimate.from_log_weights(log_w)
    truncated = 0.7 + math.log(0.5 * (1 + math.erf((1.5 - 1.0) / math.sqrt(2 * 0.3))))
    assert abs(est.log_z - truncated) < 5 * math.sqrt((1 / est.ess - 1) / n) + 1e-3
    assert abs(0.7 - truncated) > 0.15


def test_a_batch_entirely_outside_the_support_names_the_minus_infinity():
    from sde_control.target import TargetError

    target = TruncatedGaussian(torch.tensor([1.0, -0.5], dtype=torch.float64), 0.3)
    target.cut = -100.0
    reference = TimeReversalReference(VP(), 2)
    with pytest.raises(TargetError, match=r"-inf at the end of all 64 paths"):
        log_variance_loss(target, reference, random_control(2), reference.sample_initial(64).double(),
                          time_grid(1.0, 5))


def test_detach_score_removes_the_second_order_term_from_the_kl_gradient_only():
    """The score guidance evaluated on detached states: the KL loss (gradient through the path) keeps its value but
    loses the term through the score's derivative; the log-variance loss (no gradient through the path) is the same
    with and without."""
    from sde_control.controls import ScoreInformedControl

    target = Gaussian(torch.tensor([1.0, -0.5], dtype=torch.float64), 0.3, log_Z=0.7)
    reference = TimeReversalReference(VP(), 2)
    control = ScoreInformedControl(2, lambda x, s: target.score(x), reference.diffusion, weight_bias=1.0, width=16,
                                   depth=3).double()
    torch.nn.init.normal_(control.network.body[-1][-1].weight, std=0.3)
    grid = time_grid(1.0, 10)
    x0 = reference.sample_initial(64).double()
    results = {}
    for loss in (kl_loss, log_variance_loss):
        for detach in (False, True):
            control.detach_score = detach
            control.zero_grad()
            torch.manual_seed(2)
            out = loss(target, reference, control, x0, grid)
            out.loss.backward()
            results[loss.__name__, detach] = (float(out.loss.detach()), grads(control))
    (kl_value, kl_grad), (kl_value_d, kl_grad_d) = results["kl_loss", False], results["kl_loss", True]
    assert kl_value == pytest.approx(kl_value_d, rel=1e-12)
    assert (kl_grad - kl_grad_d).norm() > 1e-3 * kl_grad.norm()
    torch.testing.assert_close(results["log_variance_loss", False][1], results["log_variance_loss", True][1],
                               rtol=1e-12, atol=1e-14)


def test_kl_log_derivative_gradient_is_half_the_log_variance_one_for_the_forward_control_and_the_kls_for_the_backward():
    """On the same paths (same seed) of a Bridge-like pair of controls: the forward control's gradient is that of
    ``mean((log w - mean) F_u)``, i.e. the on-policy log-variance gradient times ``(n - 1) / 2n``; the backward
    control does not move the path, so its gradient is the reparametrised KL's, ``-mean(grad G_w)``, exactly; the
    value is ``-mean(log w)``."""
    reference, forward, backward = bridge_setup()
    grid = time_grid(1.0, 12)
    n = 200
    x0 = reference.sample_initial(n).double()
    results = {}
    for loss in (kl_log_derivative_loss, log_variance_loss, kl_loss):
        for module in (forward, backward):
            module.zero_grad()
        torch.manual_seed(4)
        out = loss(TARGET, reference, forward, x0, grid, backward=backward)
        out.loss.backward()
        results[loss.__name__] = (out, grads(forward), grads(backward))
    ld, ld_forward, ld_backward = results["kl_log_derivative_loss"]
    _, lv_forward, lv_backward = results["log_variance_loss"]
    kl, _, kl_backward = results["kl_loss"]
    torch.testing.assert_close(ld_forward * 2 * n / (n - 1), lv_forward, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ld_backward, kl_backward, rtol=1e-9, atol=1e-12)
    assert (ld_backward - lv_backward).norm() > 0.1 * ld_backward.norm()  # where the two losses part
    torch.testing.assert_close(ld.log_weights, kl.log_weights, rtol=1e-12, atol=1e-12)
    assert float(ld.loss.detach()) == pytest.approx(-float(ld.log_weights.mean()), rel=1e-12)


def test_kl_log_derivative_loss_leaves_out_paths_outside_the_support():
    """A path whose target density is zero gets no weight in the loss and no NaN in the gradient."""
    target = Gaussian(torch.tensor([1.0, -0.5], dtype=torch.float64), 0.3)
    outside = lambda x: torch.where(x[:, 0] > 2.5, -math.inf, target.log_prob(x))  # noqa: E731
    cut = type("Cut", (), {"dim": 2, "log_prob": staticmethod(outside)})()
    reference, forward, backward = bridge_setup()
    x0 = reference.sample_initial(256).double()
    torch.manual_seed(5)
    out = kl_log_derivative_loss(cut, reference, forward, x0, time_grid(1.0, 8), backward=backward)
    out.loss.backward()
    assert out.dropped > 0 and torch.isfinite(out.loss)
    assert torch.isfinite(grads(forward)).all() and torch.isfinite(grads(backward)).all()
