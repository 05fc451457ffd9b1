r"""Images: grey levels, dequantisation and bits/dim, the data sets and their loaders.

Every data set here holds integer grey levels ``x in {0, ..., L-1}^D`` (uint8, shape ``(C, H, W)`` per image;
``L = 256`` for 8-bit images, ``L = 17`` for the digits). The model works on ``y in [-1, 1]^D``, reached by
uniform dequantisation and an affine map (:class:`ImageTransform`):

.. math::  \tilde x = x + U, \quad U \sim \mathcal U[0, 1)^D, \qquad u = \tilde x / L \in [0, 1]^D, \qquad y = 2u - 1 .

Likelihoods are reported in bits/dim of the dequantised data on the scale of unit cells, ``\tilde x``, which
bounds the discrete negative log-likelihood (Theis et al. 2016, "A note on the evaluation of generative models",
section 3.1): ``-log P(x) <= E_U[-log p(x + U)]``. Each rescaling enters through its log-determinant:

.. math::  -\log p_{\tilde x}(\tilde x) = -\log p_y(y) - \log|\det \partial y / \partial \tilde x|
           = -\log p_y(y) - D \log(2 / L), \qquad
           \text{bits/dim} = \frac{-\log p_{\tilde x}(\tilde x)}{D \ln 2} .

So a density uniform on ``[-1, 1]^D`` (equivalently on ``[0, 1]^D`` for ``u``) has ``log2 L`` bits/dim: 8 for
8-bit images, the entropy of the uniform distribution on the levels; the bound is tight for any density constant
on the cells. With ``L = 256`` the offset ``-log2(2 / 256) = 7`` is the one of Song et al.'s score_sde
(``likelihood.py``: ``offset = 7 - inverse_scaler(-1)``), so the numbers compare with the literature
(CIFAR-10 around 3 bits/dim).

Data sets (nothing is downloaded; a missing folder gets a message that says where to get the data):

* :func:`digits`: scikit-learn's 8 x 8 handwritten digits (1797 images, 17 levels), padded or resized to any
  size, 1 or 3 channels, a fixed train/held-out split. The same loader serves vectors: ``digits().images.flatten(1)``
  is ``(n, 64)`` at the default size.
* :func:`cifar10`: the python pickles of CIFAR-10 (``cifar-10-batches-py``) from a local folder.
* :class:`ImageFolder`: any folder of images, resized and center-cropped to a square, read lazily with Pillow.

Batches go through :func:`image_loader` (workers, pinned memory on a GPU, each rank's share of one global stream of
batches that resumes at any step, :class:`StreamBatchSampler`) and, for data whose law is mirror-symmetric
(``dataset.hflip``, true for CIFAR-10), :func:`random_hflip`.
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["ImageDataset", "ImageFolder", "ImageTransform", "Images", "StreamBatchSampler", "cifar10", "digits",
           "image_loader", "random_hflip"]

CIFAR10_HELP = ("download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
                "into {root} (it unpacks to {root}/cifar-10-batches-py/ with data_batch_1 ... data_batch_5 and "
                "test_batch)")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass(frozen=True)
class ImageTransform:
    r"""Integer grey levels ``x in {0..L-1}`` <-> the model's space ``y in [-1, 1]`` (module docstring).

    ``levels`` is ``L`` (256 for 8-bit images, 17 for the digits). A model carries its transform and saves it
    with :meth:`to_dict`.
    """

    levels: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.levels, int) or not 2 <= self.levels <= 256:
            raise ValueError(f"levels must be an int in 2..256 (256 for 8-bit images), got {self.levels!r}")

    def to_model(self, x: Tensor, generator: torch.Generator | None = None, *, dequantise: bool = True,
                 dtype: torch.dtype = torch.float32, noise: Tensor | None = None) -> Tensor:
        """``y = 2 (x + U) / L - 1`` with ``U ~ U[0, 1)`` per entry (or the given ``noise``), or ``U = 1/2`` (the
        cell centres, which :meth:`from_model` maps back to ``x``) with ``dequantise=False``. ``x``: integer levels of
        any shape."""
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"expected integer grey levels 0..{self.levels - 1} (e.g. uint8), got dtype {x.dtype}; "
                            "data sets here hold levels, the transform maps them to [-1, 1]")
        x = x.to(dtype)
        if noise is not None:
            noise = noise.to(x)
        elif dequantise:
            noise = torch.rand(x.shape, generator=generator, dtype=dtype, device=x.device)
        else:
            noise = torch.full_like(x, 0.5)
        return 2.0 * (x + noise) / self.levels - 1.0

    def from_model(self, y: Tensor) -> Tensor:
        """The levels whose cells contain ``y``: ``clamp(floor((y + 1) L / 2), 0, L - 1)`` as uint8 (values outside
        ``[-1, 1]`` go to the nearest end)."""
        if not torch.isfinite(y).all():
            raise ValueError(f"cannot quantise images with {int((~torch.isfinite(y)).sum())} NaN or infinite entries")
        return torch.floor((y + 1.0) * (self.levels / 2)).clamp_(0, self.levels - 1).to(torch.uint8)

    def to_uint8(self, x: Tensor) -> Tensor:
        """Levels ``0..L-1`` as 8-bit pixel values ``round(255 x / (L - 1))`` (for image files and FID)."""
        if self.levels == 256:
            return x.to(torch.uint8)
        return torch.round(x.to(torch.float32) * (255.0 / (self.levels - 1))).to(torch.uint8)

    def log_det(self, dim: int) -> float:
        r"""``log |det dy / d x~| = D log(2 / L)`` for one image of ``D = dim`` entries (``x~ = x + U``)."""
        return dim * math.log(2.0 / self.levels)

    def bits_per_dim(self, nll: Tensor, dim: int) -> Tensor:
        r"""Bits/dim ``(nll - log_det) / (D ln 2)`` from ``nll = -log p_y(y)`` in nats per image in model space."""
        return (nll - self.log_det(dim)) / (dim * math.log(2.0))

    def to_dict(self) -> dict[str, int]:
        return {"levels": self.levels}


def random_hflip(images: Tensor, generator: torch.Generator | None = None, flip: Tensor | None = None) -> Tensor:
    """Each image of the batch ``(n, C, H, W)`` mirrored left-right with probability 1/2 (``generator`` on the
    batch's device; drawing per batch in the training step keeps the augmentation part of the resumable RNG), or
    where the boolean ``flip`` (n,) is true."""
    if images.dim() != 4:
        raise ValueError(f"expected a batch of images (n, C, H, W), got shape {tuple(images.shape)}")
    if flip is None:
        flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class Images(Dataset):
    """What every image data set here has: items are uint8 level tensors ``(C, H, W)``; ``levels``, ``shape``,
    ``hflip`` (whether mirroring left-right preserves the data's law: the training step then applies
    :func:`random_hflip`) and the matching :class:`ImageTransform`."""

    levels: int
    shape: tuple[int, int, int]
    hflip: bool

    @property
    def transform(self) -> ImageTransform:
        return ImageTransform(self.levels)


class ImageDataset(Images):
    """Images held in memory: ``images`` uint8 ``(n, C, H, W)`` of levels ``0..levels-1``, optional ``labels``."""

    def __init__(self, images: Tensor, levels: int, labels: Tensor | None = None, hflip: bool = False):
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be a uint8 tensor (n, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if images.numel() and int(images.max()) >= levels:
            raise ValueError(f"images have level {int(images.max())}, but levels={levels} allows 0..{levels - 1}")
        if labels is not None and labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images, self.labels, self.levels, self.hflip = images, labels, levels, hflip
        self.shape = tuple(images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]


def digits(split: str = "train", image_size: int = 8, channels: int = 1, resize: str = "pad",
           held_out: float = 0.2, seed: int = 0) -> ImageDataset:
    """scikit-learn's handwritten digits (8 x 8, levels 0..16, embedded: no download) as an :class:`ImageDataset`.

    Args:
        split: ``"train"`` or ``"held_out"``: a stratified split of the 1797 images (by ``held_out`` and ``seed``;
            0.2 gives 1437 / 360).
        image_size: side of the square images: ``"pad"`` puts the 8 x 8 digit in the middle of a zero
            (background) frame, ``"nearest"`` resizes by nearest-neighbour interpolation (both keep the 17 levels).
        channels: 1, or 3 (the grey image repeated).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must be a fraction in (0, 1), got {held_out!r}")
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8))[:, None]  # (1797, 1, 8, 8), levels 0..16
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train, test = train_test_split(np.arange(len(labels)), test_size=held_out, random_state=seed,
                                   stratify=bunch.target)
    chosen = torch.from_numpy(train if split == "train" else test)
    images = _resize_levels(images[chosen], image_size, resize).repeat(1, channels, 1, 1)
    return ImageDataset(images.contiguous(), levels=17, labels=labels[chosen], hflip=False)


def _resize_levels(images: Tensor, size: int, mode: str) -> Tensor:
    side = images.shape[-1]
    if mode == "pad":
        if size < side:
            raise ValueError(f"cannot pad {side} x {side} images to {size} x {size}: use resize='nearest' to shrink")
        before = (size - side) // 2
        return F.pad(images, (before, size - side - before, before, size - side - before))
    if mode == "nearest":
        return F.interpolate(images, size=(size, size), mode="nearest-exact")
    raise ValueError(f"resize must be 'pad' or 'nearest', got {mode!r}")


def cifar10(root: str | os.PathLike, split: str = "train") -> ImageDataset:
    """CIFAR-10 (32 x 32 RGB, 256 levels, labels 0..9; ``hflip`` true) from its python pickles.

    ``root`` is the folder that contains ``cifar-10-batches-py`` (torchvision's convention) or that folder itself;
    ``split`` is ``"train"`` (``data_batch_1..5``, 50,000 images) or ``"test"`` (``test_batch``, 10,000).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    folder = root if (root / "test_batch").is_file() else root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 not found: no {', '.join(missing)} in {folder}; "
                                + CIFAR10_HELP.format(root=root))
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as file:
            batch = pickle.load(file, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{folder / name} is not a CIFAR-10 batch: its data has shape {data.shape}, "
                             "expected (n, 3072)")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32)))  # rows: 1024 red, 1024 green, 1024 blue
        labels.append(torch.as_tensor(batch[b"labels"], dtype=torch.int64))
    return ImageDataset(torch.cat(images), levels=256, labels=torch.cat(labels), hflip=True)


class ImageFolder(Images):
    """Every image file under ``root`` (searched recursively, in sorted order), read with Pillow when indexed:
    converted to RGB (``channels=3``) or grey (``channels=1``), its shorter side resized to ``image_size``
    (bicubic) and center-cropped to ``image_size x image_size``; 256 levels."""

    def __init__(self, root: str | os.PathLike, image_size: int, channels: int = 3, hflip: bool = False):
        root = Path(root).expanduser()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if not root.is_dir():
            raise FileNotFoundError(f"no image folder at {root}: create it and put image files "
                                    f"({', '.join(IMAGE_SUFFIXES)}) in it or in its subfolders")
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}")
        self.root, self.levels, self.hflip = root, 256, hflip
        self.shape = (channels, image_size, image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        from PIL import Image

        channels, size, _ = self.shape
        with Image.open(self.files[index]) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            scale = size / min(image.size)
            width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
            image = image.resize((width, height), Image.Resampling.BICUBIC)
            left, top = (width - size) // 2, (height - size) // 2
            array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
        return torch.from_numpy(array.reshape(size, size, channels).copy()).permute(2, 0, 1).contiguous()


class StreamBatchSampler(Sampler[list[int]]):
    """One rank's micro-batches of the training stream: index lists, without end.

    The stream is the concatenation of permutations of ``range(size)``, one per epoch (drawn from ``seed + epoch``;
    the identity with ``shuffle=False``), cut into global batches of ``batch_size``; global batch ``k`` is cut into
    ``world_size * accumulation`` blocks, and micro-batch ``m`` of step ``k`` on rank ``r`` is block
    ``m * world_size + r``. Neither the stream nor its global batches depend on the number of ranks or
    micro-batches: step ``k`` sees the same images on one GPU or eight, and its data start at index
    ``k * batch_size`` of the stream, so the data position of a run is its step (``start``), which is how a resumed run
    continues the same data, also on other hardware. (torch's ``DistributedSampler`` deals each epoch to the ranks by
    stride and restarts at the epoch's beginning, so it can do neither.)
    """

    def __init__(self, size: int, batch_size: int, *, rank: int = 0, world_size: int = 1, accumulation: int = 1,
                 seed: int = 0, start: int = 0, shuffle: bool = True):
        for name, value in (("size", size), ("batch_size", batch_size), ("world_size", world_size),
                            ("accumulation", accumulation)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}")
        if batch_size % (world_size * accumulation):
            raise ValueError(f"the global batch of {batch_size} does not split into {world_size} ranks x "
                             f"{accumulation} micro-batches: make batch_size a multiple of {world_size * accumulation}")
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size
        self.accumulation, self.seed, self.start, self.shuffle = accumulation, seed, start, shuffle
        self.micro_batch = batch_size // (world_size * accumulation)
        self._epochs: dict[int, Tensor] = {}

    def _permutation(self, epoch: int) -> Tensor:
        if epoch not in self._epochs:
            self._epochs = {epoch: torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
                            if self.shuffle else torch.arange(self.size)}
        return self._epochs[epoch]

    def indices(self, step: int, micro: int) -> list[int]:
        """The stream's indices of micro-batch ``micro`` of step ``step`` on this rank."""
        first = step * self.batch_size + (micro * self.world_size + self.rank) * self.micro_batch
        positions = torch.arange(first, first + self.micro_batch)
        epochs = positions // self.size
        return [int(self._permutation(int(e))[int(p)]) for e, p in zip(epochs, positions % self.size)]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            for micro in range(self.accumulation):
                yield self.indices(step, micro)
            step += 1


def image_loader(dataset: Dataset, batch_size: int, *, rank: int = 0, world_size: int = 1, accumulation: int = 1,
                 seed: int = 0, start: int = 0, shuffle: bool = True, num_workers: int = 0,
                 device: str | torch.device = "cpu") -> DataLoader:
    """A loader of this rank's uint8 micro-batches ``(batch_size / (world_size accumulation), C, H, W)`` of the
    training stream from step ``start`` on, without end (:class:`StreamBatchSampler`; ``batch_size`` is the global
    batch). ``num_workers`` processes read (and decode) the images; pinned memory when ``device`` is CUDA."""
    sampler = StreamBatchSampler(len(dataset), batch_size, rank=rank, world_size=world_size,
                                 accumulation=accumulation, seed=seed, start=start, shuffle=shuffle)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                      pin_memory=torch.device(device).type == "cuda", persistent_workers=num_workers > 0)
