r"""FID and KID of generated images: features from a network, distances from torchmetrics.

Frechet distance (Heusel et al. 2017) between the Gaussians fitted to two feature sets, and the kernel distance
(Binkowski et al. 2018: the unbiased MMD^2 with the cubic polynomial kernel ``k(a, b) = (a.b / F + 1)^3``,
averaged over random subsets):

.. math::  \mathrm{FD} = |m_1 - m_2|^2 + \operatorname{tr}\big(C_1 + C_2 - 2 (C_1 C_2)^{1/2}\big) .

Both come from torchmetrics (``FrechetInceptionDistance`` and ``KernelInceptionDistance``, given the features
through an identity feature map): the sums in float64, the reduction of their states across ranks when
``torch.distributed`` is initialised, and ``tr (C_1 C_2)^{1/2}`` as the sum of the square roots of the eigenvalues of
``C_1 C_2``. The features come from any ``nn.Module`` that maps uint8 images ``(n, C, H, W)`` (0..255) to ``(n, F)``:

* :class:`InceptionFeatures`: the 2048-d pool features of the Inception-v3 of the TF FID code
  (``pt_inception-2015-12-05``, CONVENTIONS section 10) as ported by torch-fidelity (``inception-v3-compat``, with
  its TensorFlow-1 bilinear resize to 299 x 299), weights read from a local file: the FID of the literature;
* :class:`RandomFeatures` (a fixed random network: a stand-in for tests and smoke runs), any small network in
  tests, or the digit classifier of :mod:`~sde_control.generative.evaluation.classifier`,
  through the same calls.

The reference (training-set) features are computed once and cached in a file (:func:`reference_features`);
generated images arrive in batches from an iterable or a callable (:func:`image_scores`), so each rank can feed its
share. Implementations differ slightly (torch-fidelity, clean-fid, pytorch-fid): results carry the name of the one
used (``ImageScores.implementation``); never compare across them without saying so.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

__all__ = ["INCEPTION_WEIGHTS", "ImageScores", "InceptionFeatures", "RandomFeatures", "features_of", "frechet_distance",
           "image_scores", "kernel_distance", "reference_cache_path", "reference_features"]

INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_HELP = ("the Inception-v3 weights of the TF FID code converted to PyTorch: download "
                  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_WEIGHTS +
                  " (torch-fidelity distributes the same file as weights-inception-2015-12-05-6726825d.pth) on a "
                  "machine with internet access and give its path")

Batches = Iterable[Tensor] | Callable[[int], Tensor]
"""Generated images: an iterable of uint8 batches ``(n, C, H, W)``, or ``generate(n)`` returning one such batch."""


class InceptionFeatures(nn.Module):
    """The TF-FID Inception-v3's 2048-d pool features (torch-fidelity's ``inception-v3-compat``) of uint8 images
    ``(n, 1 or 3, H, W)``: grey images are repeated to RGB; any size (resized inside to 299 x 299).

    Needs the ``fid`` extra (torch-fidelity, which imports torchvision: a CUDA build of torch 2.13 with PyPI's
    torchvision 0.28; PyPI's torchvision does not import beside the CPU-only torch).
    """

    num_features = 2048

    def __init__(self, weights: str | os.PathLike):
        super().__init__()
        weights = Path(weights).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(f"no Inception weights at {weights}: FID needs {INCEPTION_HELP}")
        try:
            import torch_fidelity
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except Exception as error:  # torchvision's failure beside a CPU-only torch is a RuntimeError
            raise ImportError("the FID Inception network comes from torch-fidelity: pip install 'sde-control[fid]' "
                              f"on a CUDA build of torch 2.13 ({type(error).__name__}: {error})") from error
        self.network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path=str(weights))
        self.name = f"torch-fidelity {torch_fidelity.__version__} inception-v3-compat pool3 (2048)"

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.network(images)[0]


class RandomFeatures(nn.Module):
    """A fixed random convolutional feature map of uint8 images ``(n, channels, H, W)``: two 3 x 3 convolutions
    with stride 2 and SiLU, average-pooled to ``num_features``, initialised from ``seed``. A stand-in extractor for
    tests and smoke runs on a fresh machine: its Frechet distances are not FID and compare with nothing else."""

    def __init__(self, channels: int, num_features: int = 64, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.body = nn.Sequential(nn.Conv2d(channels, 32, 3, stride=2, padding=1), nn.SiLU(),
                                      nn.Conv2d(32, num_features, 3, stride=2, padding=1), nn.SiLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = num_features
        self.name = f"random-features-{channels}-{num_features}-seed{seed}"
        self.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images.float() / 255.0)


class _GivenFeatures(nn.Module):
    """The identity on ``(n, F)`` features: hands features computed once to torchmetrics' metrics."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def _frechet_metric(num_features: int):
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=_GivenFeatures(num_features))


def _kernel_metric(num_features: int, subsets: int, subset_size: int):
    from torchmetrics.image.kid import KernelInceptionDistance

    with warnings.catch_warnings():  # it warns that it keeps all features: that is what KID needs
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        return KernelInceptionDistance(feature=_GivenFeatures(num_features), subsets=subsets, subset_size=subset_size)


def _check_features(a: Tensor, b: Tensor) -> None:
    for name, f in (("first", a), ("second", b)):
        if f.dim() != 2:
            raise ValueError(f"the {name} feature set must have shape (n, F), got {tuple(f.shape)}")
        if not torch.isfinite(f).all():
            raise ValueError(f"the {name} feature set has NaN or infinite entries")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets of different widths: {a.shape[1]} and {b.shape[1]}")


def _update(metric, features_a: Tensor, features_b: Tensor):
    metric = metric.to(features_b.device)
    metric.update(features_a.to(features_b.device), real=True)
    metric.update(features_b, real=False)
    return metric


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    r"""The Frechet distance between Gaussians fitted to two feature sets ``(n, F)`` (module docstring; unbiased
    covariances), computed by torchmetrics' ``FrechetInceptionDistance`` in float64 (under ``torch.distributed``,
    of the union of every rank's sets)."""
    _check_features(features_a, features_b)
    return float(_update(_frechet_metric(features_a.shape[1]), features_a.double(), features_b.double()).compute())


def kernel_distance(features_a: Tensor, features_b: Tensor, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation over ``subsets`` random subsets of ``subset_size`` images of each set
    (torchmetrics' ``KernelInceptionDistance``; the subsets are drawn from ``seed``)."""
    _check_features(features_a, features_b)
    metric = _update(_kernel_metric(features_a.shape[1], subsets, subset_size), features_a, features_b)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _batches(images: Batches, num_samples: int | None, batch_size: int) -> Iterator[Tensor]:
    if not callable(images):
        yield from images
        return
    if num_samples is None:
        raise ValueError("a generate(n) callable needs num_samples")
    for start in range(0, num_samples, batch_size):
        yield images(min(batch_size, num_samples - start))


@torch.no_grad()
def features_of(images: Batches, extractor: nn.Module, num_samples: int | None = None,
                batch_size: int = 500) -> Tensor:
    """The extractor's features ``(n, F)`` (float32, on the extractor's device) of uint8 image batches
    ``(n, C, H, W)``, from an iterable or from ``generate(n)`` called for ``num_samples`` images in batches."""
    device = next(iter(extractor.parameters()), torch.empty(0)).device
    features = []
    for batch in _batches(images, num_samples, batch_size):
        if batch.dtype != torch.uint8 or batch.dim() != 4:
            raise ValueError(f"feature extractors take uint8 images (n, C, H, W) in 0..255, got {batch.dtype} "
                             f"{tuple(batch.shape)}: convert model outputs y with "
                             "ImageTransform.to_uint8(ImageTransform.from_model(y))")
        features.append(extractor(batch.to(device)).float())
    if not features:
        raise ValueError("no images to compute features of")
    return torch.cat(features)


def _name(extractor: nn.Module) -> str:
    return getattr(extractor, "name", type(extractor).__name__)


def reference_cache_path(cache_dir: str | os.PathLike, dataset: str, image_size: int, extractor: nn.Module) -> Path:
    """``cache_dir/{dataset}-{image_size}-{extractor name}.pt`` (spaces and slashes replaced)."""
    stem = f"{dataset}-{image_size}-{_name(extractor)}"
    return Path(cache_dir).expanduser() / ("".join(c if c.isalnum() or c in "-_.()" else "_" for c in stem) + ".pt")


def reference_features(images: Batches, extractor: nn.Module, cache: str | os.PathLike | None = None,
                       num_samples: int | None = None, batch_size: int = 500) -> Tensor:
    """The reference (training-set) features: read from ``cache`` when it exists (and was made by an extractor of
    the same name), else computed by :func:`features_of` and, with ``cache``, saved there (on CPU)."""
    if cache is not None and Path(cache).is_file():
        stored = torch.load(cache, map_location="cpu", weights_only=True)
        if stored["extractor"] != _name(extractor):
            raise ValueError(f"{cache} holds features of {stored['extractor']!r}, not of {_name(extractor)!r}: "
                             "delete it or give another cache file")
        return stored["features"]
    features = features_of(images, extractor, num_samples, batch_size)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"features": features.cpu(), "extractor": _name(extractor)}, cache)
    return features


@dataclass(frozen=True)
class ImageScores:
    """FID and KID (mean and standard deviation over subsets) of ``samples`` generated images against
    ``reference_samples`` reference images, with the implementation that computed them."""

    fid: float
    kid: float
    kid_std: float
    samples: int
    reference_samples: int
    kid_subset_size: int
    implementation: str


def image_scores(generated: Batches, reference: Tensor, extractor: nn.Module, *, num_samples: int | None = None,
                 batch_size: int = 500, kid_subsets: int = 100, kid_subset_size: int = 1000,
                 seed: int = 0) -> ImageScores:
    """FID and KID of generated uint8 images (an iterable of batches, or ``generate(n)`` for ``num_samples``)
    against ``reference`` features (:func:`reference_features`).

    Under ``torch.distributed`` every rank passes its share of the generated images and the metrics' states are
    reduced across ranks; the reference enters on rank 0 only, so that it counts once. Every rank gets the scores.
    """
    import torch.distributed as dist
    import torchmetrics

    fake = features_of(generated, extractor, num_samples, batch_size)
    distributed = dist.is_available() and dist.is_initialized()
    if distributed and dist.get_rank() != 0:
        reference = reference[:0]
    counts = torch.tensor([fake.shape[0], reference.shape[0]], device=fake.device)
    if distributed:
        dist.all_reduce(counts)
    samples, reference_samples = int(counts[0]), int(counts[1])
    size = min(kid_subset_size, samples, reference_samples)
    fid = frechet_distance(reference, fake)
    kid, kid_std = kernel_distance(reference, fake, kid_subsets, size, seed)
    if not (math.isfinite(fid) and math.isfinite(kid)):
        raise FloatingPointError(f"FID {fid} / KID {kid} is not finite: check the generated images")
    implementation = (f"torchmetrics {torchmetrics.__version__} FrechetInceptionDistance/KernelInceptionDistance "
                      f"on {_name(extractor)}")
    return ImageScores(fid, kid, kid_std, samples, reference_samples, size, implementation)
