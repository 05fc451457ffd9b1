"""``sde-generative`` (``python -m sde_control.generative``): fit a generative model to 2-d points, a file of points or
the digits, sample it, score it against held-out data, write the results (or forecasters to time series).

    sde-generative                                          # VSDM and the equal-budget VP baseline on the spiral
    sde-generative model=cld data=rings sample.method=gddim sample.steps=10
    sde-generative model=mdm data=digits images.network=mlp # the digits as 64-d vectors (an MLP), bits/dim
    sde-generative data=file data.path=$PWD/points.csv model=vp
    sde-generative data=macrodata                           # time series: VSDM and VP forecasters (timeseries/cli.py)
    sde-generative --cfg job                                # print the composed configuration
    sde-generative data=digits model=vsdm                   # images with a U-Net (sde_control.generative.images)
    torchrun --nproc_per_node=8 -m sde_control.generative data=cifar10 data.root=~/data preset=paper \
        hydra.run.dir=runs/vp model=vp                      # CIFAR-10 on 8 GPUs; again with more iterations: resumes
    sde-generative task=sample hydra.run.dir=runs/vp data=cifar10 data.root=~/data   # a grid per sampler
    sde-generative task=fid hydra.run.dir=runs/vp data=cifar10 data.root=~/data fid.inception=~/pt_inception.pth

The configuration lives in ``configs/`` (``generative.yaml`` and the groups ``data`` and ``model``: ``vp``, ``cld``,
``alda``, ``malda``, ``auxiliary`` (your own Q and D), ``mdm``, ``ndm``, ``vsdm``, ``vsdm_ti``). Image data go to the
image path (:func:`run_images`: a U-Net, VSDM's A_t diagonal in a basis, ``torchrun``-ready, tasks ``train``,
``sample`` and ``fid``) for every model but NDM: the models with auxiliary variables (CLD, ALDA, MALDA, MDM) give
the U-Net ``(1 + aux) C`` channels, the image and its auxiliary blocks. NDM (and any model with
``images.network=mlp``) takes them as vectors, like points, with a Fourier-feature MLP on the (augmented) state. A
vector run's directory receives ``results.md`` (the metrics table),
``results.json``, ``samples.pt`` (name -> samples at the largest step count), ``samples.png`` (points over the
held-out data, or grids of digits), ``trajectories.png`` (2-d: the paths of every model) and one checkpoint per model;
running again in the same directory (``hydra.run.dir=...``) resumes or reuses them.

Metrics against held-out data: points: the exact squared 2-Wasserstein distance and the histogram total variation;
digits: the Frechet distance in the features of a small classifier trained on the training split (cached in the run
directory). Every model also reports its bound on ``-log p`` of the held-out data in bits/dim with its standard error
(digits: of the uniformly dequantised levels, the transform's log-determinant included).
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
from .data import ImageDataset, Images, validate
from .evaluation import classifier_frechet_distance, digit_classifier, evaluate
from .mdm import MDM
from .model import GenerativeModel
from .ndm import NDM
from .plotting import plot_image_grids, plot_point_samples, plot_trajectories
from .score_model import ScoreModel
from .timeseries import ForecastDataset, ForecastTraining
from .timeseries import cli as timeseries_cli
from .vsdm import VSDM, VSDMTraining, fit_equal_budget

TABLE, METRICS, SAMPLES, PLOT, PATHS = "results.md", "results.json", "samples.pt", "samples.png", "trajectories.png"
CLASSIFIER = "digit_classifier.pt"
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


def model_name(model: GenerativeModel) -> str:
    """``VSDM``, ``MDM``, ``NDM``, or a score model's process (``VP``, ``CLD``, ``ALDA``, ``MALDA``, ...)."""
    if isinstance(model, (VSDM, MDM, NDM)):
        return type(model).__name__
    return type(model.sde).__name__ if isinstance(model, ScoreModel) else type(model).__name__


def as_vectors(cfg: DictConfig) -> bool:
    """Whether image data are fitted as vectors by the MLP: with ``images.network=mlp``, and for NDM, whose two
    networks (the transformation and the denoiser) the U-Net path does not build."""
    return cfg.images.network == "mlp" or issubclass(get_class(cfg.model._target_), NDM)


def auxiliary_blocks(cfg: DictConfig) -> int:
    """Auxiliary variables per data coordinate of the configured model (the U-Net's extra channel blocks)."""
    if issubclass(get_class(cfg.model._target_), MDM):
        return int(cfg.model.aux)
    return instantiate(cfg.model.sde).aux if "sde" in cfg.model else 0


def load_data(cfg: DictConfig, data: Any) -> tuple[torch.Tensor | ImageDataset, torch.Tensor | ImageDataset, int]:
    """``(train, held_out, dim)``: a random split of points, or the digits' two splits."""
    if isinstance(data, Images):
        if not isinstance(data, ImageDataset):
            raise ValueError(f"vector models take image data held in memory (data=digits), got {type(data).__name__}")
        return data, instantiate(cfg.data, split="held_out"), data.images[0].numel()
    train, test = split(validate(data), cfg.held_out, cfg.seed)
    return train, test, train.shape[1]


def sampling_options(cfg: DictConfig) -> tuple[list[int], dict[str, Any]]:
    """The step counts (one or a list) and the other options of ``model.sample``."""
    options = OmegaConf.to_container(cfg.sample)
    steps = options.pop("steps")
    options.pop("plot_paths")
    return ([steps] if isinstance(steps, int) else list(steps)), options


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Train and evaluate what ``cfg`` describes; write the results into ``out_dir``."""
    torch.manual_seed(cfg.seed)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {cfg.task!r}")
    data = instantiate(cfg.data)
    if isinstance(data, Images) and not as_vectors(cfg):
        return run_images(cfg, out_dir, data)
    if cfg.task != "train":
        raise ValueError(f"task={cfg.task} samples or scores image runs of the U-Net path; a vector run samples and "
                         f"scores itself (task=train)")
    if isinstance(data, ForecastDataset):
        return timeseries_cli.run(cfg, data, out_dir)
    train, test, dim = load_data(cfg, data)
    images = isinstance(train, ImageDataset)
    model: GenerativeModel = instantiate(cfg.model, dim=dim, _convert_="all")
    models = {model_name(model): model}
    if cfg.compare_vp and isinstance(model, VSDM):
        models["VP"] = model.vp_baseline()
    step_counts, options = sampling_options(cfg)
    training = OmegaConf.to_object(cfg.train).as_dict()
    classifier = digit_classifier(out_dir / CLASSIFIER) if images else None

    rows, samples, paths, info = [], {}, {}, {}
    for name, m in models.items():
        started = time.perf_counter()
        fit_equal_budget(m, train, checkpoint=out_dir / f"{name}.pt", **training)
        bound = m.bits_per_dim(test, seed=cfg.seed)
        info[name] = {"train_time_s": time.perf_counter() - started, "score_steps": m.trainer.iteration,
                      "bits_per_dim": bound.mean, "bits_per_dim_se": bound.standard_error}
        if not images and isinstance(m, ScoreModel):
            info[name]["prior_kl"] = m.prior_kl(train)
        if isinstance(m, VSDM):
            info[name]["time_averaged_A"] = m.sde.time_averaged_A().tolist()
        for steps in step_counts:
            if images:
                y = m.sample(len(test), steps, seed=cfg.seed, **options)
                samples[name] = m.data_transform.to_uint8(m.data_transform.from_model(y)).reshape(-1, *test.shape)
                reference = test.transform.to_uint8(test.images)
                metrics = {"frechet_distance": classifier_frechet_distance(samples[name], reference, classifier),
                           "nfe": m.last_nfe}
            else:
                metrics, samples[name], paths[name] = evaluate(m, test, steps, seed=cfg.seed, **options)
            rows.append({"model": name, "steps": steps, **metrics})

    results = {"data": OmegaConf.to_container(cfg.data), "sample": OmegaConf.to_container(cfg.sample), "rows": rows,
               "models": info}
    table = format_table(rows, info)
    print(table)
    (out_dir / TABLE).write_text(table + "\n")
    (out_dir / METRICS).write_text(json.dumps(results, indent=2) + "\n")
    torch.save(samples, out_dir / SAMPLES)
    title = f"{options['method']}, {step_counts[-1]} steps"
    if images:
        plot_image_grids({**{n: s[:100] for n, s in samples.items()}, "held out": reference[:100]}, out_dir / PLOT,
                         title=title)
    else:
        plot_point_samples(samples, out_dir / PLOT, reference=test, title=title)
        if dim == 2:
            plot_trajectories(paths, out_dir / PATHS, reference=test, n_paths=cfg.sample.plot_paths, title=title)
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
        network = images.image_network(data.shape, options.network, auxiliary_blocks(cfg), **options.network_options)
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
    images = "frechet_distance" in rows[0]
    metrics = "Frechet distance (classifier)" if images else "W2^2 | histogram TV | straightness"
    head = "| model | steps | NFE | " + metrics
    lines = [head + " | bits/dim (held out) | prior KL | train s |",
             "|" + " --- |" * (7 if images else 9)]
    for r in rows:
        i = info[r["model"]]
        if images:
            quality = f"{r['frechet_distance']:.4g}"
        else:
            s = "-" if r["straightness"] is None else f"{r['straightness']:.4f}"
            quality = f"{r['w2']:.4g} | {r['tv']:.4f} | {s}"
        kl = f"{i['prior_kl']:.4f}" if "prior_kl" in i else "-"
        lines.append(f"| {r['model']} | {r['steps']} | {r['nfe']} | {quality} | {i['bits_per_dim']:.4f} ± "
                     f"{i['bits_per_dim_se']:.4f} | {kl} | {i['train_time_s']:.0f} |")
    return "\n".join(lines)


@hydra.main(version_base=None, config_path="pkg://sde_control.configs", config_name="generative")
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))
