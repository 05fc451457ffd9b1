"""Sample-quality measures and plots of the generative side."""

import math

import pytest
import torch

from sde_control.generative.evaluation import histogram_distance, straightness
from sde_control.generative.plotting import plot_trajectories

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

def test_histogram_distance_is_a_total_variation():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20_000, 2, generator=g), torch.randn(20_000, 2, generator=g)
    assert histogram_distance(x, x) == 0.0
    assert histogram_distance(x, y, bins=10) < 0.03  # two samples of one law: only sampling noise
    assert histogram_distance(x + 100.0, y) == pytest.approx(1.0)  # disjoint: every model point falls in the outside cell
    half = torch.cat([x[:10_000], x[:10_000] + 100.0])
    assert histogram_distance(half, x) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="bins"):
        histogram_distance(x, y, bins=0)


def test_straightness_of_lines_and_bends():
    s = torch.linspace(0, 1, 11)[:, None, None]
    line = s * torch.tensor([[3.0, 4.0]])  # (11, 1, 2)
    assert straightness(line) == pytest.approx(1.0)
    corner = torch.cat([s * torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]) + s[1:] * torch.tensor([[0.0, 1.0]])])
    assert straightness(corner) == pytest.approx(math.sqrt(2) / 2)
    assert straightness(torch.cat([line, corner[:11]], dim=1)) == pytest.approx((1 + 1) / 2)
    with pytest.raises(ValueError, match="paths must have shape"):
        straightness(torch.zeros(1, 3, 2))


def test_plot_trajectories(tmp_path):
    torch.manual_seed(0)
    paths = {"A": torch.randn(6, 100, 2).cumsum(0), "B": torch.randn(6, 100, 2)}
    path = plot_trajectories(paths, tmp_path / "paths.png", reference=torch.randn(300, 2), n_paths=10, title="t")
    assert path.read_bytes().startswith(PNG_SIGNATURE) and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="must have shape"):
        plot_trajectories({"C": torch.randn(6, 100, 3)}, tmp_path / "bad.png")
