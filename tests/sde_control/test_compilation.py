"""The compiled control network changes no result: a training step's loss and gradients at a fixed seed are those of
the eager network (up to the rounding of fused kernels), and a machine without a compiler runs eagerly."""

import copy
import warnings

import pytest
import torch

import sde_control.compilation as compilation
from sde_control import DIS
from sde_control.controls import ControlMLP
from sde_control.losses import kl_loss, log_variance_loss
from sde_control.references import time_grid
from sde_control.targets import Funnel

needs_compiler = pytest.mark.skipif(not compilation.compiler_available("cpu"),
                                    reason="torch.compile has no working C++ compiler on this machine")


def loss_and_gradients(sampler: DIS, loss_fn, compile_network: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One loss of a 4-step chain (a short one, so that compiling takes seconds) from a fixed seed, and its
    gradients with respect to the control's parameters."""
    network = sampler.control.network
    network.compile_network = compile_network
    sampler.control.zero_grad()
    torch.manual_seed(1)
    x0 = sampler.reference.sample_initial(64)
    loss = loss_fn(sampler.target, sampler.reference, sampler.control, x0, time_grid(sampler.reference.T, 4)).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in sampler.control.parameters() if p.grad is not None]


@needs_compiler
@pytest.mark.parametrize("loss_fn", [log_variance_loss, kl_loss], ids=["lv", "kl"])
def test_the_compiled_network_gives_the_eager_loss_and_gradients(loss_fn):
    torch.manual_seed(0)
    sampler = DIS(Funnel(dim=3), steps=4)
    for p in sampler.control.network.body[-1][-1].parameters():  # a non-zero last layer, so that the network acts
        torch.nn.init.normal_(p, std=0.3)
    eager_loss, eager_grads = loss_and_gradients(sampler, loss_fn, compile_network=False)
    compiled_loss, compiled_grads = loss_and_gradients(sampler, loss_fn, compile_network=True)
    assert sampler.control.network.compile_network
    # float32 throughout: fused kernels reorder a few additions, so agreement is to a few ulps of the sums.
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert len(compiled_grads) == len(eager_grads) > 0
    for compiled, eager in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_the_compiled_network_is_neither_saved_nor_copied():
    network = ControlMLP(2)
    before = network.state_dict().keys()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no compiler: runs eagerly with a warning
        network.compile_network = True
    assert network.state_dict().keys() == before  # checkpoints unchanged: the parameter names are the eager ones
    assert not copy.deepcopy(network).compile_network  # a copy (the EMA's) compiles when asked to


def test_without_a_compiler_the_network_runs_eagerly_with_a_warning(monkeypatch):
    monkeypatch.setattr(compilation, "_compiler_failure", lambda device_type: "CalledProcessError: no g++")
    network = ControlMLP(2)
    with pytest.warns(UserWarning, match="torch.compile is unavailable on cpu.*no g\\+\\+.*running eagerly"):
        network.compile_network = True
    x = torch.randn(5, 2)
    torch.testing.assert_close(network(x, torch.tensor(0.5)), network._evaluate(x, network.time(torch.tensor([0.5])),
                                                                                  network.clip))


def test_fit_sets_compile_on_every_network_and_its_average():
    torch.manual_seed(0)
    sampler = DIS(Funnel(dim=3), steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler.fit(1, batch_size=16, progress=False, compile=True)
    networks = sampler._submodules(ControlMLP)
    assert len(networks) == 2 and all(n.compile_network for n in networks)
    sampler.fit(1, batch_size=16, progress=False, compile=False)
    assert not any(n.compile_network for n in sampler._submodules(ControlMLP))
