"""Log-Gaussian Cox process posterior on the Finnish pines data (LGCP, d = 1600 on a 40 x 40 grid)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sde_control.target import Target

SIGNAL_VARIANCE = 1.91  # sigma^2
LENGTH_SCALE = 1.0 / 33  # beta, in units of the side of the unit square
GRID = 40  # cells per side: d = 1600

# Reference log Z of the benchmark setting (40 x 40 grid, the pines data) and its standard error, from
# benchmarks/reference_log_z.py --target lgcp (the class docstring gives the command and the run).
REFERENCE_LOG_Z = (501.77, 0.12)

DATA_SOURCE = (
    "the Finnish pines data (Moller, Syversveen & Waagepetersen 1998, 'Log Gaussian Cox processes'), 126 saplings "
    "rescaled to the unit square; the file pines.csv distributed with the sde_sampler repository "
    "(github.com/juliusberner/sde_sampler, data/pines.csv: a header line and the columns '', data_x, data_y) or "
    "with the Beyond-ELBOs benchmark (github.com/DenisBless/variational_sampling_methods, targets/data/pines.csv)"
)


def load_points(path: str | Path) -> np.ndarray:
    """The points of a pines-style CSV file as a float64 array (n, 2) in ``[0, 1]^2``.

    Accepted layouts: a header line naming the columns ``data_x`` and ``data_y`` (any other columns, such as a
    leading row index, are ignored), or plain rows of two numbers. ``FileNotFoundError`` says where the data comes
    from; ``ValueError`` for any other layout, non-finite entries or points outside the unit square.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pines data at {str(path)!r}: LGCP needs {DATA_SOURCE}")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    header = [name.strip().strip('"') for name in lines[0].split(",")]
    if {"data_x", "data_y"} <= set(header):
        columns, rows = [header.index("data_x"), header.index("data_y")], lines[1:]
    else:
        columns, rows = [0, 1], lines
    try:
        points = np.array([[float(line.split(",")[c]) for c in columns] for line in rows], dtype=np.float64)
    except (ValueError, IndexError) as error:
        raise ValueError(
            f"{path}: expected a header with columns data_x, data_y or rows of two numbers ({error})"
        ) from error
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"{path}: no points found")
    if not np.isfinite(points).all() or (points < 0).any() or (points > 1).any():
        raise ValueError(f"{path}: points must be finite and lie in the unit square [0, 1]^2")
    return points


def bin_counts(points: np.ndarray, grid: int) -> np.ndarray:
    """Counts of ``points`` (n, 2) in the ``grid x grid`` cells of the unit square, flattened row-major, shape
    (grid^2,): point ``(u, v)`` falls in cell ``(floor(grid u), floor(grid v))``, and a point on the upper or right
    edge (``u = 1``) in the last cell."""
    cells = np.minimum(np.floor(points * grid).astype(np.int64), grid - 1)
    return np.bincount(cells[:, 0] * grid + cells[:, 1], minlength=grid * grid).astype(np.float64)


def exponential_kernel(grid: int, signal_variance: float, length_scale: float) -> Tensor:
    """``K[(i, j), (k, l)] = sigma^2 exp(-|(i, j) - (k, l)| / (grid beta))`` on the cell indices (float64,
    (grid^2, grid^2)): the exponential covariance ``sigma^2 exp(-|u - v| / beta)`` between the cells' corners
    ``u = (i, j) / grid`` of the unit square."""
    cells = torch.tensor(list(itertools.product(range(grid), range(grid))), dtype=torch.float64)
    return signal_variance * torch.exp(-torch.cdist(cells, cells) / (grid * length_scale))


class LGCP(Target):
    r"""Posterior of the log-intensity of a log-Gaussian Cox process on the Finnish pines data.

    The setting of Heng et al. (2020, "Controlled sequential Monte Carlo", arXiv:1708.08396), used by Arbel, Matthews
    & Doucet (2021, "Annealed flow transport Monte Carlo") and the Beyond-ELBOs / SCLD / DDS benchmarks. Constants
    and likelihood as in ``annealed_flow_transport/densities.py`` (``LogGaussianCoxPines``) and
    ``annealed_flow_transport/cox_process_utils.py`` of github.com/google-deepmind/annealed_flow_transport (the same
    code is in ``targets/lgcp.py`` of github.com/DenisBless/variational_sampling_methods and
    ``sde_sampler/distr/cox.py`` of github.com/juliusberner/sde_sampler):

    * the unit square is cut into ``N x N`` cells (``N = 40``, ``d = N^2 = 1600``); ``y_i`` counts the data points in
      cell ``i`` (row ``floor(N u)``, column ``floor(N v)`` for a point ``(u, v)``, flattened row-major; a point on the
      upper edge goes into the last cell): 126 points in total;
    * prior ``x ~ N(mu 1, K)`` with ``K[i, j] = sigma^2 exp(-|c_i - c_j| / (N beta))`` on the integer cell indices
      ``c_i``, ``sigma^2 = 1.91``, ``beta = 1/33``, ``mu = log(126) - sigma^2 / 2`` (126 = the number of points; in
      general ``log n - sigma^2 / 2``), as estimated by Moller et al. (1998);
    * Poisson likelihood with cell area ``a = 1 / N^2``: ``sum_i (x_i y_i - a exp(x_i))`` (the ``-log y_i!`` terms
      are dropped, as in every benchmark, so ``Z`` is the marginal likelihood times ``prod_i y_i!``);

        ``log rho(x) = log N(x; mu 1, K) + sum_i (x_i y_i - a exp(x_i))``,
        ``score(x) = -K^{-1} (x - mu 1) + y - a exp(x)``.

    The benchmarks use this unwhitened parameterisation (``use_whitened = False`` in all three repositories; the AFT
    docstring: "The experiments in the paper have this set to False"). ``whitened=True`` gives the density of
    ``e = L^{-1} (x - mu 1)`` (``K = L L^T``): ``log N(e; 0, I) + sum_i (x_i y_i - a exp(x_i))`` at ``x = L e + mu 1``,
    with score ``-e + L^T (y - a exp(x))``. The change of variables has Jacobian ``|det L|``, which the unwhitened
    prior's normaliser carries, so both have the same ``Z`` (different samplers' difficulty, not different log Z).

    The Cholesky factor ``L`` (float64, then cast to the default dtype) and ``K^{-1}`` are buffers; ``K`` is well
    conditioned (condition number 27.6 at ``N = 40``, measured). No exact sampler.

    ``log_Z = 501.77 +- 0.12`` (one standard error; ``log_Z_std_error``) on the 40 x 40 grid, both parameterisations,
    from ``OMP_NUM_THREADS=1 python benchmarks/reference_log_z.py --target lgcp --float32 --particles 512 --runs 3
    --seed 100`` (8 minutes of one CPU thread): three independent SMC runs on the whitened form from its prior
    ``N(0, I)``, 512 particles, adaptive tempering at conditional ESS 0.99 (145-149 temperatures), one HMC step of 10
    leapfrog steps per temperature (acceptance 0.66), float32 target and particles (rounding of ``log rho`` below
    2.2e-4), float64 weights; runs 501.562, 501.976, 501.735; the log of their mean ``Z`` (SMC's ``Z`` estimate is
    unbiased) with a delta-method standard error. A second command, ``--particles 128 --runs 6`` (seeds 0-5), gives
    ``501.72 +- 0.10``: no drift with the particle count. Published values, second-hand: 486-498 in the
    Beyond-ELBOs / SCLD tables (estimates of samplers, most of them lower bounds); sde_sampler's ``Cox`` quotes 512.6
    "from the DDS paper, long-run SMC (1000 temperatures, 30 seeds with 2000 samples each)". Other grids:
    ``log_Z = None``.

    Args:
        path: the pines CSV file (no default: the data does not ship with the package; see :func:`load_points`).
        grid: cells per side ``N`` (``d = N^2``); the benchmarks use 40.
        whitened: the whitened parameterisation (same ``Z``).
    """

    log_Z_std_error: float | None = None

    def __init__(self, path: str | Path, grid: int = GRID, whitened: bool = False) -> None:
        super().__init__()
        if not isinstance(grid, int) or isinstance(grid, bool) or grid < 1:
            raise ValueError(f"grid must be a positive int, got {grid!r}")
        points = load_points(path)
        self.grid, self.dim, self.whitened = grid, grid * grid, bool(whitened)
        self.num_points = points.shape[0]
        self.cell_area = 1.0 / self.dim
        self.mean = math.log(self.num_points) - SIGNAL_VARIANCE / 2
        if grid == GRID and REFERENCE_LOG_Z is not None:
            self.log_Z, self.log_Z_std_error = REFERENCE_LOG_Z
        scale_tril = torch.linalg.cholesky(exponential_kernel(grid, SIGNAL_VARIANCE, LENGTH_SCALE))
        self.log_normaliser = -0.5 * self.dim * math.log(2 * math.pi) - (
            0.0 if self.whitened else scale_tril.diagonal().log().sum().item()
        )
        dtype = torch.get_default_dtype()
        self.register_buffer("counts", torch.from_numpy(bin_counts(points, grid)).to(dtype))
        self.register_buffer("scale_tril", scale_tril.to(dtype))
        self.register_buffer("precision", torch.cholesky_inverse(scale_tril).to(dtype))

    def latent(self, x: Tensor) -> Tensor:
        """The log-intensity per cell: ``x`` itself, or ``L e + mu`` in the whitened parameterisation."""
        return x @ self.scale_tril.T + self.mean if self.whitened else x

    def log_likelihood(self, latent: Tensor) -> Tensor:
        """``sum_i (x_i y_i - a exp(x_i))`` for log-intensities ``latent`` (batch, d), shape (batch,)."""
        return (latent * self.counts - self.cell_area * torch.exp(latent)).sum(-1)

    def log_prob(self, x: Tensor) -> Tensor:
        if self.whitened:
            quadratic = x.square().sum(-1)
        else:
            centred = x - self.mean
            quadratic = ((centred @ self.precision) * centred).sum(-1)
        return self.log_normaliser - 0.5 * quadratic + self.log_likelihood(self.latent(x))

    def score(self, x: Tensor) -> Tensor:
        latent = self.latent(x)
        likelihood_grad = self.counts - self.cell_area * torch.exp(latent)
        if self.whitened:
            return -x + likelihood_grad @ self.scale_tril
        return -(x - self.mean) @ self.precision + likelihood_grad

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid={self.grid}, points={self.num_points}, whitened={self.whitened}"
