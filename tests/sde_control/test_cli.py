"""The command-line application, run as a user would (a subprocess)."""

import json
import subprocess
import sys

import pytest

TINY = ["train.iterations=3", "train.batch_size=32", "sampler.steps=10", "evaluate.samples=200",
        "evaluate.metric_samples=100", "train.progress=false"]


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sde_control", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_tiny_run_writes_table_plot_and_checkpoint(tmp_path):
    result = run_cli(*TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    for name in ("results.md", "results.json", "samples.png", "checkpoint.pt"):
        assert (run / name).stat().st_size > 0, name
    results = json.loads((run / "results.json").read_text())
    assert results["sampler"] == "DIS" and results["target"] == "GaussianMixture" and results["iterations"] == 3
    assert {"log_z", "elbo", "ess", "eubo", "error", "w2_squared"} <= results.keys()
    assert "| log_z |" in result.stdout and "| error |" in result.stdout

    # Running again in the same directory finds the finished run's checkpoint: nothing to redo.
    again = run_cli(*TINY, f"hydra.run.dir={run}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "results.json").read_text())["iterations"] == 3


def test_other_groups_and_a_sweep(tmp_path):
    result = run_cli("-m", *TINY, "target=funnel", "sampler=pis,dds", "loss=kl", "control=mlp",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    samplers = sorted(json.loads(p.read_text())["sampler"] for p in (tmp_path / "sweep").glob("*/results.json"))
    assert samplers == ["DDS", "PIS"]


def test_the_new_samplers_from_their_configs(tmp_path):
    """``sampler=bridge|cmcd|dis_ud|bridge_ud`` run from the command line, each with one of the losses (the other
    is tested in tests/sde_control/test_samplers.py), the log-variance loss exploring with an explicit setting."""
    result = run_cli("-m", *TINY, "sampler=bridge,cmcd,dis_ud,bridge_ud", "loss=lv", "train.exploration=1.5",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = run_cli(*TINY, "sampler=cmcd", "loss=kl", f"hydra.run.dir={tmp_path / 'kl'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = run_cli(*TINY, "sampler=bridge", "loss=kl_ld", f"hydra.run.dir={tmp_path / 'kl_ld'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = [json.loads(p.read_text()) for p in (*(tmp_path / "sweep").glob("*/results.json"),
                                                 tmp_path / "kl" / "results.json", tmp_path / "kl_ld" / "results.json")]
    assert sorted((r["sampler"], r["loss"]) for r in runs) == sorted(
        [("Bridge", "lv"), ("CMCD", "lv"), ("DIS (underdamped)", "lv"), ("Bridge (underdamped)", "lv"), ("CMCD", "kl"),
         ("Bridge", "kl_ld")])
    assert all(r["evaluations"] > 0 for r in runs)


@pytest.mark.parametrize(
    "override, message",
    [("target=funel", "Could not find 'target/funel'"), ("train.iterationz=3", "iterationz"),
     ("sampler.integrator=rk4", "integrator must be one of 'ancestral', 'euler', 'exponential'"),
     ("train.exploration=-1", "exploration must be non-negative")],
)
def test_bad_options_fail_with_a_clear_message(tmp_path, override, message):
    result = run_cli(*TINY, override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
