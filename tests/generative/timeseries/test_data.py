"""The protocols' cutting rules, the windows, the scaling (never from the forecast window) and bad input."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sde_control.generative.timeseries import (
    ForecastDataset,
    MeanScaler,
    electricity_nips,
    exchange_rate_nips,
    load_gluonts,
    macrodata,
    validate_series,
)
from sde_control.generative.timeseries.data import lstnet_split

EXCHANGE = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "exchange_rate.txt.gz"


def row_index_series(T, D=2):
    """Entry (t, d) = t + d / 10: every value names its row."""
    return torch.arange(T, dtype=torch.float64)[:, None] + torch.arange(D) / 10


def test_lstnet_cut_of_a_7588_step_series_is_the_exchange_rate_nips_protocol():
    dataset = lstnet_split(row_index_series(7588), prediction_length=30, rolling_evaluations=5, name="x")
    assert dataset.train_end == 6071  # rows 0..6070: gluonts' training_end = index[int(0.8 * 7588)], included
    assert dataset.test_starts == (6071, 6101, 6131, 6161, 6191)
    assert dataset.series.shape[0] == 6221  # the last window is [6191, 6221)
    assert dataset.default_context == 30  # the prediction length, TimeGrad's context
    context, future = dataset.windows(30).test_pairs()
    for k, start in enumerate(dataset.test_starts):
        assert future[k, :, 0].tolist() == list(range(start, start + 30))
        assert context[k, :, 0].tolist() == list(range(start - 30, start))


@pytest.mark.skipif(not EXCHANGE.is_file(), reason=f"LSTNet's exchange_rate.txt.gz not found at {EXCHANGE}")
def test_exchange_rate_nips_from_the_lstnet_file():
    dataset = exchange_rate_nips(EXCHANGE)
    raw = torch.as_tensor(np.loadtxt(gzip.open(EXCHANGE, "rt"), delimiter=","), dtype=torch.float32)
    assert (dataset.dim, dataset.prediction_length, dataset.train_end) == (8, 30, 6071)
    assert dataset.test_starts == (6071, 6101, 6131, 6161, 6191)
    assert torch.equal(dataset.series, raw[:6221])
    # gluonts' distributed exchange_rate_nips/train: starts 0.7855, 0.7818, 0.7867; the 8th series ends 0.818424.
    assert dataset.train[:3, 0].tolist() == pytest.approx([0.7855, 0.7818, 0.7867])
    assert float(dataset.train[-1, 7]) == pytest.approx(0.818424)
    context, future = dataset.windows(30).test_pairs()
    assert torch.equal(future[4], raw[6191:6221]) and torch.equal(context[0], raw[6041:6071])


def test_macrodata_protocol():
    dataset = macrodata()
    assert dataset.series.shape == (203, 12) and dataset.prediction_length == 4
    assert dataset.train_end == 183 and dataset.test_starts == (183, 187, 191, 195, 199)
    context, future = dataset.windows().test_pairs()  # the protocol's context: 16 quarters
    assert context.shape == (5, 16, 12) and future.shape == (5, 4, 12)
    assert torch.equal(future[-1], dataset.series[199:203]) and torch.equal(context[0], dataset.series[167:183])


def test_training_pairs_come_from_the_training_range_only():
    dataset = ForecastDataset(row_index_series(100), train_end=80, prediction_length=5, test_starts=(80, 85, 90))
    windows = dataset.windows(10)
    assert len(windows) == 80 - 10 - 5 + 1
    context, future = windows.training_pairs()
    assert future[:, :, 0].max() == 79 and context[:, :, 0].min() == 0
    assert torch.equal(future[:, 0, 0], torch.arange(10, 76, dtype=torch.float32))  # every future start s in [C, 75]
    assert torch.equal(context[:, -1, 0] + 1, future[:, 0, 0])  # the context ends where its future starts
    context, future = windows.sample(256, generator=torch.Generator().manual_seed(0))
    assert context.shape == (256, 10, 2) and future.shape == (256, 5, 2) and future.max() < 80


def test_scaling_never_reads_the_window_being_forecast():
    series = torch.rand(120, 3, generator=torch.Generator().manual_seed(0)) + 1
    changed = series.clone()
    changed[100:110] = 1e6  # the last test window
    changed_all = series.clone()
    changed_all[90:] = -1e6  # every test window
    cut = dict(train_end=90, prediction_length=10, test_starts=(90, 100))
    contexts = {name: ForecastDataset(s, **cut).windows(20).test_pairs()[0]
                for name, s in (("original", series), ("last window", changed))}
    context_scaler = MeanScaler("context")
    assert torch.equal(context_scaler(contexts["original"]), context_scaler(contexts["last window"]))
    assert torch.allclose(context_scaler(contexts["original"]), contexts["original"].abs().mean(1, keepdim=True))
    train_scale = MeanScaler("train").fit(ForecastDataset(changed_all, **cut).train).train_scale
    assert torch.allclose(train_scale, series[:90].abs().mean(0))


def test_mean_scaler_replaces_a_zero_scale_by_one_and_needs_fit_for_the_training_source():
    context = torch.zeros(2, 5, 3)
    context[0, :, 1] = -2.0
    assert MeanScaler()(context)[:, 0].tolist() == [[1.0, 2.0, 1.0], [1.0, 1.0, 1.0]]
    with pytest.raises(RuntimeError, match="fit"):
        MeanScaler("train")(context)
    with pytest.raises(ValueError, match="source"):
        MeanScaler("window")


def write_lines(path, entries, compress=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(e) + "\n" for e in entries)
    if compress:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def gluonts_folder(root, full, train_end, P, W, nan_at=None):
    """gluonts' layout: train/data.json.gz with D entries, test/data.json with W blocks of D entries, metadata.json."""
    D = full.shape[1]
    ends = [train_end + (k + 1) * P for k in range(W)]
    values = full.tolist()
    if nan_at is not None:
        values[nan_at][0] = float("nan")
    column = lambda d, end: {"start": "2014-01-01 00:00:00", "target": [row[d] for row in values[:end]]}  # noqa: E731
    write_lines(root / "train" / "data.json.gz", [column(d, train_end) for d in range(D)], compress=True)
    write_lines(root / "test" / "data.json", [column(d, end) for end in ends for d in range(D)])
    (root / "metadata.json").write_text(json.dumps({"freq": "H", "prediction_length": P}))
    return root


def test_gluonts_json_lines_give_the_series_and_the_rolling_windows(tmp_path):
    full = np.arange(60 * 3, dtype=np.float64).reshape(60, 3)
    dataset = load_gluonts(gluonts_folder(tmp_path / "toy_nips", full, train_end=40, P=4, W=3))
    assert dataset.name == "toy_nips" and dataset.freq == "H" and dataset.prediction_length == 4
    assert dataset.train_end == 40 and dataset.test_starts == (40, 44, 48)
    assert torch.equal(dataset.series, torch.as_tensor(full[:52], dtype=torch.float32))


def test_gluonts_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="get_dataset"):
        electricity_nips(tmp_path / "electricity_nips")
    full = np.random.default_rng(0).normal(size=(70, 3))
    with pytest.raises(ValueError, match="370 and 7"):
        electricity_nips(gluonts_folder(tmp_path / "small", full, train_end=40, P=24, W=1))
    with pytest.raises(ValueError, match=r"rows 45\)"):
        load_gluonts(gluonts_folder(tmp_path / "nan", full, train_end=40, P=4, W=3, nan_at=45))
    broken = gluonts_folder(tmp_path / "broken", full, train_end=40, P=4, W=2)
    other = np.random.default_rng(1).normal(size=(70, 3))
    write_lines(broken / "train" / "data.json.gz",
                [{"start": "2014-01-01 00:00:00", "target": other[:40, d].tolist()} for d in range(3)], compress=True)
    with pytest.raises(ValueError, match="not a prefix"):
        load_gluonts(broken)


def test_bad_series_and_protocols_fail_with_clear_messages():
    series = torch.randn(50, 2)
    series[[7, 30], 1] = float("nan")
    with pytest.raises(ValueError, match=r"2 of 50 rows \(rows 7, 30\)"):
        validate_series(series)
    with pytest.raises(ValueError, match="reshape"):
        validate_series(torch.randn(50))
    with pytest.raises(ValueError, match="3 series .* 2 were expected"):
        validate_series(torch.randn(10, 3), dim=2)
    with pytest.raises(ValueError, match="never overlaps the training range"):
        ForecastDataset(torch.randn(50, 2), train_end=40, prediction_length=5, test_starts=(38,))
    with pytest.raises(ValueError, match="leaves the series"):
        ForecastDataset(torch.randn(50, 2), train_end=40, prediction_length=5, test_starts=(48,))
    dataset = ForecastDataset(torch.randn(50, 2), train_end=40, prediction_length=5, test_starts=(40, 45))
    with pytest.raises(ValueError, match="shorter than context_length"):
        dataset.windows(36)  # 36 + 5 > 40 training steps
    with pytest.raises(ValueError, match="shorter than context_length"):
        dataset.windows(60)  # a context longer than the whole series
