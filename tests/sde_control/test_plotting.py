import pytest
import torch

from sde_control.plotting import plot_samples
from sde_control.targets import Funnel, GaussianMixture

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_2d_target(tmp_path):
    torch.manual_seed(0)
    target = GaussianMixture()
    path = plot_samples(target, target.sample(500) * 1.1, tmp_path / "gmm.png", title="GMM")
    assert path == tmp_path / "gmm.png"
    assert path.read_bytes().startswith(PNG_SIGNATURE) and path.stat().st_size > 1000


def test_plot_10d_target_with_and_without_exact_samples(tmp_path):
    torch.manual_seed(0)
    target = Funnel(dim=10)
    samples = target.sample(500)
    for name, exact in (("given.png", target.sample(500)), ("drawn.png", None)):
        path = plot_samples(target, samples, str(tmp_path / "sub" / name), exact=exact)
        assert path.read_bytes().startswith(PNG_SIGNATURE) and path.stat().st_size > 1000
