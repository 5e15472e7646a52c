"""jq-like paths into the envelope, for the generator ``GET``/``SET``/``DEL`` protocol.

Grammar (a subset of jq's, plus bare keys with ``-`` for header names)::

    path     := "." | segment+
    segment  := "." key | "." '"' json-string '"' | "."? "[" index "]"
    key      := any characters except . [ ] " and whitespace   (e.g. x-request-id)
    index    := integer | integer? ":" integer? | json-string

Examples: ``.id``, ``.route.next``, ``.route.next[0]``, ``.route.next[-1]``,
``.route.prev[1:3]``, ``.headers.x-trace``, ``.headers["a.b"]``, ``.status.phase``,
``.payload.items[2].name``, ``.`` (the whole envelope).

Reading (``GET``) follows jq: a missing key, an index out of range, or a step through
``null`` gives ``None``; stepping into a value of the wrong type (a key of a list, an
index of an object) raises ``TypeError``. Values are returned as deep copies, so changing
them does not change the envelope.

Writing (``SET``, ``DEL``) is allowed only under ``.route.next``, ``.headers`` and
``.status``; any other path raises :class:`PermissionError` (see
:data:`WRITABLE_ROOTS`). Writes are checked before they are applied and leave the
envelope unchanged when they fail:

- ``.route.next`` must stay an array of strings; ``.headers`` and ``.status`` objects.
- ``SET`` creates missing objects along the way (``.headers.a.b``); an index may be at
  most the list's length (``len`` appends); a slice replaces that range and takes a list.
- ``DEL`` of a missing key or index is a no-op; ``DEL .route.next`` empties the list;
  ``DEL .headers`` / ``DEL .status`` removes the block; a slice deletes that range.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any, Union

Segment = Union[str, int, slice]

WRITABLE_ROOTS = (".route.next", ".headers", ".status")

_STRING = json.JSONDecoder()
_KEY_STOP = frozenset('.[]" \t\r\n')


class PathSyntaxError(ValueError):
    """The path does not follow the grammar above."""


def _read_string(path: str, i: int) -> tuple[str, int]:
    try:
        value, end = _STRING.raw_decode(path, i)
    except ValueError as exc:
        raise PathSyntaxError(f"bad quoted key in path {path!r}: {exc}") from None
    if not isinstance(value, str):
        raise PathSyntaxError(f"bad quoted key in path {path!r}")
    return value, end


def _int(text: str, path: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise PathSyntaxError(f"bad index {text.strip()!r} in path {path!r}") from None


def _read_bracket(path: str, i: int) -> tuple[Segment, int]:
    """Parse ``[...]`` starting at ``path[i] == "["``."""
    j = i + 1
    while j < len(path) and path[j] == " ":
        j += 1
    if j < len(path) and path[j] == '"':
        key, j = _read_string(path, j)
        while j < len(path) and path[j] == " ":
            j += 1
        if j >= len(path) or path[j] != "]":
            raise PathSyntaxError(f"missing ']' in path {path!r}")
        return key, j + 1
    end = path.find("]", j)
    if end < 0:
        raise PathSyntaxError(f"missing ']' in path {path!r}")
    body = path[j:end]
    if ":" in body:
        lo, _, hi = body.partition(":")
        start = _int(lo, path) if lo.strip() else None
        stop = _int(hi, path) if hi.strip() else None
        return slice(start, stop), end + 1
    return _int(body, path), end + 1


@lru_cache(maxsize=1024)
def parse_path(path: str) -> tuple[Segment, ...]:
    """Split a path into keys (``str``), indexes (``int``) and ``slice`` objects."""
    if not isinstance(path, str):
        raise TypeError(f"a path must be a string like '.route.next', got {type(path).__name__}")
    s = path.strip()
    if not s.startswith("."):
        raise PathSyntaxError(f"path {path!r} must start with '.'")
    if s == ".":
        return ()
    segments: list[Segment] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "[":
            seg, i = _read_bracket(s, i)
            segments.append(seg)
        elif c == ".":
            i += 1
            if i < n and s[i] == '"':
                key, i = _read_string(s, i)
                segments.append(key)
            elif i < n and s[i] == "[":
                continue
            else:
                start = i
                while i < n and s[i] not in _KEY_STOP:
                    i += 1
                if i == start:
                    raise PathSyntaxError(f"empty key in path {path!r}")
                segments.append(s[start:i])
        else:
            raise PathSyntaxError(f"unexpected {c!r} at position {i} in path {path!r}")
    return tuple(segments)


def _describe(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def get_path(envelope: dict[str, Any], path: str) -> Any:
    """Read ``path`` from the envelope (a deep copy of the value)."""
    current: Any = envelope
    for seg in parse_path(path):
        if current is None:
            return None
        if isinstance(seg, str):
            if not isinstance(current, dict):
                raise TypeError(f"cannot read key {seg!r} of a {_describe(current)} ({path})")
            current = current.get(seg)
        elif isinstance(seg, int):
            if not isinstance(current, list):
                raise TypeError(f"cannot index a {_describe(current)} with [{seg}] ({path})")
            if not -len(current) <= seg < len(current):
                return None
            current = current[seg]
        else:
            if not isinstance(current, (list, str)):
                raise TypeError(f"cannot slice a {_describe(current)} ({path})")
            current = current[seg]
    return copy.deepcopy(current)


def _writable_root(segments: tuple[Segment, ...], path: str) -> str:
    if segments[:1] in (("headers",), ("status",)):
        return segments[0]  # type: ignore[return-value]
    if segments[:2] == ("route", "next"):
        return "next"
    raise PermissionError(
        f"path {path!r} is read-only; a handler may write only under "
        + ", ".join(WRITABLE_ROOTS)
    )


def _assign(current: Any, segments: tuple[Segment, ...], value: Any, path: str) -> Any:
    """``current`` with ``value`` stored at ``segments``; mutates ``current`` (a copy)."""
    if not segments:
        return value
    seg, rest = segments[0], segments[1:]
    if isinstance(seg, str):
        if current is None:
            current = {}
        if not isinstance(current, dict):
            raise TypeError(f"cannot set key {seg!r} of a {_describe(current)} ({path})")
        current[seg] = _assign(current.get(seg), rest, value, path)
    elif isinstance(seg, int):
        if current is None:
            current = []
        if not isinstance(current, list):
            raise TypeError(f"cannot index a {_describe(current)} with [{seg}] ({path})")
        if -len(current) <= seg < len(current):
            current[seg] = _assign(current[seg], rest, value, path)
        elif seg == len(current):
            current.append(_assign(None, rest, value, path))
        else:
            raise IndexError(f"index {seg} out of range for a list of {len(current)} ({path})")
    else:
        if rest:
            raise PathSyntaxError(f"a slice must be the last segment of a write path ({path})")
        if not isinstance(current, list):
            raise TypeError(f"cannot slice a {_describe(current)} ({path})")
        if not isinstance(value, list):
            raise TypeError(f"a slice can only be set to a list, got {_describe(value)} ({path})")
        current[seg] = value
    return current


def _remove(current: Any, segments: tuple[Segment, ...]) -> None:
    """Delete ``segments`` from ``current`` (a copy); missing parts are a no-op."""
    seg, rest = segments[0], segments[1:]
    if rest:
        if isinstance(seg, str):
            child = current.get(seg) if isinstance(current, dict) else None
        elif isinstance(seg, int):
            ok = isinstance(current, list) and -len(current) <= seg < len(current)
            child = current[seg] if ok else None
        else:
            raise PathSyntaxError("a slice must be the last segment of a delete path")
        if child is not None:
            _remove(child, rest)
        return
    if isinstance(seg, str):
        if isinstance(current, dict):
            current.pop(seg, None)
    elif isinstance(current, list):
        if isinstance(seg, slice) or -len(current) <= seg < len(current):
            del current[seg]


def _check_root(root: str, value: Any, path: str) -> None:
    if root == "next":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f".route.next must stay a list of strings ({path})")
    elif not isinstance(value, dict):
        raise TypeError(f".{root} must stay an object ({path})")


def set_path(envelope: dict[str, Any], path: str, value: Any) -> None:
    """Store a deep copy of ``value`` at ``path``; see the module docstring for rules."""
    segments = parse_path(path)
    root = _writable_root(segments, path)
    if root == "next":
        new = _assign(list(envelope["route"]["next"]), segments[2:], copy.deepcopy(value), path)
        _check_root(root, new, path)
        envelope["route"]["next"] = new
    else:
        old = copy.deepcopy(envelope.get(root))
        new = _assign(old, segments[1:], copy.deepcopy(value), path)
        _check_root(root, new, path)
        envelope[root] = new


def delete_path(envelope: dict[str, Any], path: str) -> None:
    """Delete ``path``; see the module docstring for rules."""
    segments = parse_path(path)
    root = _writable_root(segments, path)
    if root == "next":
        if len(segments) == 2:
            envelope["route"]["next"] = []
            return
        new = list(envelope["route"]["next"])
        _remove(new, segments[2:])
        envelope["route"]["next"] = new
    elif len(segments) == 1:
        envelope.pop(root, None)
    elif envelope.get(root) is not None:
        new = copy.deepcopy(envelope[root])
        _remove(new, segments[1:])
        envelope[root] = new
