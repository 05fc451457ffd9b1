"""Image runs on the CPU at tiny size: the command line end to end on the digits (train, samples.png, checkpoint,
resume with more iterations, the FID task with the stand-in features), an interrupted and resumed run equal to an
uninterrupted one bit for bit, two gloo ranks with half batches equal to one process, and non-finite steps."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="image runs need the images extra (diffusers)")
pytest.importorskip("torchmetrics", reason="image runs need the images extra (torchmetrics)")

from hydra import compose, initialize_config_module  # noqa: E402

from sde_control import checkpoints  # noqa: E402
from sde_control.generative import MDM, VSDM, ScoreModel, images  # noqa: E402
from sde_control.generative.cli import run  # noqa: E402
from sde_control.controls import ControlMLP  # noqa: E402
from sde_control.generative.data import ImageDataset, digits  # noqa: E402
from sde_control.generative.networks import UNet  # noqa: E402
from sde_control.sdes import VP  # noqa: E402
from sde_control.training import TrainingDivergedError  # noqa: E402

SMOKE = ["data=digits", "preset=smoke", "train.progress=false", "threads=1"]


def compose_config(*overrides):
    with initialize_config_module(config_module="sde_control.configs", version_base=None):
        return compose(config_name="generative", overrides=[*SMOKE, *overrides])


def test_the_image_command_trains_resumes_and_scores(tmp_path):
    summary = run(compose_config("model=vsdm", "train.iterations=20"), tmp_path)
    assert summary["iterations"] == 20 and summary["images"] == 320 and summary["precision"] == "float32"
    for name in ("checkpoint.pt", "samples.png", "metrics.csv", "grids/000000000160.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # data only
    assert saved["run"]["step"] == 20 and saved["state"]["stage"] == 2
    assert "forward_objective" in saved["state"]["stages"][0]
    model = ScoreModel.load(tmp_path / "checkpoint.pt")  # the U-Net and the DCT-diagonal forward are rebuilt
    assert isinstance(model, VSDM) and isinstance(model.network, UNet) and model.sde.basis.kind == "dct"

    again = run(compose_config("model=vsdm", "train.iterations=30"), tmp_path)  # more iterations: resumes
    assert again["iterations"] == 30 and [s["stage"] for s in again["stages"]] == [1, 2, 3]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 31  # header + one row per step
    with pytest.raises(checkpoints.CheckpointError, match="training.lr: 0.002 in the file, 0.001 now"):
        run(compose_config("model=vsdm", "train.iterations=30", "train.lr=1e-3"), tmp_path)

    grids = run(compose_config("model=vsdm", "task=sample"), tmp_path)["grids"]
    assert [name.rsplit("/", 1)[-1] for name in grids] == ["samples-em-5.png", "samples-ode-5.png",
                                                            "samples-gddim-5.png"]
    scores = run(compose_config("model=vsdm", "task=fid", "fid.samples=32"), tmp_path)["rows"]
    assert [(r["method"], r["steps"], r["samples"]) for r in scores] == [("em", 5, 32), ("ode", 5, 32),
                                                                          ("gddim", 5, 32), ("held-out data", 0, 360)]
    assert all(r["fid"] >= 0 and "random-features" in r["implementation"] for r in scores)
    assert (tmp_path / "fid.json").is_file() and "| em | 5 |" in (tmp_path / "fid.md").read_text()


@pytest.mark.parametrize("model, aux, name", [("cld", 1, "ScoreModel"), ("mdm", 1, "MDM"), ("alda", 2, "ScoreModel")])
def test_auxiliary_variables_are_channels_of_the_u_net(tmp_path, model, aux, name):
    """CLD and the MDM diffusions on images: the U-Net takes the image and its auxiliary blocks as (1 + aux) C
    channels (the state's block layout), trains (MDM by its ELBO, the process moving), rebuilds from the checkpoint
    and samples images of the data's shape by every sampler."""
    summary = run(compose_config(f"model={model}", "train.iterations=10"), tmp_path)
    assert summary["iterations"] == 10 and (tmp_path / "samples.png").stat().st_size > 0
    trained = ScoreModel.load(tmp_path / "checkpoint.pt")
    assert type(trained).__name__ == name and trained.network.image_shape == (1 + aux, 8, 8)
    assert trained.state_dim == (1 + aux) * 64 and trained.sde.aux == aux
    if model == "mdm":
        fresh = MDM(64, aux=1)
        moved = [float((p - q).abs().max()) for p, q in zip(trained.sde.parameters(), fresh.sde.parameters())]
        assert max(moved) > 1e-4
    grids = run(compose_config(f"model={model}", "task=sample", "images.grid=4"), tmp_path)["grids"]
    assert len(grids) == 3 and all(os.path.getsize(g) > 0 for g in grids)
    x = images.sample(trained, 3, steps=4, method="gddim")
    assert x.shape == (3, 64) and torch.isfinite(x).all()


def test_bad_image_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="global batch: it must be a multiple of the 1 ranks x train.accumulation = 3"):
        run(compose_config("model=vp", "train.accumulation=3"), tmp_path)
    with pytest.raises(ValueError, match="must be a multiple of images.stage_iterations = 7"):
        run(compose_config("model=vp", "images.stage_iterations=7"), tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*train first"):
        run(compose_config("model=vp", "task=fid"), tmp_path)
    with pytest.raises(Exception, match="CIFAR-10 not found.*cs.toronto.edu"):  # (Hydra wraps it)
        run(compose_config("data=cifar10", f"data.root={tmp_path}"), tmp_path)
    with pytest.raises(ValueError, match=r"method must be one of \('em', 'ode', 'gddim'\), got 'sde'"):
        images.sample(tiny_vsdm(), 2, 3, method="sde")
    assert images.resolve_precision("auto", torch.device("cpu")) == "float32"
    assert images.resolve_precision("float16", torch.device("cpu")) == "float16"


# ---------------------------------------------------------------------------------------------- resumption
def tiny_vsdm():
    torch.manual_seed(0)
    return VSDM(64, basis="dct", image_shape=(1, 8, 8), network=UNet.tiny((1, 8, 8)), knots=2, ema_decay=0.9)


def tiny_run(model, **changes):
    config = images.training_config(model, dict(iterations=12, batch_size=8, stages=3, paths=8, path_steps=4,
                                                forward_iterations=3, lr=1e-3, lr_final=1.0, warmup=3, progress=False,
                                                **changes), stage_iterations=4)
    options = images.ImageOptions(network="tiny", checkpoint_images=32, sample_images=10**9, grid=4, grid_steps=2,
                                  workers=0)
    return config, options


def state(model):
    return {**{f"network.{k}": v for k, v in model.network.state_dict().items()},
            **{f"ema.{k}": v for k, v in model.trainer.averaged.state_dict().items()},
            "forward": model.forward_trainer.module.weight, "forward_ema": model.sde.weight,
            **{f"adam.{i}.{k}": v for i, s in model.trainer.optimizer.state_dict()["state"].items()
               for k, v in s.items()}}


def test_an_interrupted_and_resumed_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path, monkeypatch):
    data = digits()
    session = images.Session(0, 1, torch.device("cpu"))
    reference = tiny_vsdm()
    images.train(reference, data, *tiny_run(reference), tmp_path / "straight", session)

    call = images._ImageLoss.__call__

    def interrupted(self, iteration):
        if iteration == 6:  # mid-stage 2, after the forward update that ended stage 1 and the checkpoint at step 4
            raise KeyboardInterrupt
        return call(self, iteration)

    first = tiny_vsdm()
    monkeypatch.setattr(images._ImageLoss, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        images.train(first, data, *tiny_run(first), tmp_path / "resumed", session)
    monkeypatch.setattr(images._ImageLoss, "__call__", call)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["run"]["step"] == 6  # written at exit
    resumed = tiny_vsdm()
    images.train(resumed, data, *tiny_run(resumed), tmp_path / "resumed", session)
    assert resumed.trainer.iteration == 12 and resumed.stage == reference.stage == 3
    for name, value in state(reference).items():
        assert torch.equal(value, state(resumed)[name]), name
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in reference.history]


def test_non_finite_losses_are_skipped_then_stop_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    data = digits()
    session = images.Session(0, 1, torch.device("cpu"))
    call = images._ImageLoss.__call__

    def poisoned(self, iteration):
        loss, metrics = call(self, iteration)
        return (loss * float("nan") if iteration in (2, 9, 10, 11) else loss), metrics

    monkeypatch.setattr(images._ImageLoss, "__call__", poisoned)
    model = tiny_vsdm()
    with pytest.raises(TrainingDivergedError, match="iteration 11: the loss is nan .3 non-finite steps in a row.*"
                                                    "last checkpoint holds iteration 8"):
        images.train(model, data, *tiny_run(model, nonfinite_patience=2), tmp_path, session)
    assert [r["iteration"] for r in model.history if "skipped" in r] == [3, 10, 11]  # the third raises
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["run"]["step"] == 8
    assert all(torch.isfinite(p).all() for p in model.network.parameters())


# ---------------------------------------------------------------------------------------------- DDP parity
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RANK = """import importlib.util, pathlib, sys
spec = importlib.util.spec_from_file_location("parity", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module._parity_run(int(sys.argv[2]), 2, int(sys.argv[3]), pathlib.Path(sys.argv[4]), sys.argv[5] == "1")
"""


def _two_ranks(directory: Path, learned: bool = False) -> None:
    """Two gloo ranks of :func:`_parity_run`, each a fresh interpreter (a fork of the pytest process, with the
    threads of the tests before it, once hung a rank in a futex), with a time limit in place of gloo's 30 minutes."""
    port = _free_port()
    ranks = [subprocess.Popen([sys.executable, "-c", _RANK, __file__, str(rank), str(port), str(directory),
                               str(int(learned))]) for rank in (0, 1)]
    try:
        codes = [rank.wait(timeout=300) for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    assert codes == [0, 0]


def _parity_run(rank, world_size, port, directory, learned=False):
    """One rank: a global batch of 16 split over ``world_size`` ranks, noise drawn for the global batch and sliced
    (``learned``: MDM's learned diffusion by its ELBO, each rank drawing its own noise; every rank saves its
    parameters). (A small MLP on 64 random 8 x 8 images keeps it quick; the path is the U-Net's.)"""
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                          LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    data = ImageDataset(torch.randint(0, 17, (64, 1, 8, 8), generator=torch.Generator().manual_seed(1),
                                      dtype=torch.uint8), levels=17, hflip=True)
    torch.manual_seed(0)
    if learned:
        model = MDM(64, aux=1, network=ControlMLP(128, 32, 2), ema_decay=0.9)
    else:
        model = ScoreModel(64, VP(0.1, 10.0), ControlMLP(64, 32, 2), ema_decay=0.9)
    initial = {k: v.clone() for k, v in model.trainer.module.state_dict().items()}
    config = images.training_config(model, dict(iterations=4, batch_size=16, stages=1, lr=1e-3, lr_final=1.0,
                                                progress=False))
    options = images.ImageOptions(checkpoint_images=10**9, sample_images=10**9, grid=4, grid_steps=2, workers=0,
                                  shared_noise=not learned)
    with images.session("cpu") as session:
        assert session.world_size == world_size
        images.train(model, data, config, options, directory, session)
        if session.main or learned:
            torch.save({"network": model.trainer.module.state_dict(), "initial": initial,
                        "losses": [r["loss"] for r in model.history]},
                       directory / f"parameters-{world_size}-{session.rank}.pt")


def test_two_gloo_ranks_with_half_batches_equal_one_process(tmp_path):
    _two_ranks(tmp_path / "two")
    _parity_run(0, 1, None, tmp_path / "one")
    two = torch.load(tmp_path / "two" / "parameters-2-0.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "parameters-1-0.pt", weights_only=True)
    # The ranks' gradients are averaged by an all-reduce, the one process sums the whole batch: equal up to the
    # order of float32 additions, which Adam's normalised steps carry at the scale lr x 1e-3 over 4 steps.
    for name, value in one["network"].items():
        torch.testing.assert_close(two["network"][name], value, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=0)
    moved = max(float((one["network"][k] - v).abs().max()) for k, v in one["initial"].items())
    assert moved > 1e-3  # four Adam steps at 1e-3 moved the weights: the agreement is not that of untouched weights


def test_a_learned_diffusion_stays_in_lockstep_over_ranks(tmp_path):
    """MDM under DDP: the loss differentiates the learned process outside the network's forward; its gradients are
    averaged with the network's (:class:`~sde_control.generative.score_model.ScoreAndProcess`), so two ranks that
    read different images and draw different noise end with the same parameters, the process's included, which have
    moved (without the average each rank would follow its own gradients)."""
    _two_ranks(tmp_path, learned=True)
    ranks = [torch.load(tmp_path / f"parameters-2-{rank}.pt", weights_only=True) for rank in (0, 1)]
    for name, value in ranks[0]["network"].items():
        torch.testing.assert_close(ranks[1]["network"][name], value, rtol=1e-6, atol=1e-7, msg=name)
    process = [k for k in ranks[0]["network"] if k.startswith("sde.")]
    assert process and max(float((ranks[0]["network"][k] - ranks[0]["initial"][k]).abs().max()) for k in process) > 1e-4


@pytest.mark.slow
def test_the_command_runs_under_torchrun_into_one_directory(tmp_path):
    """``torchrun --nproc_per_node=2 -m sde_control.generative ...`` on the CPU (gloo): one run directory, a checkpoint
    that records both ranks, and a resume on one process (the global batch stays, the stream too)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "sde_control.generative",
               *SMOKE, "model=vsdm", f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["run"]["world_size"] == 2 and saved["run"]["step"] == 20
    assert (tmp_path / "run" / "samples.png").is_file()
    summary = run(compose_config("model=vsdm", "train.iterations=30"), tmp_path / "run")
    assert summary["iterations"] == 30 and summary["world_size"] == 1
