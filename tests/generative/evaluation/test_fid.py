"""FID and KID through torchmetrics: exact closed forms on feature sets with known statistics, and the whole metric
path (reference features cached, generated batches, scores) with a small stand-in feature network on the CPU."""

import importlib.util
import math

import pytest
import scipy.linalg
import torch
from torch import nn

pytest.importorskip("torchmetrics", reason="FID and KID need the images extra (torchmetrics)")

from sde_control.generative.data import digits  # noqa: E402
from sde_control.generative.evaluation import (  # noqa: E402
    INCEPTION_WEIGHTS,
    InceptionFeatures,
    features_of,
    frechet_distance,
    image_scores,
    kernel_distance,
    reference_cache_path,
    reference_features,
)

f64 = dict(dtype=torch.float64)


def with_statistics(n, mean, factor, seed):
    """``n`` points whose sample mean is exactly ``mean`` and unbiased sample covariance exactly
    ``factor @ factor.T`` (Gaussian draws, centred and whitened by their own Cholesky factor)."""
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), **f64)
    z = z - z.mean(0)
    z = torch.linalg.solve_triangular(torch.linalg.cholesky(torch.cov(z.T)), z.T, upper=False).T
    return z @ factor.T + mean


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    # Commuting covariances: tr(C1 + C2 - 2 (C1 C2)^1/2) = sum (sqrt a - sqrt b)^2.
    m1, m2 = torch.tensor([0.0, 1.0, -2.0], **f64), torch.tensor([0.5, 1.0, 0.0], **f64)
    a, b = torch.tensor([1.0, 4.0, 0.25], **f64), torch.tensor([9.0, 1.0, 0.25], **f64)
    x1, x2 = with_statistics(40, m1, a.sqrt().diag(), 0), with_statistics(60, m2, b.sqrt().diag(), 1)
    expected = (m1 - m2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()  # 4.25 + 4 + 1 + 0
    assert frechet_distance(x1, x2) == pytest.approx(float(expected), rel=1e-9)
    assert frechet_distance(x1, x1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_correlated_gaussians_is_the_closed_form():
    g = torch.Generator().manual_seed(2)
    m1, m2 = torch.randn(5, generator=g, **f64), torch.randn(5, generator=g, **f64)
    A1, A2 = torch.randn(5, 5, generator=g, **f64), torch.randn(5, 5, generator=g, **f64)
    C1, C2 = A1 @ A1.T, A2 @ A2.T
    root = scipy.linalg.sqrtm((C1 @ C2).numpy()).real
    expected = float((m1 - m2).square().sum() + torch.trace(C1 + C2) - 2 * root.trace())
    value = frechet_distance(with_statistics(30, m1, A1, 3), with_statistics(50, m2, A2, 4))
    assert value == pytest.approx(expected, rel=1e-7)


def test_kernel_distance_on_whole_sets_is_the_unbiased_mmd_with_the_cubic_kernel():
    # With one subset as large as the sets, the random subset is a permutation, and the unbiased MMD^2 does not
    # depend on the order: it must equal the formula evaluated directly.
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(30, 4, generator=g, **f64), 1 + 0.5 * torch.randn(30, 4, generator=g, **f64)

    def k(a, b):
        return (a @ b.T / 4 + 1) ** 3

    m = 30
    off_diagonal = lambda K: K.sum() - K.diagonal().sum()  # noqa: E731
    expected = (off_diagonal(k(x, x)) + off_diagonal(k(y, y))) / (m * (m - 1)) - 2 * k(x, y).sum() / m**2
    mean, std = kernel_distance(x, y, subsets=1, subset_size=m)
    assert mean == pytest.approx(float(expected), rel=1e-9) and std == 0.0


class StandIn(nn.Module):
    """A small fixed convolutional feature map of uint8 images, counting the images it sees."""

    def __init__(self, channels=1, width=6):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(channels, width, 3, stride=2), nn.Tanh(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten())
        self.name = "stand-in conv"
        self.seen = 0

    def forward(self, images):
        self.seen += images.shape[0]
        return self.net(images.float() / 127.5 - 1)


def test_metric_path_end_to_end_with_cached_reference(tmp_path):
    train, held_out = digits("train"), digits("held_out")
    to_pixels = train.transform.to_uint8
    extractor = StandIn()
    cache = reference_cache_path(tmp_path, "digits-train", 8, extractor)
    assert cache.name == "digits-train-8-stand-in_conv.pt"
    reference = reference_features(to_pixels(train.images).split(100), extractor, cache)
    assert reference.shape == (1437, 6) and cache.is_file() and extractor.seen == 1437

    def never():
        raise AssertionError("the cached reference was recomputed")
        yield

    assert torch.equal(reference_features(never(), extractor, cache), reference)

    held = to_pixels(held_out.images)
    real = image_scores(held.split(64), reference, extractor, kid_subset_size=200)
    g = torch.Generator().manual_seed(0)
    noise = image_scores(lambda n: torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g), reference,
                         extractor, num_samples=300, batch_size=64, kid_subset_size=200)
    assert (real.samples, real.reference_samples, real.kid_subset_size) == (360, 1437, 200)
    assert noise.samples == 300 and "torchmetrics" in real.implementation and "stand-in conv" in real.implementation
    # held-out digits are close to the training digits, noise is far (FID 0.0003 against 0.098 at these seeds)
    assert real.fid < 0.1 * noise.fid and real.kid < 0.1 * noise.kid
    assert abs(real.kid) < 3 * real.kid_std + 1e-3 and noise.kid > 3 * noise.kid_std


def test_metric_inputs_are_checked(tmp_path):
    extractor = StandIn()
    with pytest.raises(ValueError, match="uint8 images .*to_uint8"):
        features_of([torch.rand(4, 1, 8, 8)], extractor)
    with pytest.raises(ValueError, match="num_samples"):
        features_of(lambda n: torch.zeros(n, 1, 8, 8, dtype=torch.uint8), extractor)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(torch.randn(5, 2), torch.full((5, 2), float("nan")))
    cache = tmp_path / "reference.pt"
    reference_features([torch.zeros(3, 1, 8, 8, dtype=torch.uint8)], extractor, cache)
    other = StandIn()
    other.name = "another network"
    with pytest.raises(ValueError, match="holds features of 'stand-in conv'"):
        reference_features([], other, cache)


def test_inception_weights_are_read_from_a_local_file_only(tmp_path):
    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS + ".*give its path"):
        InceptionFeatures(tmp_path / INCEPTION_WEIGHTS)
    if importlib.util.find_spec("torch_fidelity") is None:
        (tmp_path / INCEPTION_WEIGHTS).write_bytes(b"")
        with pytest.raises(ImportError, match=r"sde-control\[fid\]"):
            InceptionFeatures(tmp_path / INCEPTION_WEIGHTS)


def test_closed_form_helper_has_the_statistics_it_promises():
    factor = torch.tensor([[2.0, 0.0], [1.0, 0.5]], **f64)
    x = with_statistics(25, torch.tensor([1.0, -1.0], **f64), factor, 0)
    assert torch.allclose(x.mean(0), torch.tensor([1.0, -1.0], **f64))
    assert torch.allclose(torch.cov(x.T), factor @ factor.T)
    assert math.isclose(float(torch.cov(x.T)[0, 0]), 4.0)


def _scores_on_rank(rank, world_size, port, reference, generated, queue):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        share = generated[rank::world_size]
        scores = image_scores([share], reference, _Pooling(), kid_subset_size=40, kid_subsets=5)
        queue.put((rank, scores))
    finally:
        dist.destroy_process_group()


class _Pooling(nn.Module):
    """Parameter-free features: the mean of each 2 x 2 quarter of an 8 x 8 image (picklable for other processes)."""

    name = "quarter means"

    def forward(self, images):
        return nn.functional.avg_pool2d(images.float(), 4).flatten(1)


@pytest.mark.slow  # about 20 s on this CPU, most of it two processes importing torch
def test_ranks_sharing_the_generated_images_get_the_single_process_scores():
    import socket

    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(0)
    reference = torch.rand(100, 4, generator=g, **f64).float() * 255
    generated = torch.randint(0, 256, (90, 1, 8, 8), dtype=torch.uint8, generator=g)
    single = image_scores([generated], reference, _Pooling(), kid_subset_size=40, kid_subsets=5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_scores_on_rank, args=(r, 2, port, reference, generated, queue))
                 for r in range(2)]
    for p in processes:
        p.start()
    results = dict(queue.get(timeout=120) for _ in processes)
    for p in processes:
        p.join(timeout=60)
    for scores in results.values():
        assert (scores.samples, scores.reference_samples) == (90, 100)  # the reference counted once
        assert scores.fid == pytest.approx(single.fid, rel=1e-9)
        # KID's subsets depend on the order in which ranks' features are gathered, not on the rank count
        assert scores.kid == pytest.approx(results[0].kid, rel=1e-9)
