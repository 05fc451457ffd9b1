"""gDDIM against the Euler probability flow with the exact score of Gaussian data: the sampled law, exactly.

    python benchmarks/gddim_gaussian.py           # under a minute on the CPU; prints the table
    python benchmarks/gddim_gaussian.py --smoke   # seconds: one process, one width, two step counts

For data ``N(mu, w C)`` (``w = 0.01``: concentrated against the prior's scale; ``w = 1``: as wide as the prior) the
exact score of the (augmented) state is linear, so every deterministic sampler is an affine map ``u_T -> A u_T + b``;
``A`` and ``b`` are read off the sampler's values at 0 and at the unit vectors, and the exact law of ``u_T`` is pushed
through it. Each cell is ``KL(sampled law || exact law at t_min)`` of the data block, without Monte Carlo error.
Columns: gDDIM orders 1-3 (predictor only), order 2 with the corrector (two evaluations per step), and the Euler
probability flow of ``generative/sampling.py`` (its uniform grid), all at the same number of steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402

from sde_control.generative.augmented import augmented_gaussian  # noqa: E402
from sde_control.generative.gddim import gddim_sample  # noqa: E402
from sde_control.generative.sampling import reverse_paths  # noqa: E402
from sde_control.generative.score_matching import gaussian_marginal, gaussian_score  # noqa: E402
from sde_control.sdes import CLD, MALDA, VP  # noqa: E402

f64 = dict(dtype=torch.float64)
MU = torch.tensor([0.5, -1.0], **f64)
SHAPE = torch.tensor([[1.5, 0.3], [0.3, 0.5]], **f64)
T_MIN = 1e-3


def sampled_kl(sde, cov, sampler) -> float:
    D = 2 * (1 + sde.aux)
    m0, C0 = augmented_gaussian(sde, MU, cov)
    mT, CT = gaussian_marginal(sde, torch.tensor(sde.T, **f64), m0, C0)
    out = sampler(torch.cat([torch.zeros(1, D, **f64), torch.eye(D, **f64)]))
    A = (out[1:] - out[0]).T
    m, C = (A @ mT + out[0])[:2], (A @ CT @ A.T)[:2, :2]
    m_exact, C_exact = (v[:2] if v.dim() == 1 else v[:2, :2] for v in gaussian_marginal(sde, torch.tensor(T_MIN, **f64),
                                                                                        m0, C0))
    d = m - m_exact
    return float(0.5 * (torch.trace(torch.linalg.solve(C_exact, C)) + d @ torch.linalg.solve(C_exact, d) - 2
                        + torch.logdet(C_exact) - torch.logdet(C)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    processes = {"VP": VP(0.1, 10.0)} if args.smoke else {"VP": VP(0.1, 10.0), "CLD": CLD(), "MALDA": MALDA()}
    widths = (0.01,) if args.smoke else (0.01, 1.0)
    step_counts = (5, 10) if args.smoke else (5, 10, 20, 50)
    rows = []
    for name, sde in processes.items():
        for width in widths:
            cov = width * SHAPE
            score = gaussian_score(sde, MU, cov)
            for steps in step_counts:
                cells = [sampled_kl(sde, cov, lambda x, o=order: gddim_sample(sde, score, x, steps, order=o))
                         for order in (1, 2, 3)]
                cells.append(sampled_kl(sde, cov, lambda x: gddim_sample(sde, score, x, steps, order=2, corrector=True)))
                cells.append(sampled_kl(sde, cov, lambda x: reverse_paths(sde, score, x, steps, T_MIN, method="ode")[-1]))
                rows.append([name, f"{width:g}", str(steps), *(f"{c:.2g}" for c in cells)])
    print(markdown_table(["process", "data width w", "steps", "gDDIM 1", "gDDIM 2", "gDDIM 3", "gDDIM 2 + corrector",
                          "Euler ODE"], rows))


if __name__ == "__main__":
    main()
