"""The augmented state: its layout, the law of u_0, and the refusal of covariances singular to float64."""

import pytest
import torch

from sde_control.generative.augmented import augmented_gaussian, conditional_cholesky, embed, first_noised_block
from sde_control.sdes import ALDA, CLD, MALDA, VP, AuxiliaryVariableSDE

f64 = dict(dtype=torch.float64)
MU = torch.tensor([0.5, -1.0], **f64)
COV = torch.tensor([[1.5, 0.3], [0.3, 0.5]], **f64)


def learned_mdm():
    sde = AuxiliaryVariableSDE(2, beta_min=0.1, beta_max=10.0)
    with torch.no_grad():
        sde.W.copy_(torch.tensor([[0.3, -0.8], [0.1, 0.2]], **f64))
        sde.d.copy_(torch.tensor([-0.5, 0.4], **f64))
    return sde


def test_layout_and_the_initial_law():
    x = MU + torch.randn(5, 2, **f64)
    # Data first, then the auxiliary blocks of d channels; u_0's law.
    torch.testing.assert_close(embed(x, CLD()), torch.cat([x, torch.zeros(5, 2, **f64)], 1))
    torch.testing.assert_close(embed(x, VP()), x)
    m0, C0 = augmented_gaussian(MALDA(), MU, COV)
    torch.testing.assert_close(m0, torch.cat([MU, torch.zeros(4, **f64)]))
    torch.testing.assert_close(C0, torch.block_diag(COV, 0.01 * torch.eye(4, **f64)))
    assert [first_noised_block(s) for s in (VP(), CLD(), MALDA(), ALDA(), learned_mdm())] == [0, 1, 1, 2, 0]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="singular to float64"):
        conditional_cholesky(ALDA(), torch.tensor([1e-3, 0.5], **f64))
    conditional_cholesky(ALDA(), torch.tensor(0.05, **f64))  # fine from t ~ 0.03

    class Odd(AuxiliaryVariableSDE):
        aux = property(lambda self: 1, lambda self, value: None)

    with pytest.raises(ValueError, match="K = 1 \\+ aux"):
        embed(torch.zeros(3, 2), Odd(3))
