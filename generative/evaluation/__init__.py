"""How good generated data is.

:mod:`~sde_control.generative.evaluation.points`: point clouds against held-out points (exact W2^2, histogram
total variation, trajectory straightness).

:mod:`~sde_control.generative.evaluation.fid`: FID and KID of images (torchmetrics' distances on the features of the
TF-FID Inception-v3 or of any network; reference features cached). :mod:`~sde_control.generative.evaluation.classifier`:
the Frechet distance in a small digit classifier's features, for the embedded digits.
"""

from .classifier import DigitClassifier, accuracy, classifier_frechet_distance, digit_classifier, train_classifier
from .fid import (
    INCEPTION_WEIGHTS,
    ImageScores,
    InceptionFeatures,
    features_of,
    frechet_distance,
    image_scores,
    kernel_distance,
    reference_cache_path,
    reference_features,
)
from .points import evaluate, histogram_distance, straightness

__all__ = ["INCEPTION_WEIGHTS", "DigitClassifier", "ImageScores", "InceptionFeatures", "accuracy",
           "classifier_frechet_distance", "digit_classifier", "evaluate", "features_of", "frechet_distance",
           "histogram_distance", "image_scores", "kernel_distance", "reference_cache_path", "reference_features",
           "straightness", "train_classifier"]
