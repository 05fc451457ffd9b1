"""``python -m sde_control.generative``: fit a generative model to 2-d data or to images (or forecasters to time
series), evaluate it, write the results.

    sde-generative                                   # VSDM and the equal-budget VP baseline on the spiral
    sde-generative data=checkerboard model=vsdm_ti   # one time-invariant A
    sde-generative data=file data.path=$PWD/points.csv model=vp compare_vp=false
    sde-generative data=macrodata                    # time series: VSDM and VP forecasters (timeseries/cli.py)
    sde-generative --cfg job                         # print the composed configuration
    sde-generative data=digits model=vsdm            # images: the embedded digits (sde_control.generative.images)
    torchrun --nproc_per_node=8 -m sde_control.generative data=cifar10 data.root=~/data preset=paper \
        hydra.run.dir=runs/vp model=vp               # CIFAR-10 on 8 GPUs; again with more iterations: resumes
    sde-generative task=sample hydra.run.dir=runs/vp data=cifar10 data.root=~/data   # a grid per sampler
    sde-generative task=fid hydra.run.dir=runs/vp data=cifar10 data.root=~/data fid.inception=~/pt_inception.pth

The configuration lives in ``configs/`` (``generative.yaml`` and the groups ``data`` and ``model``). The run
directory receives ``results.md`` (the metrics table), ``results.json``, ``samples.pt`` (name -> samples at the
largest step count), ``trajectories.png`` (probability-flow paths of every model) and one checkpoint per model;
running again in the same directory (``hydra.run.dir=...``) resumes or reuses them.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from . import images
from .data import validate
from .data.images import Images
from .evaluation import evaluate
from .plotting import plot_trajectories
from .score_model import ScoreModel
from .timeseries import ForecastDataset, ForecastTraining
from .timeseries import cli as timeseries_cli
from .vsdm import VSDM, VSDMTraining, fit_equal_budget

TABLE, METRICS, SAMPLES, PLOT = "results.md", "results.json", "samples.pt", "trajectories.png"
TASKS = ("train", "sample", "fid")

ConfigStore.instance().store(group="schema", name="vsdm_training", node=VSDMTraining)
ConfigStore.instance().store(group="schema", name="image_options", node=images.ImageOptions)
ConfigStore.instance().store(group="schema", name="fid_options", node=images.FIDOptions)
ConfigStore.instance().store(group="schema", name="forecast_training", node=ForecastTraining)


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
    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {cfg.task!r}")
    points = instantiate(cfg.data)
    if isinstance(points, Images):
        return run_images(cfg, out_dir, points)
    if cfg.task != "train":
        raise ValueError(f"task={cfg.task} scores image runs; these data are not images")
    if isinstance(points, ForecastDataset):
        return timeseries_cli.run(cfg, points, out_dir)
    train, test = split(validate(points), cfg.held_out, cfg.seed)
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
            rows.append({"model": name, "nfe": m.last_nfe, **metrics})
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


def run_images(cfg: DictConfig, out_dir: Path, data: Images) -> dict[str, Any]:
    """An image run (:mod:`sde_control.generative.images`): train the model (``task=train``), draw a grid per
    sampler from the run's checkpoint (``task=sample``) or score it (``task=fid``), on every rank of a ``torchrun``
    launch, all writing into rank 0's run directory."""
    options: images.ImageOptions = OmegaConf.to_object(cfg.images)
    with images.session(options.device) as session:
        out_dir = Path(session.broadcast(str(out_dir)))
        if cfg.task == "fid":
            return _score_images(cfg, out_dir, data, session)
        if cfg.task == "sample":
            return _sample_images(cfg, out_dir, data, session)
        network = images.image_network(data.shape, options.network, **options.network_options)
        extra: dict[str, Any] = {"network": network}
        if options.ema_halflife_images is not None:  # per step: 0.5 ** (images per step / half-life)
            extra["ema_decay"] = 0.5 ** (cfg.train.batch_size / options.ema_halflife_images)
        if issubclass(get_class(cfg.model._target_), VSDM):
            extra.update(basis=options.basis, image_shape=list(data.shape))
        model: ScoreModel = instantiate(cfg.model, dim=math.prod(data.shape), **extra, _convert_="all")
        config = images.training_config(model, OmegaConf.to_object(cfg.train).as_dict(), options.stage_iterations)
        summary = images.train(model, data, config, options, out_dir, session, seed=cfg.seed)
        if session.main:
            print(json.dumps({k: v for k, v in summary.items() if k != "stages"}))
        return summary


def _trained_model(fid: images.FIDOptions, out_dir: Path, session: images.Session) -> ScoreModel:
    path = Path(fid.checkpoint).expanduser() if fid.checkpoint else out_dir / images.CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: train first (task=train with the same hydra.run.dir), or "
                                f"give fid.checkpoint=PATH")
    return images.load_model(path, session.device)


def _sample_images(cfg: DictConfig, out_dir: Path, data: Images, session: images.Session) -> dict[str, Any]:
    """``task=sample``: a grid of ``images.grid`` samples for each of ``fid.methods`` at each of ``fid.steps``."""
    fid: images.FIDOptions = OmegaConf.to_object(cfg.fid)
    model, written = _trained_model(fid, out_dir, session), []
    if session.main:
        for method in fid.methods:
            for steps in fid.steps:
                grid = images.generate(model, data, cfg.images.grid, steps, method, seed=fid.seed, batch=fid.batch)
                written.append(str(images.save_grid(grid, out_dir / f"samples-{method}-{steps}.png")))
        print("\n".join(written))
    return {"grids": written}


def _score_images(cfg: DictConfig, out_dir: Path, data: Images, session: images.Session) -> dict[str, Any]:
    fid: images.FIDOptions = OmegaConf.to_object(cfg.fid)
    model = _trained_model(fid, out_dir, session)
    digits = None
    if cfg.data._target_.endswith(".digits"):
        digits = {k: cfg.data[k] for k in ("image_size", "channels", "resize")}
    held_out = instantiate(cfg.data, split="held_out") if digits is not None else None
    name = "-".join([cfg.data._target_.rsplit(".", 1)[-1], *(f"{k}{v}" for k, v in (digits or {}).items())])
    rows = images.evaluate(model, data, fid, out_dir, session, name, digits=digits, held_out=held_out)
    if session.main:
        print(images.format_scores(rows))
    return {"rows": rows}


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
