r"""Multivariate diffusion models with a learned diffusion (Singhal, Goldstein, Ranganath, ICLR 2023, "Where to
diffuse, how to diffuse, and how to get back").

The forward process is an auxiliary-variable diffusion on the data and ``aux`` auxiliary blocks per coordinate
(:class:`~sde_control.sdes.AuxiliaryVariableSDE`),

.. math::  du = -\beta(t) (Q + D) u\, dt + \sqrt{2 \beta(t)}\, D^{1/2} dW, \qquad Q = W - W^T, \quad
           D = \mathrm{diag}(\mathrm{softplus}(\delta) + 10^{-3}),

which keeps ``N(0, I)`` stationary and is Hurwitz for every ``W``, ``delta`` (so ``N(0, I)`` is its limit and the
prior). ``W`` and ``delta`` are trained jointly with the score network by the ELBO
(:mod:`~sde_control.generative.likelihood`: the bound is differentiable in the process through its transitions,
the hybrid noise parameterisation of the score and the prior term), with the time of its diffusion term drawn from
the importance density of the current process, rebuilt every ``proposal_every`` steps. The score network and the
process are one module with one Adam optimiser and one EMA; the averaged process is the one the score is evaluated,
sampled and scored with. Settings from the paper's reference code (``configs/mnist/learned_2.yaml``): ``beta`` from
0.1 to 10 over ``T = 1``, auxiliary variables started from ``N(0, 0.01 I)``, ``t_min = 10^{-3}``, the ``dsm_elbo``
objective with importance weights.

The fixed processes of the paper (VP, CLD, ALDA, MALDA) are :class:`~sde_control.generative.ScoreModel` with that
``sde``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from sde_control.sdes import AuxiliaryVariableSDE, LinearSDE
from sde_control.training import TrainConfig

from .score_model import ScoreModel, ScoreTraining


@dataclass
class MDMTraining(ScoreTraining):
    """:class:`~sde_control.generative.score_model.ScoreTraining` with the ELBO objective, the only one that trains
    the diffusion."""

    objective: str | None = "elbo"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in (None, "elbo"):
            raise ValueError(f"MDM learns its diffusion by the ELBO: objective must be 'elbo', got {self.objective!r} "
                             f"(denoising score matching gives the process no gradient; for a fixed process use "
                             f"ScoreModel(dim, sde=...))")


class MDM(ScoreModel):
    """A score model whose auxiliary-variable diffusion is learned with it (module docstring).

    Args:
        dim: data dimension ``d``; the state has ``(1 + aux) d`` channels.
        aux: auxiliary blocks per data coordinate (the paper's ``n_vars - 1``).
        beta_min, beta_max, T: the schedule ``beta(t)``.
        init_aux_var: variance of the auxiliary variables' initial law.
        network, width, depth, t_min, ema_decay: as :class:`~sde_control.generative.ScoreModel`'s.
    """

    training_config_class: ClassVar[type[TrainConfig]] = MDMTraining
    default_objective: ClassVar[str] = "elbo"

    def __init__(self, dim: int, aux: int = 1, *, beta_min: float = 0.1, beta_max: float = 10.0, T: float = 1.0,
                 init_aux_var: float = 0.01, network: nn.Module | None = None, width: int = 128, depth: int = 4,
                 t_min: float = 1e-3, ema_decay: float | None = 0.99):
        if not isinstance(aux, int) or isinstance(aux, bool) or aux < 1:
            raise ValueError(f"aux must be a positive int (auxiliary blocks per coordinate), got {aux!r}")
        sde = AuxiliaryVariableSDE(1 + aux, beta_min=beta_min, beta_max=beta_max, T=T, init_aux_var=init_aux_var)
        self._setup(dim, network, width, depth, t_min, ema_decay, learned_sde=sde)

    @property
    def sde(self) -> LinearSDE:
        """The averaged learned process: scores, samples and bounds use it."""
        return self.trainer.averaged["sde"]

    @property
    def _trained_sde(self) -> LinearSDE:
        return self.trainer.module["sde"]

    @property
    def _averaged_network(self) -> nn.Module:
        return self.trainer.averaged["network"]
