"""Fan charts: a PNG per window, and clear errors on mismatched shapes."""

import pytest
import torch

from sde_control.generative.timeseries import plot_fan_chart


def test_fan_chart_writes_a_png(tmp_path):
    generator = torch.Generator().manual_seed(0)
    samples, target = torch.randn(100, 6, 3, generator=generator).cumsum(1), torch.randn(6, 3, generator=generator)
    path = plot_fan_chart(samples, target, tmp_path / "plots" / "fan.png", context=torch.randn(10, 3),
                          names=["a", "b", "c"], title="window 0")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_fan_chart_rejects_mismatched_shapes(tmp_path):
    samples = torch.randn(20, 6, 3)
    with pytest.raises(ValueError, match=r"\(S, P, D\)"):
        plot_fan_chart(samples, torch.randn(5, 3), tmp_path / "x.png")
    with pytest.raises(ValueError, match="context"):
        plot_fan_chart(samples, torch.randn(6, 3), tmp_path / "x.png", context=torch.randn(10, 2))
    with pytest.raises(ValueError, match="indices"):
        plot_fan_chart(samples, torch.randn(6, 3), tmp_path / "x.png", series=[3])
