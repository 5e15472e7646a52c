"""The ``details`` of a ``processing_error`` (a handler that raised).

``{"message": str(exc), "type": NAME, "mro": [NAME, ...], "traceback": "..."}``

Naming rule, the same for ``type`` and every ``mro`` entry: a class defined in
``builtins`` is named by its bare qualified name (``ValueError``, ``KeyError``); any other
class by ``module.qualname`` (``examples.handlers.TransientError``,
``asyncio.exceptions.CancelledError``). ``mro`` is the exception class's method resolution
order from the class itself up to and including ``BaseException``; ``object`` is left
out. Example: ``KeyError`` -> ``["KeyError", "LookupError", "Exception", "BaseException"]``.

The traceback is Python's usual text, with the runtime's own frames at its top removed so
that it starts in user code.
"""

from __future__ import annotations

import os
import traceback
from types import TracebackType
from typing import Any

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def type_name(cls: type) -> str:
    """``ValueError`` for builtins, ``module.Qual.Name`` for everything else."""
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def mro_names(cls: type) -> list[str]:
    """The names of ``cls.__mro__`` without ``object``."""
    return [type_name(c) for c in cls.__mro__ if c is not object]


def _user_traceback(tb: TracebackType | None) -> TracebackType | None:
    first = tb
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next
    return tb if tb is not None else first


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not hide the original error
        return f"<{type(exc).__qualname__}: str() failed>"


def error_details(exc: BaseException) -> dict[str, Any]:
    """Describe ``exc`` for the ``details`` object of a ``processing_error``."""
    cls = type(exc)
    tb = _user_traceback(exc.__traceback__)
    return {
        "message": _message(exc),
        "type": type_name(cls),
        "mro": mro_names(cls),
        "traceback": "".join(traceback.format_exception(cls, exc, tb)),
    }


def processing_error(exc: BaseException) -> dict[str, Any]:
    """The whole ``processing_error`` body (500 answer and SSE ``error`` event)."""
    return {"error": "processing_error", "details": error_details(exc)}
