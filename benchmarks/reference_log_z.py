"""Reference log Z of the targets without a closed form: logistic regression (importance sampling), LGCP (SMC).

Bayesian logistic regression on breast cancer (d = 31) by importance sampling; the LGCP on the pines data
(d = 1600) by sequential Monte Carlo.

There is no closed form, so the reference values stored in ``targets/logistic_regression.py`` and ``targets/lgcp.py``
come from these long runs. Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/reference_log_z.py    # logistic regression: float64, about 4 minutes
    OMP_NUM_THREADS=1 python benchmarks/reference_log_z.py --target lgcp --float32 --particles 512 --runs 3 --seed 100

**LGCP** (``--target lgcp``; ``--smoke`` runs an 8 x 8 grid in seconds): ``--runs`` independent runs of
``sde_control.baselines.SMC`` on the whitened parameterisation (the same Z as the benchmarks' unwhitened one, and
its initial law ``N(0, I)`` is exactly the prior, so the path is likelihood tempering), ``--particles`` particles,
adaptive tempering at conditional ESS ``--cess`` (0.99, the target ESS of the Beyond-ELBOs LGCP config's
``smc_rebuttal`` entry), one HMC step of
``--leapfrog`` (10) leapfrog steps per temperature with the step size adapted toward acceptance 0.651. The estimate
is the log of the mean of the runs' Z estimates (SMC's Z estimate is unbiased, its log biased low by about half its
variance), with a delta-method standard error; the mean of the runs' log Z and its standard error are printed
beside it. ``--float32`` evaluates the target in float32 (weights stay float64) and prints the rounding of log rho
against float64 at the final particles. The data file is ``--data`` (default ``../shared/data/pines.csv`` beside
the checkout).

**Logistic regression** (the default target). Steps:

1. The posterior mode ``m`` by Newton's method and the Laplace covariance ``C = H^{-1}``, ``H`` the negative
   Hessian of ``log rho`` at ``m`` (``BayesianLogisticRegression.laplace``).
2. Three independent importance-sampling estimates ``log Z = log mean_i w_i``, ``w_i = rho(x_i) / q(x_i)``, each
   from its own draws, with multivariate Student t proposals ``q``:

   a. ``laplace-t5``: 5 degrees of freedom, location ``m``, scale matrix ``C`` (the Laplace approximation with
      heavier tails);
   b. ``laplace-t10x1.5``: 10 degrees of freedom, location ``m``, scale matrix ``1.5^2 C``;
   c. ``adaptive-t10`` (the stored reference): 10 degrees of freedom with the posterior mean and covariance as
      location and scale matrix, estimated by self-normalised importance sampling in two rounds (from the first
      ``pilot`` draws of b, then from ``pilot`` draws of a t built on that first fit).

Every proposal has polynomial tails and ``rho <= N(w; 0, I)`` (the likelihood is at most one), so ``rho / q`` is
bounded and the weights have finite variance: the delta-method standard error

    ``se(log Z) = sqrt(var(w) / n) / mean(w)``

is valid asymptotically. How soon is another matter: the posterior is skewed (the Laplace approximation's log Z
is off by 0.4) and with the Laplace scale the weights have a long right tail. Two diagnostics are printed per
estimate: the Pareto shape ``k`` of the largest ``min(n / 5, 3 sqrt(n))`` weights (a generalised Pareto fit by
maximum likelihood; below 0.5 the variance estimate is trustworthy, above 0.7 not, as in Pareto-smoothed
importance sampling), and a batch standard error (the spread of the estimates from 10 disjoint batches divided by
sqrt(10)), which should agree with the delta-method one. The effective sample size is ``(sum w)^2 / sum w^2``.
The adaptive proposal has the largest ESS by far, an ESS fraction that does not decay with ``n``, and ``k < 0.5``;
its estimate is the reference. The other two check it.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from scipy.stats import genpareto
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import target as named_target  # noqa: E402

from sde_control.baselines import SMC  # noqa: E402
from sde_control.targets.lgcp import LGCP  # noqa: E402
from sde_control.targets.logistic_regression import BayesianLogisticRegression  # noqa: E402

PINES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pines.csv"  # where the checkout's data lies

CHUNK = 4_096  # draws per batch: (4096, 569) float64 logits stay below the allocator's mmap threshold
BATCHES = 10


class MultivariateT:
    """Multivariate Student t with ``df`` degrees of freedom, location ``loc`` and scale matrix ``L L^T``."""

    def __init__(self, loc: Tensor, scale_tril: Tensor, df: float) -> None:
        self.loc, self.scale_tril, self.df, self.dim = loc, scale_tril, float(df), loc.shape[0]
        d, nu = self.dim, self.df
        self.log_norm = (math.lgamma((nu + d) / 2) - math.lgamma(nu / 2) - d / 2 * math.log(nu * math.pi)
                         - scale_tril.diagonal().log().sum().item())

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randn(n, self.dim, generator=generator, dtype=self.loc.dtype)
        # chi^2_df = 2 Gamma(df / 2, 1); torch's Gamma takes no generator, so it draws from the global one, seeded
        # in main.
        chi2 = 2 * torch.distributions.Gamma(torch.full((n,), self.df / 2, dtype=self.loc.dtype), 1.0).sample()
        return self.loc + (z @ self.scale_tril.T) / torch.sqrt(chi2 / self.df)[:, None]

    def log_prob(self, x: Tensor) -> Tensor:
        y = torch.linalg.solve_triangular(self.scale_tril, (x - self.loc).T, upper=False).T
        return self.log_norm - (self.df + self.dim) / 2 * torch.log1p(y.square().sum(-1) / self.df)


@dataclass
class Estimate:
    name: str
    log_Z: float
    std_error: float
    batch_std_error: float
    ess: float
    pareto_k: float
    n: int
    seconds: float

    def line(self) -> str:
        return (f"{self.name}: log Z = {self.log_Z:.5f} +- {self.std_error:.5f} (1 s.e., delta method; "
                f"batch s.e. {self.batch_std_error:.5f}), ESS = {self.ess:,.0f} of {self.n:,} "
                f"({self.ess / self.n:.3f}), Pareto k = {self.pareto_k:.2f}, {self.seconds:.0f} s")


def log_mean_exp(log_w: Tensor) -> float:
    return (torch.logsumexp(log_w, 0) - math.log(log_w.numel())).item()


def pareto_k(log_w: Tensor) -> float:
    """Shape of a generalised Pareto distribution fitted (maximum likelihood) to the largest
    ``min(n / 5, 3 sqrt(n))`` weights' excesses over the next largest one (the tail size of PSIS)."""
    n = log_w.numel()
    m = int(min(n / 5, 3 * math.sqrt(n)))
    top = torch.topk(log_w, m + 1).values
    excess = torch.expm1(top[:m] - top[m])  # (w - w_threshold) / w_threshold
    shape, _, _ = genpareto.fit(excess.numpy(), floc=0.0)
    return float(shape)


def importance_sample(
    name: str,
    target: BayesianLogisticRegression,
    proposal: MultivariateT,
    n: int,
    generator: torch.Generator,
    keep: int = 0,
) -> tuple[Estimate, Tensor, Tensor]:
    """IS estimate of log Z from ``n`` draws (in chunks); also returns the first ``keep`` draws and log weights."""
    start = time.perf_counter()
    log_w, kept = [], []
    for i in range(0, n, CHUNK):
        x = proposal.sample(min(CHUNK, n - i), generator)
        log_w.append(target.log_prob(x) - proposal.log_prob(x))
        if i < keep:
            kept.append(x)
    log_w = torch.cat(log_w)
    w = torch.exp(log_w - log_w.max())  # w / max w: the ratios below do not depend on the scale
    batch_log_Z = torch.tensor([log_mean_exp(b) for b in log_w.chunk(BATCHES)])
    estimate = Estimate(
        name=name,
        log_Z=log_mean_exp(log_w),
        std_error=(w.std() / math.sqrt(n) / w.mean()).item(),
        batch_std_error=(batch_log_Z.std() / math.sqrt(BATCHES)).item(),
        ess=(w.sum().square() / w.square().sum()).item(),
        pareto_k=pareto_k(log_w),
        n=n,
        seconds=time.perf_counter() - start,
    )
    print(estimate.line(), flush=True)
    kept_x = torch.cat(kept)[:keep] if kept else torch.empty(0, target.dim, dtype=log_w.dtype)
    return estimate, kept_x, log_w[:keep]


def weighted_moments(x: Tensor, log_w: Tensor) -> tuple[Tensor, Tensor]:
    """Self-normalised importance estimates of the posterior mean and covariance."""
    p = torch.softmax(log_w, 0)
    mean = p @ x
    centred = x - mean
    return mean, centred.T @ (centred * p[:, None])


def logistic_regression_reference(args: argparse.Namespace) -> None:
    """The logistic-regression reference: Laplace approximation, then three importance-sampling estimates."""
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(args.seed)  # the Gamma draws
    generator = torch.Generator().manual_seed(args.seed)
    print(f"torch {torch.__version__}, float64, {torch.get_num_threads()} thread")

    start = time.perf_counter()
    target = named_target("logistic_breast_cancer")
    mode, covariance = target.laplace()
    laplace_tril = torch.linalg.cholesky(covariance)
    score_at_mode = target.score(mode[None]).abs().max().item()
    print(f"posterior mode: log rho = {target.log_prob(mode[None]).item():.6f}, max |score| = {score_at_mode:.1e}")
    laplace_log_Z = (target.log_prob(mode[None]).item() + target.dim / 2 * math.log(2 * math.pi)
                     + 0.5 * torch.linalg.slogdet(covariance).logabsdet.item())
    print(f"Laplace approximation: log Z ~ {laplace_log_Z:.5f} (no error bar; for orientation only)")

    n = args.samples
    a, _, _ = importance_sample("laplace-t5", target, MultivariateT(mode, laplace_tril, 5.0), n, generator)
    b, x, log_w = importance_sample("laplace-t10x1.5", target, MultivariateT(mode, 1.5 * laplace_tril, 10.0), n,
                                    generator, keep=args.pilot)
    for round_ in (1, 2):
        mean, cov = weighted_moments(x, log_w)
        proposal = MultivariateT(mean, torch.linalg.cholesky(cov), 10.0)
        if round_ == 1:
            _, x, log_w = importance_sample("adaptive-t10 pilot", target, proposal, args.pilot, generator,
                                            keep=args.pilot)
    c, _, _ = importance_sample("adaptive-t10", target, proposal, n, generator)

    for other in (a, b):
        combined = math.hypot(other.std_error, c.std_error)
        difference = other.log_Z - c.log_Z
        print(f"{other.name} - {c.name} = {difference:+.5f} = {difference / combined:+.2f} combined s.e.")
    print(f"total time {time.perf_counter() - start:.0f} s")
    print(f"REFERENCE ({c.name}): log_Z = {c.log_Z:.4f}, std_error = {c.std_error:.4f}")


def lgcp_reference(args: argparse.Namespace) -> None:
    """The LGCP reference: independent SMC runs on the whitened parameterisation (same Z), pooled."""
    torch.set_default_dtype(torch.float32 if args.float32 else torch.float64)
    grid, particles, runs = (8, 32, 2) if args.smoke else (40, args.particles, args.runs)
    cess = 0.5 if args.smoke else args.cess
    target = LGCP(args.data, grid=grid, whitened=True)
    dtype = "float32 particles and target, float64 weights" if args.float32 else "float64"
    print(f"torch {torch.__version__}, {dtype}, {torch.get_num_threads()} thread")
    print(f"LGCP: grid {grid} x {grid} (d = {target.dim}), {target.num_points} points, whitened; pi_0 = N(0, I) "
          f"(the prior); SMC: {particles} particles, adaptive tempering (conditional ESS {cess}), "
          f"HMC with {args.leapfrog} leapfrog steps per temperature (step adapted toward acceptance 0.651), "
          f"resampling below ESS 0.3; {runs} independent runs (seeds {args.seed}..{args.seed + runs - 1})")
    smc = SMC(target, kernel="hmc", leapfrog_steps=args.leapfrog)
    start = time.perf_counter()
    log_z = []
    for run in range(runs):
        tic = time.perf_counter()
        result = smc.run(particles, temperatures=None, target_cess=cess, seed=args.seed + run)
        estimate = result.estimate
        log_z.append(estimate.log_z)
        print(f"run {run}: log Z = {estimate.log_z:.4f}, {len(result.betas)} temperatures, final ESS "
              f"{estimate.ess:.3f}, mean acceptance {sum(result.acceptance) / len(result.acceptance):.2f}, "
              f"{estimate.evaluations:,} evaluations, {time.perf_counter() - tic:.0f} s", flush=True)
    if args.float32:  # rounding of the float32 log density against float64 at the last run's particles
        x = result.particles[:64]
        exact = LGCP(args.data, grid=grid, whitened=True).double().log_prob(x.double())
        print(f"float32 rounding of log rho at 64 final particles: max |error| = "
              f"{(target.log_prob(x).double() - exact).abs().max().item():.2e}")
    values = torch.tensor(log_z, dtype=torch.float64)
    mean, std_error = values.mean().item(), (values.std() / math.sqrt(runs)).item()
    pooled = log_mean_exp(values)  # log of the mean of the unbiased Z estimates
    z = torch.exp(values - values.max())
    pooled_error = (z.std() / math.sqrt(runs) / z.mean()).item()
    print(f"mean of log Z over {runs} runs: {mean:.4f} +- {std_error:.4f} (1 s.e. from the spread of the runs)")
    print(f"log of the mean Z (pooled; SMC's Z estimate is unbiased, its log biased low): {pooled:.4f} "
          f"+- {pooled_error:.4f} (delta method)")
    print(f"total time {time.perf_counter() - start:.0f} s")
    print(f"REFERENCE (lgcp, pooled): log_Z = {pooled:.4f}, std_error = {pooled_error:.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("logistic_regression", "lgcp"), default="logistic_regression")
    parser.add_argument("--seed", type=int, default=0)
    logistic = parser.add_argument_group("logistic_regression")
    logistic.add_argument("--samples", type=int, default=4_000_000, help="draws for each of the three estimates")
    logistic.add_argument("--pilot", type=int, default=200_000, help="draws per round of fitting the adaptive proposal")
    lgcp = parser.add_argument_group("lgcp")
    lgcp.add_argument("--data", type=Path, default=PINES, help="the pines CSV file")
    lgcp.add_argument("--particles", type=int, default=256)
    lgcp.add_argument("--runs", type=int, default=5, help="independent SMC runs")
    lgcp.add_argument("--cess", type=float, default=0.99, help="conditional ESS of each adaptive tempering step")
    lgcp.add_argument("--leapfrog", type=int, default=10, help="leapfrog steps of the one HMC move per temperature")
    lgcp.add_argument("--float32", action="store_true", help="float32 particles and target (weights stay float64)")
    lgcp.add_argument("--smoke", action="store_true", help="a seconds-long run on an 8 x 8 grid (checks the script)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    command = "OMP_NUM_THREADS=1 python benchmarks/reference_log_z.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    print(f"command: {command}")
    if args.target == "lgcp":
        lgcp_reference(args)
    else:
        logistic_regression_reference(args)

if __name__ == "__main__":
    main()
