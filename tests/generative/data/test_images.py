"""Images: the level transform and bits/dim (exact facts), the embedded digits, CIFAR-10 pickles and image folders
written by the tests, missing-data messages, and the loader's sharding across ranks."""

import math
import pickle

import numpy as np
import pytest
import torch

from sde_control.generative.data import (
    ImageDataset,
    ImageFolder,
    ImageTransform,
    cifar10,
    digits,
    image_loader,
    random_hflip,
)


@pytest.mark.parametrize("levels", [17, 256])
def test_cell_centres_and_dequantised_points_quantise_back_to_their_level(levels):
    transform = ImageTransform(levels)
    x = torch.arange(levels, dtype=torch.uint8).repeat(50)
    centres = transform.to_model(x, dequantise=False)
    assert centres.min() > -1 and centres.max() < 1
    assert torch.equal(transform.from_model(centres), x)
    y = transform.to_model(x, torch.Generator().manual_seed(1))
    assert y.min() >= -1 and y.max() <= 1
    assert torch.equal(transform.from_model(y), x)
    # U ~ U[0, 1): the offset within each cell, (y + 1) L / 2 - x, has mean 1/2 and variance 1/12
    # (n = 50 L >= 850 draws: standard error of the mean <= 0.29 / sqrt(850) = 0.01).
    offset = (y.double() + 1) * levels / 2 - x.double()
    assert abs(offset.mean() - 0.5) < 0.04 and abs(offset.var() - 1 / 12) < 0.02


def test_to_uint8_spreads_the_levels_over_0_to_255():
    assert ImageTransform(17).to_uint8(torch.tensor([0, 8, 16])).tolist() == [0, 128, 255]
    assert ImageTransform(256).to_uint8(torch.tensor([0, 77, 255])).tolist() == [0, 77, 255]


def test_log_det_of_the_map_to_minus_one_one_and_bits_per_dim_of_a_uniform_density():
    D, L = 3 * 32 * 32, 256
    transform = ImageTransform(L)
    # x~ -> u = x~ / L has log-det -D log L; u in [0, 1] -> y = 2u - 1 has log-det D log 2.
    assert transform.log_det(D) == pytest.approx(-D * math.log(L) + D * math.log(2))
    # The uniform density on [0, 1]^D has -log p(u) = 0; on [-1, 1]^D, -log p(y) = D log 2. Either way the
    # dequantised data has log2 L = 8 bits/dim, the entropy of the uniform law on the levels.
    nll_y = torch.tensor(D * math.log(2.0))
    assert transform.bits_per_dim(nll_y, D).item() == pytest.approx(8.0)
    assert ImageTransform(17).bits_per_dim(torch.tensor(64 * math.log(2.0)), 64).item() == pytest.approx(math.log2(17))


def test_bits_per_dim_of_a_density_constant_on_cells_is_the_discrete_negative_log_likelihood():
    # A product of categoricals P(x) made into a density on [-1, 1]^D (constant on each cell of volume (2/L)^D):
    # p_y(y) = P(x) (L/2)^D, and the bound -log P(x) <= E[-log p(x + U)] is an equality.
    L, D = 17, 64
    probs = torch.softmax(torch.randn(L, dtype=torch.float64), 0)
    x = torch.randint(0, L, (5, D))
    log_P = probs.log()[x].sum(-1)
    nll_y = -(log_P + D * math.log(L / 2))
    expected = -log_P / (D * math.log(2))
    assert torch.allclose(ImageTransform(L).bits_per_dim(nll_y, D), expected)


def test_bad_levels_and_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="levels"):
        ImageTransform(1)
    with pytest.raises(TypeError, match="integer grey levels"):
        ImageTransform(256).to_model(torch.rand(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        ImageTransform(256).from_model(torch.tensor([0.0, float("nan")]))


@pytest.mark.parametrize("size,channels,resize", [(8, 1, "pad"), (16, 3, "pad"), (32, 1, "nearest"), (4, 1, "nearest")])
def test_digits_shapes_levels_and_split(size, channels, resize):
    train, held_out = digits("train", size, channels, resize), digits("held_out", size, channels, resize)
    assert len(train) == 1437 and len(held_out) == 360
    assert train.images.shape == (1437, channels, size, size) and train.images.dtype == torch.uint8
    assert train.levels == 17 and int(train.images.max()) == 16 and not train.hflip
    assert train.shape == (channels, size, size) and train.transform == ImageTransform(17)
    assert torch.equal(train.labels.bincount(), digits("train").labels.bincount())  # a fixed split
    if channels == 3:
        assert torch.equal(train.images[:, 0], train.images[:, 2])


def test_digits_padding_keeps_the_digit_in_the_middle_and_nearest_resizing_duplicates_pixels():
    native = digits().images
    padded = digits(image_size=16).images
    assert torch.equal(padded[:, :, 4:12, 4:12], native) and padded.sum() == native.sum()
    assert torch.equal(digits(image_size=16, resize="nearest").images, native.repeat_interleave(2, -1).repeat_interleave(2, -2))
    # the same loader gives the multivariate-diffusion vectors
    assert native.flatten(1).shape == (1437, 64)


def test_digits_refuses_unknown_options():
    with pytest.raises(ValueError, match="split"):
        digits("test")
    with pytest.raises(ValueError, match="resize='nearest'"):
        digits(image_size=4)
    with pytest.raises(ValueError, match="channels"):
        digits(channels=2)


def _write_cifar_batch(path, images, labels):
    data = images.numpy().reshape(len(images), -1)  # rows: red plane, green plane, blue plane
    with open(path, "wb") as file:
        pickle.dump({b"batch_label": b"fake", b"labels": labels, b"data": data, b"filenames": [b"x"] * len(labels)}, file)


def test_cifar10_reads_the_python_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8) for _ in range(6)]
    for i, images in enumerate(batches[:5], start=1):
        _write_cifar_batch(folder / f"data_batch_{i}", images, [i, i, 9])
    _write_cifar_batch(folder / "test_batch", batches[5], [0, 1, 2])
    train = cifar10(tmp_path)
    assert torch.equal(train.images, torch.cat(batches[:5])) and train.levels == 256 and train.hflip
    assert train.labels.tolist() == [1, 1, 9, 2, 2, 9, 3, 3, 9, 4, 4, 9, 5, 5, 9]
    test = cifar10(folder, "test")  # the batches folder itself works too
    assert torch.equal(test.images, batches[5]) and test.labels.tolist() == [0, 1, 2]


def test_missing_cifar10_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"
                                                r" and extract it into " + str(tmp_path)):
        cifar10(tmp_path)


def test_image_folder_resizes_center_crops_and_converts(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, 10:30] = (200, 100, 50)  # the middle half, which survives the center crop
    Image.fromarray(wide).save(tmp_path / "a" / "wide.png")
    Image.fromarray(np.full((8, 8), 77, dtype=np.uint8)).save(tmp_path / "grey.png")
    (tmp_path / "notes.txt").write_text("not an image")
    data = ImageFolder(tmp_path, image_size=10)
    assert len(data) == 2 and data.shape == (3, 10, 10) and data.levels == 256
    wide_image = data[0]  # sorted: a/wide.png first
    assert wide_image.dtype == torch.uint8 and wide_image.shape == (3, 10, 10)
    assert wide_image[:, :, 2:8].float().mean((1, 2)).tolist() == pytest.approx([200, 100, 50], abs=2)
    assert torch.equal(data[1], torch.full((3, 10, 10), 77, dtype=torch.uint8))
    assert ImageFolder(tmp_path, image_size=4, channels=1)[0].shape == (1, 4, 4)


def test_missing_or_empty_image_folder_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image folder at .*put image files"):
        ImageFolder(tmp_path / "nowhere", 32)
    with pytest.raises(FileNotFoundError, match="no image files"):
        ImageFolder(tmp_path, 32)


def test_the_stream_is_one_permutation_per_epoch_whatever_the_ranks():
    data = ImageDataset(torch.arange(12, dtype=torch.uint8).reshape(12, 1, 1, 1), levels=256)

    def steps(loader, count):
        iterator = iter(loader)
        return [next(iterator).flatten().tolist() for _ in range(count)]

    single = steps(image_loader(data, 8, seed=3), 3)  # three global batches of 8: epochs 0, 0-1, 1
    assert sorted(single[0] + single[1][:4]) == list(range(12))  # epoch 0 covers the data once
    assert sorted(single[1][4:] + single[2]) == list(range(12))  # and so does epoch 1
    assert single[1][4:] + single[2] != single[0] + single[1][:4]  # a new epoch reshuffles
    # Two ranks with two micro-batches each: the blocks of each global batch, micro-batch-major.
    ranks = [steps(image_loader(data, 8, rank=r, world_size=2, accumulation=2, seed=3), 6) for r in range(2)]
    for k in range(3):
        blocks = [ranks[0][2 * k], ranks[1][2 * k], ranks[0][2 * k + 1], ranks[1][2 * k + 1]]
        assert sum(blocks, []) == single[k]
    assert steps(image_loader(data, 8, seed=3, start=2), 1) == single[2:3]  # the position is the step
    assert steps(image_loader(data, 4, shuffle=False), 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert not image_loader(data, 4).pin_memory
    with pytest.raises(ValueError, match="rank"):
        image_loader(data, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="does not split into 3 ranks x 1 micro-batches"):
        image_loader(data, 8, rank=0, world_size=3)


def test_random_hflip_mirrors_about_half_of_the_images():
    images = torch.arange(2000 * 4, dtype=torch.uint8).reshape(2000, 1, 1, 4) % 7
    flipped = random_hflip(images, torch.Generator().manual_seed(0))
    mirrored = (flipped == images.flip(-1)).all(-1).flatten() & (flipped != images).any(-1).flatten()
    kept = (flipped == images).all(-1).flatten()
    assert bool((mirrored | kept).all())
    # Binomial(2000, 1/2) among images that differ from their mirror image: 3 standard deviations is < 0.05.
    differs = (images != images.flip(-1)).any(-1).flatten()
    assert abs(mirrored[differs].float().mean() - 0.5) < 0.05
