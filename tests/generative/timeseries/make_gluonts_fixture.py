"""Write ``gluonts_fixture.json``: gluonts' own ``MultivariateEvaluator`` on small random forecasts.

The fixture pins :func:`sde_control.generative.timeseries.crps_sum` and ``crps`` to the numbers of gluonts 0.17.0
(``m_sum_mean_wQuantileLoss``, the CRPS-sum of the forecasting literature, and ``mean_wQuantileLoss``, the
per-dimension CRPS). gluonts is a tool for making this file, not a dependency of the project. To regenerate it::

    python3 -m venv /tmp/gluonts && /tmp/gluonts/bin/pip install numpy pandas packaging gluonts==0.17.0
    /tmp/gluonts/bin/python tests/generative/timeseries/make_gluonts_fixture.py

(no torch needed). Each case draws samples ``(B, S, P, D)`` and targets ``(B, P, D)`` with a fixed seed, rounds them
to 4 decimals (so the JSON holds exactly the numbers the evaluator saw), and evaluates the B windows as B forecasts
with the quantile levels 0.05, 0.10, ..., 0.95 and ``target_agg_funcs={"sum": np.sum}``. The sample counts 10 and 7
put ``(S - 1) q`` on a half (4.5; 1.5 and 4.5) for some levels, where gluonts' ``np.round`` rounds to even.
"""

from __future__ import annotations

import json
from pathlib import Path

import gluonts
import numpy as np
import pandas as pd
from gluonts.evaluation import MultivariateEvaluator
from gluonts.model.forecast import SampleForecast

QUANTILES = (np.arange(20) / 20.0)[1:]  # 0.05, ..., 0.95, as TimeGrad's evaluation passes them
CASES = [dict(windows=3, samples=10, steps=4, dims=3), dict(windows=2, samples=7, steps=3, dims=2)]
HISTORY = 5  # past rows in each target frame (gluonts computes a seasonal error from them; unused here)


def evaluate(samples: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """gluonts' metrics of forecasts ``samples`` (B, S, P, D) against ``target`` (B, P, D)."""
    windows, _, steps, dims = samples.shape
    frames, forecasts = [], []
    for b in range(windows):
        index = pd.period_range("2000-01-01", periods=HISTORY + steps, freq="D")
        history = np.ones((HISTORY, dims))
        frames.append(pd.DataFrame(np.concatenate([history, target[b]]), index=index))
        forecasts.append(SampleForecast(samples=samples[b], start_date=index[HISTORY]))
    evaluator = MultivariateEvaluator(quantiles=QUANTILES, target_agg_funcs={"sum": np.sum}, num_workers=None)
    metrics, _ = evaluator(iter(frames), iter(forecasts), num_series=windows)
    return {"m_sum_mean_wQuantileLoss": float(metrics["m_sum_mean_wQuantileLoss"]),
            "mean_wQuantileLoss": float(metrics["mean_wQuantileLoss"])}


def main() -> None:
    rng = np.random.default_rng(20261128)
    cases = []
    for case in CASES:
        shape = (case["windows"], case["steps"], case["dims"])
        target = np.round(rng.normal(1.0, 2.0, size=shape), 4)  # some negative targets: |y| enters the normaliser
        spread = rng.uniform(0.5, 3.0, size=(case["windows"], 1, 1, case["dims"]))
        noise = rng.normal(size=(case["windows"], case["samples"], case["steps"], case["dims"]))
        samples = np.round(target[:, None] + 0.3 + spread * noise, 4)
        cases.append({"samples": samples.tolist(), "target": target.tolist(), **evaluate(samples, target)})
    fixture = {"generator": f"tests/generative/timeseries/make_gluonts_fixture.py, gluonts {gluonts.__version__}, "
                            f"numpy {np.__version__}, pandas {pd.__version__}",
               "quantiles": QUANTILES.tolist(), "cases": cases}
    path = Path(__file__).resolve().parent / "gluonts_fixture.json"
    path.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
