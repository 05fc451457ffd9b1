"""The time-series part of ``sde-generative``: train forecasters on a protocol's training range, forecast its test
windows, score them, write the results.

    sde-generative data=macrodata                                     # embedded data: VSDM and VP forecasters
    sde-generative data=exchange_rate data.path=$PWD/exchange_rate.txt.gz model=vp
    sde-generative data=gluonts data.path=$HOME/.gluonts/datasets/solar_nips data.name=solar_nips

A time-series data config (``configs/data/{macrodata,exchange_rate,gluonts}.yaml``) builds a
:class:`~sde_control.generative.timeseries.ForecastDataset` and sets ``train`` to :class:`ForecastTraining`'s
defaults; the model's forecaster (``configs/forecaster/<model>.yaml``) follows from ``model=vp|vsdm``. The run
directory receives ``results.json`` (CRPS-sum, CRPS and energy score per test window and overall, for each
forecaster and the baselines), ``results.md`` (the table), ``forecasts.pt`` (name -> sample paths
``(W, S, P, D)``), one fan chart per forecaster (``fan_chart_<name>.png``, test window 0) and one checkpoint per
forecaster (``<name>.pt``); running again in the same directory resumes or reuses them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .baselines import GaussianVAR, NaiveBootstrap
from .data import ForecastDataset
from .forecaster import Forecaster
from .metrics import crps, crps_sum, energy_score
from .plotting import plot_fan_chart

TABLE, METRICS, FORECASTS = "results.md", "results.json", "forecasts.pt"
BASELINES = {"naive": NaiveBootstrap, "var": GaussianVAR}


def scores(samples: torch.Tensor, future: torch.Tensor, starts: tuple[int, ...]) -> dict[str, Any]:
    """CRPS-sum, CRPS and energy score of ``samples`` (W, S, P, D) against ``future`` (W, P, D), overall (pooled
    over the windows as gluonts pools them; the energy score averaged) and per window."""
    windows = [{"start": start, "crps_sum": crps_sum(samples[w:w + 1], future[w:w + 1]),
                "crps": crps(samples[w:w + 1], future[w:w + 1]),
                "energy_score": float(energy_score(samples[w:w + 1], future[w:w + 1]))}
               for w, start in enumerate(starts)]
    return {"crps_sum": crps_sum(samples, future), "crps": crps(samples, future),
            "energy_score": energy_score(samples, future), "windows": windows}


def forecasters(cfg: DictConfig, dataset: ForecastDataset, context_length: int) -> dict[str, Forecaster]:
    """The forecaster of ``model`` (and, with ``compare_vp`` and ``model=vsdm``, its VP twin: the same network,
    schedule and training budget)."""
    if "forecaster" not in cfg:
        raise ValueError(f"model={OmegaConf.to_container(cfg.model).get('_target_', '?')} has no forecaster for "
                         "time-series data (configs/forecaster/<model>.yaml): use model=vp or model=vsdm")
    sizes = dict(dim=dataset.dim, context_length=context_length, prediction_length=dataset.prediction_length)
    model = instantiate(cfg.forecaster, **sizes)
    models = {model.process.upper(): model}
    if cfg.compare_vp and model.process == "vsdm":
        models["VP"] = instantiate(cfg.forecaster, **sizes, process="vp")
    return models


def run(cfg: DictConfig, dataset: ForecastDataset, out_dir: Path) -> dict[str, Any]:
    """Train, forecast and score what ``cfg`` describes on ``dataset``; write the results into ``out_dir``."""
    settings = cfg.forecast
    context_length = settings.context_length or dataset.default_context
    context, future = dataset.windows(context_length).test_pairs()
    options = OmegaConf.to_object(cfg.train).as_dict()
    results: dict[str, Any] = {}
    samples: dict[str, torch.Tensor] = {}
    for name, model in forecasters(cfg, dataset, context_length).items():
        started = time.perf_counter()
        model.fit(dataset.train, checkpoint=out_dir / f"{name}.pt", **options)
        train_time = time.perf_counter() - started
        started = time.perf_counter()
        samples[name] = model.forecast(context, settings.num_samples, steps=settings.steps, method=settings.method,
                                       seed=cfg.seed)
        results[name] = {**scores(samples[name], future, dataset.test_starts), "train_time_s": train_time,
                         "forecast_time_s": time.perf_counter() - started, "score_steps": model.model.trainer.iteration}
        plot_fan_chart(samples[name][0], future[0], out_dir / f"fan_chart_{name}.png", context=context[0],
                       title=f"{name}, {dataset.name} test window 0")
    for name in settings.baselines:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
        baseline = BASELINES[name](dataset.prediction_length).fit(dataset.train)
        samples[name] = baseline.forecast(context, settings.num_samples, seed=cfg.seed)
        results[name] = scores(samples[name], future, dataset.test_starts)

    summary = {"data": {"name": dataset.name, "series": dataset.dim, "prediction_length": dataset.prediction_length,
                        "context_length": context_length, "train_end": dataset.train_end,
                        "test_starts": list(dataset.test_starts)},
               "forecast": OmegaConf.to_container(settings), "models": results}
    table = format_table(results)
    print(table)
    (out_dir / TABLE).write_text(table + "\n")
    (out_dir / METRICS).write_text(json.dumps(summary, indent=2) + "\n")
    torch.save(samples, out_dir / FORECASTS)
    return summary


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A markdown table: one row per forecaster or baseline."""
    lines = ["| model | CRPS-sum | CRPS | energy score | CRPS-sum per window | train s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        per_window = ", ".join(f"{w['crps_sum']:.4f}" for w in r["windows"])
        train = f"{r['train_time_s']:.0f}" if "train_time_s" in r else "-"
        lines.append(f"| {name} | {r['crps_sum']:.4g} | {r['crps']:.4g} | {r['energy_score']:.4g} | {per_window} | "
                     f"{train} |")
    return "\n".join(lines)
