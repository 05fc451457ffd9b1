"""The Sinkhorn divergence at the benchmarks' setting: eps = 1e-3, cost |x - y|^2, 2000 against 2000 samples.

For each case, ``sde_control.metrics.sinkhorn`` at its default tolerance (1e-5): the divergence, its error estimate,
the exact W2^2 beside it, the iterations and final marginal errors of the three problems, the time; then the same at
a tolerance ten times smaller (a longer run), whose change measures the first run's actual error against its
estimate. Where geomloss is installed, its epsilon scaling (annealing factor 0.9, the cost |x - y|^2 / 2 on sqrt(2) x,
blur sqrt(eps)) at the same eps, for comparison. Cases on the 9-mode GMM (``GaussianMixture``):

* ``exact``: exact samples against exact samples (seeds 0 and 1): the divergence's sampling floor;
* ``dropped mode``: samples of the mixture without its corner mode (-5, -5) (weights renormalised) against exact ones;
* ``shift``: exact samples against the same samples shifted by (0.3, -0.4), whose divergence is exactly 0.25.

Run from the repository root (one thread; several minutes per case on a busy 2-core machine):

    OMP_NUM_THREADS=1 python benchmarks/sinkhorn.py            # or --smoke: 200 points, seconds
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from sde_control.metrics import sinkhorn  # noqa: E402
from sde_control.targets import GaussianMixture  # noqa: E402


def cases(n: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, float | None]]:
    """name -> (x, y, exact divergence or None)."""
    target = GaussianMixture()
    torch.manual_seed(0)
    x, y = target.sample(n).double(), target.sample(n).double()
    weights = torch.ones(9)
    weights[0] = 0.0  # the mode at (-5, -5)
    dropped = GaussianMixture(weights=weights).sample(n).double()
    return {
        "exact": (x, y, None),
        "dropped mode": (dropped, y, None),
        "shift": (x, x + torch.tensor([0.3, -0.4], dtype=torch.float64), 0.25),
    }


def geomloss_divergence(x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[float, float] | None:
    try:
        from geomloss import SamplesLoss
    except ImportError:
        return None
    start = time.perf_counter()
    loss = SamplesLoss("sinkhorn", p=2, blur=math.sqrt(eps), scaling=0.9, debias=True, backend="tensorized")
    return loss(math.sqrt(2) * x, math.sqrt(2) * y).item(), time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--cases", default="exact,dropped mode,shift", help="comma-separated subset of the cases")
    parser.add_argument("--no-check", action="store_true", help="skip the longer run at tol / 10")
    parser.add_argument("--smoke", action="store_true", help="200 points")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n = 200 if args.smoke else args.points
    print(f"eps {args.eps}, {n} against {n} points, tolerance {args.tol} (and {args.tol / 10} for the check), "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread")
    print("| case | S_eps | error estimate | W2^2 | iterations xy/xx/yy | marginal l1 errors xy/xx/yy | seconds | "
          "S_eps at tol/10 | change | exact | geomloss (scaling 0.9), seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    chosen = args.cases.split(",")
    for name, (x, y, exact) in cases(n).items():
        if name not in chosen:
            continue
        first = sinkhorn(x, y, args.eps, tol=args.tol)
        second = None if args.no_check else sinkhorn(x, y, args.eps, tol=args.tol / 10, max_iter=200_000)
        other = geomloss_divergence(x, y, args.eps)
        iterations = "/".join(str(first.iterations[k]) for k in ("xy", "xx", "yy"))
        errors = "/".join(f"{first.marginal_errors[k]:.1e}" for k in ("xy", "xx", "yy"))
        print(f"| {name} | {first.divergence:.6f} | {first.error_estimate:.1e} | {first.w2_squared:.6f} | "
              f"{iterations} | {errors} | {first.seconds:.0f} | "
              f"{'-' if second is None else f'{second.divergence:.6f}'} | "
              f"{'-' if second is None else f'{second.divergence - first.divergence:+.1e}'} | "
              f"{'-' if exact is None else exact} | "
              f"{'not installed' if other is None else f'{other[0]:.6f}, {other[1]:.0f}'} |", flush=True)


if __name__ == "__main__":
    main()
