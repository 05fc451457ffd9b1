"""What every generative model of this package shares: training data (points, batch sources, images), the training
loop, the likelihood bound in bits per dimension, the sampling entry point and persistence.

A model works on vectors ``y`` of dimension ``dim`` in its *model space*. Continuous data is used as given
(``y = x``). Images are integer grey levels; fitted on an :class:`~sde_control.generative.data.Images` data set, the
model adopts the data set's :class:`~sde_control.generative.data.ImageTransform` (``data_transform``: the number of
levels, uniform dequantisation and the affine map to ``[-1, 1]``, with its log-determinant), trains on freshly
dequantised images flattened to vectors every step, saves the transform with its weights, and reports bits per
dimension of the dequantised images on the scale of unit cells (CONVENTIONS section 10). Samples are returned in
model space (``data_transform.from_model`` turns them back into levels).

Subclasses (:class:`~sde_control.generative.ScoreModel` and its subclasses, :class:`~sde_control.generative.NDM`)
provide the training loss, the per-sample bound on ``-log p(y)`` in nats, the prior draw and the generating process.
"""

from __future__ import annotations

import abc
import math
import os
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from sde_control.checkpoints import Checkpointable
from sde_control.training import LossFn, TrainConfig, Trainer, config_from

from .data import ImageDataset, ImageTransform, Images, validate
from .likelihood import BoundEstimate, bound_in_bits
from .sampling import GRIDS, check_method, time_grid

SAMPLING_METHODS = ("em", "ode", "gddim")


class BatchSource(Protocol):
    """Training data drawn batch by batch: ``sample(batch_size)`` returns the batch ``x0`` (batch_size, dim), or the
    pair ``(x0, condition)`` for a conditional model (e.g. forecast windows and their contexts)."""

    def sample(self, batch_size: int) -> Tensor | tuple[Tensor, Tensor]: ...


@dataclass
class GenerativeTraining(TrainConfig):
    """A generative model's training run (:class:`~sde_control.training.TrainConfig` with the generative defaults:
    Adam at 1e-3 without weight decay, decaying to a tenth)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_final: float = 0.1


class DequantisedImages:
    """A :class:`BatchSource` of images as vectors: random rows of ``images`` (integer levels, (n, C, H, W)), freshly
    dequantised and mapped to ``[-1, 1]`` by ``transform`` at every draw, flattened to (batch, C H W)."""

    def __init__(self, images: Tensor, transform: ImageTransform, device: torch.device | str = "cpu"):
        self.images, self.transform, self.device = images.flatten(1).to(device), transform, device

    def sample(self, batch_size: int) -> Tensor:
        rows = torch.randint(0, self.images.shape[0], (batch_size,), device=self.device)
        return self.transform.to_model(self.images[rows])


class GenerativeModel(Checkpointable, abc.ABC):
    """The shared machinery (module docstring). Subclasses set ``dim``, ``t_min``, ``T`` and ``trainer`` (through
    :meth:`_init_model`) and implement :meth:`loss`, :meth:`negative_elbo`, :meth:`_prior` and :meth:`_generate`."""

    training_config_class: type[TrainConfig] = GenerativeTraining
    sampling_methods: tuple[str, ...] = SAMPLING_METHODS

    def _init_model(self, dim: int, t_min: float, T: float, trainer: Trainer) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not 0 < t_min < T:
            raise ValueError(f"t_min must lie in (0, T = {T}), got {t_min}")
        self.dim, self.t_min, self.T, self.trainer = dim, float(t_min), float(T), trainer
        self.data_transform: ImageTransform | None = None
        self.last_nfe: int | None = None

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per gradient step."""
        return self.trainer.history

    @property
    def device(self) -> torch.device:
        return next(self.trainer.module.parameters(), torch.empty(0)).device

    def to(self, device: torch.device | str) -> GenerativeModel:
        """Move the networks, their averages and optimiser states to ``device`` (before training)."""
        self.trainer.to(device)
        return self

    # ------------------------------------------------------------------ subclasses
    @abc.abstractmethod
    def loss(self, x0: Tensor, condition: Tensor | None = None, **options: Any) -> Tensor:
        """The training loss (a scalar) on the batch ``x0`` (n, dim) in model space."""

    @abc.abstractmethod
    def negative_elbo(self, y: Tensor) -> Tensor:
        """One unbiased estimate per row (n,) of the bound on ``-log p(y)`` in nats, ``y`` (n, dim) in model space."""

    @abc.abstractmethod
    def _prior(self, n: int, generator: torch.Generator | None) -> Tensor:
        """``n`` draws of the generating process's start at ``t = T``."""

    @abc.abstractmethod
    def _generate(self, start: Tensor, times: Tensor, method: str, options: dict[str, Any], seed: int | None,
                  generator: torch.Generator | None, condition: Tensor | None) -> tuple[Tensor, int]:
        """Paths (len(times), n, dim) of the data block from ``start`` along ``times`` by ``method``, and the number
        of network evaluations they took."""

    # ------------------------------------------------------------------ training
    def _training_data(self, x: Tensor | BatchSource | Images) -> Tensor | BatchSource:
        """A tensor of points (validated), a batch source as given, or images as a :class:`DequantisedImages`
        source (the model adopts their transform)."""
        if isinstance(x, Images):
            if not isinstance(x, ImageDataset):
                raise TypeError(f"vector models train on images held in memory (an ImageDataset such as digits()), "
                                f"got a {type(x).__name__}")
            if math.prod(x.shape) != self.dim:
                raise ValueError(f"images of shape {x.shape} have {math.prod(x.shape)} entries, but the model was "
                                 f"built for dim={self.dim}")
            if self.data_transform is not None and self.data_transform != x.transform:
                raise ValueError(f"the model was trained on images with {self.data_transform.levels} levels, these "
                                 f"have {x.transform.levels}")
            self.data_transform = x.transform
            return DequantisedImages(x.images, x.transform, self.device)
        if isinstance(x, Tensor) or not hasattr(x, "sample"):
            if self.data_transform is not None:
                raise ValueError(f"the model was trained on images ({self.data_transform.levels} levels): give it an "
                                 f"image data set, not points")
            return validate(x, dim=self.dim).to(self.device)
        return x

    def _draw(self, data: Tensor | BatchSource, batch_size: int) -> tuple[Tensor, Tensor | None]:
        """One training batch ``(x0, condition or None)`` on the model's device."""
        if isinstance(data, Tensor):
            return data[torch.randint(0, data.shape[0], (batch_size,), device=data.device)], None
        batch = data.sample(batch_size)
        x0, condition = batch if isinstance(batch, tuple) else (batch, None)
        return x0.to(self.device), None if condition is None else condition.to(self.device)

    def _batch_loss(self, data: Tensor | BatchSource, config: TrainConfig) -> LossFn:
        """The loss on a fresh batch per step."""

        def step(iteration: int) -> tuple[Tensor, dict[str, float]]:
            x0, condition = self._draw(data, config.batch_size)
            return self.loss(x0, condition), {}

        return step

    def fit(self, x: Tensor | BatchSource | Images, iterations: int = 10_000, batch_size: int = 512, *,
            checkpoint: str | os.PathLike | None = None, resume: bool = True, **options: Any) -> list[dict[str, Any]]:
        """Fit the model to ``x`` by ``iterations`` Adam steps on batches of ``batch_size``: points (n, dim), a
        :class:`BatchSource` (batches drawn by the caller's code, e.g. windows with their contexts), or an image data
        set (module docstring).

        ``options`` are the fields of the model's training configuration (``training_config_class``; the learning
        rate decays stepwise from ``lr`` to ``lr * lr_final`` every ``lr_every`` steps). With ``checkpoint`` the state
        is saved every ``checkpoint_every`` steps and at the end; with ``resume``, an existing file of the same run is
        continued and one of another run refused with the differences named. Returns the training history.
        """
        config = config_from(self.training_config_class, dict(iterations=iterations, batch_size=batch_size, **options))
        resumed = checkpoint is not None and resume and self.resume_from(checkpoint, config)
        data = self._training_data(x)
        self.training_config = config
        return self.trainer.fit(self._batch_loss(data, config), config, resume=resumed,
                                description=type(self).__name__,
                                checkpoint=None if checkpoint is None else lambda: self.save(checkpoint))

    # ------------------------------------------------------------------ likelihood
    def _model_space(self, x: Tensor | Images) -> tuple[Tensor, float]:
        """Integer levels (for a model with a data transform) or points, checked; and the transform's log-det."""
        if self.data_transform is None:
            if isinstance(x, Images):
                raise ValueError("this model was trained on points, not images: give it an (n, dim) tensor")
            return validate(x, dim=self.dim).to(self.device), 0.0
        levels = x.images if isinstance(x, ImageDataset) else torch.as_tensor(x)
        if levels.dtype.is_floating_point or levels.dim() < 2 or math.prod(levels.shape[1:]) != self.dim:
            raise ValueError(f"this model was trained on images ({self.data_transform.levels} levels, {self.dim} "
                             f"entries each): give integer levels of shape (n, {self.dim}) or (n, C, H, W), or the "
                             f"image data set; got {levels.dtype} {tuple(levels.shape)}")
        if int(levels.min()) < 0 or int(levels.max()) >= self.data_transform.levels:
            raise ValueError(f"levels must lie in 0..{self.data_transform.levels - 1}")
        return levels.flatten(1).to(self.device), self.data_transform.log_det(self.dim)

    @torch.no_grad()
    def bits_per_dim(self, x: Tensor | Images, *, repeats: int = 1, batch_size: int = 1024,
                     seed: int | None = None) -> BoundEstimate:
        r"""The bound on ``-log p(x)`` per dimension in bits for the rows of ``x``: its mean, its standard error over
        the rows and the per-row values (:class:`~sde_control.generative.likelihood.BoundEstimate`).

        Points are taken exactly as given: ``(-ELBO) / (dim ln 2)``. For a model fitted on images, ``x`` holds integer
        levels (n, dim) or (n, C, H, W), or is the image data set: each of the ``repeats`` draws dequantises the
        images afresh, and the transform's log-determinant enters (``(-ELBO(y) - log_det) / (dim ln 2)``). Each row
        averages ``repeats`` draws of dequantisation, time and noise; ``seed`` makes the estimate reproducible.
        """
        if not isinstance(repeats, int) or repeats < 1 or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"repeats and batch_size must be positive ints, got {repeats!r}, {batch_size!r}")
        data, log_det = self._model_space(x)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            draws = []
            for _ in range(repeats):
                y = data if self.data_transform is None else self.data_transform.to_model(data)
                draws.append(torch.cat([self.negative_elbo(chunk) for chunk in y.split(batch_size)]).double())
        return bound_in_bits(torch.stack(draws).mean(0).cpu(), self.dim, log_det)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, steps: int = 50, *, method: str = "ode", solver: str = "euler", grid: str = "quadratic",
               order: int = 1, lam: float = 0.0, corrector: bool = False, rtol: float = 1e-5, atol: float = 1e-5,
               return_paths: bool = False, seed: int | None = None,
               condition: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """``n`` samples (n, dim) in model space, generated from the prior at ``t = T`` down to ``t_min``.

        Args:
            steps: steps of the time grid (NFE = steps, or twice that for Heun and gDDIM's corrector).
            method: ``"em"`` (Euler-Maruyama on the reverse SDE), ``"ode"`` (the probability-flow ODE) or
                ``"gddim"`` (the exponential integrator of :mod:`~sde_control.generative.gddim`).
            solver: for ``"ode"``: ``"euler"``, ``"heun"`` or ``"rk45"`` (scipy's adaptive solver with ``rtol``,
                ``atol``; ``steps`` then only sets the times the paths are reported at); ``"em"`` takes ``"euler"``.
            grid: ``"quadratic"`` (uniform in ``sqrt(t)``, denser near the data) or ``"uniform"``.
            order, lam, corrector: gDDIM's multistep order (1-3), stochasticity (``lam > 0``: one-step stochastic
                sampler) and predictor-corrector.
            return_paths: also return the data block's paths (steps + 1, n, dim).
            seed: fixes the prior draw and the noise.
            condition: for a conditional model, one row per sample.

        The network evaluations the call took are in ``last_nfe``.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"the number of samples must be a positive int, got {n!r}")
        check_method(method, self.sampling_methods, type(self).__name__)
        if grid not in GRIDS:
            raise ValueError(f"grid must be one of {tuple(GRIDS)}, got {grid!r}")
        allowed = {"em": ("euler",), "ode": ("euler", "heun", "rk45"), "gddim": ("euler",)}[method]
        if solver not in allowed:
            raise ValueError(f"method={method!r} takes solver in {allowed}, got {solver!r}")
        if method != "gddim" and (order != 1 or lam != 0 or corrector):
            raise ValueError("order, lam and corrector are gDDIM's options: use them with method='gddim'")
        if condition is not None and condition.shape[0] != n:
            raise ValueError(f"condition must have one row per sample ({n}), got shape {tuple(condition.shape)}")
        times = time_grid(self.T, self.t_min, steps, GRIDS[grid])
        generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
        options = dict(solver=solver, order=order, lam=lam, corrector=corrector, rtol=rtol, atol=atol)
        paths, self.last_nfe = self._generate(self._prior(n, generator), times, method, options, seed, generator,
                                              condition)
        return (paths[-1], paths) if return_paths else paths[-1]

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        transform = None if self.data_transform is None else self.data_transform.to_dict()
        return {"trainer": self.trainer.state_dict(), "data_transform": transform}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state["trainer"])
        transform = state.get("data_transform")
        self.data_transform = None if transform is None else ImageTransform(**transform)
