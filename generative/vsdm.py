r"""Variational Schroedinger diffusion models (Deng et al., ICML 2024), Algorithm 1.

The forward process is VP plus a learned linear drift (:mod:`sde_control.generative.forward`): ``F(t) = beta(t)(A_t - I/2)``,
``G G^T = beta(t) I``, with closed-form (or moment-ODE) transitions, so the backward score stays
simulation-free. Training alternates, for ``stages`` stages:

(a) **backward score** on the current forward process: ``score_iterations`` steps of denoising score matching
    (:mod:`sde_control.generative.score_matching`) of the noise-prediction network;

(b) **forward matrices** by stochastic approximation against the frozen backward score: draw paths of the reverse
    SDE of the current forward process from the *fixed* prior ``N(0, I)`` (states ``x`` at noising times ``t``),
    freeze the backward control ``z_b = g s(x, t) - z_f(x, t)`` (``s`` the fitted score, ``z_f = g A_t x`` at
    the current ``A``), and take ``forward_iterations`` Adam steps on

    .. math::  J(A) = E \int_{t_{min}}^T \Big( \tfrac12 |z_f|^2 + z_f \cdot z_b + \zeta\, \nabla\cdot(g z_f) \Big) dt
               = E \int g^2 \Big( \tfrac12 |A_t x|^2 + A_t x \cdot (s - A^{cur}_t x) + \zeta \operatorname{tr} A_t \Big) dt

    (``z_f = g A_t x`` is linear, so its divergence is exactly ``g^2 tr A_t``; the time integral is the
    trapezoid rule over the path's times). At ``A = A^cur`` the gradient is ``E int g^2 (s x^T + zeta I) dt``.
    ``zeta = 1`` is the objective's own value (the reference code uses 0.75). If the states came from the forward
    marginals with the exact score, ``E[s x^T] = -I`` and nothing would move at ``zeta = 1``: the pull comes from
    starting the backward paths at ``N(0, I)`` instead of the forward process's own terminal law, and it drives
    that terminal law towards the prior. The term ``s x^T`` is sensitive to score errors near ``t_min``, where
    ``s = -L_t^{-T} eps_hat`` multiplies small errors of the noise prediction by ``1 / sigma_t``; a
    time-dependent ``A_t`` sends their effect mostly to its knot at ``t = 0``, while a single ``A`` carries them
    into the whole process. That, and the benchmark (``benchmarks/VSDM.md``), is why ``A_t`` is the default.

    **Stein.** The identity ``E[s x^T] = -I`` holds for the exact score only. With the fitted score ``s_theta`` the
    gradient ``E_bwd[g^2 s_theta x^T] + g^2 I`` also carries the score's own error, ``E_fwd[s_theta x^T] + I``, which
    does not vanish where the forward process already reaches the prior, and the update then moves ``A`` by it:
    where plain VP's terminal law already sits at the prior, the forward updates push it away and the samples get
    worse (what a review saw on a 2-d set the project had not tuned on; ``benchmarks/vsdm_vs_vp.py`` compares
    ``vsdm`` with ``vsdm_trace``, the ``tr A_t`` update, on five such sets). ``divergence="stein"``
    (the default for the full matrix) evaluates the divergence term by Stein's identity under the forward marginals
    with the same fitted score, ``E_fwd[div(A x)] = -E_fwd[(A x) . s_theta]`` on fresh forward draws of the data at the
    paths' times, so the gradient becomes ``E int g^2 (E_bwd[s_theta x^T] - E_fwd[s_theta x^T])``: zero whenever the
    backward states are distributed as the forward marginals, whatever the score's error (a test), and the same
    objective as before for the exact score. ``divergence="exact"`` keeps ``tr A_t``.

The forward process starts at plain VP (``A = 0``), so stage 1's score model is the VP baseline's.

**Blocks and conditions.** With ``blocks = K < d`` the matrices are ``K x K`` and act on ``K`` blocks of ``m = d / K``
channels each (``A_t kron I_m``, :func:`sde_control.sdes.blockwise`): a forecast window of ``P`` steps of ``D``
series laid out series-major is ``K = D`` blocks of ``m = P`` channels, one ``D x D`` matrix shared across the
steps, so the transitions cost ``O(D^3)`` per time whatever ``P``. The divergence is then ``g^2 m tr A_t``; the
objective is evaluated with each of the ``m`` channels of a path as a row of its own, which gives ``J / m`` (the
same minimiser). Trained on a :class:`~.score_model.BatchSource` of ``(x0, condition)`` pairs, the score is
conditional, and the backward paths of (b) are drawn conditionally: each path from ``N(0, I)`` under the score
given the condition of a fresh draw of the source (and the Stein divergence scores forward draws given their own
conditions; its statistic ``E[s x^T]`` is ``K x K``, over the rows of path and channel). Both networks
keep an exponential moving average; the averaged forward process is the one the score is fitted on, the one the
backward paths of (b) use, and the one :meth:`VSDM.sample` integrates: one forward process for training and
sampling. The last stage ends with (a), so the final score belongs to the final forward process. Learning
rates of both decay geometrically over the stages, from ``lr`` to ``lr * lr_final`` (step sizes of the
stochastic approximation); :func:`fit_equal_budget` gives a plain score model the same score-network budget and
schedule.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

from sde_control.checkpoints import Checkpointable
from sde_control.sdes import VP, blockwise
from sde_control.specs import spec_of
from sde_control.training import LossFn, TrainConfig, Trainer, config_from

from .data import Images
from .diagonal import DiagonalVSDMForward, backward_statistics, diagonal_objective
from .forward import TimeDependentVSDMForward, VSDMForward
from .model import BatchSource, DequantisedImages, GenerativeModel
from .sampling import reverse_paths
from .score_model import ScoreModel, ScoreTraining

DIVERGENCES = ("stein", "exact")


@dataclass
class VSDMTraining(ScoreTraining):
    """VSDM's training run: ``iterations`` score-network steps split evenly over ``stages`` (each followed, but the
    last, by a forward update), and

    Args:
        forward_iterations: forward-update steps per stage.
        forward_lr: their initial learning rate (it decays by ``lr_final`` over the stages, as the score's).
        paths, path_steps: backward paths drawn per stage for the forward update, and their Euler steps.
        forward_batch: rows (backward paths, or path and channel with ``blocks``) per forward step (``None``: all of
            them, so the stage's objective is fixed and the stochasticity comes from fresh paths).
    """

    iterations: int = 10_000
    stages: int = 20
    forward_iterations: int = 100
    forward_lr: float = 2e-2
    paths: int = 1000
    path_steps: int = 100
    forward_batch: int | None = None

    RESUMABLE: ClassVar[tuple[str, ...]] = ScoreTraining.RESUMABLE + ("stages",)
    """More stages of the same length extend a run (``iterations`` and ``stages`` grow together)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.stages, int) or self.stages < 1 or self.iterations % self.stages:
            raise ValueError(f"stages must be a positive int dividing iterations = {self.iterations}, got "
                             f"{self.stages!r}")
        if self.forward_iterations < 0 or self.paths < 1 or self.path_steps < 1:
            raise ValueError("need forward_iterations >= 0, paths >= 1 and path_steps >= 1")


class VSDM(ScoreModel):
    """VSDM with a piecewise-linear ``A_t`` between ``knots`` matrices, or (``time_dependent=False``) one ``A``; with
    ``basis``, ``A_t`` diagonal in that orthonormal basis instead (images, :mod:`sde_control.generative.diagonal`).

    Args:
        dim: data dimension.
        blocks: the size ``K`` of the forward matrices, which act on ``K`` blocks of ``dim / K`` channels (module
            docstring); default ``dim`` (a full ``dim x dim`` matrix).
        time_dependent, knots: the parameterisation of ``A_t`` (:mod:`sde_control.generative.forward`); with
            ``basis``, ``A_t`` is constant on ``knots`` equal intervals of ``[0, T]`` (one with
            ``time_dependent=False``).
        basis: ``None`` (a full matrix), ``"dct"`` (per channel frequencies) or ``"pixel"``: ``A_t`` diagonal in it,
            with closed-form transitions at any dimension.
        image_shape: ``(C, H, W)`` with ``C H W = dim``, for the DCT basis.
        beta_min, beta_max, T: the VP schedule the forward process starts from (the paper: 0.1, 10, 1).
        zeta: weight of the divergence term of the forward objective (module docstring).
        divergence: how the divergence term is evaluated: ``"stein"`` (by Stein's identity under the forward
            marginals with the fitted score, so that score errors enter both halves of the gradient alike; the
            default for the full matrix) or ``"exact"`` (``tr A_t``, exact for the exact score only; the reference
            code's, and the one of a basis).
        network, width, depth, t_min, ema_decay: of the score model (:class:`ScoreModel`).
        forward_ema_decay: of the forward matrices' average.
    """

    training_config_class = VSDMTraining

    def __init__(self, dim: int, *, time_dependent: bool = True, knots: int = 3, beta_min: float = 0.1,
                 beta_max: float = 10.0, T: float = 1.0, zeta: float = 1.0, divergence: str | None = None,
                 network: nn.Module | None = None,
                 width: int = 128, depth: int = 4, t_min: float = 1e-3, ema_decay: float | None = 0.99,
                 forward_ema_decay: float | None = 0.9, basis: str | None = None,
                 image_shape: Sequence[int] | None = None, blocks: int | None = None):
        if basis is not None:
            shape = (dim,) if image_shape is None else tuple(image_shape)
            if math.prod(shape) != dim:
                raise ValueError(f"image_shape {shape} has {math.prod(shape)} entries, not dim = {dim}")
            forward = DiagonalVSDMForward(shape, basis, knots if time_dependent else 1, beta_min, beta_max, T)
        elif time_dependent:
            forward = TimeDependentVSDMForward(dim if blocks is None else blocks, knots, beta_min, beta_max, T)
        else:
            forward = VSDMForward(dim if blocks is None else blocks, beta_min, beta_max, T)
        # Every rank takes the same forward steps from statistics reduced over the ranks: no gradient averaging.
        self.forward_trainer = Trainer(forward, ema_decay=forward_ema_decay, distribute=False)
        divergence = ("exact" if basis is not None else "stein") if divergence is None else divergence
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
        if divergence == "stein" and basis is not None:
            raise ValueError("the Stein divergence is implemented for the full matrix A_t; with a basis use "
                             "divergence='exact' (or None)")
        self.zeta, self.divergence = float(zeta), divergence
        self.stage = 0
        self.stages: list[dict[str, Any]] = []
        self._untrained_network = copy.deepcopy(network)  # for vp_baseline
        self._setup(dim, network, width, depth, t_min, ema_decay)

    @property
    def sde(self) -> VSDMForward | TimeDependentVSDMForward:
        """The averaged forward process: the score is fitted on it and samples integrate it."""
        return self.forward_trainer.averaged

    def to(self, device: torch.device | str) -> VSDM:
        super().to(device)
        self.forward_trainer.to(device)
        return self

    def vp_baseline(self) -> ScoreModel:
        """An untrained score model on plain VP with this model's schedule, network and settings (stage 0)."""
        c = spec_of(self).kwargs
        return ScoreModel(self.dim, VP(c["beta_min"], c["beta_max"], c["T"]), copy.deepcopy(self._untrained_network),
                          width=c["width"], depth=c["depth"], t_min=self.t_min, ema_decay=c["ema_decay"])

    # ------------------------------------------------------------------ training
    def fit(self, x: Tensor | BatchSource | Images, iterations: int = 10_000, batch_size: int = 512, *,
            checkpoint: str | os.PathLike | None = None, resume: bool = True, owner: Checkpointable | None = None,
            **options: Any) -> list[dict[str, Any]]:
        """Alternate score fitting and forward updates (module docstring): ``iterations`` score-network steps on
        batches of ``batch_size``, split over ``stages``; ``options`` are the fields of :class:`VSDMTraining`. ``x``
        is the data (n, dim) or a :class:`~.score_model.BatchSource` (with conditions: a conditional model, whose
        backward paths are drawn given the source's conditions).

        The score's and the forward update's learning rates decay stage by stage from ``lr`` and ``forward_lr`` to
        ``lr_final`` times theirs. With ``checkpoint`` the state is written after every stage; with ``resume``, an
        existing file of the same run is continued from its last stage. ``owner`` is the object whose checkpoint
        that file is (default: this model); a front-end that holds this model and saves it inside its own state
        (:class:`~sde_control.generative.timeseries.Forecaster`) passes itself.

        Returns one record per stage: the stage, the averaged forward process's time-averaged ``A``, its
        :meth:`prior_kl` (``None`` for a :class:`~.score_model.BatchSource`), and the last forward objective value.
        """
        config = config_from(VSDMTraining, dict(iterations=iterations, batch_size=batch_size, **options))
        owner = self if owner is None else owner
        if checkpoint is not None and resume:
            owner.resume_from(checkpoint, config)
        data = self._training_data(x)
        caller_source = not isinstance(data, (Tensor, DequantisedImages))  # batches drawn by the caller's code
        if caller_source and isinstance(self.sde, DiagonalVSDMForward):
            raise ValueError("a BatchSource (conditional training) needs the matrix forward process, not basis=")
        moments = None if caller_source else data  # the data whose moments give the records' prior KL
        if isinstance(data, DequantisedImages):  # images: the cells' centres
            moments = data.transform.to_model(data.images, dequantise=False)
        self.training_config = config
        stages = config.stages
        for stage in range(self.stage, stages):
            decay = config.lr_final ** (stage / stages)
            self.trainer.fit(self._batch_loss(data, config),
                             config.loop(iterations=config.iterations // stages, lr=config.lr * decay, lr_final=1.0),
                             description=f"VSDM stage {stage + 1}/{stages}")
            record = {"stage": stage + 1, "A": self.sde.time_averaged_A().tolist(),
                      "prior_kl": None if moments is None else self.prior_kl(moments)}
            if stage < stages - 1 and config.forward_iterations > 0:
                record["forward_objective"] = self.update_forward(config, stage, data)
            self.stages.append(record)
            self.stage = stage + 1
            if checkpoint is not None:
                owner.save(checkpoint)
        return self.stages

    def update_forward(self, config: VSDMTraining, stage: int, data: Tensor | BatchSource | None = None) -> float:
        """The forward update that ends stage ``stage`` (counted from 0) of ``config``: ``forward_iterations`` Adam
        steps on the objective of fresh backward paths (given fresh conditions of ``data``, where it is a source of
        conditional batches) and, for the Stein divergence, fresh forward draws of ``data``, at
        ``forward_lr`` decayed as the stage's score learning rate; returns the last objective value. With ``basis``
        and under ``torch.distributed`` the ranks share the ``paths`` and their statistics
        (:func:`~sde_control.generative.diagonal.backward_statistics`)."""
        decay = config.lr_final ** (stage / config.stages)
        forward = TrainConfig(iterations=config.forward_iterations, lr=config.forward_lr * decay, weight_decay=0.0,
                              grad_clip=None, lr_final=1.0, progress=False)
        history = self.forward_trainer.fit(
            self._forward_objective(config.paths, config.path_steps, config.forward_batch, data), forward)
        return history[-1]["loss"]

    @torch.no_grad()
    def _backward_statistics(self, paths: int, steps: int, source: BatchSource | None = None
                             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Reverse-SDE paths from ``N(0, I)`` under the averaged forward process and score (given the conditions of
        ``paths`` draws of ``source``, where it has them): their states ``X`` (steps + 1, rows, K) with one row per
        path and channel (module docstring), ``V = s(X, t) - A^cur_t X`` (``z_b / g``) in the same rows, the noising
        times and the weights ``beta(t) dt`` of the trapezoid rule (all float64)."""
        sde = self.sde
        score = self.score
        batch = None if source is None else source.sample(paths)
        if isinstance(batch, tuple):
            condition = batch[1].to(self.device)

            def score(x: Tensor, t: Tensor) -> Tensor:
                return self.score(x, t, condition)

        x_T = torch.randn(paths, self.dim, device=self.device)
        states = reverse_paths(sde, score, x_T, steps, self.t_min, method="em")
        times = torch.linspace(sde.T, self.t_min, steps + 1, dtype=torch.float64)
        scores = torch.stack([score(states[k], times[k]) for k in range(steps + 1)]).double()
        X = channel_rows(states.double(), sde.K)
        V = channel_rows(scores, sde.K) - torch.einsum("kij,kpj->kpi", sde.A(times), X)
        dt = torch.full((steps + 1,), (sde.T - self.t_min) / steps, dtype=torch.float64)
        dt[[0, -1]] /= 2
        return X, V, times, sde.beta(times) * dt

    @torch.no_grad()
    def _stein_statistics(self, data: Tensor | BatchSource, n: int, times: Tensor) -> Tensor:
        """``E[s(x, t) x^T]`` (N+1, K, K, float64) under the forward marginals at ``times``, over the rows of path and
        channel (module docstring): ``n`` draws of ``data`` (with their conditions, where it has them) pushed through
        the exact transitions, scored by the averaged network (module docstring, "Stein")."""
        x0, condition = self._draw(data, n)
        x0 = x0.double()
        psi, cov = (m.to(x0.device) for m in self.sde.marginal_matrices(times))
        chol = torch.linalg.cholesky(cov)
        out = []
        for k in range(times.numel()):
            x = blockwise(psi[k], x0) + blockwise(chol[k], torch.randn_like(x0))
            s = self.score(x.float(), times[k], condition).double()
            x, s = channel_rows(x[None], self.sde.K)[0], channel_rows(s[None], self.sde.K)[0]
            out.append(s.T @ x / x.shape[0])
        return torch.stack(out)

    def _forward_objective(self, paths: int, steps: int, batch: int | None,
                           data: Tensor | BatchSource | None = None) -> LossFn:
        """:func:`variational_objective` on batches of ``batch`` (``None``: all) rows of ``paths`` fresh backward
        paths (conditional on the conditions of a caller's source ``data``, where it has them), with the divergence
        term by Stein's identity on ``paths`` fresh forward draws of ``data`` (``divergence="stein"``); with
        ``basis``: its closed form in the paths' statistics (:mod:`~sde_control.generative.diagonal`)."""
        if isinstance(self.sde, DiagonalVSDMForward):
            return diagonal_objective(self.forward_trainer.module, self.zeta,
                                      backward_statistics(self.sde, self.score, paths, steps, self.t_min))
        if self.divergence == "stein" and data is None:
            raise ValueError("the Stein divergence draws forward states from the training data: pass data")
        source = None if data is None or isinstance(data, (Tensor, DequantisedImages)) else data
        X, V, times, weights = self._backward_statistics(paths, steps, source)
        stein = self._stein_statistics(data, paths, times) if self.divergence == "stein" else None
        forward = self.forward_trainer.module

        def objective(iteration: int) -> tuple[Tensor, dict[str, float]]:
            rows = slice(None) if batch is None else torch.randint(0, X.shape[1], (batch,))
            return variational_objective(forward.A(times), X[:, rows], V[:, rows], weights, self.zeta, stein), {}

        return objective

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "forward_trainer": self.forward_trainer.state_dict(), "stage": self.stage,
                "stages": self.stages}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.forward_trainer.load_state_dict(state["forward_trainer"])
        self.stage, self.stages = state["stage"], state["stages"]


def channel_rows(states: Tensor, K: int) -> Tensor:
    """States ``(N, n, K m)`` laid out as ``K`` blocks of ``m`` channels, as ``(N, n m, K)``: one row per path and
    channel, so that ``K x K`` matrices act on the rows as ``A kron I_m`` acts on the states."""
    N, n, width = states.shape
    return states.reshape(N, n, K, width // K).transpose(-1, -2).reshape(N, n * (width // K), K)


def variational_objective(A: Tensor, X: Tensor, V: Tensor, weights: Tensor, zeta: float,
                          stein: Tensor | None = None) -> Tensor:
    r"""``J(A) = mean_p sum_k w_k (|A_k x|^2 / 2 + A_k x . v + zeta div_k)`` (the module docstring's objective divided
    by ``g^2``, with ``w_k = g^2(t_k) dt_k``) for ``A`` (N+1, K, K), states ``X`` and ``V = z_b / g`` (N+1, P, K)
    and weights (N+1,). The divergence term ``div_k`` is ``tr A_k``, or with ``stein = E_fwd[s x^T]`` (N+1, K, K)
    its Stein estimate ``-E_fwd[(A_k x) . s] = -sum_ij (A_k)_ij E[s_i x_j]`` (equal to ``tr A_k`` for the exact
    score)."""
    Ax = torch.einsum("kij,kpj->kpi", A, X)
    divergence = A.diagonal(dim1=-2, dim2=-1).sum(-1) if stein is None else -(A * stein).sum((-1, -2))
    integrand = 0.5 * Ax.square().sum(-1) + (Ax * V).sum(-1) + zeta * divergence[:, None]
    return (weights[:, None] * integrand).sum(0).mean()


def equal_budget_config(model: GenerativeModel, **options: Any) -> TrainConfig:
    """The training configuration of ``model`` for ``options`` (the fields of :class:`VSDMTraining`, with its
    defaults): VSDM keeps them all; any other model (:class:`ScoreModel` on any process, MDM, NDM) drops the options
    its configuration does not have (stages and forward updates; NDM also the objective) and takes its stepwise
    learning-rate decays where VSDM's stages end (``lr_every = iterations / stages``): the equal budget of a
    comparison."""
    config = config_from(VSDMTraining, options)
    if isinstance(model, VSDM):
        return config
    known = {field.name for field in dataclasses.fields(model.training_config_class)}
    own = {k: v for k, v in config.as_dict().items() if k in known}
    return model.training_config_class(**{**own, "lr_every": config.iterations // config.stages})


def fit_equal_budget(model: GenerativeModel, x: Tensor | BatchSource | Images, *,
                     checkpoint: str | os.PathLike | None = None, **options: Any) -> list[dict[str, Any]]:
    """Train ``model`` with ``options["iterations"]`` network steps laid out as ``options["stages"]`` stages
    (:func:`equal_budget_config`): VSDM by its stages, any other model in one run with the same learning-rate steps."""
    return model.fit(x, checkpoint=checkpoint, **equal_budget_config(model, **options).as_dict())
