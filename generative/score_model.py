"""A score-based diffusion model on any fixed linear forward SDE, auxiliary variables included: fit by (hybrid)
denoising score matching or by the ELBO, sample by Euler-Maruyama, the probability-flow ODE or gDDIM, score its
likelihood bound in bits per dimension.

>>> from sde_control.generative import data, ScoreModel
>>> from sde_control.sdes import CLD
>>> x = data.spiral(20_000)
>>> model = ScoreModel(dim=2, sde=CLD())           # 2 data coordinates plus their 2 velocities
>>> model.fit(x, iterations=10_000)
>>> samples = model.sample(5000, steps=20, method="gddim")
>>> model.bits_per_dim(x[:2000]).mean
>>> model.save("spiral.pt"); model = ScoreModel.load("spiral.pt")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from sde_control.controls import ControlMLP
from sde_control.sdes import VP, LinearSDE, blockwise
from sde_control.training import LossFn, TrainConfig, Trainer

from .augmented import augmented_gaussian, conditional_cholesky, state_dim
from .data import validate
from .diagonal import DiagonalLinearSDE, exponential_sample
from .gddim import gddim_sample
from .likelihood import TimeProposal, negative_elbo
from .model import BatchSource, GenerativeModel, GenerativeTraining
from .sampling import CountedScore, probability_flow, reverse_paths, solve_ode_adaptive
from .score_matching import _full, dsm_loss, gaussian_marginal, network_score

__all__ = ["OBJECTIVES", "BatchSource", "ScoreAndProcess", "ScoreModel", "ScoreTraining"]

OBJECTIVES = ("dsm", "elbo")


class ScoreAndProcess(nn.ModuleDict):
    """A score network and the learned forward process it is trained with, as one module (one optimiser, one EMA,
    one ``DistributedDataParallel`` wrapper): ``module["network"]``, ``module["sde"]``. Calling it calls the network,
    so that under ``torch.distributed`` every network evaluation goes through the wrapper's forward, and the
    gradients of the process (which enters the loss outside the network) are averaged over the ranks with the
    network's."""

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self["network"](*args, **kwargs)


@dataclass
class ScoreTraining(GenerativeTraining):
    """A score model's training run (:class:`~sde_control.generative.model.GenerativeTraining`) and

    Args:
        objective: ``"dsm"``: (hybrid) denoising score matching, ``t`` uniform, weighting ``lambda(t) = S_t``
            (:func:`~sde_control.generative.score_matching.dsm_loss`); ``"elbo"``: the bound on ``-log p(x)`` per
            dimension with importance-sampled time (:func:`~sde_control.generative.likelihood.negative_elbo`), the
            MDM paper's ``dsm_elbo`` with ``imp_weight_train``: likelihood-weighted score matching. ``None``: the
            model's own (``default_objective``: DSM for a fixed process, the ELBO for :class:`~.mdm.MDM`).
        proposal_every: with ``"elbo"``, steps between rebuilds of the time proposal from the current forward
            process (it only changes when the process is learned).
    """

    objective: str | None = None
    proposal_every: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not isinstance(self.proposal_every, int) or self.proposal_every < 1:
            raise ValueError(f"proposal_every must be a positive int, got {self.proposal_every!r}")


class ScoreModel(GenerativeModel):
    """A noise-prediction network on the (augmented) state of a linear forward SDE.

    Args:
        dim: data dimension ``d``. With an SDE that has auxiliary variables (``sde.aux > 0``: CLD's velocity, the
            MDM diffusions' blocks) the state has ``(1 + aux) d`` channels, the data first: ``ScoreModel(2, CLD())``
            models 2 data coordinates and their 2 velocities. Without, ``sde.K`` must divide ``d`` (``K = 1``:
            scalar; ``K = d``: a full matrix).
        sde: the forward (noising) process, a :class:`~sde_control.sdes.LinearSDE`. Default: ``VP(0.1, 10, T=1)``.
        network: noise-prediction network ``(u (n, D), t (n,) or ()) -> (n, D)``, optionally taking a condition as
            third argument; default a Fourier-feature :class:`~sde_control.controls.ControlMLP` of ``width`` and
            ``depth`` (last layer zero, so the initial score is 0).
        t_min: the smallest noising time trained on, sampled to and decoded at.
        ema_decay: of the network weights' average, which scores and samples use.

    Generation starts from the process's own prior ``N(0, P kron I)``
    (:meth:`~sde_control.sdes.LinearSDE.prior_covariance`: its stationary law, or its law at ``T`` from 0, e.g.
    ``N(0, sigma_max^2 I)`` for VE) on the whole state, and returns the data block.
    """

    training_config_class: ClassVar[type[TrainConfig]] = ScoreTraining
    default_objective: ClassVar[str] = "dsm"

    def __init__(self, dim: int, sde: LinearSDE | None = None, network: nn.Module | None = None, *,
                 width: int = 128, depth: int = 4, t_min: float = 1e-3, ema_decay: float | None = 0.99):
        self._sde = VP(0.1, 10.0, 1.0) if sde is None else sde
        self._setup(dim, network, width, depth, t_min, ema_decay)

    def _setup(self, dim: int, network: nn.Module | None, width: int, depth: int, t_min: float,
               ema_decay: float | None, learned_sde: nn.Module | None = None) -> None:
        """Build the network and the trainer; a ``learned_sde`` is trained with the network (one module, one EMA)."""
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        sde = self.sde if learned_sde is None else learned_sde
        self.state_dim = state_dim(sde, dim)
        if sde.aux and 0 < t_min < sde.T:
            conditional_cholesky(sde, torch.tensor(t_min, dtype=torch.float64))  # refuses a t_min that ALDA cannot
        self.network = ControlMLP(self.state_dim, width, depth) if network is None else network
        module = self.network if learned_sde is None else ScoreAndProcess({"network": self.network, "sde": learned_sde})
        self._init_model(dim, t_min, sde.T, Trainer(module, ema_decay=ema_decay))

    @property
    def sde(self) -> LinearSDE:
        """The forward process, used both to train the score and to sample (for a learned one: its average)."""
        return self._sde

    @property
    def _trained_sde(self) -> LinearSDE:
        """The forward process the loss differentiates (a learned one's live parameters)."""
        return self.sde

    @property
    def _averaged_network(self) -> nn.Module:
        return self.trainer.averaged

    @property
    def _training_network(self) -> nn.Module:
        """The network a training loss calls: under ``torch.distributed`` the wrapper that averages gradients."""
        return self.trainer.training_module

    # ------------------------------------------------------------------ training
    def loss(self, x0: Tensor, condition: Tensor | None = None, *, network: nn.Module | None = None,
             objective: str = "dsm", proposal: TimeProposal | None = None, t: Tensor | None = None,
             eps: Tensor | None = None) -> Tensor:
        """The training loss on the batch ``x0`` (n, dim) for ``network`` (default: the one being trained), given
        ``condition`` where the model is conditional: the mean DSM loss (``t`` and ``eps`` may be given instead of
        drawn), or (``objective="elbo"``) the mean bound on ``-log p(x)`` in nats per dimension with the time
        ``proposal`` (built from the process when not given)."""
        network = self.network if network is None else network
        if objective == "dsm":
            return dsm_loss(network, self._trained_sde, x0, self.t_min, condition, t=t, eps=eps).mean()
        if objective != "elbo":
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        score = network_score(network, self._trained_sde, condition)
        return negative_elbo(score, self._trained_sde, x0, self.t_min, proposal).mean() / self.dim

    def objective_of(self, config: TrainConfig) -> str:
        """The objective ``config`` trains with: its ``objective``, or the model's own (``default_objective``)."""
        return getattr(config, "objective", None) or self.default_objective

    def training_objective(self, config: TrainConfig) -> Callable[[int, Tensor, Tensor | None], Tensor]:
        """The loss of ``config.objective`` as a function ``(iteration, x0, condition)`` of the step and its batch,
        calling the network being trained (:attr:`_training_network`); the ELBO's time proposal is rebuilt every
        ``config.proposal_every`` steps from the process being trained. The batch loss of :meth:`fit` and the image
        trainer (:mod:`~sde_control.generative.images`) both draw their batches and call it."""
        objective = self.objective_of(config)
        every = getattr(config, "proposal_every", 100)
        proposal: TimeProposal | None = None
        network = self._training_network

        def loss(iteration: int, x0: Tensor, condition: Tensor | None = None) -> Tensor:
            nonlocal proposal
            if objective == "elbo" and (proposal is None or iteration % every == 0):
                proposal = TimeProposal(self._trained_sde, self.t_min)
            return self.loss(x0, condition, network=network, objective=objective, proposal=proposal)

        return loss

    def _batch_loss(self, data: Tensor | BatchSource, config: TrainConfig) -> LossFn:
        """:meth:`training_objective` on a fresh batch per step."""
        loss = self.training_objective(config)

        def step(iteration: int) -> tuple[Tensor, dict[str, float]]:
            x0, condition = self._draw(data, config.batch_size)
            return loss(iteration, x0, condition), {}

        return step

    # ------------------------------------------------------------------ inference
    def score(self, x: Tensor, t: Tensor, condition: Tensor | None = None) -> Tensor:
        """``s(u, t) = -L_t^{-T} eps_hat(u, t)`` of the averaged (EMA) network on states ``u`` (n, D) at noising times
        ``t`` (given ``condition``, one row per row of ``u``, where the model is conditional)."""
        return network_score(self._averaged_network, self.sde, condition)(x, t)

    def negative_elbo(self, y: Tensor) -> Tensor:
        """Per-row estimates (n,) of the bound on ``-log p(y)`` in nats (:func:`~.likelihood.negative_elbo`)."""
        return negative_elbo(network_score(self._averaged_network, self.sde), self.sde, y, self.t_min)

    def _prior(self, n: int, generator: torch.Generator | None) -> Tensor:
        z = torch.randn(n, self.state_dim, generator=generator, device=self.device)
        if isinstance(self.sde, DiagonalLinearSDE):  # VSDM's prior N(0, I), without its dense d x d covariance
            return z
        return blockwise(torch.linalg.cholesky(self.sde.prior_covariance().double()), z)

    def _generate(self, start: Tensor, times: Tensor, method: str, options: dict[str, Any], seed: int | None,
                  generator: torch.Generator | None, condition: Tensor | None) -> tuple[Tensor, int]:
        score = CountedScore(self.score if condition is None else lambda u, t: self.score(u, t, condition))
        steps = times.numel() - 1
        one_step = options["order"] == 1 and options["lam"] == 0 and not options["corrector"]
        if method == "gddim" and one_step and isinstance(self.sde, DiagonalLinearSDE):  # O(d) per step, any d
            _, paths = exponential_sample(self.sde, score, start, times, return_path=True)
        elif method == "gddim":
            _, paths = gddim_sample(self.sde, score, start, steps, order=options["order"], lam=options["lam"],
                                    corrector=options["corrector"], times=times, return_path=True, generator=generator)
        elif options["solver"] == "rk45":
            paths = solve_ode_adaptive(probability_flow(self.sde, score), start, times, options["rtol"],
                                       options["atol"])
        else:
            paths = reverse_paths(self.sde, score, start, steps, self.t_min, method, options["solver"], seed, times)
        return paths[..., : self.dim], score.calls

    @torch.no_grad()
    def prior_kl(self, x: Tensor) -> float:
        r"""``KL(N(m_T, C_T) || N(0, P kron I))`` where ``m_T``, ``C_T`` are the exact mean and covariance of the
        (augmented) state at ``t = T`` started from the data's mean and covariance (and the auxiliary variables'
        initial law), and ``N(0, P kron I)`` is the prior generation starts from. It is the exact KL of the terminal
        law to the prior for Gaussian data; in general it measures how far the forward process is from forgetting
        the data's first two moments: ``(tr(P^-1 C_T) + m_T^T P^-1 m_T - D + log det P - log det C_T) / 2``.
        """
        x = validate(x, dim=self.dim).double()
        m0, C0 = augmented_gaussian(self.sde, x.mean(0), x.T.cov())
        mean, cov = gaussian_marginal(self.sde, torch.tensor(self.sde.T, dtype=torch.float64), m0, C0)
        prior = _full(self.sde.prior_covariance().double(), self.state_dim)
        precision = torch.linalg.inv(prior)
        return float(0.5 * (torch.trace(precision @ cov) + mean @ precision @ mean - self.state_dim
                            + torch.logdet(prior) - torch.logdet(cov)))
