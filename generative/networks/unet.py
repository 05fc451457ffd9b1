r"""A time-conditioned U-Net that predicts the noise of images: diffusers' ``UNet2DModel`` behind the project's
network interface ``eps(x, t)``.

:meth:`UNet.ddpm` is the CIFAR-10 network of Ho et al. (2020, "Denoising Diffusion Probabilistic Models",
appendix B; ``diffusion_tf/models/unet.py`` of their repository): base width 128, channel multipliers
(1, 2, 2, 2), two residual blocks per resolution (three on the way up, the extra one taking the skip connection of
the downsampling), self-attention at 16 x 16 and in the middle, dropout 0.1, sinusoidal time embedding of width 128
followed by two dense layers of width 512, GroupNorm(32) and swish; 35,746,307 parameters at 32 x 32 x 3
(Ho et al. report 35.7M). It is the configuration of diffusers' own port of that network (the ``google/ddpm-cifar10-32``
checkpoint: ``downsample_padding=0``, ``freq_shift=1``, ``flip_sin_to_cos=False``, ``norm_eps=1e-6``, one head of full
width). How diffusers' blocks differ from Ho et al.'s: only in the initialisation. Ho et al. initialise every
layer by fan-average variance scaling and the last convolution of each residual branch, the attention output and
the output convolution at zero; diffusers keeps PyTorch's default initialisation everywhere. Here the output
convolution is zero (``zero_output=True``), so that the initial noise prediction is 0, the convention of the
project's networks (the last layer at zero: training starts from the uncontrolled process); the residual branches
keep diffusers' initialisation.

Time: the networks of this project take the noising time ``t in [0, T]``; the U-Net feeds ``time_scale * t`` to the
sinusoidal embedding, whose frequencies were made for DDPM's integer steps 0..1000, so ``time_scale = 1000 / T``
(the default 1000 for ``T = 1``) spreads the times over the same range.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from sde_control.specs import Specified

__all__ = ["UNet"]


class UNet(Specified, nn.Module):
    r"""Noise prediction ``eps(x, t)`` for images of shape ``image_shape = (C, H, W)``.

    ``forward(x, t)`` takes ``x`` as images ``(n, C, H, W)`` or as flattened vectors ``(n, C*H*W)`` (the layout of
    the score-matching losses; the output has the input's layout) and ``t`` as one time (0-dim) or one per image
    ``(n,)``.

    Args:
        image_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2**(len(multipliers) - 1)``.
        channels: width of the first resolution; resolution ``i`` has ``channels * multipliers[i]``.
        multipliers: one per resolution, each resolution half the side of the previous one.
        blocks: residual blocks per resolution on the way down (one more on the way up).
        attention_resolutions: image sides (e.g. 16) at which the blocks have self-attention (always in the middle).
        dropout: in every residual block.
        groups: of every GroupNorm; must divide every width.
        time_scale: the embedding sees ``time_scale * t`` (module docstring).
        zero_output: initialise the output convolution at zero.

    Its constructor arguments are recorded (:mod:`sde_control.specs`; :meth:`ddpm` and :meth:`tiny` record the full
    list), so a model's checkpoint rebuilds it.
    """

    def __init__(self, image_shape: Sequence[int], channels: int = 128, multipliers: Sequence[int] = (1, 2, 2, 2),
                 blocks: int = 2, attention_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
                 groups: int = 32, time_scale: float = 1000.0, zero_output: bool = True):
        super().__init__()
        try:
            from diffusers import UNet2DModel
        except ImportError as error:
            raise ImportError("the U-Net is diffusers' UNet2DModel: pip install 'sde-control[images]'") from error
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape}")
        widths = tuple(channels * m for m in multipliers)
        factor = 2 ** (len(widths) - 1)
        if image_shape[1] % factor or image_shape[2] % factor:
            raise ValueError(f"{len(widths)} resolutions halve the image {len(widths) - 1} times: its sides "
                             f"{image_shape[1:]} must be divisible by {factor}")
        if any(w % groups for w in widths):
            raise ValueError(f"groups={groups} must divide every width {widths} (channels x multipliers)")
        sides = [image_shape[1] // 2**i for i in range(len(widths))]
        unknown = set(attention_resolutions) - set(sides)
        if unknown:
            raise ValueError(f"attention_resolutions {sorted(unknown)} are not among the resolutions {sides}")
        attend = [side in attention_resolutions for side in sides]
        self.image_shape, self.time_scale = image_shape, float(time_scale)
        self.network = UNet2DModel(
            sample_size=image_shape[1:], in_channels=image_shape[0], out_channels=image_shape[0],
            block_out_channels=widths, layers_per_block=blocks, dropout=dropout, norm_num_groups=groups,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attend),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attend)),
            attention_head_dim=None, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
            act_fn="silu", time_embedding_type="positional")
        if zero_output:
            nn.init.zeros_(self.network.conv_out.weight)
            nn.init.zeros_(self.network.conv_out.bias)

    @classmethod
    def ddpm(cls, image_shape: Sequence[int] = (3, 32, 32), **overrides) -> UNet:
        """Ho et al.'s CIFAR-10 network (module docstring): 35.7M parameters at 32 x 32 x 3."""
        return cls(image_shape, **{"channels": 128, "multipliers": (1, 2, 2, 2), "blocks": 2,
                                   "attention_resolutions": (16,), "dropout": 0.1, **overrides})

    @classmethod
    def tiny(cls, image_shape: Sequence[int] = (1, 8, 8), **overrides) -> UNet:
        """A CPU-test size: widths 8 and 16, one block per resolution, attention at the coarser one, GroupNorm(4),
        no dropout (44,969 parameters for 8 x 8 x 1)."""
        side = int(image_shape[1])
        return cls(image_shape, **{"channels": 8, "multipliers": (1, 2), "blocks": 1,
                                   "attention_resolutions": (side // 2,), "dropout": 0.0, "groups": 4, **overrides})

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        flat = x.dim() == 2
        if flat and x.shape[1] == math.prod(self.image_shape):
            images = x.reshape(x.shape[0], *self.image_shape)
        elif x.dim() == 4 and tuple(x.shape[1:]) == self.image_shape:
            images = x
        else:
            raise ValueError(f"the U-Net takes images (n, {', '.join(map(str, self.image_shape))}) or vectors "
                             f"(n, {math.prod(self.image_shape)}), got shape {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != x.shape[0]):
            raise ValueError(f"t must be one time (0-dim) or one per image ({x.shape[0]},), got shape {tuple(t.shape)}")
        timesteps = (self.time_scale * t.to(x.dtype)).expand(x.shape[0])
        out = self.network(images, timesteps, return_dict=False)[0]
        return out.reshape(x.shape) if flat else out
