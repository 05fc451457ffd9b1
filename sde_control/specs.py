"""Specs: how an object was built, as data a checkpoint can hold and ``torch.load(weights_only=True)`` can read.

A spec is the object's factory, as an import path (``"package.module:Class"`` or, for an alternative constructor,
``"package.module:Class.method"``), and the keyword arguments it was called with. Classes that derive from
:class:`Specified` (targets, linear SDEs, control networks, samplers, generative models) record their spec when
they are constructed, so nothing needs to list its own arguments a second time; an alternative constructor marks
itself with :func:`alternative_constructor`.

Arguments are kept as data: numbers, strings, ``None``, tensors, lists, tuples and dicts of them, and other
specified objects (nested as their own spec). An object whose arguments are not such data, or whose class cannot be
imported by name (defined in ``__main__`` or inside a function), has no spec; a checkpoint then records what is
missing and :meth:`Spec.build` asks for it by name (``load(path, target=...)``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

SPEC_KEY = "__spec__"
MISSING_KEY = "__missing__"


class SpecError(ValueError):
    """A spec cannot be written (unspecified argument) or built (missing object, unknown factory)."""


@dataclass(frozen=True)
class Spec:
    """``factory(**kwargs)``: the factory's import path and its keyword arguments (data, or nested specs)."""

    factory: str
    kwargs: dict[str, Any]

    def as_data(self) -> dict[str, Any]:
        """A plain dict for a checkpoint; arguments without a spec become ``{"__missing__": description}``."""
        return {SPEC_KEY: {"factory": self.factory, "kwargs": {k: _to_data(v) for k, v in self.kwargs.items()}}}

    def build(self, **given: Any) -> Any:
        """Call the factory, building nested specs first; ``given`` supplies (or replaces) top-level arguments,
        e.g. objects that had no spec."""
        missing = {k: v.what for k, v in self.kwargs.items() if isinstance(v, _Missing) and k not in given}
        if missing:
            raise SpecError(", ".join(f"{k} ({what})" for k, what in missing.items()) + " cannot be rebuilt from "
                            "the file: pass " + ", ".join(f"{k}=..." for k in missing) + " when loading")
        kwargs = {k: _build_nested(v) for k, v in self.kwargs.items() if k not in given}
        return resolve(self.factory)(**kwargs, **given)


@dataclass(frozen=True)
class _Missing:
    what: str


def spec_of(obj: Any) -> Spec | None:
    """The spec ``obj`` was built with, or ``None`` (not a :class:`Specified`, or not rebuildable by name)."""
    return getattr(obj, "_spec", None)


def from_data(data: Any) -> Any:
    """Inverse of :meth:`Spec.as_data` for a whole nested value: spec markers become :class:`Spec` objects (built
    by :meth:`Spec.build`, nested ones included), missing markers stay missing."""
    if isinstance(data, dict) and set(data) == {SPEC_KEY}:
        inner = data[SPEC_KEY]
        return Spec(inner["factory"], {k: from_data(v) for k, v in inner["kwargs"].items()})
    if isinstance(data, dict) and set(data) == {MISSING_KEY}:
        return _Missing(data[MISSING_KEY])
    if isinstance(data, dict):
        return {k: from_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(from_data(v) for v in data)
    return data


def _build_nested(value: Any) -> Any:
    if isinstance(value, Spec):
        return value.build()
    if isinstance(value, dict):
        return {k: _build_nested(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_build_nested(v) for v in value)
    return value


def resolve(factory: str) -> Callable[..., Any]:
    """The callable named ``"package.module:Qualified.name"``."""
    module_name, _, qualname = factory.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as error:
        raise SpecError(f"cannot import {factory!r}: {error}") from None
    return obj


def _to_data(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str, Tensor)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_data(v) for v in value)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _to_data(v) for k, v in value.items()}
    if isinstance(value, Spec):
        return value.as_data()
    if isinstance(value, _Missing):
        return {MISSING_KEY: value.what}
    spec = spec_of(value)
    if spec is not None:
        return spec.as_data()
    return {MISSING_KEY: _describe(value)}


def _describe(value: Any) -> str:
    cls = type(value)
    return f"a {cls.__module__}.{cls.__qualname__}, which has no spec"


def _importable(cls: type) -> bool:
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return False
    try:
        return resolve(f"{cls.__module__}:{cls.__qualname__}") is cls
    except SpecError:
        return False


class Specified:
    """Records ``Spec(import path of the class, keyword arguments)`` on every instance at construction."""

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        signature = inspect.signature(cls.__init__)
        kinds = {parameter.kind for parameter in signature.parameters.values()}
        if (args or kwargs or not _required(signature)) and _importable(cls) \
                and inspect.Parameter.VAR_POSITIONAL not in kinds:
            # (copy and pickle call __new__ without arguments; the copy's spec comes with its __dict__)
            bound = signature.bind(None, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop(next(iter(arguments)))  # self
            for name, parameter in signature.parameters.items():
                if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                    arguments.update(arguments.pop(name))
            obj._spec = Spec(f"{cls.__module__}:{cls.__qualname__}", arguments)
        return obj


def _required(signature: inspect.Signature) -> bool:
    """Whether ``__init__`` has required arguments besides ``self``."""
    return any(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               for p in list(signature.parameters.values())[1:])


def alternative_constructor(method: Callable[..., Any]) -> classmethod:
    """Make a classmethod that builds an instance record itself (with its arguments) as the instance's spec."""

    @functools.wraps(method)
    def wrapper(cls: type, *args: Any, **kwargs: Any) -> Any:
        obj = method(cls, *args, **kwargs)
        bound = inspect.signature(method).bind(cls, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(arguments)))  # cls
        if _importable(cls):
            obj._spec = Spec(f"{cls.__module__}:{cls.__qualname__}.{method.__name__}", arguments)
        return obj

    return classmethod(wrapper)
