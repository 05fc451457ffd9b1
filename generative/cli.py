"""``python -m generative``: fit a generative model to 2-d data, evaluate it, write the results.

    sde-generative                                   # VSDM and the equal-budget VP baseline on the spiral
    sde-generative data=checkerboard model=vsdm_ti   # one time-invariant A
    sde-generative data=file data.path=$PWD/points.csv model=vp compare_vp=false
    sde-generative --cfg job                         # print the composed configuration

The configuration lives in ``configs/`` (``generative.yaml`` and the groups ``data`` and ``model``). The run
directory receives ``results.md`` (the metrics table), ``results.json``, ``samples.pt`` (name -> samples at the
largest step count), ``trajectories.png`` (probability-flow paths of every model) and one checkpoint per model;
running again in the same directory (``hydra.run.dir=...``) resumes or reuses them.
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

from .data import validate
from .evaluation import evaluate
from .plotting import plot_trajectories
from .sampling import evaluations
from .score_model import ScoreModel
from .vsdm import VSDM, VSDMTraining, fit_equal_budget

TABLE, METRICS, SAMPLES, PLOT = "results.md", "results.json", "samples.pt", "trajectories.png"

ConfigStore.instance().store(group="schema", name="vsdm_training", node=VSDMTraining)


def split(points: torch.Tensor, held_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``(train, held-out)`` split with ``held_out`` points held out."""
    if not 0 < held_out < points.shape[0] - 1:
        raise ValueError(f"held_out must lie between 1 and n - 2 = {points.shape[0] - 2}, got {held_out}")
    order = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(seed))
    return points[order[held_out:]], points[order[:held_out]]


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Train and evaluate what ``cfg`` describes; write the results into ``out_dir``."""
    torch.manual_seed(cfg.seed)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    train, test = split(validate(instantiate(cfg.data)), cfg.held_out, cfg.seed)
    model: ScoreModel = instantiate(cfg.model, dim=train.shape[1], _convert_="all")
    models = {type(model).__name__: model}
    if cfg.compare_vp and isinstance(model, VSDM):
        models["VP"] = model.vp_baseline()

    options = OmegaConf.to_object(cfg.train).as_dict()
    rows, samples, paths, info = [], {}, {}, {}
    for name, m in models.items():
        started = time.perf_counter()
        fit_equal_budget(m, train, checkpoint=out_dir / f"{name}.pt", **options)
        info[name] = {"train_time_s": time.perf_counter() - started, "prior_kl": m.prior_kl(train),
                      "score_steps": m.trainer.iteration}
        if isinstance(m, VSDM):
            info[name]["time_averaged_A"] = m.sde.time_averaged_A().tolist()
        for steps in cfg.evaluate.steps:
            metrics, x, p = evaluate(m, test, steps, cfg.evaluate.method, cfg.evaluate.solver, seed=cfg.seed)
            rows.append({"model": name, "nfe": evaluations(steps, cfg.evaluate.solver), **metrics})
            samples[name] = x
            if steps == cfg.evaluate.plot_steps:
                paths[name] = p

    results = {"data": OmegaConf.to_container(cfg.data), "rows": rows, "models": info}
    table = format_table(rows, info)
    print(table)
    (out_dir / TABLE).write_text(table + "\n")
    (out_dir / METRICS).write_text(json.dumps(results, indent=2) + "\n")
    torch.save(samples, out_dir / SAMPLES)
    if paths:
        plot_trajectories(paths, out_dir / PLOT, reference=test, n_paths=cfg.evaluate.plot_paths,
                          title=f"{cfg.evaluate.method} paths, {cfg.evaluate.plot_steps} steps")
    return results


def format_table(rows: list[dict[str, Any]], info: dict[str, dict[str, Any]]) -> str:
    """A markdown table: one row per model and step count."""
    lines = ["| model | NFE | W2^2 | histogram TV | straightness | prior KL | train s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        s = "-" if r["straightness"] is None else f"{r['straightness']:.4f}"
        i = info[r["model"]]
        lines.append(f"| {r['model']} | {r['nfe']} | {r['w2']:.4g} | {r['tv']:.4f} | {s} | "
                     f"{i['prior_kl']:.4f} | {i['train_time_s']:.0f} |")
    return "\n".join(lines)


@hydra.main(version_base=None, config_path="pkg://sde_control.configs", config_name="generative")
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))
