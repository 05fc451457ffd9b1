"""Probabilistic forecasting: CRPS-sum, CRPS and energy score of each model on a protocol's test windows.

    python benchmarks/timeseries.py                                   # exchange_rate_nips, 4 models, 3 seeds
    python benchmarks/timeseries.py --path exchange_rate.txt.gz       # LSTNet's file, if not found by default
    python benchmarks/timeseries.py --data electricity_nips --path ~/.gluonts/datasets/electricity_nips
    python benchmarks/timeseries.py --budget reduced --seeds 1        # a shorter run of the diffusion forecasters
    python benchmarks/timeseries.py --smoke                           # macrodata, tiny, 1 seed; writes nothing

Protocols (:mod:`sde_control.generative.timeseries.data`): ``exchange_rate_nips`` (LSTNet's exchange_rate.txt.gz,
github.com/laiguokun/multivariate-time-series-data, cut as gluonts cuts it: 5 windows of 30 business days),
``electricity_nips``, ``solar_nips``, ``traffic_nips`` (gluonts' JSON-lines folders: 7 windows of 24 hours) and
``macrodata`` (statsmodels, 5 windows of 4 quarters). Context length: the protocol's (the prediction length,
TimeGrad's choice; 16 quarters for macrodata), or ``--context``.

The diffusion forecasters (:class:`~sde_control.generative.timeseries.Forecaster`) run at an equal budget: the same
network, the same number of score-network steps on batches of the same size with the same learning-rate schedule
(``BUDGETS``); VSDM adds its forward updates (backward paths after each stage but the last), whose time shows in its
fit time. ``full`` (the table's) took 7 to 14 minutes per diffusion cell on one thread of this project's shared
2-core CPU (75 minutes for the whole exchange_rate_nips table); ``reduced`` takes a quarter of the steps.

Each cell (model, seed) fits the model on the training range, draws ``--samples`` (100) paths per test window from
the context before it and scores them in the original units: CRPS-sum and CRPS exactly as gluonts'
``MultivariateEvaluator`` (quantile levels 0.05..0.95, pooled over the windows), the energy score averaged over the
windows. Cells run in their own processes and are saved to ``benchmarks/results/timeseries/<data>/`` as they finish
(a rerun reuses them; delete the folder to recompute); the table goes into a section of ``benchmarks/TIMESERIES.md``
with the command; seed 0 also writes a fan chart of the first test window there. A model is one entry of
``MODELS``: a function ``(dataset, context_length, seed, budget) -> forecaster`` whose ``forecast(context,
num_samples, seed)`` returns ``(B, S, P, D)`` paths; the diffusion forecasters (VP, VSDM) join as entries.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, mean_std, run_cells, write_section  # noqa: E402

from sde_control.generative.timeseries import (  # noqa: E402
    ForecastDataset,
    Forecaster,
    ForecastTraining,
    GaussianVAR,
    NaiveBootstrap,
    crps,
    crps_sum,
    electricity_nips,
    energy_score,
    exchange_rate_nips,
    macrodata,
    plot_fan_chart,
    solar_nips,
    traffic_nips,
)

HERE = Path(__file__).resolve().parent
SHARED_EXCHANGE = HERE.parent / ".." / "shared" / "data" / "exchange_rate.txt.gz"
TABLE = HERE / "TIMESERIES.md"

DATASETS: dict[str, Callable[[Path | None], ForecastDataset]] = {
    "exchange_rate_nips": lambda path: exchange_rate_nips(path or SHARED_EXCHANGE),
    "electricity_nips": electricity_nips,
    "solar_nips": solar_nips,
    "traffic_nips": traffic_nips,
    "macrodata": lambda path: macrodata(),
}
def naive(dataset: ForecastDataset, context_length: int, seed: int, budget: dict[str, Any]) -> NaiveBootstrap:
    return NaiveBootstrap(dataset.prediction_length).fit(dataset.train)


def var(dataset: ForecastDataset, context_length: int, seed: int, budget: dict[str, Any]) -> GaussianVAR:
    return GaussianVAR(dataset.prediction_length).fit(dataset.train)


def diffusion(process: str) -> Callable[..., Forecaster]:
    """The forecaster of ``process`` trained at the cell's budget (its network sizes and training options)."""

    def fit(dataset: ForecastDataset, context_length: int, seed: int, budget: dict[str, Any]) -> Forecaster:
        torch.manual_seed(seed)
        model = Forecaster(dataset.dim, context_length, dataset.prediction_length, process=process,
                           **budget["network"])
        model.fit(dataset.train, progress=False, **budget["train"])
        return model

    return fit


BASELINES = ("naive", "var")  # their cells do not depend on the diffusion budget
MODELS: dict[str, tuple[str, Callable[..., Any]]] = {
    "naive": ("Naive (last value + bootstrapped changes)", naive),
    "var": ("VAR (statsmodels, AIC order; ridge VAR(1) above 150 series)", var),
    "vp": ("VP forecaster (conditional score model)", diffusion("vp")),
    "vsdm": ("VSDM forecaster (learned D x D A_t)", diffusion("vsdm")),
}

# CRPS-sum as quoted in issue 14 from TimeGrad's Table 1 (Rasul et al., ICML 2021), read second-hand.
PUBLISHED = {
    "exchange_rate_nips": [("VAR", "0.005"), ("GP-Copula", "0.007"), ("Transformer-MAF", "0.005 ± 0.003"),
                           ("TimeGrad", "0.006 ± 0.001")],
    "solar_nips": [("TimeGrad", "0.287")],
    "electricity_nips": [("TimeGrad", "0.0206")],
}

BUDGETS: dict[str, dict[str, Any]] = {  # the forecasters' network and training options beside ForecastTraining's
    "full": dict(samples=100, seeds=3, network={}, train=dict(iterations=2000, batch_size=64),
                 sampling=dict(steps=50, method="em")),
    "reduced": dict(samples=100, seeds=3, network={}, train=dict(iterations=500, batch_size=64),
                    sampling=dict(steps=50, method="em")),
    "smoke": dict(samples=20, seeds=1, network=dict(hidden_size=8, lstm_layers=1, channels=8, residual_blocks=2,
                                                     cond_channels=2, time_features=8),
                  train=dict(iterations=4, batch_size=16, stages=2, paths=8, path_steps=3, forward_iterations=2),
                  sampling=dict(steps=4, method="em")),
}


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(cell["seed"])
    dataset = DATASETS[cell["data"]](None if cell["path"] is None else Path(cell["path"]))
    context, future = dataset.windows(cell["context"]).test_pairs()
    started = time.perf_counter()
    model = MODELS[cell["model"]][1](dataset, cell["context"], cell["seed"], BUDGETS[cell["budget"]])
    fit_time = time.perf_counter() - started
    started = time.perf_counter()
    sampling = BUDGETS[cell["budget"]]["sampling"] if isinstance(model, Forecaster) else {}
    samples = model.forecast(context, num_samples=cell["samples"], seed=cell["seed"], **sampling)
    result = {"fit_time_s": fit_time, "forecast_time_s": time.perf_counter() - started,
              "order": getattr(model, "order", None),
              "crps_sum": crps_sum(samples, future), "crps": crps(samples, future),
              "energy_score": energy_score(samples, future),
              "crps_sum_per_window": [crps_sum(samples[b:b + 1], future[b:b + 1]) for b in range(len(future))],
              "energy_score_per_window": energy_score(samples, future, reduction="none").tolist()}
    if cell["seed"] == 0:
        plot_fan_chart(samples[0], future[0], Path(cell["out"]) / f"{cell['model']}_window0.png", context=context[0],
                       title=f"{MODELS[cell['model']][0]}, {cell['data']} test window 0")
    return result


def describe(budget_name: str) -> str:
    """The diffusion forecasters' budget in words."""
    budget = BUDGETS[budget_name]
    train, sampling = {**ForecastTraining().as_dict(), **budget["train"]}, budget["sampling"]
    network = ("the network " + ", ".join(f"{k} {v}" for k, v in budget["network"].items()) if budget["network"]
               else "the default ContextDenoiser (0.40 M parameters at D = 8, P = 30)")
    return (f"Diffusion forecasters ({budget_name} budget, equal for VP and VSDM): {network}; "
            f"{train['iterations']} score-network steps on batches of {train['batch_size']} windows over "
            f"{train['stages']} stages (learning rate {train['lr']} decaying to {train['lr'] * train['lr_final']:g}); "
            f"VSDM's forward update after each stage but the last: {train['forward_iterations']} steps on "
            f"{train['paths']} backward paths of {train['path_steps']} steps; forecasts by {sampling['steps']} "
            f"{'reverse-SDE' if sampling['method'] == 'em' else 'probability-flow'} steps.")


def table(results: list[dict[str, Any]], data: str) -> str:
    header = ["model", "CRPS-sum", "CRPS", "energy score", "CRPS-sum per window (seed 0)", "fit s"]
    rows = []
    for model, (name, _) in MODELS.items():
        cells = [r for r in results if r["model"] == model]
        if cells:
            first = min(cells, key=lambda r: r["seed"])
            orders = sorted({c["order"] for c in cells if c.get("order") is not None})
            name += f" (order {', '.join(map(str, orders))})" if orders else ""
            rows.append([name, mean_std(c["crps_sum"] for c in cells), mean_std(c["crps"] for c in cells),
                         mean_std(c["energy_score"] for c in cells),
                         ", ".join(f"{v:.4f}" for v in first["crps_sum_per_window"]),
                         mean_std(c["fit_time_s"] for c in cells)])
    rows += [[f"{name} (published)", value, "", "", "", ""] for name, value in PUBLISHED.get(data, [])]
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(DATASETS), default="exchange_rate_nips")
    parser.add_argument("--path", type=Path, help="the data file or folder (see above)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: " + ", ".join(MODELS))
    parser.add_argument("--context", type=int, help="context length (default: see above)")
    parser.add_argument("--seeds", type=int, help="seeds per model (default 3; smoke 1)")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at a time (one process each)")
    parser.add_argument("--budget", choices=["full", "reduced"], default="full",
                        help="the diffusion forecasters' training budget (see BUDGETS)")
    parser.add_argument("--smoke", action="store_true", help="macrodata, tiny, 1 seed; prints, writes nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    budget_name = "smoke" if args.smoke else args.budget
    budget = BUDGETS[budget_name]
    data = "macrodata" if args.smoke else args.data
    models = args.models.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
    dataset = DATASETS[data](args.path)  # fails early, with the message saying where to get the data
    context = args.context or dataset.default_context
    out = Path(tempfile.mkdtemp()) if args.smoke else HERE / "results" / "timeseries" / data
    cells = [dict(id=f"{model}-c{context}-s{budget['samples']}{'' if model in BASELINES else '-' + budget_name}-{seed}",
                  budget=budget_name, data=data,
                  path=None if args.path is None else str(args.path), model=model, seed=seed, context=context,
                  samples=budget["samples"], out=str(out))
             for model in models for seed in range(args.seeds or budget["seeds"])]
    results = run_cells(cells, run_cell, out, args.jobs)
    command = "python benchmarks/timeseries.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    text = "\n".join([
        f"## {data}",
        "",
        f"Made by `{command}`: {dataset.dim} series, {len(dataset.test_starts)} test windows of "
        f"{dataset.prediction_length} steps after {dataset.train_end} training steps, context {context}, "
        f"{budget['samples']} sample paths per window, {args.seeds or budget['seeds']} seed(s) per model (mean ± "
        f"standard deviation over seeds). Machine: {machine()}. CRPS-sum and CRPS as gluonts' MultivariateEvaluator "
        "(quantiles 0.05..0.95, pooled over windows); energy score over the whole window, averaged over windows; "
        "lower is better. Published rows: CRPS-sum from TimeGrad's Table 1 (Rasul et al. 2021), as quoted in "
        "issue 14. " + describe(budget_name),
        "",
        table(results, data),
        "",
    ])
    print(text)
    if not args.smoke:
        if not TABLE.exists():
            TABLE.write_text("# Time-series forecasting benchmarks\n")
        write_section(f"timeseries-{data}" + ("" if budget_name == "full" else f"-{budget_name}"), text, TABLE)


if __name__ == "__main__":
    main()
