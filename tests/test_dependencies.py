"""The extras never change the torch build: `dev` (what CI installs) holds nothing that pulls torchvision, and the one
extra that does pins it to torch 2.13's release; in CI, `pip install ".[dev]"` has left torch 2.13.0+cpu in place."""

import os
import re
import tomllib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def extras():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def names(requirements):
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_dev_extra_pulls_no_torchvision():
    # PyPI's torchvision for x86_64 is built against the CUDA build of torch: beside the CPU-only torch 2.13.0 it
    # fails to import ("operator torchvision::nms does not exist"), and diffusers' UNet2DModel and torchmetrics'
    # image metrics fail with it. torch-fidelity and clean-fid both require torchvision.
    assert not names(extras()["dev"]) & {"torchvision", "torch-fidelity", "clean-fid", "pytorch-fid"}


def test_torchvision_is_pinned_to_the_release_of_torch_2_13_wherever_it_appears():
    # Unpinned, pip resolves torch-fidelity's torchvision to the newest release and replaces torch with the one
    # that release requires (2.14.1 and several GB of CUDA libraries, seen with `pip install --dry-run`).
    for extra, requirements in extras().items():
        for requirement in requirements:
            if names([requirement]) & {"torchvision", "torch-fidelity"}:
                assert "torchvision==0.28.*" in requirements, f"extra {extra!r} needs torchvision pinned to 0.28.*"


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="CI's environment is the README's install: pip install "
                    "torch==2.13.0, then pip install '.[dev]'; elsewhere any torch may be installed")
def test_ci_install_kept_the_cpu_torch():
    assert torch.__version__ == "2.13.0+cpu", f"pip install '.[dev]' replaced torch by {torch.__version__}"
