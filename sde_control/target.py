"""The target protocol: an unnormalised density ``rho`` on R^d.

A sampler only needs ``log rho``; its gradient (the *score*) comes from autograd unless a
subclass provides a closed form. ``log_Z`` (the exact log normalising constant) and ``sample``
(exact samples) are optional and used for evaluation only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .specs import Specified


class TargetError(ValueError):
    """A target returned something a sampler cannot use (wrong shape, NaN, wrong dimension)."""


class Target(Specified, nn.Module):
    """Unnormalised density ``rho(x) = Z p(x)`` on R^dim.

    Subclasses set ``dim`` (an int) and implement :meth:`log_prob`. They may override
    :meth:`score` with a closed form, set ``log_Z`` when it is known, and implement
    :meth:`sample` when exact samples are available.

    Targets are :class:`torch.nn.Module` objects so that ``target.to(device)`` moves their
    tensors (register them as buffers). A checkpoint names a target by its spec (its class's import path and
    constructor arguments, :mod:`sde_control.specs`); a target class defined in ``__main__`` has none and is
    passed back when loading (``DIS.load(path, target=MyTarget())``).
    """

    dim: int
    log_Z: float | None = None

    def log_prob(self, x: Tensor) -> Tensor:
        """``log rho(x)`` for ``x`` of shape (batch, dim); returns shape (batch,)."""
        raise NotImplementedError(f"{type(self).__name__} must implement log_prob(x)")

    def score(self, x: Tensor) -> Tensor:
        """``grad_x log rho(x)``, shape (batch, dim), by autograd.

        When ``x`` is part of an autograd graph (it requires grad) the result is differentiable
        with respect to whatever ``x`` depends on, so losses that backpropagate through a
        simulated path see the dependence of the score on the path.
        """
        with torch.enable_grad():
            inner = x if x.requires_grad else x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(inner).sum(), inner, create_graph=x.requires_grad)
        return grad

    def sample(self, n: int) -> Tensor:
        """``n`` exact samples from ``rho / Z``, shape (n, dim)."""
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler")

    @property
    def has_exact_samples(self) -> bool:
        return type(self).sample is not Target.sample

    def forward(self, x: Tensor) -> Tensor:
        return self.log_prob(x)

    def extra_repr(self) -> str:
        log_z = "unknown" if self.log_Z is None else f"{self.log_Z:.6g}"
        return f"dim={self.dim}, log_Z={log_z}"


class CountingTarget(Target):
    """A view of ``target`` that counts its evaluations: one evaluation is one point at which the log density or its
    gradient is computed (a batch call counts its rows; a score computed through autograd counts once, though it
    evaluates the log density too).

    A score asked for again at the same points (the same tensor storage, unchanged, without autograd history)
    is served from a one-entry cache and not counted again: a chain that scores its state at the end of one step
    and at the start of the next (CMCD's backward and forward kernels) evaluates it once.
    """

    def __init__(self, target: Target):
        super().__init__()
        self.wrapped = target
        self.count = 0
        self._cached: tuple[tuple, Tensor, Tensor] | None = None

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.wrapped.dim

    @property
    def log_Z(self) -> float | None:  # type: ignore[override]
        return self.wrapped.log_Z

    @property
    def has_exact_samples(self) -> bool:
        return self.wrapped.has_exact_samples

    def sample(self, n: int) -> Tensor:
        return self.wrapped.sample(n)

    def log_prob(self, x: Tensor) -> Tensor:
        self.count += x.shape[0]
        return self.wrapped.log_prob(x)

    def score(self, x: Tensor) -> Tensor:
        key = (x.data_ptr(), x.shape, x.stride(), x.device, x._version) if not x.requires_grad else None
        if key is not None and self._cached is not None and self._cached[0] == key:
            return self._cached[2]
        self.count += x.shape[0]
        out = self.wrapped.score(x)
        self._cached = None if key is None else (key, x, out)  # holding x keeps its storage from being reused
        return out


def target_name(target: Target) -> str:
    """The class name of a target (of the wrapped one for a :class:`CountingTarget`), for messages."""
    return type(getattr(target, "wrapped", target)).__name__


def checked_log_prob(target: Target, x: Tensor) -> Tensor:
    """``target.log_prob(x)`` with its output validated: shape (batch,), no NaN, no +inf.

    ``-inf`` (zero density) is allowed. Raises :class:`TargetError` naming the target and an
    offending input, so a broken density fails loudly instead of poisoning a training run.
    """
    name = target_name(target)
    if x.ndim != 2 or x.shape[1] != target.dim:
        raise TargetError(f"{name} expects inputs of shape (batch, {target.dim}), got {tuple(x.shape)}")
    out = target.log_prob(x)
    if not isinstance(out, Tensor) or out.shape != (x.shape[0],):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise TargetError(
            f"{name}.log_prob must return shape (batch,) = ({x.shape[0]},) "
            f"for inputs of shape {tuple(x.shape)}, got {shape}"
        )
    bad = torch.isnan(out) | (out == math.inf)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise TargetError(
            f"{name}.log_prob returned {out[i].item()} for {int(bad.sum())} of {x.shape[0]} inputs, "
            f"e.g. at x = {x[i].detach().cpu().tolist()}"
        )
    return out


def validate_target(target: Target, probe_size: int = 8) -> None:
    """Check that ``target`` follows the protocol, on a probe batch of standard normal points.

    Raises :class:`TargetError` with a message that says what to fix.
    """
    if not isinstance(target, Target):
        raise TargetError(f"expected a targets.Target, got {type(target).__name__}")
    dim = getattr(target, "dim", None)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise TargetError(f"{type(target).__name__}.dim must be a positive int, got {dim!r}")
    x = torch.randn(probe_size, dim, generator=torch.Generator().manual_seed(0)).to(_device_of(target))
    with torch.no_grad():
        checked_log_prob(target, x)
    score = target.score(x)
    if score.shape != x.shape:
        raise TargetError(f"{type(target).__name__}.score must return shape {tuple(x.shape)}, got {tuple(score.shape)}")


def _device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")
