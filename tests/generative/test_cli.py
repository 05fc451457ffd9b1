"""``sde-generative`` (``python -m sde_control.generative``): tiny runs as a user would start them (every model, points
and digits, every sampler) and clear errors for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from sde_control.generative.cli import run

TINY = ["train.stages=2", "train.iterations=6", "train.forward_iterations=2", "train.paths=20",
        "train.path_steps=5", "model.width=16", "model.depth=2", "held_out=100", "sample.steps=[4]",
        "train.progress=false", "train.batch_size=32"]
PNG = b"\x89PNG\r\n\x1a\n"


def test_tiny_run_writes_table_samples_and_plots(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sde_control.generative", *TINY, "data.n=600",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "run"
    for name in ("results.md", "results.json", "samples.pt", "samples.png", "trajectories.png", "VSDM.pt", "VP.pt"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "samples.png").read_bytes().startswith(PNG)
    results = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["steps"], r["nfe"]) for r in results["rows"]] == [("VSDM", 4, 4), ("VP", 4, 4)]
    assert results["models"]["VSDM"]["score_steps"] == results["models"]["VP"]["score_steps"] == 6  # equal budget
    assert results["models"]["VP"]["bits_per_dim_se"] > 0
    assert "| VSDM | 4 | 4 |" in result.stdout and "| VP | 4 | 4 |" in (out / "results.md").read_text()
    assert torch.load(out / "samples.pt")["VSDM"].shape == (100, 2)


def compose_config(*overrides):
    with initialize_config_module(config_module="sde_control.configs", version_base=None):
        return compose(config_name="generative", overrides=[*TINY, *overrides])


@pytest.mark.parametrize("model, sampling, nfe", [
    ("cld", ["sample.method=gddim", "sample.order=2"], 4),
    ("malda", ["sample.method=gddim", "sample.corrector=true"], 8),
    ("alda", ["sample.method=em"], 4),
    ("mdm", ["sample.method=ode", "sample.solver=heun"], 8),
    ("ndm", ["sample.method=em"], 4),
])
def test_every_model_runs_on_points(tmp_path, model, sampling, nfe):
    results = run(compose_config(f"model={model}", "data=rings", "data.n=600", *sampling), tmp_path)
    (row,) = results["rows"]
    assert row["nfe"] == nfe and row["w2"] >= 0
    (info,) = results["models"].values()
    assert info["score_steps"] == 6 and info["bits_per_dim_se"] > 0
    assert (tmp_path / "samples.png").read_bytes().startswith(PNG)


def test_digits_as_vectors(tmp_path):
    results = run(compose_config("model=mdm", "data=digits", "images.network=mlp", "sample.method=gddim"), tmp_path)
    (row,) = results["rows"]
    assert row["frechet_distance"] > 0 and row["nfe"] == 4
    info = results["models"]["MDM"]
    assert info["bits_per_dim"] > 0 and info["bits_per_dim_se"] > 0
    assert torch.load(tmp_path / "samples.pt")["MDM"].shape == (360, 1, 8, 8)  # as many as held-out digits
    assert (tmp_path / "samples.png").read_bytes().startswith(PNG) and (tmp_path / "digit_classifier.pt").is_file()


def test_images_as_vectors_on_request(tmp_path):
    """Image data take the U-Net path unless images.network=mlp asks for vectors (NDM, with its two networks, always
    takes vectors)."""
    results = run(compose_config("model=vp", "data=digits", "images.network=mlp"), tmp_path)
    assert results["models"]["VP"]["bits_per_dim"] > 0 and results["rows"][0]["nfe"] == 4
    with pytest.raises(ValueError, match="task=sample samples or scores image runs of the U-Net path"):
        run(compose_config("model=ndm", "data=digits", "task=sample"), tmp_path)


def test_a_finished_run_is_reused(tmp_path):
    cfg = compose_config("model=vp", "sample.method=em", "data.n=600")
    first = run(cfg, tmp_path)
    with pytest.warns(UserWarning, match="nothing to train"):
        again = run(cfg, tmp_path)
    assert first["models"]["VP"]["score_steps"] == again["models"]["VP"]["score_steps"] == 6
    assert first["rows"][0]["straightness"] is None  # only measured on deterministic paths


@pytest.mark.parametrize("overrides, message", [
    (["data=spirall"], "Could not find 'data/spirall'"),
    (["model=ddpm"], "Could not find 'model/ddpm'"),
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


@pytest.mark.parametrize("overrides, message", [
    (["model=auxiliary", "model.sde.D=[[0.0,0.0],[0.0,0.0]]"], "not Hurwitz"),
    (["model=vp", "sample.method=flow"], "method must be one of"),
    (["model=ndm", "sample.method=gddim"], r"method must be one of \('em', 'ode'\) for NDM"),
    (["model=mdm", "train.objective=dsm"], "MDM learns its diffusion by the ELBO"),
])
def test_bad_settings_get_a_clear_error(tmp_path, overrides, message):
    with pytest.raises(Exception, match=message):
        run(compose_config("data.n=600", *overrides), tmp_path)
