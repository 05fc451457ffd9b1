"""``sde-generative`` (``python -m sde_control.generative``): a tiny run as a user would start it, and clear errors for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from sde_control.generative.cli import run

TINY = ["train.stages=2", "train.iterations=6", "train.forward_iterations=2", "train.paths=20",
        "train.path_steps=5", "model.width=16", "model.depth=2", "held_out=100", "evaluate.steps=[4]",
        "evaluate.plot_steps=4", "train.progress=false"]


def test_tiny_run_writes_table_samples_and_plots(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sde_control.generative", *TINY, "data.n=600", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "run"
    for name in ("results.md", "results.json", "samples.pt", "trajectories.png", "VSDM.pt", "VP.pt"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["nfe"]) for r in results["rows"]] == [("VSDM", 4), ("VP", 4)]
    assert results["models"]["VSDM"]["score_steps"] == results["models"]["VP"]["score_steps"] == 6  # equal budget
    assert "| VSDM | 4 |" in result.stdout and "| VP | 4 |" in (out / "results.md").read_text()
    assert torch.load(out / "samples.pt")["VSDM"].shape == (100, 2)


def compose_config(*overrides):
    with initialize_config_module(config_module="sde_control.configs", version_base=None):
        return compose(config_name="generative", overrides=[*TINY, *overrides])


def test_a_finished_run_is_reused(tmp_path):
    cfg = compose_config("model=vp", "evaluate.method=em", "data.n=600")
    first = run(cfg, tmp_path)
    with pytest.warns(UserWarning, match="nothing to train"):
        again = run(cfg, tmp_path)
    assert first["models"]["ScoreModel"]["score_steps"] == again["models"]["ScoreModel"]["score_steps"] == 6
    assert first["rows"][0]["straightness"] is None  # only measured on probability-flow paths


@pytest.mark.parametrize("overrides, message", [
    (["data=spirall"], "Could not find 'data/spirall'"),
    (["train.stagez=3"], "stagez"),
])
def test_unknown_options_are_named(overrides, message):
    with pytest.raises(Exception, match=message):
        compose_config(*overrides)


@pytest.mark.parametrize("points, message", [
    (np.array([[0.0, 1.0], [np.nan, 2.0]] * 400), "NaN or infinite entries in 400 of 800 rows"),
    (np.zeros((800, 2, 2)), r"must have shape \(n, d\), got shape \(800, 2, 2\)"),
])
def test_bad_data_files_get_a_clear_error(tmp_path, points, message):
    np.save(tmp_path / "points.npy", points)
    with pytest.raises(Exception, match=message):  # Hydra wraps the loader's ValueError, keeping its message
        run(compose_config("data=file", f"data.path={tmp_path / 'points.npy'}"), tmp_path)


def test_bad_sampling_option(tmp_path):
    with pytest.raises(ValueError, match="method must be one of"):
        run(compose_config("model=vp", "evaluate.method=flow", "data.n=600"), tmp_path)
