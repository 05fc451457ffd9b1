"""The ``sde-control`` command (also ``python -m sde_control``): train a sampler, evaluate it,
print a table and write it, a plot of the samples and a checkpoint into the run directory.

    sde-control                                   # DIS on the 9-mode GMM (about two minutes on a CPU)
    sde-control target=funnel sampler=pis loss=kl
    sde-control -m sampler=dis,pis,dds seed=0,1   # a sweep, one run directory per job

The configuration lives in ``configs/`` (``sampling.yaml`` and the groups ``target``, ``sampler``,
``loss``, ``control``); ``train`` is typed by :class:`~sde_control.samplers.SamplerTraining`, whose defaults it
takes (an unknown or mistyped key fails before anything runs); ``sde-control --cfg job`` prints it all. A run
directory that already holds a checkpoint of an interrupted run resumes it (``hydra.run.dir=<that directory>``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .metrics import marginal_std_error, mode_fractions, wasserstein2_squared
from .plotting import plot_samples
from .samplers import Sampler, SamplerTraining

CHECKPOINT, TABLE, METRICS, PLOT = "checkpoint.pt", "results.md", "results.json", "samples.png"

ConfigStore.instance().store(group="schema", name="sampler_training", node=SamplerTraining)


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Train and evaluate the sampler ``cfg`` describes; write results into ``out_dir``."""
    torch.manual_seed(cfg.seed)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    target = instantiate(cfg.target, _convert_="all")
    sampler: Sampler = instantiate(
        cfg.sampler, target=target, control=cfg.control.kind, width=cfg.control.width, depth=cfg.control.depth
    ).to(cfg.device)

    train: SamplerTraining = OmegaConf.to_object(cfg.train)
    started = time.perf_counter()
    sampler.fit(checkpoint=out_dir / CHECKPOINT, **train.as_dict())
    train_time = time.perf_counter() - started

    estimate = sampler.estimate_log_z(cfg.evaluate.samples, steps=cfg.evaluate.steps)
    samples = sampler.sample(cfg.evaluate.metric_samples, steps=cfg.evaluate.steps).cpu()
    results: dict[str, Any] = {
        "target": type(target).__name__, "sampler": sampler.name, "loss": train.loss,
        **estimate.as_dict(), "train_time_s": train_time, "iterations": sampler.trainer.iteration,
    }
    exact = target.sample(cfg.evaluate.metric_samples).cpu() if target.has_exact_samples else None
    if exact is not None:
        results["w2_squared"] = wasserstein2_squared(samples, exact)
        results["marginal_std_error"] = marginal_std_error(samples, exact)
    if hasattr(target, "means"):
        fractions = mode_fractions(samples, target.means.cpu())
        results["min_mode_fraction"], results["max_mode_fraction"] = float(fractions.min()), float(fractions.max())

    table = format_table(results)
    print(table)
    (out_dir / TABLE).write_text(table + "\n")
    (out_dir / METRICS).write_text(json.dumps(results, indent=2) + "\n")
    plot_samples(target, samples, out_dir / PLOT, exact=exact,
                 title=f"{results['sampler']} ({results['loss']}) on {results['target']}")
    return results


def format_table(results: dict[str, Any]) -> str:
    """A two-column markdown table of the results."""
    rows = ["| quantity | value |", "| --- | --- |"]
    for key, value in results.items():
        if value is None:
            continue
        rows.append(f"| {key} | {value:.5g} |" if isinstance(value, float) else f"| {key} | {value} |")
    return "\n".join(rows)


@hydra.main(version_base=None, config_path="pkg://sde_control.configs", config_name="sampling")
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))
