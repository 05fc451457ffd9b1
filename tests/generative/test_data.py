"""The 2-d data sets and the validation of user data."""

import math

import numpy as np
import pytest
import torch

from sde_control.generative import data

GENERATORS = [data.spiral, data.checkerboard, data.moons, data.anisotropic_gaussian, data.gaussian_mixture, data.rings,
              data.pinwheel, data.eight_gaussians, data.swiss_roll, data.banana]


@pytest.mark.parametrize("generator", GENERATORS, ids=lambda g: g.__name__)
def test_generators_are_seeded_float32_point_clouds(generator):
    x = generator(500, seed=3)
    assert x.shape == (500, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    torch.testing.assert_close(x, generator(500, seed=3))
    assert not torch.equal(x, generator(500, seed=4))
    with pytest.raises(ValueError, match="positive int"):
        generator(0)


def test_the_papers_shapes_are_stretched_along_their_axis():
    spiral = data.spiral(20_000, stretch=8.0)
    assert 6 < spiral.std(0)[1] / spiral.std(0)[0] < 10  # stretched along y
    board = data.checkerboard(20_000, stretch=6.0)
    ratio = board.std(0)[0] / board.std(0)[1]
    assert ratio == pytest.approx(6.0, rel=0.05)  # both coordinates uniform on [-2 pi, 2 pi] before the stretch
    x, y = board[:, 0] / 6.0, board[:, 1]
    cells = torch.floor(x / math.pi) + torch.floor(y / math.pi)
    assert (cells.remainder(2) == 0).all()  # only the dark cells


def test_anisotropic_gaussian_has_its_covariance():
    x = data.anisotropic_gaussian(100_000, std=(1.0, 8.0), angle=30.0, mean=(1.0, -2.0))
    cov = data.anisotropic_gaussian_covariance(std=(1.0, 8.0), angle=30.0)
    torch.testing.assert_close(x.double().T.cov(), cov, rtol=0.02, atol=0.1)
    torch.testing.assert_close(x.double().mean(0), torch.tensor([1.0, -2.0], dtype=torch.float64), atol=0.1, rtol=0)
    major = torch.linalg.eigh(cov).eigenvectors[:, 1]
    assert abs(float(major @ torch.tensor([-0.5, math.sqrt(3) / 2], dtype=torch.float64))) == pytest.approx(1.0)


def test_the_unseen_shapes_have_their_structure():
    n = 40_000
    radius = data.rings(n, noise=0.0).double().norm(dim=1)
    assert torch.isin(radius.round(decimals=6), torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)).all()
    # ring k is chosen with probability r_k / 10: the fraction on the outer ring is 0.4 within 5 standard errors
    assert abs(float((radius > 3.5).double().mean()) - 0.4) < 5 * math.sqrt(0.24 / n)
    # banana: x_2 given x_1 is N(x_1^2 / 4 - 1, 1); the residual has mean 0 and variance 1 (5 standard errors)
    x = data.banana(n).double()
    residual = x[:, 1] - (x[:, 0] ** 2 / 4 - 1)
    assert abs(float(residual.mean())) < 5 / math.sqrt(n) and abs(float(residual.var()) - 1) < 5 * math.sqrt(2 / n)
    # eight Gaussians: every point within 5 std of its nearest centre at radius 2
    x = data.eight_gaussians(n).double()
    angle = torch.arange(8, dtype=torch.float64) * math.pi / 4
    centres = 2.0 * torch.stack([angle.cos(), angle.sin()], dim=1)
    assert float(torch.cdist(x, centres).min(dim=1).values.max()) < 5 * 0.2 * math.sqrt(2)
    # pinwheel: the radius is 2 |(1 + 0.3 z_1, 0.1 z_2)| (a rotation keeps it): within 2 (1 + 0.3 * 5.5) + 0.2 * 5.5
    x = data.pinwheel(n).double()
    assert float(x.norm(dim=1).max()) < 2 * (1 + 0.3 * 5.5) + 0.2 * 5.5


def test_validate_accepts_arrays_and_rejects_what_cannot_be_trained_on():
    assert data.validate([[0, 1], [2, 3.5]]).dtype == torch.float32
    assert data.validate(np.zeros((5, 3)), dim=3).shape == (5, 3)
    bad = torch.zeros(10, 2)
    bad[4, 1] = float("nan")
    bad[7, 0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or infinite entries in 2 of 10 rows \(first: row 4\)"):
        data.validate(bad)
    with pytest.raises(ValueError, match=r"3 columns but the model was built for dim=2"):
        data.validate(torch.zeros(10, 3), dim=2)
    with pytest.raises(ValueError, match=r"shape \(n, d\), got shape \(10,\).*reshape\(-1, 1\)"):
        data.validate(torch.zeros(10))
    with pytest.raises(ValueError, match="at least 2 points"):
        data.validate(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="numeric"):
        data.validate([["a", "b"], ["c", "d"]])


@pytest.mark.parametrize("suffix", [".csv", ".txt", ".npy", ".pt"])
def test_load_reads_files(tmp_path, suffix):
    x = data.moons(50)
    path = tmp_path / f"points{suffix}"
    if suffix == ".npy":
        np.save(path, x.numpy())
    elif suffix == ".pt":
        torch.save(x, path)
    else:
        np.savetxt(path, x.numpy(), delimiter="," if suffix == ".csv" else " ")
    torch.testing.assert_close(data.load(path), x, rtol=1e-6, atol=1e-6)
    with pytest.raises(FileNotFoundError):
        data.load(tmp_path / "missing.csv")
