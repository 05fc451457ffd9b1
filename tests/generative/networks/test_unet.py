"""The image U-Net: Ho et al.'s CIFAR-10 size (count only), shapes in both layouts, the zero initial prediction,
and a forward/backward pass of the tiny configuration on the CPU."""

import pytest
import torch

pytest.importorskip("diffusers", reason="the U-Net needs the images extra (diffusers)")

from sde_control.generative.networks import UNet  # noqa: E402


def test_ddpm_configuration_has_ho_et_al_parameter_count():
    # Ho et al. (2020) report 35.7M for CIFAR-10; diffusers' port of the network (google/ddpm-cifar10-32) has
    # exactly this many, so the two agree block for block.
    network = UNet.ddpm()
    assert sum(p.numel() for p in network.parameters()) == 35_746_307
    down = [type(block).__name__ for block in network.network.down_blocks]
    assert down == ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"]  # attention at 16 x 16
    assert network.network.down_blocks[0].resnets[0].dropout.p == 0.1


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16)])
def test_tiny_unet_keeps_the_layout_and_starts_at_zero(shape):
    network = UNet.tiny(shape)
    assert 5_000 < sum(p.numel() for p in network.parameters()) < 100_000
    x = torch.randn(5, *shape)
    out = network(x, torch.rand(5))
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))  # output convolution at zero
    flat = network(x.flatten(1), torch.tensor(0.3))  # vectors (n, C*H*W) and one time for all
    assert flat.shape == (5, x[0].numel())


def test_tiny_unet_backward_pass_and_time_and_layout_consistency():
    torch.manual_seed(0)
    network = UNet.tiny((1, 8, 8))
    x, t = torch.randn(6, 1, 8, 8), torch.rand(6)
    loss = (network(x, t) - x).square().mean()
    loss.backward()
    grads = {name: p.grad for name, p in network.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["network.conv_out.weight"].abs().sum() > 0
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.05 * torch.randn_like(p))
        images, vectors = network(x, t), network(x.flatten(1), t)
        assert torch.allclose(images.flatten(1), vectors)  # the two layouts are the same function
        # the time enters: t and 1 - t give different predictions
        assert (network(x, t) - network(x, 1 - t)).abs().max() > 1e-4


def test_bad_shapes_and_configurations_are_refused():
    network = UNet.tiny((1, 8, 8))
    with pytest.raises(ValueError, match=r"images \(n, 1, 8, 8\) or vectors \(n, 64\)"):
        network(torch.randn(2, 63), torch.rand(2))
    with pytest.raises(ValueError, match="one per image"):
        network(torch.randn(2, 64), torch.rand(3))
    with pytest.raises(ValueError, match="divisible by 8"):
        UNet((3, 20, 20))
    with pytest.raises(ValueError, match="not among the resolutions"):
        UNet((3, 32, 32), attention_resolutions=(12,))
    with pytest.raises(ValueError, match="groups"):
        UNet((3, 32, 32), channels=48)
