"""MDM: the learned auxiliary-variable diffusion is trained with the score by the ELBO, is the one the model samples
and scores with, and survives a checkpoint."""

import pytest
import torch

from sde_control.generative import MDM, data
from sde_control.sdes import AuxiliaryVariableSDE, check_hurwitz


def test_construction():
    model = MDM(3, aux=2, width=16, depth=2)
    assert isinstance(model.sde, AuxiliaryVariableSDE) and model.sde.K == 3 and model.state_dim == 9
    assert model.sde.schedule.beta_0 == 0.1 and model.sde.schedule.beta_T == 10.0  # the MDM configs' schedule
    torch.testing.assert_close(model.sde.prior_covariance(), torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="aux must be a positive int"):
        MDM(2, aux=0)
    with pytest.raises(ValueError, match="objective must be 'elbo'"):
        model.fit(torch.randn(100, 3), iterations=1, objective="dsm")


def test_training_learns_the_diffusion_jointly_with_the_score(tmp_path):
    """The ELBO reaches Q and D: after a short run they have left their initial values (W = 0, D = I), the drift
    stays Hurwitz, the bound has fallen, and the averaged process is the one sampled and saved."""
    torch.manual_seed(0)
    x = data.moons(4000)
    model = MDM(2, width=32, depth=3)
    history = model.fit(x, iterations=200, batch_size=256, lr=3e-3, progress=False, proposal_every=50,
                        checkpoint=tmp_path / "mdm.pt")
    live = model.trainer.module["sde"]
    assert float(live.W.detach().abs().max()) > 1e-3  # Q = W - W^T moved off 0
    assert float((live.matrices()[1].detach().diagonal() / 2 - 1).abs().max()) > 1e-3  # D moved off I
    check_hurwitz(model.sde.matrices()[0])
    first, last = (sum(r["loss"] for r in part) / len(part) for part in (history[:20], history[-20:]))
    assert last < first - 1.0, (first, last)  # nats per dimension
    # The averaged process is the model's: samples and bounds use it, and it is what the checkpoint restores.
    assert model.sde is model.trainer.averaged["sde"] and model.sde is not live
    loaded = MDM.load(tmp_path / "mdm.pt")
    torch.testing.assert_close(loaded.sde.matrices()[0], model.sde.matrices()[0])
    torch.testing.assert_close(loaded.sample(50, steps=5, method="gddim", seed=0),
                               model.sample(50, steps=5, method="gddim", seed=0))
    assert loaded.bits_per_dim(x[:200], seed=0).mean == pytest.approx(model.bits_per_dim(x[:200], seed=0).mean)
