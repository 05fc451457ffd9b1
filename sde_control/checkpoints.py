"""One checkpoint format for every sampler and generative model, written atomically and read without unpickling.

A checkpoint is a dict of data only (numbers, strings, tensors, lists and dicts of them)::

    {"format": FORMAT, "model": registry name, "spec": the model's Spec as data (targets, SDEs and networks nested),
     "training": the training configuration as a dict, "state": state dicts and the training position}

so ``torch.load(path, weights_only=True)`` reads it. :func:`save` writes to a temporary file beside the target,
flushes it to disk and renames it over the target: a crash or a failed save never leaves a half-written file in
place of the previous good one. :func:`load` turns a truncated or corrupt file into a :class:`CheckpointError` that
says so. :func:`check_resumable` compares what a resumed run asks for with what the file holds and names every
difference, apart from the fields a resume may change.
"""

from __future__ import annotations

import importlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch

from .specs import SpecError, Specified, from_data, spec_of

FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or belongs to another model, target or configuration."""


def save(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``{"format": FORMAT, **payload}`` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save({"format": FORMAT, **payload}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` (``weights_only=True``: nothing is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): "
                              f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}. "
                              f"Delete it, or point to another file, to start afresh.") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path} is not a checkpoint of this library's format {FORMAT} (found {found!r}); "
                              f"files written by earlier versions cannot be read")
    return data


def differences(saved: Any, requested: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested data values (``"training.lr: 0.005 in the file, 0.001
    now"``)."""
    if isinstance(saved, dict) and isinstance(requested, dict):
        out = []
        for key in sorted(set(saved) | set(requested), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                out.append(f"{name}: absent in the file, {requested[key]!r} now")
            elif key not in requested:
                out.append(f"{name}: {saved[key]!r} in the file, absent now")
            else:
                out += differences(saved[key], requested[key], name)
        return out
    if isinstance(saved, (list, tuple)) and isinstance(requested, (list, tuple)) and len(saved) == len(requested):
        return [d for i, (a, b) in enumerate(zip(saved, requested)) for d in differences(a, b, f"{prefix}[{i}]")]
    if isinstance(saved, torch.Tensor) or isinstance(requested, torch.Tensor):
        same = (isinstance(saved, torch.Tensor) and isinstance(requested, torch.Tensor) and saved.shape == requested.shape
                and torch.equal(saved.cpu(), requested.cpu()))
        return [] if same else [f"{prefix}: a different tensor in the file"]
    if saved != requested and not (isinstance(saved, (list, tuple)) and isinstance(requested, (list, tuple))
                                   and list(saved) == list(requested)):
        return [f"{prefix}: {saved!r} in the file, {requested!r} now"]
    return []


def check_resumable(path: str | os.PathLike, saved: dict[str, Any], requested: dict[str, Any],
                    may_change: Iterable[str]) -> None:
    """Raise :class:`CheckpointError` naming every difference between ``saved`` and ``requested`` (nested data with
    the keys ``model``, ``spec`` and ``training``) other than those of ``training`` fields in ``may_change``."""
    allowed = {f"training.{name}" for name in may_change}
    found = [d for d in differences(saved, requested) if d.split(":")[0] not in allowed]
    if found:
        raise CheckpointError(
            f"{path} holds another run, so it cannot be resumed:\n  " + "\n  ".join(found) +
            f"\nA resume may change only {', '.join(sorted(may_change))}. Use another checkpoint file, or delete "
            f"this one to start afresh.")


_MODELS: dict[str, type] = {}


class Checkpointable(Specified):
    """A model (sampler or generative model) saved and loaded in the one checkpoint format.

    Every subclass is registered under its import path, the one registry from which :meth:`load` rebuilds models;
    the model's constructor arguments come from its spec (:mod:`sde_control.specs`). Subclasses provide
    ``state_dict()`` / ``load_state_dict(state)`` (training position included) and set ``self.training_config``
    (a :class:`~sde_control.training.TrainConfig` or ``None``) when they train.
    """

    training_config = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _MODELS[f"{cls.__module__}:{cls.__qualname__}"] = cls

    def checkpoint_header(self, training: Any = None) -> dict[str, Any]:
        """What identifies a run: the model's class, its spec (targets, SDEs and networks nested) and the training
        configuration (``training`` or the last run's)."""
        spec = spec_of(self)
        if spec is None:
            raise CheckpointError(f"{type(self).__qualname__} is defined where a file cannot name it (in __main__ or "
                                  f"inside a function); define it in an importable module to save it")
        training = self.training_config if training is None else training
        return {"model": spec.factory, "spec": spec.as_data(), "training": None if training is None else training.as_dict()}

    def save(self, path: str | os.PathLike) -> Path:
        """Write configuration, weights, optimiser state and training position to ``path`` (atomically)."""
        return save(path, {**self.checkpoint_header(), "state": self.state_dict()})

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu", **given: Any):
        """Rebuild a model written by :meth:`save`; ``given`` supplies constructor arguments the file cannot hold
        (a target, SDE or network defined in ``__main__``: ``load(path, target=MyTarget())``) or replaces them."""
        data = load(path, map_location)
        model_cls = _model_class(data["model"])
        if not issubclass(model_cls, cls):
            raise CheckpointError(f"{path} holds a {model_cls.__qualname__}, not a {cls.__qualname__}")
        try:
            model = from_data(data["spec"]).build(**given)
        except SpecError as error:
            raise CheckpointError(f"{path}: {error}") from None
        model.load_state_dict(data["state"])
        if data["training"] is not None:
            model.training_config = type(model).training_config_class(**data["training"])
        return model

    def resume_from(self, path: str | os.PathLike, training: Any) -> bool:
        """Load the state of ``path`` if it exists and holds this run (:func:`check_resumable`); returns whether it
        did."""
        if not Path(path).exists():
            return False
        data = load(path, map_location=getattr(self, "device", "cpu"))
        check_resumable(path, {k: data[k] for k in ("model", "spec", "training")}, self.checkpoint_header(training),
                        type(training).RESUMABLE)
        self.load_state_dict(data["state"])
        return True


def _model_class(factory: str) -> type:
    if factory not in _MODELS:
        try:
            importlib.import_module(factory.partition(":")[0])
        except ImportError:
            pass
    if factory not in _MODELS:
        raise CheckpointError(f"the checkpoint names {factory!r}, which is not a model class of this library "
                              f"(or of an imported module)")
    return _MODELS[factory]
