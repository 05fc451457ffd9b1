"""The benchmark scripts run end to end at tiny sizes (their timings are not tested)."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run(script, *args, cwd):
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=cwd, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_reproduce_smoke_resumes_and_tabulates(tmp_path):
    out = tmp_path / "cells"
    args = ("--budget", "smoke", "--targets", "gmm,double_well", "--samplers", "dis,pis", "--losses", "lv",
            "--out", str(out), "--no-results-md", "--jobs", "1")
    first = run("reproduce.py", *args, cwd=tmp_path)
    assert "0 of 4 cells already done" in first
    assert len(list(out.glob("*.json"))) == 4 and not list(out.glob("*.pt"))
    second = run("reproduce.py", *args, cwd=tmp_path)  # every cell saved: nothing to redo
    assert "4 of 4 cells already done; running 0" in second
    assert "| DIS | LV |" in second and "Double well (d=5, 32 modes)" in second


def test_speed_smoke(tmp_path):
    text = run("speed.py", "--smoke", "--section", "estimate,floor,step,memory,accuracy,graph", cwd=tmp_path)
    for heading in ("Evaluation: estimate_log_z", "The matrix-product floor of a training step",
                    "Training-step time", "Peak memory of a training step", "Time to accuracy", "GPU path: CUDA graphs"):
        assert heading in text
    assert "Training step: the levers" not in text


@pytest.mark.slow
def test_speed_levers_smoke(tmp_path):
    """The levers section compiles the network (torch.compile: about a minute here), so it stays out of CI."""
    text = run("speed.py", "--smoke", "--section", "levers", cwd=tmp_path)
    assert "Training step: the levers and the reference implementation" in text
    assert "| compiled network (torch.compile) |" in text and "The reference implementation was not measured" in text


def test_gpu_accuracy_smoke_runs_without_a_gpu(tmp_path):
    text = run("gpu_accuracy.py", "2", "--smoke", cwd=tmp_path)
    assert "| GaussianMixture | 2 |" in text and "| Funnel | 2 |" in text


def test_adjoint_accuracy_smoke(tmp_path):
    text = run("adjoint_accuracy.py", "--smoke", cwd=tmp_path)
    assert "| DIS | Funnel | 16 |" in text and "| PIS | GaussianMixture | 8 |" in text
    assert "DDS's adjoint at a near-optimal control" in text and text.count("\n| 16 |") == 1


def test_discretisation_bias_smoke(tmp_path):
    text = run("discretisation_bias.py", "--smoke", cwd=tmp_path)
    assert "IS log Z error, continuous form" in text
    rows = [line for line in text.splitlines() if line.startswith("| 10 |") or line.startswith("| 20 |")]
    assert len(rows) == 2
    # The naive continuous form overestimates log Z by several tenths at 10 and 20 steps (0.75, 0.42 at seed 0),
    # far beyond its Monte Carlo error; the kernel ratio's estimate is unbiased.
    assert all(float(row.split("|")[2]) > 0.2 for row in rows)


def test_timeseries_smoke(tmp_path):
    text = run("timeseries.py", "--smoke", cwd=tmp_path)
    assert "## macrodata" in text and "| Naive (last value" in text and "| VAR (statsmodels" in text
    assert "| VP forecaster" in text and "| VSDM forecaster" in text


def test_sinkhorn_smoke(tmp_path):
    text = run("sinkhorn.py", "--smoke", "--cases", "exact", "--no-check", cwd=tmp_path)
    assert "| exact | 1.59" in text and "| shift |" not in text


PINES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "pines.csv"


@pytest.mark.skipif(not PINES.is_file(), reason=f"the pines data is not at {PINES} (../shared/data)")
def test_reference_log_z_lgcp_smoke(tmp_path):
    text = run("reference_log_z.py", "--target", "lgcp", "--smoke", "--float32", cwd=tmp_path)
    assert "REFERENCE (lgcp, pooled)" in text and "grid 8 x 8 (d = 64)" in text


def test_gpu_images_measurements_run_on_the_cpu(tmp_path):
    """The throughput and forward-update parts of gpu_images.py in this process, at smoke size (seconds)."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("gpu_images", BENCHMARKS / "gpu_images.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    rows = module.throughput(torch.device("cpu"), smoke=True)
    assert [r[0] for r in rows] == ["float32", "float16 + scaler", "bfloat16"] and float(rows[0][2]) > 0
    assert module.forward_update_cost(torch.device("cpu"), True, step_seconds=0.1)[0] == "16 x 5"


@pytest.mark.slow
def test_gpu_images_smoke_runs_on_the_cpu(tmp_path):
    """The whole script, torchrun included (about a minute here: the subprocesses' start-up)."""
    text = run("gpu_images.py", "--smoke", cwd=tmp_path)
    assert "| float32 | false |" in text and "| bfloat16 | false |" in text
    assert "| 20 x 16 |" in text and "| 1 x float32 |" in text  # the short run, and torchrun's one process


@pytest.mark.slow
def test_images_digits_smoke(tmp_path):
    """Two runs of the script (20 s alone on this 2-core machine, 46 s beside two busy processes); the models it
    drives are tested in tests/generative/test_images.py, so it stays out of CI."""
    text = run("images_digits.py", "--budget", "smoke", "--models", "vsdm,cld", "--out", str(tmp_path / "runs"),
               cwd=tmp_path)
    assert "| VSDM (DCT-diagonal A_t) |" in text and "| CLD (2 channels) |" in text and "| VP |" not in text
    assert "Held-out images against" in text and (tmp_path / "runs" / "cld-seed0" / "result.json").is_file()
    again = run("images_digits.py", "--budget", "smoke", "--models", "vp", "--out", str(tmp_path / "runs"),
                cwd=tmp_path)  # the saved runs join the table
    assert "| VP |" in again and "| CLD (2 channels) |" in again


def test_evaluations_smoke_resumes_and_notes_what_is_missing(tmp_path):
    out = tmp_path / "cells"
    first = run("evaluations.py", "--smoke", "--out", str(out), cwd=tmp_path)
    assert "0 of 3 cells already done" in first
    assert "| dis |" in first and "| cmcd |" in first and "| smc |" in first
    final_elbo_error = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in first.splitlines()
                        if line.startswith("| dis |") or line.startswith("| smc |")}
    assert math.isfinite(float(final_elbo_error["dis"])) and final_elbo_error["smc"] == "—"  # SMC has no ELBO
    assert (out / "evaluations.png").stat().st_size > 0
    second = run("evaluations.py", "--smoke", "--out", str(out), cwd=tmp_path)
    assert "3 of 3 cells already done; running 0" in second


def test_exploration_smoke(tmp_path):
    text = run("exploration.py", "--smoke", "--out", str(tmp_path / "cells"), "--jobs", "1", cwd=tmp_path)
    assert "| pis | 0 |" in text and "| cmcd | 2 |" in text


def test_vsdm_vs_vp_smoke(tmp_path):
    args = ("--budget", "smoke", "--data", "spiral,rings", "--models", "vp,vp_std,vsdm,vsdm_std",
            "--out", str(tmp_path / "cells"), "--table", str(tmp_path / "VSDM.md"))
    text = run("vsdm_vs_vp.py", *args, cwd=tmp_path)
    assert "| rings (unseen) | noise floor (exact vs exact) |" in text
    assert "| spiral (8x along y) | VSDM (A_t) | 20 |" in text
    assert "| rings (unseen) | VP, standardised data | 50 |" in (tmp_path / "VSDM.md").read_text()
    assert "| spiral (8x along y) | VSDM (A_t), standardised data | 10 |" in text


@pytest.mark.slow
def test_multivariate_smoke(tmp_path):
    """Three runs of the script (42 s alone on this 2-core machine, 87 s beside two busy processes); the diffusions,
    likelihoods and samplers it drives are tested in tests/generative, so it stays out of CI."""
    common = ("--budget", "smoke", "--out", str(tmp_path / "cells"), "--table", str(tmp_path / "MULTIVARIATE.md"))
    run("multivariate.py", "likelihood", "--models", "vp,cld,mdm,ndm", *common, cwd=tmp_path)
    samplers = ("--samplers", "gddim2c,em")
    run("multivariate.py", "nfe", "--data", "digits", *samplers, *common, cwd=tmp_path)
    text = run("multivariate.py", "nfe", "--data", "points", *samplers, *common, cwd=tmp_path)
    assert "| MDM (learned, aux = 1) |" in text and "| NDM |" in text
    assert "| CLD | gDDIM, order 2 + corrector | - |" in text  # no cell at odd NFE for two evaluations a step
    assert text.count("noise floor (exact against exact)") == 2
    assert (tmp_path / "multivariate_digits.png").stat().st_size > 1000


def test_optimal_control_floor_smoke(tmp_path):
    """At the exact optimal controls (quadrature) every importance-sampled estimate is within five of its delta-method
    standard errors ``sqrt((1 / ESS - 1) / n)`` of the exact log Z (256 paths, 32 steps)."""
    text = run("optimal_control_floor.py", "--smoke", cwd=tmp_path)
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith(("| DW-5", "| Funnel"))]
    assert [row[1].strip() for row in rows] == ["PIS", "DIS", "DDS", "DIS"]
    for row in rows:
        error, ess = float(row[4]), float(row[5])
        assert ess > 0.1 and error < 5 * math.sqrt((1 / ess - 1) / 256), row


def test_bridge_losses_smoke(tmp_path):
    text = run("bridge_losses.py", "--smoke", "--out", str(tmp_path / "cells"), "--jobs", "1", cwd=tmp_path)
    assert "| GMM-9 (d=2) | bridge | lv | 0 |" in text and "| GMM-9 (d=2) | bridge | kl_ld | 0 |" in text
    assert "missing cells" not in text
