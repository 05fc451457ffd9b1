"""A score-based diffusion model on a fixed linear forward SDE: fit by denoising score matching, sample by the
probability-flow ODE or the reverse SDE.

>>> from sde_control.generative import data, ScoreModel
>>> x = data.spiral(20_000)
>>> model = ScoreModel(dim=2)                     # VP, beta from 0.1 to 10 over T = 1 (the DIS reference's)
>>> model.fit(x, iterations=10_000)
>>> samples, paths = model.sample(5000, steps=20, return_paths=True)
>>> model.save("spiral.pt"); model = ScoreModel.load("spiral.pt")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from sde_control.checkpoints import Checkpointable
from sde_control.controls import ControlMLP
from sde_control.sdes import VP, LinearSDE
from sde_control.training import LossFn, TrainConfig, Trainer, config_from

from .data import validate
from .sampling import reverse_paths
from .score_matching import dsm_loss, gaussian_marginal, noise_to_score


class BatchSource(Protocol):
    """Training data drawn batch by batch: ``sample(batch_size)`` returns the batch ``x0`` (batch_size, dim), or the
    pair ``(x0, condition)`` for a conditional model (e.g. forecast windows and their contexts)."""

    def sample(self, batch_size: int) -> Tensor | tuple[Tensor, Tensor]: ...


@dataclass
class ScoreTraining(TrainConfig):
    """A score model's training run (:class:`~sde_control.training.TrainConfig` with the generative defaults: Adam
    at 1e-3 without weight decay, decaying to a tenth)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_final: float = 0.1


class ScoreModel(Checkpointable):
    """Denoising score matching on the exact transitions of ``sde`` (:mod:`sde_control.generative.score_matching`).

    Args:
        dim: data dimension ``d``.
        sde: the forward (noising) process, a :class:`~sde_control.sdes.LinearSDE` whose ``K`` divides ``d``
            (``K = 1``: scalar; ``K = d``: a full matrix). Default: ``VP(0.1, 10, T=1)``.
        network: noise-prediction network ``(x (n, d), t (n,) or ()) -> (n, d)``; default a Fourier-feature
            :class:`~sde_control.controls.ControlMLP` of ``width`` and ``depth`` (last layer zero, so the initial
            score is 0).
        t_min: the smallest noising time trained on and sampled to.
        ema_decay: of the network weights' average, which scores and samples use.
    """

    training_config_class = ScoreTraining

    def __init__(self, dim: int, sde: LinearSDE | None = None, network: nn.Module | None = None, *,
                 width: int = 128, depth: int = 4, t_min: float = 1e-3, ema_decay: float | None = 0.99):
        self._sde = VP(0.1, 10.0, 1.0) if sde is None else sde
        self._setup(dim, network, width, depth, t_min, ema_decay)

    def _setup(self, dim: int, network: nn.Module | None, width: int, depth: int, t_min: float,
               ema_decay: float | None) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if dim % self.sde.K:
            raise ValueError(f"the forward process has {self.sde.K} x {self.sde.K} blocks, which cannot act on "
                             f"data of dimension {dim}")
        if not 0 < t_min < self.sde.T:
            raise ValueError(f"t_min must lie in (0, T = {self.sde.T}), got {t_min}")
        self.dim, self.t_min = dim, t_min
        self.network = ControlMLP(dim, width, depth) if network is None else network
        self.trainer = Trainer(self.network, ema_decay=ema_decay)

    @property
    def sde(self) -> LinearSDE:
        """The forward process, used both to train the score and to sample."""
        return self._sde

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per score-network gradient step."""
        return self.trainer.history

    # ------------------------------------------------------------------ training
    def loss(self, x0: Tensor, network: nn.Module | None = None, condition: Tensor | None = None, *,
             t: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
        """The DSM loss on the batch ``x0`` for ``network`` (default: the one being trained), conditioned on
        ``condition`` where the model is conditional; ``t`` and ``eps`` may be given instead of drawn."""
        return dsm_loss(self.network if network is None else network, self.sde, x0, self.t_min, condition, t=t, eps=eps)

    def _batch_loss(self, data: Tensor | BatchSource, batch_size: int) -> LossFn:
        """The DSM loss on a fresh batch per step: random rows of a tensor, or a :class:`BatchSource`'s draw."""

        network = self.trainer.training_module  # under torch.distributed, the wrapper that averages gradients

        def step(iteration: int) -> tuple[Tensor, dict[str, float]]:
            if isinstance(data, Tensor):
                return self.loss(data[torch.randint(0, data.shape[0], (batch_size,))], network), {}
            batch = data.sample(batch_size)
            x0, condition = batch if isinstance(batch, tuple) else (batch, None)
            return self.loss(x0.to(self.device), network,
                             None if condition is None else condition.to(self.device)), {}

        return step

    def fit(self, x: Tensor | BatchSource, iterations: int = 10_000, batch_size: int = 512, *,
            checkpoint: str | os.PathLike | None = None, resume: bool = True, **options: Any) -> list[dict[str, Any]]:
        """Fit the score to the data ``x`` (n, dim) by ``iterations`` Adam steps on batches of ``batch_size``; ``x``
        may also be a :class:`BatchSource` (batches drawn by the caller's code, e.g. windows with their contexts).

        ``options`` are the fields of :class:`ScoreTraining` (the learning rate decays stepwise from ``lr`` to
        ``lr * lr_final`` every ``lr_every`` steps). With ``checkpoint`` the state is saved every
        ``checkpoint_every`` steps and at the end; with ``resume``, an existing file of the same run is continued
        and one of another run refused with the differences named. Returns the training history.
        """
        config = config_from(ScoreTraining, dict(iterations=iterations, batch_size=batch_size, **options))
        if isinstance(x, Tensor) or not hasattr(x, "sample"):
            x = validate(x, dim=self.dim).to(self.device)
        resumed = checkpoint is not None and resume and self.resume_from(checkpoint, config)
        self.training_config = config
        return self.trainer.fit(
            self._batch_loss(x, config.batch_size), config, resume=resumed,
            description=f"{type(self).__name__} (DSM)",
            checkpoint=None if checkpoint is None else lambda: self.save(checkpoint),
        )

    def to(self, device: torch.device | str) -> ScoreModel:
        """Move the networks, their averages and optimiser states to ``device`` (before training)."""
        self.trainer.to(device)
        return self

    # ------------------------------------------------------------------ inference
    @property
    def device(self) -> torch.device:
        return next(self.network.parameters(), torch.empty(0)).device

    def score(self, x: Tensor, t: Tensor, condition: Tensor | None = None) -> Tensor:
        """``s(x, t) = -L_t^{-T} eps_hat(x, t)`` of the averaged (EMA) network at noising times ``t`` (given
        ``condition``, one row per row of ``x``, where the model is conditional)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        network = self.trainer.averaged
        eps_hat = network(x, t.to(x.dtype)) if condition is None else network(x, t.to(x.dtype), condition)
        return noise_to_score(self.sde, eps_hat, t)

    @torch.no_grad()
    def sample(self, n: int, steps: int = 50, *, method: str = "ode", solver: str = "euler",
               return_paths: bool = False, seed: int | None = None,
               condition: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """``n`` samples (n, dim) from the prior ``N(0, I)`` at ``t = T`` by ``steps`` steps of the
        probability-flow ODE (``method="ode"``) or the reverse SDE (``"sde"``), down to ``t_min``; with
        ``return_paths`` also the paths (steps + 1, n, dim). ``seed`` fixes prior draw and noise. A conditional
        model takes ``condition`` with one row per sample (repeat a context to draw several samples of it)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"the number of samples must be a positive int, got {n!r}")
        if condition is not None and condition.shape[0] != n:
            raise ValueError(f"condition must have one row per sample ({n}), got shape {tuple(condition.shape)}")
        generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
        x_T = torch.randn(n, self.dim, generator=generator, device=self.device)
        score = self.score if condition is None else lambda x, t: self.score(x, t, condition)
        paths = reverse_paths(self.sde, score, x_T, steps, self.t_min, method=method, solver=solver, seed=seed)
        return (paths[-1], paths) if return_paths else paths[-1]

    @torch.no_grad()
    def prior_kl(self, x: Tensor) -> float:
        r"""``KL(N(m_T, C_T) || N(0, I))`` where ``m_T``, ``C_T`` are the exact mean and covariance of the forward
        process at ``t = T`` started from the data ``x``: ``m_T = Psi_T mean(x)``,
        ``C_T = Psi_T cov(x) Psi_T^T + Sigma_T``. It is the exact KL of the terminal law to the prior for
        Gaussian data; in general it measures how far the forward process is from forgetting the data's
        first two moments. ``KL = (tr C_T + |m_T|^2 - d - log det C_T) / 2``.
        """
        x = validate(x, dim=self.dim).double()
        mean, cov = gaussian_marginal(self.sde, torch.tensor(self.sde.T, dtype=torch.float64), x.mean(0), x.T.cov())
        return float(0.5 * (cov.trace() + mean.square().sum() - self.dim - torch.logdet(cov)))

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {"trainer": self.trainer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state["trainer"])
