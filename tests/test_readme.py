"""Every Python example of the README runs, as written but for its sizes, which are shrunk so that the examples
take seconds (a table of substitutions below); the first two commands of the README are run by CI itself."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"  # data the examples name by file

SMALLER = {  # the README's sizes -> test sizes; every example must use only sizes listed here
    "iterations=5000, batch_size=512": "iterations=3, batch_size=32",
    "iterations=1000,": "iterations=3, batch_size=32,",
    "iterations=5000, stages=10": "iterations=4, stages=2, paths=20, path_steps=4, forward_iterations=2",
    "DIS(Funnel(dim=10))": "DIS(Funnel(dim=10), steps=8)",
    "PIS(Banana())": "PIS(Banana(), steps=8)",
    "VSDM(dim=2)": "VSDM(dim=2, width=16, depth=2)",
    "10_000": "200",
    "20_000": "500",
    "5000": "100",
    "steps=100": "steps=10",
    "steps=20": "steps=4",
    "iterations=2000, batch_size=128": "iterations=4, batch_size=16",
    "paths=256, path_steps=50": "paths=8, path_steps=3",
    "stage_iterations=500": "stage_iterations=2",
    "grid_steps=100": "grid=4, grid_steps=2",
    "steps=100": "steps=3",
    "iterations=2000, batch_size=64,": "iterations=4, batch_size=16, stages=2, paths=8, path_steps=3,",
    "num_samples=100)": "num_samples=10, steps=4)",
}


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def shrink(code: str) -> str:
    for large, small in SMALLER.items():
        code = code.replace(large, small)
    return code


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = shrink(python_blocks()[index])
    for name in re.findall(r'"([\w.]+\.(?:gz|csv))"', code):
        if not (SHARED_DATA / name).is_file():
            pytest.skip(f"the example reads {name}, which is not in {SHARED_DATA.resolve()}")
        code = code.replace(f'"{name}"', repr(str((SHARED_DATA / name).resolve())))
    namespace: dict = {"__name__": "__main__"}  # a script: its classes live in __main__, as a user's would
    exec(compile(code, f"README.md example {index + 1}", "exec"), namespace)
    written = [p.name for p in tmp_path.iterdir()]
    for saved in re.findall(r'save\("([^"]+)"\)|checkpoint="([^"]+)"', code):
        assert any(name in written for name in saved if name), saved


def test_every_example_is_found():
    assert len(python_blocks()) >= 3
