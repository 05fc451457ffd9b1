"""DIS's two guidances before any training: how far each starting control is from the optimal one.

    python benchmarks/dis_guidance.py           # seconds; writes the section ``dis-guidance-start`` of RESULTS.md

The ELBO error ``log Z - ELBO`` of the untrained sampler is the KL between its path measure and the optimal one
(4000 paths, seed 0, the ancestral step) for the paper's interpolated guidance (weight 1 on
``lerp(grad log p_0, grad log rho, s/T)``) and the annealed one (``grad log p_0`` fixed, weight 0.01 on the annealing
force), on the 50-d many-well (``double_well_50``: 5 double wells, 45 standard Gaussian coordinates) and on one
double well of the same shape (``delta = 2``), at 128 and 512 steps. The trained comparison is the section
``dis-guidance`` (``benchmarks/reproduce.py`` with ``--sampler-option guidance=annealed``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, target, write_section  # noqa: E402

from sde_control import DIS  # noqa: E402
from sde_control.targets import DoubleWell  # noqa: E402

PATHS = 4000


def main() -> None:
    torch.set_num_threads(1)
    problems = {"MW-50 (d=50)": target("double_well_50"), "one double well (d=1)": DoubleWell(1, 1, delta=2.0)}
    rows = []
    for (name, problem), steps, guidance in [(p, s, g) for p in problems.items() for s in (128, 512)
                                             for g in ("interpolated", "annealed")]:
        torch.manual_seed(0)
        est = DIS(problem, steps=steps, guidance=guidance).estimate_log_z(PATHS)
        rows.append([name, str(steps), guidance, f"{problem.log_Z - est.elbo:.3g}",
                     f"{abs(est.log_z - problem.log_Z):.3g}", f"{est.ess:.3g}"])
    text = "\n".join([
        "## DIS's guidances before training",
        "",
        f"Command: `python benchmarks/dis_guidance.py`. Untrained DIS, {PATHS} paths, seed 0, ancestral step; "
        f"{machine()}.",
        "",
        markdown_table(["target", "steps", "guidance", "ELBO error", "abs. log Z error", "ESS"], rows),
    ])
    print(text)
    write_section("dis-guidance-start", text)


if __name__ == "__main__":
    main()
