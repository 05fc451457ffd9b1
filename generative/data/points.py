r"""Two-dimensional data sets generated in code, and validation of user data.

Every generator returns a float32 tensor of shape ``(n, 2)`` drawn with its own ``torch.Generator`` seeded by
``seed``, so a data set is a pure function of its arguments. The anisotropic shapes follow the VSDM paper's
experiments (Deng et al., ICML 2024): the spiral stretched 8 times along ``y`` and the checkerboard stretched
6 times along ``x``; at the VP schedule's ``beta_max = 10`` their long axes are not noised down to unit variance
by ``t = T``, which is where a fixed isotropic forward process struggles.

User data (arrays, tensors or files) goes through :func:`validate`, which rejects what a model cannot train on
with a message that says what is wrong.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["anisotropic_gaussian", "anisotropic_gaussian_covariance", "banana", "checkerboard", "eight_gaussians",
           "gaussian_mixture", "load", "moons", "pinwheel", "rings", "spiral", "swiss_roll", "validate"]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of points must be a positive int, got {n!r}")


def spiral(n: int, stretch: float = 8.0, noise: float = 0.1, seed: int = 0) -> Tensor:
    r"""A two-turn spiral (Swiss roll) stretched ``stretch`` times along ``y``.

    Angle ``theta ~ U(1.5 pi, 4.5 pi)``, radius ``r = 4 theta / (4.5 pi)`` (so at most 4), point
    ``r (cos theta, sin theta) + noise * N(0, I)``, then ``y <- stretch * y``.
    """
    _check_n(n)
    g = _generator(seed)
    theta = math.pi * (1.5 + 3.0 * torch.rand(n, generator=g, dtype=torch.float64))
    radius = 4.0 * theta / (4.5 * math.pi)
    x = torch.stack([radius * theta.cos(), radius * theta.sin()], dim=1)
    x = x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x[:, 1] *= stretch
    return x.float()


def checkerboard(n: int, stretch: float = 6.0, seed: int = 0) -> Tensor:
    r"""Uniform on the 8 dark cells of a 4 x 4 board of side ``pi`` on ``[-2 pi, 2 pi]^2``, stretched ``stretch``
    times along ``x``. A cell ``(i, j)`` (``i, j in 0..3``) is dark when ``i + j`` is even."""
    _check_n(n)
    g = _generator(seed)
    cell = torch.randint(0, 8, (n,), generator=g)
    row = cell // 2
    column = 2 * (cell % 2) + row % 2  # the dark columns of each row: (i + j) even
    offset = torch.rand(n, 2, generator=g, dtype=torch.float64)
    x = math.pi * (torch.stack([column, row], dim=1).double() + offset) - 2 * math.pi
    x[:, 0] *= stretch
    return x.float()


def moons(n: int, noise: float = 0.1, seed: int = 0) -> Tensor:
    r"""Two interleaving half circles of radius 1 (upper centred at ``(0, 0)``, lower at ``(1, 0.5)``) plus
    ``noise * N(0, I)``, shifted to mean zero; about half the points on each."""
    _check_n(n)
    g = _generator(seed)
    angle = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    lower = torch.rand(n, generator=g) < 0.5
    x = torch.stack([angle.cos(), angle.sin()], dim=1)
    x[lower] = torch.stack([1.0 - x[lower, 0], 0.5 - x[lower, 1]], dim=1)
    x = x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    return x.float()


def anisotropic_gaussian(n: int, std: Sequence[float] = (1.0, 8.0), angle: float = 30.0,
                         mean: Sequence[float] = (0.0, 0.0), seed: int = 0) -> Tensor:
    r"""``N(mean, R diag(std)^2 R^T)`` with ``R`` the rotation by ``angle`` degrees: the principal axes are
    ``R e_1`` (standard deviation ``std[0]``) and ``R e_2`` (``std[1]``). See :func:`anisotropic_gaussian_covariance`."""
    _check_n(n)
    g = _generator(seed)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor(std, dtype=torch.float64)
    return (z @ _rotation(angle).T + torch.tensor(mean, dtype=torch.float64)).float()


def anisotropic_gaussian_covariance(std: Sequence[float] = (1.0, 8.0), angle: float = 30.0) -> Tensor:
    """The covariance ``R diag(std)^2 R^T`` of :func:`anisotropic_gaussian` (float64)."""
    R = _rotation(angle)
    return R @ torch.diag(torch.tensor(std, dtype=torch.float64) ** 2) @ R.T


def _rotation(angle: float) -> Tensor:
    a = math.radians(angle)
    return torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)


def gaussian_mixture(n: int, components: int = 8, radius: float = 8.0, std: float = 1.0, seed: int = 0) -> Tensor:
    r"""Equal-weight mixture of ``components`` Gaussians ``N(mu_k, std^2 I)`` with means
    ``mu_k = radius (cos 2 pi k / K, sin 2 pi k / K)``."""
    _check_n(n)
    if components < 1:
        raise ValueError(f"components must be positive, got {components}")
    g = _generator(seed)
    k = torch.randint(0, components, (n,), generator=g).double()
    angle = 2 * math.pi * k / components
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return (means + std * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def rings(n: int, radii: Sequence[float] = (1.0, 2.0, 3.0, 4.0), noise: float = 0.08, seed: int = 0) -> Tensor:
    r"""Concentric circles of the given ``radii``, each point on ring ``k`` with probability proportional to its
    radius (uniform along the total length), at a uniform angle, plus ``noise * N(0, I)``."""
    _check_n(n)
    g = _generator(seed)
    r = torch.tensor(radii, dtype=torch.float64)
    ring = torch.multinomial(r / r.sum(), n, replacement=True, generator=g)
    angle = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    x = r[ring, None] * torch.stack([angle.cos(), angle.sin()], dim=1)
    return (x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def pinwheel(n: int, arms: int = 5, radial_std: float = 0.3, tangential_std: float = 0.1, rate: float = 0.25,
             seed: int = 0) -> Tensor:
    r"""The pinwheel of Johnson et al. (2016, "Composing graphical models with neural networks"): ``arms`` equal
    clusters ``(1 + radial_std z_1, tangential_std z_2)``, each rotated by its arm's angle ``2 pi k / arms`` plus
    ``rate`` times its radial coordinate (``exp`` of it), which bends the arms."""
    _check_n(n)
    g = _generator(seed)
    arm = torch.randint(0, arms, (n,), generator=g)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor([radial_std, tangential_std],
                                                                         dtype=torch.float64)
    z[:, 0] += 1.0
    angle = 2 * math.pi * arm.double() / arms + rate * z[:, 0].exp()
    c, s = angle.cos(), angle.sin()
    return torch.stack([c * z[:, 0] - s * z[:, 1], s * z[:, 0] + c * z[:, 1]], dim=1).mul(2.0).float()


def eight_gaussians(n: int, radius: float = 2.0, std: float = 0.2, seed: int = 0) -> Tensor:
    r"""Eight narrow Gaussians ``N(mu_k, std^2 I)`` at ``radius (cos pi k / 4, sin pi k / 4)`` (the small-scale
    "8 Gaussians" of the continuous-flow literature; the ``gaussian_mixture`` default is wider and larger)."""
    return gaussian_mixture(n, components=8, radius=radius, std=std, seed=seed)


def swiss_roll(n: int, noise: float = 0.15, seed: int = 0) -> Tensor:
    r"""A 2-d Swiss roll without the spiral's stretch: ``theta ~ U(1.5 pi, 4.5 pi)``, point
    ``theta (cos theta, sin theta) / 5 + noise * N(0, I)``, so radii grow from 0.9 to 2.8 and the turns are closer
    relative to the noise than the spiral's."""
    _check_n(n)
    g = _generator(seed)
    theta = math.pi * (1.5 + 3.0 * torch.rand(n, generator=g, dtype=torch.float64))
    x = theta[:, None] * torch.stack([theta.cos(), theta.sin()], dim=1) / 5
    return (x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def banana(n: int, curvature: float = 0.25, seed: int = 0) -> Tensor:
    r"""The banana ``x_1 ~ N(0, 4)``, ``x_2 | x_1 ~ N(curvature x_1^2 - 4 curvature, 1)`` (the README's sampler
    target, shifted to mean zero): one curved, skewed ridge."""
    _check_n(n)
    g = _generator(seed)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x1 = 2.0 * z[:, 0]
    return torch.stack([x1, curvature * (x1**2 - 4.0) + z[:, 1]], dim=1).float()


def validate(x: Tensor | np.ndarray | Sequence, dim: int | None = None, name: str = "data") -> Tensor:
    """``x`` as a float32 tensor of shape ``(n, d)``; ``ValueError`` with the reason if it is not usable.

    Rejected: anything that does not convert to a numeric array, arrays that are not two-dimensional, fewer
    than 2 points, NaN or infinite entries (with the number of bad rows), and ``d != dim`` when ``dim`` is given.
    """
    try:
        t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a numeric array of shape (n, d): {error}") from None
    if t.ndim != 2:
        hint = " (for one-dimensional data use x.reshape(-1, 1))" if t.ndim == 1 else ""
        raise ValueError(f"{name} must have shape (n, d), got shape {tuple(t.shape)}{hint}")
    if t.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    t = t.float()
    if t.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 points, got {t.shape[0]}")
    bad = ~torch.isfinite(t).all(dim=1)
    if bad.any():
        first = int(bad.nonzero()[0])
        raise ValueError(f"{name} has NaN or infinite entries in {int(bad.sum())} of {t.shape[0]} rows "
                         f"(first: row {first}); remove or impute them")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} has {t.shape[1]} columns but the model was built for dim={dim}")
    return t


def load(path: str | os.PathLike, dim: int | None = None) -> Tensor:
    """Read points from ``.npy``, ``.pt`` (a tensor) or text (``.csv`` comma-separated, other suffixes
    whitespace-separated) and :func:`validate` them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    if path.suffix == ".npy":
        x = np.load(path)
    elif path.suffix == ".pt":
        x = torch.load(path, map_location="cpu", weights_only=True)
    else:
        x = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
    return validate(x, dim=dim, name=str(path))
