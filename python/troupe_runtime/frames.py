"""Route advance and frame building (protocol section 2, rule 2; section 4 frames).

A frame is what the runtime hands back for one output of the handler::

    {"payload": ..., "route": {"prev", "curr", "next"}, "headers"?: {...}, "status"?: {...}}

The route in a frame is already advanced: ``prev + [curr]``, ``next[0]`` (or ``""``),
``next[1:]``. ``headers`` and ``status`` are copied from the envelope as it stands when
the frame is built (a generator may have changed them with ``SET``/``DEL``), and left out
when the envelope has none. An empty ``curr`` (a finished route) is not appended to
``prev``.
"""

from __future__ import annotations

from typing import Any


def advance_route(route: dict[str, Any]) -> dict[str, Any]:
    """The route after this hop; ``route`` itself is not modified."""
    curr = route["curr"]
    prev = route["prev"] + [curr] if curr else list(route["prev"])
    nxt = route["next"]
    return {"prev": prev, "curr": nxt[0] if nxt else "", "next": nxt[1:]}


def make_frame(payload: Any, envelope: dict[str, Any]) -> dict[str, Any]:
    """One frame carrying ``payload`` for the envelope's current state.

    ``headers``/``status`` are shared, not copied: callers encode the frame before the
    envelope can change again.
    """
    frame: dict[str, Any] = {"payload": payload, "route": advance_route(envelope["route"])}
    headers = envelope.get("headers")
    if headers is not None:
        frame["headers"] = headers
    status = envelope.get("status")
    if status is not None:
        frame["status"] = status
    return frame
