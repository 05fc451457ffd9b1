"""``sde-generative`` on time series: a tiny run on the embedded macrodata as a user would start it, resumption, and
clear errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from sde_control.generative.cli import run
from sde_control.generative.timeseries import Forecaster

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_data import gluonts_folder  # noqa: E402

TINY = ["train.iterations=4", "train.stages=2", "train.paths=8", "train.path_steps=3", "train.forward_iterations=2",
        "train.progress=false", "forecaster.channels=8", "forecaster.residual_blocks=2", "forecaster.hidden_size=8",
        "forecaster.lstm_layers=1", "forecaster.cond_channels=2", "forecaster.time_features=8",
        "forecast.num_samples=10", "forecast.steps=4"]


def test_tiny_run_on_macrodata_writes_scores_fan_charts_and_checkpoints(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sde_control.generative", "data=macrodata", *TINY,
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "run"
    for name in ("results.md", "results.json", "forecasts.pt", "fan_chart_VSDM.png", "fan_chart_VP.png", "VSDM.pt",
                 "VP.pt"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert results["data"] == {"name": "macrodata", "series": 12, "prediction_length": 4, "context_length": 16,
                               "train_end": 183, "test_starts": [183, 187, 191, 195, 199]}
    assert list(results["models"]) == ["VSDM", "VP", "naive", "var"]
    for scores in results["models"].values():
        assert [w["start"] for w in scores["windows"]] == [183, 187, 191, 195, 199]
        assert all(scores[k] > 0 for k in ("crps_sum", "crps", "energy_score"))
    assert results["models"]["VSDM"]["score_steps"] == results["models"]["VP"]["score_steps"] == 4  # equal budget
    assert "| VSDM |" in result.stdout and "| var |" in (out / "results.md").read_text()
    assert torch.load(out / "forecasts.pt")["VP"].shape == (5, 10, 4, 12)
    assert Forecaster.load(out / "VSDM.pt").process == "vsdm"


def compose_config(*overrides, tiny=TINY):
    with initialize_config_module(config_module="sde_control.configs", version_base=None):
        return compose(config_name="generative", overrides=[*tiny, *overrides])


def test_a_finished_run_is_reused(tmp_path):
    cfg = compose_config("data=macrodata", "model=vp", "forecast.baselines=[]")
    first = run(cfg, tmp_path)
    again = run(cfg, tmp_path)
    assert list(first["models"]) == ["VP"]
    assert again["models"]["VP"]["score_steps"] == 4
    assert again["models"]["VP"]["crps_sum"] == first["models"]["VP"]["crps_sum"]  # the same weights and seed


def test_a_gluonts_folder_runs_and_nan_is_refused_naming_the_row(tmp_path):
    full = np.random.default_rng(0).normal(size=(80, 3)).cumsum(0) + 20
    folder = gluonts_folder(tmp_path / "toy_nips", full, train_end=60, P=4, W=2)
    results = run(compose_config("data=gluonts", f"data.path={folder}", "model=vp", "forecast.baselines=[naive]"),
                  tmp_path / "out")
    assert results["data"]["name"] == "toy_nips" and results["data"]["test_starts"] == [60, 64]
    nan = gluonts_folder(tmp_path / "nan", full, train_end=60, P=4, W=2, nan_at=30)
    with pytest.raises(Exception, match=r"NaN or infinite entries in 1 of 68 rows \(rows 30\)"):
        run(compose_config("data=gluonts", f"data.path={nan}", "model=vp"), tmp_path / "nan_out")


@pytest.mark.parametrize("overrides, message", [
    (["data=exchange_rate"], "Missing mandatory value: data.path"),
    (["data=exchange_rate", "data.path=/nonexistent/exchange_rate.txt.gz"], "no file at /nonexistent"),
    (["data=macrodata", "model=vsdm_ti"], "has no forecaster for time-series data"),
    (["data=macrodata", "forecast.context_length=190"], "the training range has 183 steps, shorter than "
                                                        "context_length \\+ prediction_length = 190 \\+ 4"),
    (["data=macrodata", "train.stagez=3"], "stagez"),
])
def test_bad_input_gets_a_clear_error(tmp_path, overrides, message):
    tiny = [o for o in TINY if not o.startswith("forecaster.")] if "model=vsdm_ti" in overrides else TINY
    with pytest.raises(Exception, match=message):
        run(compose_config(*overrides, tiny=tiny), tmp_path)
