"""JSON encoding of handler output.

Output is compact UTF-8 JSON on one line (``\\n`` inside strings is escaped, so a frame is
always a valid SSE ``data:`` line). Values that are not plain JSON are converted, in this
order:

==============================================  ===========================================
value                                           encoded as
==============================================  ===========================================
``enum.Enum`` member                            its ``.value`` (then encoded again)
dataclass instance                              object of its fields (like ``asdict``)
pydantic v2 model (has ``model_dump``)          ``model_dump(mode="json")``
``datetime``, ``date``, ``time``                ``isoformat()`` string
``timedelta``                                   ``total_seconds()`` number
``uuid.UUID``                                   its string form
``decimal.Decimal``                             **string** (``str(d)``), exact: no float rounding
``bytes``, ``bytearray``, ``memoryview``        standard base64 string
``set``, ``frozenset``                          list, sorted when the items are sortable
``pathlib.PurePath``                            its string form
object with ``__json__()``                      what ``__json__()`` returns
pydantic v1 model (``dict()`` + ``__fields__``)  ``.dict()``
object with ``tolist()`` (numpy arrays/scalars)  ``tolist()``
other ``collections.abc.Mapping``               ``dict(value)``
==============================================  ===========================================

Tuples become lists (standard ``json``). Anything else, non-finite floats (``NaN``,
``inf``), and circular structures raise :class:`EncodingError`, which the runtime reports
as a ``processing_error`` of type ``troupe_runtime.encoding.EncodingError`` (its MRO
includes ``TypeError``).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import json
import pathlib
import uuid
from collections.abc import Mapping
from typing import Any


class EncodingError(TypeError):
    """Handler output that cannot be written as JSON."""


def _default(obj: Any) -> Any:  # noqa: C901 - a flat dispatch table reads best
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    model_dump = getattr(obj, "model_dump", None)
    if callable(model_dump):
        return model_dump(mode="json")
    if isinstance(obj, (datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, datetime.timedelta):
        return obj.total_seconds()
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, decimal.Decimal):
        return str(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, (set, frozenset)):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    to_json = getattr(obj, "__json__", None)
    if callable(to_json):
        return to_json()
    if hasattr(obj, "__fields__") and callable(getattr(obj, "dict", None)):
        return obj.dict()
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"Object of type {type(obj).__qualname__} is not JSON serializable")


_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_default
)
_ASCII_ENCODER = json.JSONEncoder(
    ensure_ascii=True, separators=(",", ":"), allow_nan=False, default=_default
)


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact one-line UTF-8 JSON; raises :class:`EncodingError`."""
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise EncodingError(f"handler output is not JSON-encodable: {exc}") from exc
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: fall back to \\u escapes
        return _ASCII_ENCODER.encode(value).encode("ascii")
