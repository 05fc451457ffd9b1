r"""The Frechet distance in a small classifier's features: FID's practice for the embedded digits.

The Inception network of FID is made for natural 299 x 299 images and needs a weights file; for the 8 x 8 digits
(and the multivariate-diffusion experiments on them) the same Frechet distance is taken in the penultimate features
of a small CNN trained on the digits' training split (a classifier's features in place of Inception's). The
classifier is trained once and cached in a file (:func:`digit_classifier`); the distance goes through the same
torchmetrics call as FID (:func:`~sde_control.generative.evaluation.fid.frechet_distance`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sde_control.generative.data.images import ImageDataset, digits
from sde_control.generative.evaluation.fid import features_of, frechet_distance

__all__ = ["DigitClassifier", "accuracy", "classifier_frechet_distance", "digit_classifier", "train_classifier"]


class DigitClassifier(nn.Module):
    """A small CNN on uint8 images ``(n, C, H, W)`` (0..255): three 3 x 3 convolutions (16, 32, 64 channels, the
    last two with stride 2) with SiLU, global average pooling to the 64 ``features``, and a linear layer to the
    class logits. Calling it gives the features (the feature extractor of :func:`classifier_frechet_distance`)."""

    num_features = 64

    def __init__(self, image_shape: tuple[int, int, int], classes: int = 10):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.body = nn.Sequential(
            nn.Conv2d(self.image_shape[0], 16, 3, padding=1), nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(32, self.num_features, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(self.num_features, classes)
        self.name = f"digit-classifier-{'x'.join(map(str, self.image_shape))}"

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"the classifier takes uint8 images (n, {', '.join(map(str, self.image_shape))}), "
                             f"got {images.dtype} {tuple(images.shape)}")
        return self.body(images.float() / 255.0)

    def logits(self, images: Tensor) -> Tensor:
        return self.head(self(images))


def train_classifier(data: ImageDataset, epochs: int = 15, batch_size: int = 128, lr: float = 5e-3,
                     seed: int = 0) -> DigitClassifier:
    """Adam on the cross-entropy of ``data``'s labels (its images as 8-bit pixels), ``epochs`` passes in shuffled
    batches; returned in evaluation mode."""
    if data.labels is None:
        raise ValueError("the classifier needs labelled images (data.labels is None)")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = DigitClassifier(data.shape, classes=int(data.labels.max()) + 1)
    images, labels = data.transform.to_uint8(data.images), data.labels
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    for _ in range(epochs):
        for index in torch.randperm(len(labels), generator=generator).split(batch_size):
            loss = F.cross_entropy(classifier.logits(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return classifier.eval()


@torch.no_grad()
def accuracy(classifier: DigitClassifier, data: ImageDataset) -> float:
    """The fraction of ``data``'s images whose label is the classifier's most likely class."""
    predicted = classifier.logits(data.transform.to_uint8(data.images)).argmax(-1)
    return float((predicted == data.labels).float().mean())


def digit_classifier(cache: str | os.PathLike | None = None, image_size: int = 8, channels: int = 1,
                     resize: str = "pad", seed: int = 0) -> DigitClassifier:
    """The classifier of the digits' training split at this layout (:func:`~sde_control.generative.data.digits`):
    loaded from ``cache`` when the file exists, else trained (seconds on a CPU at 8 x 8) and saved there."""
    shape = (channels, image_size, image_size)
    if cache is not None and Path(cache).is_file():
        stored = torch.load(cache, map_location="cpu", weights_only=True)
        if tuple(stored["image_shape"]) != shape or stored["resize"] != resize:
            raise ValueError(f"{cache} holds a classifier of {stored['resize']} images {tuple(stored['image_shape'])},"
                             f" not {resize} {shape}: delete it or give another cache file")
        classifier = DigitClassifier(shape)
        classifier.load_state_dict(stored["weights"])
        return classifier.eval()
    classifier = train_classifier(digits("train", image_size, channels, resize), seed=seed)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"weights": classifier.state_dict(), "image_shape": list(shape), "resize": resize}, cache)
    return classifier


def classifier_frechet_distance(images_a: Tensor, images_b: Tensor, classifier: DigitClassifier,
                                batch_size: int = 500) -> float:
    """The Frechet distance between the classifier features of two sets of uint8 images ``(n, C, H, W)``
    (model outputs ``y`` become such images by ``ImageTransform.to_uint8(ImageTransform.from_model(y))``, vectors
    ``(n, 64)`` after ``reshape(n, 1, 8, 8)``)."""
    features = [features_of(images.split(batch_size), classifier) for images in (images_a, images_b)]
    return frechet_distance(*features)
