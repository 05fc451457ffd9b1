"""PIS, DIS and DDS: thin configurations of a reference, a control network and a loss.

>>> from sde_control.targets import Funnel
>>> sampler = DIS(Funnel(dim=10))
>>> history = sampler.fit(iterations=5000, batch_size=512, loss="lv")
>>> x = sampler.sample(10_000)
>>> est = sampler.estimate_log_z(10_000)   # est.log_z, est.elbo, est.ess, est.eubo
>>> sampler.save("funnel.pt"); sampler = DIS.load("funnel.pt")
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path as FilePath
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .controls import ControlMLP, ScoreInformedControl
from .device import like
from .estimators import LogZEstimate
from .integrate import simulate
from .losses import LOSSES
from .references import ForwardReference, Reference, TimeReversalReference, time_grid
from .sdes import VP, ScaledBrownian
from .target import Target, TargetError, validate_target
from .training import Trainer
from .weights import log_weight, path_from_states, reference_paths_from

CLIP_SCHEDULE = ((0, 10.0), (200, 50.0), (400, 250.0))
"""The DIS paper's clipping of the control terms: 10, then 50 after step 200, 250 after step 400."""


class Sampler:
    """A controlled SDE from a reference process to ``target``, trained by a path-space loss.

    Subclasses (:class:`PIS`, :class:`DIS`, :class:`DDS`) choose the reference and the guidance
    of the score-informed control. ``control`` is ``"score"`` (score-informed network),
    ``"mlp"`` (plain network) or an ``nn.Module`` mapping ``(x, s)`` to a control of ``x``'s shape.
    """

    adjoint_method: str | None = "reversible_heun"
    """Solver of ``fit(adjoint=True)`` (:func:`~sde_control.integrate.simulate_continuous`); ``None``
    where the adjoint gives no usable gradient (:class:`DIS`)."""

    def __init__(self, target: Target, config: dict[str, Any]):
        validate_target(target)
        self.target, self.config = target, config
        self.reference = self._reference()
        steps, control, width, depth = (config[k] for k in ("steps", "control", "width", "depth"))
        self.steps = steps
        time_grid(self.reference.T, steps)  # validates steps
        if isinstance(control, nn.Module):
            self.control = control
        elif control == "score":
            self.control = self._score_control(width, depth)
        elif control == "mlp":
            self.control = ControlMLP(target.dim, width, depth)
        else:
            raise ValueError(f"control must be 'score', 'mlp' or an nn.Module, got {control!r}")
        self._check_control()
        self.trainer = Trainer(self.control)

    def _reference(self) -> Reference:
        raise NotImplementedError

    def _score_control(self, width: int, depth: int) -> nn.Module:
        raise NotImplementedError

    def _check_control(self) -> None:
        x = self.reference.sample_initial(4, self.device)
        with torch.no_grad():
            u = self.control(x, torch.zeros((), device=self.device))
        if u.shape != x.shape:
            raise TargetError(f"the control maps states of shape {tuple(x.shape)} to {tuple(u.shape)}; they must match")

    @property
    def device(self) -> torch.device:
        return next(self.control.parameters(), torch.empty(0)).device

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per training iteration (loss, gradient norm, learning rate, time, ...)."""
        return self.trainer.history

    def to(self, device: torch.device | str) -> Sampler:
        """Move target and networks (call before :meth:`fit`)."""
        self.target.to(device)
        self.control.to(device)
        if self.trainer.ema is not None:
            self.trainer.ema.to(device)
        return self

    # ------------------------------------------------------------------ training
    def fit(
        self,
        iterations: int,
        batch_size: int = 512,
        loss: str = "lv",
        *,
        steps: int | Sequence[int] | None = None,
        lr: float = 5e-3,
        weight_decay: float = 1e-7,
        grad_clip: float | None = 1.0,
        lr_final: float = 0.02,
        clip_schedule: Sequence[tuple[int, float]] = CLIP_SCHEDULE,
        adjoint: bool = False,
        progress: bool = True,
        evaluate_every: int | None = None,
        eval_samples: int = 2000,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 500,
        resume: bool = True,
        cuda_graph: bool = False,
    ) -> list[dict[str, Any]]:
        """Train the control; returns the training history (also at :attr:`history`).

        Args:
            iterations: gradient steps of this run.
            batch_size: paths per step.
            loss: ``"lv"`` (log-variance) or ``"kl"``.
            steps: time steps; an int, or a sequence of step counts used for equal shares of the
                run (the DIS paper: ``(100, 200, 400, 800)``). Default: the sampler's ``steps``.
            lr, weight_decay, grad_clip, lr_final: optimiser settings (see :class:`Trainer`).
            clip_schedule: ``(iteration, c)`` pairs for the control's clipping.
            adjoint: KL loss through ``torchsde.sdeint_adjoint`` (memory flat in ``steps``).
            progress: show a progress bar with the loss and the batch's log Z estimate.
            evaluate_every: also estimate log Z with ``eval_samples`` fresh paths of the EMA
                control every so many steps.
            checkpoint: file written every ``checkpoint_every`` steps and at the end. With
                ``resume`` and an existing file from an interrupted run of the same length,
                training continues where it stopped.
            cuda_graph: on a CUDA device, capture each training step in a CUDA graph and replay
                it (recaptured when the step count or clip changes); losses are read and checked
                every 25 steps and the progress bar shows no batch log Z. Without a CUDA device
                the same steps run eagerly, with a warning (:mod:`sde_control.graphs`).
        """
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        if adjoint and loss != "kl":
            raise ValueError("adjoint=True applies to the KL loss only (the log-variance loss has no path gradient)")
        if adjoint and self.adjoint_method is None:
            raise ValueError(f"{type(self).__name__} cannot be trained through the adjoint (see its docstring: the "
                             "gradient is unusable on its contracting drift); use adjoint=False")
        if adjoint and cuda_graph:
            raise ValueError("cuda_graph=True needs a graph-safe loss: the adjoint solver is not (use adjoint=False)")
        if cuda_graph and self.device.type != "cuda":
            warnings.warn("cuda_graph=True without a CUDA device: no graph is captured, the steps run eagerly "
                          "with the same deferred loss checks", stacklevel=2)
        if batch_size < 2:
            raise ValueError(f"batch_size must be at least 2, got {batch_size}")
        schedule = [steps or self.steps] if isinstance(steps, int) or steps is None else list(steps)
        for n in schedule:
            time_grid(self.reference.T, n)
        self.trainer.configure(lr=lr, weight_decay=weight_decay, grad_clip=grad_clip, lr_final=lr_final)
        if checkpoint is not None and resume and os.path.exists(checkpoint):
            self.trainer.load_state_dict(torch.load(checkpoint, map_location=self.device, weights_only=False)["trainer"])
            resume_run = True
        else:
            resume_run = False

        def steps_at(iteration: int) -> int:
            phase = (iteration - self.trainer.run["start"]) * len(schedule) // self.trainer.run["iterations"]
            return schedule[min(phase, len(schedule) - 1)]

        def step_loss(iteration: int) -> tuple[Tensor, dict[str, float]]:
            self._set_clip(_clip_at(clip_schedule, iteration))
            grid = time_grid(self.reference.T, steps_at(iteration))
            x0 = self.reference.sample_initial(batch_size, self.device)
            options = {"adjoint": True, "adjoint_method": self.adjoint_method} if adjoint else {}
            out = LOSSES[loss](self.target, self.reference, self.control, x0, grid, graph_safe=cuda_graph, **options)
            if cuda_graph:
                return out.loss, {}
            batch = LogZEstimate.from_log_weights(out.log_weights)
            return out.loss, {"log_z": batch.log_z, "ess": batch.ess}

        def evaluate() -> dict[str, float]:
            est = self.estimate_log_z(eval_samples, eubo=False)
            return {"eval_log_z": est.log_z, "eval_elbo": est.elbo, "eval_ess": est.ess}

        return self.trainer.fit(
            step_loss,
            iterations,
            resume=resume_run,
            progress=progress,
            description=f"{type(self).__name__} ({loss})",
            evaluate=evaluate if evaluate_every else None,
            evaluate_every=evaluate_every or 1,
            checkpoint=None if checkpoint is None else lambda: self.save(checkpoint),
            checkpoint_every=checkpoint_every,
            graph_key=(lambda it: (steps_at(it), _clip_at(clip_schedule, it))) if cuda_graph else None,
        )

    def _set_clip(self, value: float) -> None:
        for module in (self.control, self.trainer.averaged):
            if hasattr(module, "clip"):
                module.clip = value

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def simulate(self, n: int, steps: int | None = None, batch_size: int = 10_000) -> tuple[Tensor, Tensor]:
        """``n`` samples ``X_T`` of the trained (EMA) control and their log importance weights."""
        grid = time_grid(self.reference.T, steps or self.steps)
        control = self.trainer.averaged
        samples, log_weights = [], []
        for size in _chunks(n, batch_size):
            path = simulate(control, self.reference, self.reference.sample_initial(size, self.device), grid)
            samples.append(path.terminal)
            log_weights.append(log_weight(self.target, self.reference, path))
        return torch.cat(samples), torch.cat(log_weights)

    def sample(self, n: int, steps: int | None = None) -> Tensor:
        """``n`` approximate samples from ``target``, shape (n, dim)."""
        return self.simulate(n, steps)[0]

    @torch.no_grad()
    def estimate_log_z(self, n: int = 10_000, steps: int | None = None, eubo: bool = True) -> LogZEstimate:
        """Importance-sampled log Z, ELBO and ESS from ``n`` paths; the EUBO from ``n`` paths of
        the target-started reference when the target has exact samples (and ``eubo``)."""
        _, log_weights = self.simulate(n, steps)
        target_log_weights = None
        if eubo and self.target.has_exact_samples:
            grid = time_grid(self.reference.T, steps or self.steps)
            target_log_weights = torch.cat([
                log_weight(self.target, self.reference, path_from_states(
                    self.trainer.averaged, self.reference,
                    reference_paths_from(self.reference, self.target.sample(size).to(self.device), grid), grid))
                for size in _chunks(n, 10_000)
            ])
        return LogZEstimate.from_log_weights(log_weights, target_log_weights, self.target.log_Z)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write configuration, target, weights, optimiser state and history to ``path`` (atomically)."""
        path = FilePath(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"sampler": type(self).__name__, "config": self.config, "target": self.target,
                 "trainer": self.trainer.state_dict()}
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, target: Target | None = None, map_location: str = "cpu") -> Sampler:
        """Rebuild a sampler saved by :meth:`save` (with the saved target unless ``target`` is given).

        The file is unpickled (it holds the target object): load only files you trust.
        """
        state = torch.load(path, map_location=map_location, weights_only=False)
        if state["sampler"] != cls.__name__ and cls is not Sampler:
            raise ValueError(f"{path} holds a {state['sampler']} sampler, not a {cls.__name__}")
        sampler_cls = {c.__name__: c for c in (PIS, DIS, DDS)}[state["sampler"]]
        sampler = sampler_cls(target if target is not None else state["target"], **state["config"])
        sampler.trainer.load_state_dict(state["trainer"])
        return sampler


def _clip_at(schedule: Sequence[tuple[int, float]], iteration: int) -> float:
    value = schedule[0][1]
    for start, clip in schedule:
        if iteration >= start:
            value = clip
    return value


def _chunks(n: int, size: int) -> list[int]:
    if n < 1:
        raise ValueError(f"the number of samples must be positive, got {n}")
    return [min(size, n - i) for i in range(0, n, size)]


def _target_score(target: Target):
    def score(x: Tensor, s: Tensor) -> Tensor:
        return target.score(x)

    return score


class DIS(Sampler):
    r"""Time-reversed diffusion sampler (Berner, Richter, Ullrich): the reference is the time
    reversal of a VP noising SDE (``beta`` from ``beta_min`` to ``beta_max`` over ``[0, T]``)
    started from ``N(0, I)``; the control's guidance is ``sigma(s) lerp(-x, grad log rho(x), s/T)``.

    ``fit(adjoint=True)`` is refused: the continuous adjoint does not give usable gradients on
    DIS's strongly contracting guided drift. Reversible Heun reconstructs the path exactly but its
    forward solution is wrong (its parasitic mode grows: the KL objective of an untrained control
    on the GMM is 19.3 against 3.1 by backpropagation at 200 steps); the Euler adjoint re-solves the
    contracting state backwards and its gradient is off by a factor (relative error 9 on the GMM and
    47 on the Funnel at 200 steps, still 23 on the Funnel at 1600). Measured by
    ``benchmarks/adjoint_accuracy.py`` (table in ``benchmarks/RESULTS.md``). Train DIS by
    backpropagation.
    """

    adjoint_method = None

    def __init__(
        self,
        target: Target,
        *,
        steps: int = 200,
        beta_min: float = 0.1,
        beta_max: float = 10.0,
        T: float = 1.0,
        integrator: str = "euler",
        control: str | nn.Module = "score",
        width: int = 64,
        depth: int = 4,
    ):
        super().__init__(target, dict(steps=steps, beta_min=beta_min, beta_max=beta_max, T=T, integrator=integrator,
                                      control=control, width=width, depth=depth))

    def _reference(self) -> Reference:
        c = self.config
        return TimeReversalReference(VP(c["beta_min"], c["beta_max"], c["T"]), self.target.dim, integrator=c["integrator"])

    def _score_control(self, width: int, depth: int) -> nn.Module:
        target, reference = self.target, self.reference

        def interpolated_score(x: Tensor, s: Tensor) -> Tensor:
            prior_score = -(x - like(reference.prior_mean, x)) / reference.prior_std**2
            return torch.lerp(prior_score, target.score(x), s / reference.T)

        def sigma(s: Tensor) -> Tensor:
            return reference.diffusion(s)

        return ScoreInformedControl(target.dim, interpolated_score, sigma, weight_bias=1.0, width=width, depth=depth)


class PIS(Sampler):
    r"""Path integral sampler (Zhang & Chen): the reference is ``sigma W`` from the origin
    (``sigma^2 = 0.2``, ``T = 5``); the control's guidance is the target score."""

    def __init__(
        self,
        target: Target,
        *,
        steps: int = 200,
        sigma2: float = 0.2,
        T: float = 5.0,
        control: str | nn.Module = "score",
        width: int = 64,
        depth: int = 4,
    ):
        super().__init__(target, dict(steps=steps, sigma2=sigma2, T=T, control=control, width=width, depth=depth))

    def _reference(self) -> Reference:
        return ForwardReference(ScaledBrownian(self.config["sigma2"], self.config["T"]), self.target.dim, initial_std=0.0)

    def _score_control(self, width: int, depth: int) -> nn.Module:
        return ScoreInformedControl(self.target.dim, _target_score(self.target), weight_bias=0.01, width=width, depth=depth)


class DDS(Sampler):
    r"""Denoising diffusion sampler (Vargas, Grathwohl, Doucet): the reference is the stationary
    VP/OU process from ``N(0, I)`` read from noise to data (``beta`` from ``beta_max`` down to
    ``beta_min``), stepped with its exact transition; the guidance is the target score."""

    def __init__(
        self,
        target: Target,
        *,
        steps: int = 200,
        beta_min: float = 0.1,
        beta_max: float = 10.0,
        T: float = 1.0,
        control: str | nn.Module = "score",
        width: int = 64,
        depth: int = 4,
    ):
        super().__init__(target, dict(steps=steps, beta_min=beta_min, beta_max=beta_max, T=T, control=control,
                                      width=width, depth=depth))

    def _reference(self) -> Reference:
        c = self.config
        return ForwardReference(VP(c["beta_min"], c["beta_max"], c["T"]).time_flipped(), self.target.dim, initial_std=1.0)

    def _score_control(self, width: int, depth: int) -> nn.Module:
        return ScoreInformedControl(self.target.dim, _target_score(self.target), weight_bias=0.01, width=width, depth=depth)
