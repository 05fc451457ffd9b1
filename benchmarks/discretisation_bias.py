"""Why the estimators use the ratio of discrete path densities: the bias of the naively discretised
continuous-time weight, measured with the exact optimal control.

    python benchmarks/discretisation_bias.py           # 200,000 paths at 50, 200, 800 steps (about a minute)
    python benchmarks/discretisation_bias.py --smoke   # seconds; checks the script
    python benchmarks/discretisation_bias.py --paths 50000 --steps 50,200

Set-up (docs/samplers.md, "Why the kernel ratio"): DIS's reference, the time reversal of VP with
``beta(t) = 0.1 + 9.9 t`` over ``T = 1`` (:class:`~sde_control.references.TimeReversalReference`, Euler-Maruyama
steps), in ``d = 2``; the target ``rho = Z N((1, -0.5), 0.3 I)`` with ``log Z = 0.7``; ``X_0`` from the exact
law of the noised target at ``t = T``, ``N(a_T m, (a_T^2 s2 + gamma_T) I)``; the exact optimal control

    u*(x, s) = sigma(s) grad log p_{T-s}(x),   p_t = N(a_t m, (a_t^2 s2 + gamma_t) I),

(``a_t = exp(-int_0^t beta / 2)``, ``gamma_t = 1 - a_t^2``). On the same simulated paths
(:func:`sde_control.integrate.simulate_chain`), two log-weights:

* the kernel ratio, :func:`sde_control.weights.log_weight` (Euler steps against the exact VP backward kernel),
  for which ``E[w] = Z`` at every step count;
* the continuous-time formula, discretised naively (left-point sums, ``dW_k`` the Brownian increment of step k):

      log w = log rho(X_N) - log p_0(X_0) + sum_k div(mu)(s_k) h - 1/2 sum_k |u_k|^2 h - sum_k u_k . dW_k,

  with ``div(mu)(s) = d beta(T - s) / 2``.

Columns: the importance-sampled ``log Z`` minus the exact value for each weight (with the delta-method standard
error ``sqrt((1/ESS - 1) / n)`` of the kernel-ratio estimate) and the kernel-ratio ESS.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402

from sde_control.estimators import effective_sample_size, importance_log_z  # noqa: E402
from sde_control.integrate import simulate_chain  # noqa: E402
from sde_control.references import TimeReversalReference, time_grid  # noqa: E402
from sde_control.sdes import VP  # noqa: E402
from sde_control.targets import Gaussian  # noqa: E402
from sde_control.weights import log_weight  # noqa: E402

MEAN, S2, LOG_Z, DIM = (1.0, -0.5), 0.3, 0.7, 2
CHUNK = 20_000  # paths per simulation: the chain keeps all N + 1 states of a chunk (128 MB at 800 steps)


Control = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def optimal_setting(vp: VP) -> tuple[Gaussian, TimeReversalReference, Control]:
    """The target, the reference started at the exact law of ``Y_T``, and ``u*`` (module docstring)."""
    mean = torch.tensor(MEAN, dtype=torch.float64)
    target = Gaussian(mean, S2, log_Z=LOG_Z)
    zero, T = torch.tensor(0.0, dtype=torch.float64), torch.tensor(vp.T, dtype=torch.float64)
    a_T, gamma_T = vp.transition(zero, T)
    reference = TimeReversalReference(vp, DIM, prior_mean=a_T * mean, prior_std=math.sqrt(a_T**2 * S2 + gamma_T))

    def control(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        a, gamma = vp.transition(zero, T - torch.as_tensor(s, dtype=torch.float64))
        score = -(x - a * mean) / (a**2 * S2 + gamma)
        return reference.diffusion(s) * score

    return target, reference, control


def naive_continuous_log_weight(target: Gaussian, reference: TimeReversalReference, control: Control,
                                states: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The continuous-time DIS weight by left-point sums on the states (N+1, batch, d) of an Euler path."""
    kernels = reference.forward_kernels(grid)
    s, h = grid[:-1], grid.diff()
    sigma, m = reference.diffusion(s), reference.drift_coefficient(s)
    log_w = target.log_prob(states[-1]) - reference.log_initial(states[0]) + DIM * float((m * h).sum())
    for k in range(grid.numel() - 1):
        u = control(states[k], grid[k])
        dW = (states[k + 1] - kernels.scale[k] * states[k] - kernels.control[k] * u) / sigma[k]
        log_w = log_w - 0.5 * float(h[k]) * u.square().sum(-1) - (u * dW).sum(-1)
    return log_w


def measure(paths: int, steps: int, seed: int) -> dict[str, float]:
    target, reference, control = optimal_setting(VP())
    grid = time_grid(reference.T, steps)
    torch.manual_seed(seed)
    kernel, continuous = [], []
    with torch.no_grad():
        for i, start in enumerate(range(0, paths, CHUNK)):
            x0 = reference.sample_initial(min(CHUNK, paths - start)).double()
            path = simulate_chain(control, reference, x0, grid, seed=seed * 1000 + i)
            kernel.append(log_weight(target, reference, path))
            continuous.append(naive_continuous_log_weight(target, reference, control, path.states, grid))
    kernel, continuous = torch.cat(kernel), torch.cat(continuous)
    ess = effective_sample_size(kernel)
    return {"continuous": importance_log_z(continuous) - LOG_Z, "kernel": importance_log_z(kernel) - LOG_Z,
            "kernel_se": math.sqrt((1 / ess - 1) / paths), "ess": ess}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="2000 paths at 10 and 20 steps")
    parser.add_argument("--paths", type=int, default=200_000)
    parser.add_argument("--steps", default="50,200,800", help="comma-separated step counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    paths, step_counts = (2000, [10, 20]) if args.smoke else (args.paths, [int(n) for n in args.steps.split(",")])
    started = time.perf_counter()
    rows = []
    for steps in step_counts:
        r = measure(paths, steps, args.seed)
        rows.append([str(steps), f"{r['continuous']:+.3f}", f"{r['kernel']:+.3f} ± {r['kernel_se']:.3f}",
                     f"{r['ess']:.2f}"])
        print(" | ".join(rows[-1]), flush=True)
    command = " ".join(["python benchmarks/discretisation_bias.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"\nCommand: `{command}`. DIS reference "
          f"(VP, beta 0.1 to 10, T = 1, Euler-Maruyama steps), exact optimal control, target N((1, -0.5), 0.3 I) "
          f"with log Z = 0.7, X_0 from the exact law of Y_T, {paths:,} paths, seed {args.seed}; "
          f"{time.perf_counter() - started:.0f} s on {machine()}.\n")
    print(markdown_table(["steps", "IS log Z error, continuous form", "IS log Z error, kernel ratio (± s.e.)",
                          "ESS (kernel ratio)"], rows))


if __name__ == "__main__":
    main()
