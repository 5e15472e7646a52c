"""Parsing and validating the envelope posted to ``/invoke``.

A body is rejected (answer ``400 msg_parsing_error``) when it is not UTF-8 JSON, not an
object, has no non-empty string ``id``, has no ``payload`` key (``null`` is a valid
payload), or has a ``route`` of the wrong shape. ``headers`` and ``status`` are optional
objects (``null`` counts as absent). JSON's non-standard ``NaN``/``Infinity`` literals are
refused too: they could not be written back out.

The route is accepted in two forms and always normalised to the current one:

- ``{"prev": [str], "curr": str, "next": [str]}`` (``prev``/``next`` default to ``[]``);
- the older ``{"actors": [str], "current": N}``, converted to ``prev = actors[:N]``,
  ``curr = actors[N]`` (or ``""`` when ``N == len(actors)``), ``next = actors[N+1:]``.
"""

from __future__ import annotations

import json
from typing import Any


class EnvelopeError(ValueError):
    """The body is not a valid envelope; :attr:`details` goes into the 400 answer."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.details: dict[str, Any] = {"message": message}
        if field is not None:
            self.details["field"] = field


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _string_list(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EnvelopeError(f"{field} must be an array of strings", field)
    return value


def normalize_route(route: Any) -> dict[str, Any]:
    """Validate ``route`` and return it in ``prev/curr/next`` form."""
    if not isinstance(route, dict):
        raise EnvelopeError("route must be an object", "route")
    if "actors" in route and "curr" not in route:
        actors = _string_list(route["actors"], "route.actors")
        current = route.get("current", 0)
        if type(current) is not int or not 0 <= current <= len(actors):
            raise EnvelopeError(
                f"route.current must be an integer between 0 and {len(actors)}", "route.current"
            )
        return {
            "prev": actors[:current],
            "curr": actors[current] if current < len(actors) else "",
            "next": actors[current + 1 :],
        }
    curr = route.get("curr")
    if not isinstance(curr, str):
        raise EnvelopeError("route.curr must be a string", "route.curr")
    route["prev"] = _string_list(route.get("prev", []), "route.prev")
    route["next"] = _string_list(route.get("next", []), "route.next")
    return route


def parse_envelope(body: bytes) -> dict[str, Any]:
    """Decode and validate ``body``; the returned dict is owned by the caller."""
    try:
        envelope = _DECODER.decode(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise EnvelopeError(f"body is not UTF-8: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError(f"body is not JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise EnvelopeError(f"envelope must be a JSON object, got {type(envelope).__name__}")
    envelope_id = envelope.get("id")
    if not isinstance(envelope_id, str) or not envelope_id:
        raise EnvelopeError("id must be a non-empty string", "id")
    if "route" not in envelope:
        raise EnvelopeError("route is missing", "route")
    envelope["route"] = normalize_route(envelope["route"])
    if "payload" not in envelope:
        raise EnvelopeError("payload is missing (null is allowed)", "payload")
    for field in ("headers", "status"):
        value = envelope.get(field)
        if value is not None and not isinstance(value, dict):
            raise EnvelopeError(f"{field} must be an object", field)
    return envelope
