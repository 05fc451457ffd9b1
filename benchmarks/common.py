"""Shared pieces of the benchmark scripts: targets by the name of their config file (the command line's
``configs/target/<name>.yaml``), resumable result files, parallel cells, and the marked sections of RESULTS.md that
each script rewrites."""

from __future__ import annotations

import importlib.resources
import json
import multiprocessing
import os
import platform
import re
import statistics
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sde_control.targets import Target

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

TARGET_NAMES = {"gmm": "GMM (d=2, 9 modes)", "funnel": "Funnel (d=10)", "double_well": "Double well (d=5, 32 modes)",
                "double_well_50": "Many-well (d=50, 5 wells)"}
"""Display names of the targets the benchmark tables use, keyed by their config files."""


def target(name: str, **overrides: Any) -> Target:
    """The target of ``configs/target/<name>.yaml``, as ``sde-control target=<name>`` builds it."""
    path = importlib.resources.files("sde_control.configs") / "target" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no target config {name!r}; the configs are in sde_control/configs/target/")
    return instantiate(OmegaConf.merge(OmegaConf.load(path), overrides), _convert_="all")


def machine() -> str:
    """A one-line description of where the numbers were measured."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return f"{device}, torch {torch.__version__}, Python {platform.python_version()}, {torch.get_num_threads()} thread(s)"


def run_cells(cells: list[dict[str, Any]], run: Callable[[dict[str, Any]], dict[str, Any]], out: Path, jobs: int) -> list[dict]:
    """Run every cell whose result file ``out/<cell id>.json`` does not exist yet, ``jobs`` at a
    time, each saved as it finishes; returns all results (old and new)."""
    out.mkdir(parents=True, exist_ok=True)
    todo = [cell for cell in cells if not (out / f"{cell['id']}.json").exists()]
    print(f"{len(cells) - len(todo)} of {len(cells)} cells already done; running {len(todo)} with {jobs} job(s)")
    if todo:
        with multiprocessing.get_context("fork").Pool(jobs, maxtasksperchild=1) as pool:
            for result in pool.imap_unordered(_run_and_save, [(run, cell, out) for cell in todo]):
                print(json.dumps({k: result[k] for k in ("id", "train_time_s") if k in result}), flush=True)
    return [json.loads((out / f"{cell['id']}.json").read_text()) for cell in cells]


def _run_and_save(args: tuple[Callable, dict, Path]) -> dict[str, Any]:
    run, cell, out = args
    torch.set_num_threads(1)
    result = {**cell, **run(cell)}
    tmp = out / f"{cell['id']}.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out / f"{cell['id']}.json")
    return result


def mean_std(values: Iterable[float | None]) -> str:
    """``mean ± std`` over seeds (``n/a`` when missing)."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def write_section(name: str, text: str, path: Path = RESULTS) -> None:
    """Replace the section between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in RESULTS.md
    (appending it when absent), so each benchmark rewrites only its own tables."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    current = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    updated = pattern.sub(lambda _: block, current) if pattern.search(current) else current.rstrip() + "\n\n" + block + "\n"
    path.write_text(updated)
