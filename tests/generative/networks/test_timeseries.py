"""The conditional noise-prediction network: shapes, zero start, gradients reach the encoder, the context matters."""

import pytest
import torch

from sde_control.generative.networks.timeseries import ContextDenoiser

B, C, P, D = 6, 12, 5, 4


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(B, P, D, generator=generator), torch.rand(B, generator=generator),
            torch.randn(B, C, D, generator=generator))


def test_shapes_and_zero_initial_prediction():
    network = ContextDenoiser(D, P, channels=16, blocks=4, hidden_size=16)
    x, t, context = batch()
    out = network(x, t, context)
    assert out.shape == (B, P, D)
    assert torch.equal(out, torch.zeros_like(out))  # the last convolution starts at zero
    assert network(x, torch.tensor(0.3), context).shape == (B, P, D)  # one time for the whole batch


def test_one_step_trains_every_part_and_the_output_then_depends_on_the_context():
    """At initialisation only the last layer has a gradient (everything feeds through its zero weights); after one
    Adam step the gradient reaches the context encoder, and the prediction changes with the context."""
    torch.manual_seed(0)
    network = ContextDenoiser(D, P, channels=16, blocks=4, hidden_size=16)
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
    x, t, context = batch()
    target = torch.randn(B, P, D)
    ((network(x, t, context) - target) ** 2).mean().backward()
    assert network.output_projection.weight.grad.abs().sum() > 0
    optimiser.step()
    optimiser.zero_grad()
    ((network(x, t, context) - target) ** 2).mean().backward()
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    with torch.no_grad():
        out = network(x, t, context)
        assert out.abs().max() > 0
        assert (network(x, t, context + 1.0) - out).abs().max() > 1e-6
        assert (network(x, 1 - t, context) - out).abs().max() > 1e-6


def test_bad_shapes_fail_with_clear_messages():
    network = ContextDenoiser(D, P, channels=8, blocks=2, hidden_size=8)
    x, t, context = batch()
    with pytest.raises(ValueError, match=r"x must have shape \(B, 5, 4\)"):
        network(x[:, :3], t, context)
    with pytest.raises(ValueError, match="context must have shape"):
        network(x, t, context[..., :3])
    with pytest.raises(ValueError, match="one time or one per window"):
        network(x, t[:2], context)
