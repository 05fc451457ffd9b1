"""The install layout: one ``sde_control`` namespace, nothing generic at the top of site-packages, nothing of ours
shadowed by a user's files, and the repository root usable after both kinds of install."""

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = ("import sde_control, sde_control.targets, sde_control.generative, sde_control.configs; "
           "from sde_control.targets import Funnel; from sde_control.generative import VSDM; "
           "print(sde_control.targets.__file__)")
TINY_CLI = ["train.iterations=2", "train.batch_size=16", "sampler.steps=4", "evaluate.samples=50",
            "evaluate.metric_samples=50", "train.progress=false"]


def run(python, *args, cwd):
    result = subprocess.run([str(python), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_users_configs_targets_and_generative_shadow_nothing(tmp_path):
    (tmp_path / "configs" / "target").mkdir(parents=True)
    (tmp_path / "configs" / "sampling.yaml").write_text("shadowed: true\n")
    (tmp_path / "configs" / "generative.yaml").write_text("shadowed: true\n")
    for name in ("targets", "generative"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the user\\'s {name}.py was imported')\n")
    printed = run(sys.executable, "-c", IMPORTS, cwd=tmp_path)
    assert str(tmp_path) not in printed
    run(sys.executable, "-m", "sde_control", *TINY_CLI, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert (tmp_path / "run" / "results.json").is_file()
    composed = run(sys.executable, "-m", "sde_control.generative", "--cfg", "job", cwd=tmp_path)
    assert "shadowed" not in composed and "sde_control.generative" in composed


def _venv_sharing_dependencies(path: Path) -> Path:
    """A fresh virtual environment that sees this one's packages (torch and the rest), but not its sde_control,
    through a ``.pth`` file naming a folder of links to them. It has no pip of its own (this one's installs into it:
    ``pip --python``), which spares the seconds of bootstrapping one."""
    venv.create(path, with_pip=False)
    python = path / "bin" / "python"
    own = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=path).strip())
    shared = path / "shared_dependencies"
    shared.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().replace("-", "_").startswith(("sde_control", "__editable__")):
            (shared / entry.name).symlink_to(entry)
    (own / "zz_shared_dependencies.pth").write_text(f"{shared}\n")
    return python


@pytest.mark.parametrize("editable", [False, True], ids=["pip install .", "pip install -e ."])
def test_install_is_one_namespace_and_the_root_still_works(tmp_path, editable):
    python = _venv_sharing_dependencies(tmp_path / "venv")
    run(sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
        *(["-e"] if editable else []), str(ROOT), cwd=tmp_path)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    for generic in ("targets", "generative", "configs"):
        assert not (site / generic).exists(), f"{generic}/ installed at the top of site-packages"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    printed = run(python, "-c", IMPORTS, cwd=elsewhere)
    expected = ROOT / "targets" if editable else site / "sde_control" / "targets"
    assert Path(printed.strip()).parent == expected
    # From the repository root the in-tree sde_control/ comes first on sys.path; its siblings must resolve too.
    printed = run(python, "-c", IMPORTS, cwd=ROOT)
    assert Path(printed.strip()).parent == ROOT / "targets"
    assert "sde_control.targets.GaussianMixture" in run(python, "-m", "sde_control", "--cfg", "job", cwd=ROOT)
    assert "sde_control.generative" in run(python, "-m", "sde_control.generative", "--cfg", "job", cwd=ROOT)
    for script, text in (("sde-control", "sde_control.targets"), ("sde-generative", "sde_control.generative")):
        assert text in run(tmp_path / "venv" / "bin" / script, "--cfg", "job", cwd=ROOT)
