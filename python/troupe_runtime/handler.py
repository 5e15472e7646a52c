"""Loading the user's handler from a ``module.function`` or ``module.Class.method`` spec.

Rules:

- ``module.function``: the module is imported and the attribute must be callable with one
  positional argument (the payload).
- ``module.Class.method``: the class is built **once**, with no arguments, at load time;
  the handler is the bound method of that one instance.
- The module part may itself be dotted (``pkg.sub.mod.fn``). The longest importable prefix
  wins between "everything but the last name" and "everything but the last two names".
- A spec naming a class alone (``module.Class``) is refused: name the method.

Whether the handler is sync, async, a generator or an async generator is decided per call
from what calling it returns (see :mod:`troupe_runtime.invoke`); :attr:`Handler.kind` is
only informational.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_SPEC_RE = re.compile(rf"{_NAME}(\.{_NAME})+")


class HandlerLoadError(Exception):
    """The handler spec is malformed or the handler cannot be imported or built."""


@dataclass(frozen=True)
class Handler:
    """A loaded handler: ``func(payload)`` plus a description for logs."""

    spec: str
    func: Callable[[Any], Any]

    @property
    def kind(self) -> str:
        """``function``, ``coroutine``, ``generator`` or ``async generator``."""
        return handler_kind(self.func)

    @classmethod
    def from_callable(cls, func: Callable[[Any], Any], spec: str | None = None) -> "Handler":
        """Wrap an already-loaded callable (tests, embedding)."""
        return cls(spec=spec or getattr(func, "__qualname__", repr(func)), func=func)


def handler_kind(func: Callable[..., Any]) -> str:
    """Describe ``func`` by how it will run."""
    if inspect.isasyncgenfunction(func):
        return "async generator"
    if inspect.isgeneratorfunction(func):
        return "generator"
    if inspect.iscoroutinefunction(func):
        return "coroutine"
    return "function"


def _import(module_name: str) -> ModuleType | None:
    """Import ``module_name``; ``None`` only when that very module does not exist."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            return None
        raise HandlerLoadError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    except Exception as exc:  # the user's module raised while being imported
        raise HandlerLoadError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc


def _check_one_argument(func: Callable[..., Any], spec: str) -> None:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return
    try:
        signature.bind(None)
    except TypeError as exc:
        raise HandlerLoadError(
            f"handler {spec!r} must accept exactly one positional argument (the payload); "
            f"its signature is {signature}: {exc}"
        ) from None


def load_handler(spec: str) -> Handler:
    """Import and (for ``Class.method``) instantiate the handler named by ``spec``."""
    spec = (spec or "").strip()
    if not _SPEC_RE.fullmatch(spec):
        raise HandlerLoadError(
            f"handler spec {spec!r} is not of the form module.function or module.Class.method"
        )
    parts = spec.split(".")

    module = _import(".".join(parts[:-1]))
    if module is not None:
        attrs = parts[-1:]
    elif len(parts) >= 3:
        module = _import(".".join(parts[:-2]))
        attrs = parts[-2:]
    if module is None:
        candidates = [".".join(parts[:-1])]
        if len(parts) >= 3:
            candidates.append(".".join(parts[:-2]))
        raise HandlerLoadError(
            f"handler {spec!r}: no module named {' or '.join(repr(c) for c in candidates)} "
            "(is it on PYTHONPATH?)"
        )

    owner: Any = module
    if len(attrs) == 2:
        class_name, method_name = attrs
        cls = getattr(module, class_name, None)
        if cls is None:
            raise HandlerLoadError(
                f"handler {spec!r}: module {module.__name__!r} has no attribute {class_name!r}"
            )
        if not inspect.isclass(cls):
            raise HandlerLoadError(
                f"handler {spec!r}: {module.__name__}.{class_name} is not a class, so "
                f"{method_name!r} cannot be one of its methods"
            )
        try:
            owner = cls()
        except Exception as exc:
            raise HandlerLoadError(
                f"handler {spec!r}: building {class_name}() with no arguments failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        name = method_name
    else:
        name = attrs[0]

    func = getattr(owner, name, None)
    if func is None:
        where = module.__name__ if owner is module else type(owner).__qualname__
        raise HandlerLoadError(f"handler {spec!r}: {where!r} has no attribute {name!r}")
    if inspect.isclass(func):
        raise HandlerLoadError(
            f"handler {spec!r} names a class; use module.Class.method to name the method "
            "to call on its single instance"
        )
    if not callable(func):
        raise HandlerLoadError(f"handler {spec!r} is a {type(func).__name__}, not callable")
    _check_one_argument(func, spec)
    return Handler(spec=spec, func=func)
