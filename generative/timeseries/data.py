r"""Multivariate series, the forecasting protocols of the literature, their windows and their scaling.

A series is a float tensor ``(T, D)``: ``T`` time steps of ``D`` series. A :class:`ForecastDataset` is a series cut
by a protocol: the training range ``[0, train_end)`` and test windows ``[start, start + P)`` that lie after it, each
forecast from the series up to its start. :class:`Windows` adds a context length ``C``: training pairs (context,
future) taken from the training range only, and the test pairs.

Protocols (``P`` the prediction length, ``W`` the number of rolling test windows):

* :func:`exchange_rate_nips`: gluonts' ``exchange_rate_nips`` (D = 8, business-daily, P = 30, W = 5) from the LSTNet
  file ``exchange_rate.txt(.gz)`` (7588 x 8). gluonts builds its LSTNet sets in
  ``src/gluonts/dataset/repository/_lstnet.py`` (awslabs/gluonts): ``training_end = index[int(0.8 T)]``, training
  series ``ts[:training_end]`` (a pandas label slice, so row ``int(0.8 T)`` is included) and rolling test series
  ``ts[:training_end + (k + 1) P]``, ``k < W``. For ``T = 7588``: training rows 0..6070 (6071 steps), test windows
  ``[6071 + 30 k, 6101 + 30 k)``, the last ending at row 6221. gluonts' ``exchange_rate_nips`` itself is downloaded
  pre-cut (``_gp_copula_2019.py``: the GP-copula paper's files, P = 30, 5 rolling evaluations); its training series
  are exactly LSTNet rows 0..6070 (checked on a public copy of its ``train.json``: first values 0.7855, 0.7818,
  0.7867, the 8th series' last value 0.818424 = row 6070).
* :func:`load_gluonts`: gluonts' JSON-lines files as distributed (``train/`` and ``test/`` folders of
  ``*.json``/``*.json.gz`` lines with ``start`` and ``target``): :func:`electricity_nips` (D = 370), :func:`solar_nips`
  (137), :func:`traffic_nips` (963), all hourly with P = 24 and W = 7. They are pre-cut sub-ranges of the raw data,
  so they are read, never derived. The test file holds the W windows one after another, each as D lines (the order
  gluonts' ``MultivariateGrouper`` relies on); each test line is the series up to its window's end.
* :func:`macrodata`: the embedded default, statsmodels' quarterly US macro data (203 rows, its 12 economic columns
  without ``year`` and ``quarter``), P = 4, context 16, the last 5 non-overlapping windows held out (training rows
  0..182).

Missing values: refused. A series with NaN or infinite entries raises ``ValueError`` naming the rows; impute or cut
them before building a dataset (the nips data sets have none).
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray | Sequence

GLUONTS_HINT = ("gluonts writes them with `from gluonts.dataset.repository import get_dataset; "
                "get_dataset({name!r})` (on a machine with internet access) under ~/.gluonts/datasets/{name}/; "
                "copy that folder here and pass its path")


def validate_series(x: ArrayLike, name: str = "series", dim: int | None = None) -> Tensor:
    """``x`` as a float32 tensor ``(T, D)``; ``ValueError`` naming the problem otherwise.

    Rejected: non-numeric input, a shape other than ``(T, D)``, NaN or infinite entries (the message names the
    first bad rows: missing values are refused, not masked), ``D != dim`` when ``dim`` is given.
    """
    try:
        t = x.detach().cpu() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a numeric array of shape (T, D): {error}") from None
    if t.ndim != 2:
        hint = " (one series: x.reshape(-1, 1))" if t.ndim == 1 else ""
        raise ValueError(f"{name} must have shape (T, D) (time steps, series), got {tuple(t.shape)}{hint}")
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    bad = (~torch.isfinite(t.double())).any(dim=1).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise ValueError(f"{name} has NaN or infinite entries in {len(bad)} of {t.shape[0]} rows (rows {shown}); "
                         "missing values are not supported: impute or cut them first")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} has {t.shape[1]} series (columns) but {dim} were expected")
    return t.float()


@dataclass(frozen=True, eq=False)  # tensors inside: identity, not elementwise ==
class ForecastDataset:
    """A series ``(T, D)`` cut by a protocol: training rows ``[0, train_end)``, test windows
    ``[start, start + prediction_length)`` for each of ``test_starts``, all at or after ``train_end``;
    ``context_length`` is the protocol's context (``None``: the prediction length, TimeGrad's choice)."""

    series: Tensor
    train_end: int
    prediction_length: int
    test_starts: tuple[int, ...]
    name: str = "series"
    freq: str | None = None
    context_length: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "series", validate_series(self.series, self.name))
        object.__setattr__(self, "test_starts", tuple(int(s) for s in self.test_starts))
        T, P = self.series.shape[0], self.prediction_length
        if P < 1:
            raise ValueError(f"prediction_length must be positive, got {P}")
        if not 0 < self.train_end <= T:
            raise ValueError(f"train_end must lie in [1, {T}] for a series of {T} steps, got {self.train_end}")
        for k, start in enumerate(self.test_starts):
            if start < self.train_end or start + P > T:
                raise ValueError(f"test window {k} [{start}, {start + P}) must lie in [train_end = {self.train_end}, "
                                 f"{T}): a forecast window never overlaps the training range or leaves the series")

    @property
    def dim(self) -> int:
        """The number of series ``D``."""
        return self.series.shape[1]

    @property
    def train(self) -> Tensor:
        """The training range ``series[:train_end]``."""
        return self.series[: self.train_end]

    @property
    def default_context(self) -> int:
        """The protocol's context length: ``context_length``, or the prediction length where it has none."""
        return self.prediction_length if self.context_length is None else self.context_length

    def windows(self, context_length: int | None = None) -> Windows:
        """Training and test (context, future) pairs with contexts of ``context_length`` steps (default: the
        protocol's, :attr:`default_context`)."""
        return Windows(self, self.default_context if context_length is None else context_length)


class Windows:
    """(context, future) pairs of a :class:`ForecastDataset` with contexts of ``context_length`` steps.

    Training pairs start at every row ``s`` with ``C <= s <= train_end - P``: context ``series[s - C:s]`` and future
    ``series[s:s + P]`` both inside the training range. Test pair ``k``: the ``C`` rows before ``test_starts[k]``
    (they may include earlier test windows, as in rolling evaluation) and the window itself.
    """

    def __init__(self, dataset: ForecastDataset, context_length: int):
        C, P = int(context_length), dataset.prediction_length
        if C < 1:
            raise ValueError(f"context_length must be positive, got {context_length}")
        if C + P > dataset.train_end:  # test windows start at or after train_end, so their contexts fit too
            raise ValueError(f"the training range has {dataset.train_end} steps, shorter than context_length + "
                             f"prediction_length = {C} + {P}: no training window fits; shorten the context")
        self.dataset, self.context_length, self.prediction_length = dataset, C, P
        # (N, C + P, D) view: row i is series[i : i + C + P], the pair whose future starts at C + i.
        self._train_pairs = dataset.train.unfold(0, C + P, 1).transpose(1, 2)

    def __len__(self) -> int:
        """The number of training pairs, ``train_end - C - P + 1``."""
        return self._train_pairs.shape[0]

    def _split(self, pairs: Tensor) -> tuple[Tensor, Tensor]:
        return pairs[:, : self.context_length], pairs[:, self.context_length:]

    def training_pairs(self, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Contexts ``(n, C, D)`` and futures ``(n, P, D)`` of the training pairs ``index`` (default: all, as views)."""
        return self._split(self._train_pairs if index is None else self._train_pairs[index])

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """A batch of ``batch_size`` training pairs drawn uniformly with replacement."""
        return self.training_pairs(torch.randint(0, len(self), (batch_size,), generator=generator))

    def test_pairs(self) -> tuple[Tensor, Tensor]:
        """Contexts ``(W, C, D)`` and futures ``(W, P, D)`` of the test windows."""
        series, C, P = self.dataset.series, self.context_length, self.prediction_length
        starts = self.dataset.test_starts
        return (torch.stack([series[s - C: s] for s in starts]), torch.stack([series[s: s + P] for s in starts]))


class MeanScaler:
    r"""Per-series mean scaling ``x / s_d`` with ``s_d = mean_t |x_{t, d}|`` (0 replaced by 1).

    ``source="context"``: ``s`` from each context window, TimeGrad's scaling (pytorch-ts ``pts/modules/scaler.py``
    and gluonts ``src/gluonts/torch/scaler.py``, ``MeanScaler``: the mean absolute value over the observed context,
    no ``+ 1`` as in the DeepAR paper; they fall back to the batch's scale for an all-zero context, we to 1, so one
    window's scale never depends on the others in its batch). ``source="train"``: ``s`` from the training range
    (:meth:`fit`), the same for every window. Either way the window being forecast is never used.
    """

    def __init__(self, source: str = "context"):
        if source not in ("context", "train"):
            raise ValueError(f"source must be 'context' or 'train', got {source!r}")
        self.source = source
        self.train_scale: Tensor | None = None

    @staticmethod
    def mean_abs(x: Tensor, dim: int) -> Tensor:
        """``mean |x|`` along ``dim`` (kept), with zeros replaced by 1."""
        scale = x.abs().mean(dim=dim, keepdim=True)
        return torch.where(scale > 0, scale, torch.ones_like(scale))

    def fit(self, train: Tensor | Sequence[Tensor]) -> MeanScaler:
        """Store the training range's scale ``(D,)`` (one series ``(T, D)`` or several, pooled)."""
        series = [train] if isinstance(train, Tensor) else list(train)
        self.train_scale = self.mean_abs(torch.cat(series), dim=0).squeeze(0)
        return self

    def __call__(self, context: Tensor) -> Tensor:
        """The scale ``(B, 1, D)`` for contexts ``(B, C, D)``."""
        if self.source == "context":
            return self.mean_abs(context, dim=1)
        if self.train_scale is None:
            raise RuntimeError("MeanScaler(source='train') needs fit(training series) before use")
        return self.train_scale.to(context).expand(context.shape[0], 1, -1)


# ---------------------------------------------------------------------------------------------- protocols
def lstnet_split(series: ArrayLike, prediction_length: int, rolling_evaluations: int, name: str,
                 freq: str | None = None) -> ForecastDataset:
    """gluonts' cut of an LSTNet file (``_lstnet.py``): training rows ``0..int(0.8 T)`` (inclusive), then
    ``rolling_evaluations`` consecutive windows of ``prediction_length``; rows after the last window are dropped."""
    series = validate_series(series, name)
    train_end = int(series.shape[0] * 0.8) + 1
    starts = [train_end + k * prediction_length for k in range(rolling_evaluations)]
    return ForecastDataset(series[: starts[-1] + prediction_length], train_end, prediction_length, tuple(starts), name,
                           freq)


def exchange_rate_nips(path: str | os.PathLike) -> ForecastDataset:
    """gluonts' ``exchange_rate_nips`` protocol from the LSTNet file ``exchange_rate.txt(.gz)`` (7588 x 8,
    comma-separated): training rows 0..6070, test windows ``[6071 + 30 k, 6101 + 30 k)`` for ``k < 5``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}: exchange_rate_nips is built from LSTNet's exchange_rate.txt.gz "
                                "(github.com/laiguokun/multivariate-time-series-data, folder exchange_rate)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        values = np.loadtxt(f, delimiter=",", ndmin=2)
    if values.shape != (7588, 8):
        raise ValueError(f"{path} has shape {values.shape}; LSTNet's exchange_rate file is 7588 x 8")
    return lstnet_split(values, prediction_length=30, rolling_evaluations=5, name="exchange_rate_nips", freq="B")


def macrodata() -> ForecastDataset:
    """statsmodels' ``macrodata`` (1959Q1-2009Q3, 203 quarters) without ``year`` and ``quarter``: 12 series,
    prediction length 4, the last 5 non-overlapping windows held out (training rows 0..182)."""
    try:
        from statsmodels.datasets import macrodata as source
    except ImportError:
        raise ImportError("the macrodata set ships with statsmodels: pip install 'sde-control[data]'") from None
    frame = source.load_pandas().data.drop(columns=["year", "quarter"])
    P, W = 4, 5
    T = len(frame)
    starts = tuple(T - (W - k) * P for k in range(W))
    return ForecastDataset(torch.as_tensor(frame.to_numpy(dtype=np.float64)), starts[0], P, starts, "macrodata", "Q",
                           context_length=16)


def _read_json_lines(folder: Path) -> list[dict]:
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".json", ".json.gz")) and p.name[0] not in "._")
    if not files:
        raise FileNotFoundError(f"no *.json or *.json.gz files in {folder}")
    entries = []
    for file in files:
        with (gzip.open(file, "rt") if file.name.endswith(".gz") else open(file)) as f:
            entries.extend(json.loads(line) for line in f if line.strip())
    return entries


def _read_metadata(path: Path) -> dict:
    for candidate in (path / "metadata.json", path / "metadata" / "metadata.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return {}


def _stack(entries: list[dict], what: str) -> tuple[np.ndarray, str]:
    """One block of D univariate entries as ``(L, D)`` with their common start."""
    lengths = {len(e["target"]) for e in entries}
    starts = {str(e["start"]) for e in entries}
    if len(lengths) != 1 or len(starts) != 1:
        raise ValueError(f"the series of {what} differ in start or length ({sorted(starts)[:3]}, "
                         f"{sorted(lengths)[:3]}); only aligned multivariate data sets are supported")
    return np.asarray([e["target"] for e in entries], dtype=np.float64).T, starts.pop()


def load_gluonts(path: str | os.PathLike, prediction_length: int | None = None, name: str | None = None
                 ) -> ForecastDataset:
    """A multivariate data set in gluonts' distributed format, from local files only.

    ``path`` holds ``train/`` and ``test/`` with JSON lines (``*.json`` or ``*.json.gz``) of univariate entries
    ``{"start": ..., "target": [...]}``: ``D`` training entries (the training range of each series) and ``W * D``
    test entries, window after window, each the series up to its window's end. ``prediction_length`` defaults to
    the ``metadata.json`` beside them. The test entries must extend the training entries (checked): the series is
    the longest test block, ``train_end`` the training length and window ``k`` ends where test block ``k`` ends.
    """
    path = Path(path)
    name = name or path.name
    if not (path / "train").is_dir() or not (path / "test").is_dir():
        raise FileNotFoundError(f"no gluonts data set at {path}: expected {path}/train/data.json(.gz) and "
                                f"{path}/test/data.json(.gz); " + GLUONTS_HINT.format(name=name))
    metadata = _read_metadata(path)
    if prediction_length is None:
        if "prediction_length" not in metadata:
            raise ValueError(f"{path} has no metadata.json with a prediction_length: pass prediction_length")
        prediction_length = int(metadata["prediction_length"])
    train_entries, test_entries = _read_json_lines(path / "train"), _read_json_lines(path / "test")
    D = len(train_entries)
    if len(test_entries) % D:
        raise ValueError(f"{path}: {len(test_entries)} test entries are not a whole number of windows of the "
                         f"{D} training series")
    train, start = _stack(train_entries, f"{path}/train")
    blocks = [_stack(test_entries[k * D: (k + 1) * D], f"test window {k}") for k in range(len(test_entries) // D)]
    series = max((b for b, _ in blocks), key=len)
    for k, (block, block_start) in enumerate([(train, start)] + blocks):
        what = "the training series" if k == 0 else f"test window {k - 1}"
        if block_start != start or len(block) > len(series) or not np.array_equal(block, series[: len(block)],
                                                                                  equal_nan=True):
            raise ValueError(f"{path}: {what} is not a prefix of the longest test series; the files must hold "
                             "one series cut at several ends")
    starts = tuple(len(block) - prediction_length for block, _ in blocks)
    return ForecastDataset(torch.as_tensor(series), len(train), prediction_length, starts, name,
                           metadata.get("freq"))


def _nips(path: str | os.PathLike, name: str, dim: int) -> ForecastDataset:
    dataset = load_gluonts(path, prediction_length=24, name=name)
    if dataset.dim != dim or len(dataset.test_starts) != 7:
        raise ValueError(f"{path} has {dataset.dim} series and {len(dataset.test_starts)} test windows; "
                         f"{name} has {dim} and 7")
    return dataset


def electricity_nips(path: str | os.PathLike) -> ForecastDataset:
    """gluonts' ``electricity_nips`` (370 hourly series, P = 24, 7 windows) from its local folder."""
    return _nips(path, "electricity_nips", 370)


def solar_nips(path: str | os.PathLike) -> ForecastDataset:
    """gluonts' ``solar_nips`` (137 hourly series, P = 24, 7 windows) from its local folder."""
    return _nips(path, "solar_nips", 137)


def traffic_nips(path: str | os.PathLike) -> ForecastDataset:
    """gluonts' ``traffic_nips`` (963 hourly series, P = 24, 7 windows) from its local folder."""
    return _nips(path, "traffic_nips", 963)
