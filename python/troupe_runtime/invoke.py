"""One ``POST /invoke``: envelope bytes in, a :class:`Reply` or :class:`StreamReply` out.

This module knows the protocol's answers but nothing about sockets or HTTP framing.

The handler is called with the envelope's **payload**. What it gives back decides the
answer:

- a generator or async generator -> ``200 text/event-stream`` (:class:`StreamReply`),
  driven by the yield protocol below;
- an awaitable (async function) -> awaited on the loop thread, then as below;
- ``None`` -> ``204`` (the pipeline ends here, route not advanced);
- any other value -> ``200 {"frames": [frame]}``, one frame with that value as payload;
- an exception (or output that cannot be encoded) -> ``500 processing_error``.

Yield protocol (each item a generator yields):

- ``("GET", path)``: the value at ``path`` is sent back into the generator;
- ``("SET", path, value)`` / ``("DEL", path)``: change the envelope (``None`` is sent back);
- ``("FLY", value)``: an ``upstream`` event with ``value`` (not routed);
- ``None``: ignored;
- any other value (normally a dict): a ``downstream`` event carrying a frame with that
  payload and the *current* envelope state (route advanced from the current
  ``route.next``, current ``headers``/``status``).

A bad control item (unknown verb, wrong arity, bad path syntax, a write outside
``.route.next``/``.headers``/``.status`` -> :class:`PermissionError`, an invalid value, a
payload that cannot be encoded) is **thrown into the generator** at its ``yield``: the
handler may catch it and go on; if it does not, the stream ends with an ``error`` event.
Every stream ends with ``done``; when the handler failed, an ``error`` event (same body
as a 500) comes right before it. The generator's return value is ignored.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Iterator

from .asyncbridge import END, AsyncSteps, LoopThread, SyncSteps
from .encoding import dumps
from .envelope import EnvelopeError, parse_envelope
from .errors import processing_error
from .frames import make_frame
from .handler import Handler
from .paths import delete_path, get_path, set_path

log = logging.getLogger("troupe_runtime.invoke")

JSON = "application/json"
EVENT_STREAM = "text/event-stream"


class Reply:
    """A complete answer: status, body bytes, content type."""

    __slots__ = ("status", "body", "content_type")

    def __init__(self, status: int, body: bytes = b"", content_type: str = JSON) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type

    def json(self) -> Any:
        """The body decoded (tests, logs)."""
        import json

        return json.loads(self.body) if self.body else None


class StreamReply:
    """A ``200 text/event-stream`` answer; :attr:`events` yields encoded SSE events and
    must be closed (``events.close()``) if not exhausted, which closes the generator."""

    __slots__ = ("events",)
    status = 200
    content_type = EVENT_STREAM

    def __init__(self, events: Iterator[bytes]) -> None:
        self.events = events


NO_CONTENT = Reply(204)
DONE_EVENT = b"event: done\ndata: {}\n\n"


def sse_event(name: str, data: bytes) -> bytes:
    """One SSE event; ``data`` is one line of JSON."""
    return b"event: " + name.encode("ascii") + b"\ndata: " + data + b"\n\n"


def _error_reply(exc: BaseException) -> Reply:
    return Reply(500, dumps(processing_error(exc)))


class Invoker:
    """Calls the handler for one envelope at a time (thread-safe, reentrant)."""

    def __init__(self, handler: Handler, loop: LoopThread | None = None) -> None:
        self.handler = handler
        self._func = handler.func
        self._loop = loop or LoopThread()

    def close(self) -> None:
        """Stop the asyncio loop thread, if it was started."""
        self._loop.close()

    def invoke(self, body: bytes) -> Reply | StreamReply:
        """Answer one ``/invoke`` body."""
        try:
            envelope = parse_envelope(body)
        except EnvelopeError as exc:
            log.info("rejected envelope: %s", exc)
            return Reply(400, dumps({"error": "msg_parsing_error", "details": exc.details}))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("invoke id=%s curr=%s", envelope["id"], envelope["route"]["curr"])
        try:
            result = self._func(envelope["payload"])
            if type(result) is not dict:
                if inspect.isgenerator(result):
                    return StreamReply(self._stream(SyncSteps(result), envelope))
                if inspect.isasyncgen(result):
                    return StreamReply(self._stream(AsyncSteps(result, self._loop), envelope))
                if inspect.isawaitable(result):
                    result = self._loop.await_(result)
                if result is None:
                    return NO_CONTENT
            return Reply(200, dumps({"frames": [make_frame(result, envelope)]}))
        except BaseException as exc:  # noqa: BLE001 - every handler failure is an answer
            self._log_failure(envelope, exc)
            return _error_reply(exc)

    def _log_failure(self, envelope: dict[str, Any], exc: BaseException) -> None:
        log.info("handler failed for id=%s: %s", envelope["id"], type(exc).__qualname__)
        log.debug("handler failure detail", exc_info=exc)

    def _control(self, item: Any, envelope: dict[str, Any]) -> tuple[bytes | None, Any]:
        """Act on one yielded item: (event to send or None, value to send back)."""
        if isinstance(item, tuple):
            verb = item[0] if item else None
            if verb == "GET" and len(item) == 2:
                return None, get_path(envelope, item[1])
            if verb == "SET" and len(item) == 3:
                set_path(envelope, item[1], item[2])
                return None, None
            if verb == "DEL" and len(item) == 2:
                delete_path(envelope, item[1])
                return None, None
            if verb == "FLY" and len(item) == 2:
                return sse_event("upstream", dumps(item[1])), None
            raise TypeError(
                f"unknown control tuple {item!r:.80}; expected ('GET', path), "
                "('SET', path, value), ('DEL', path) or ('FLY', data)"
            )
        if item is None:
            return None, None
        return sse_event("downstream", dumps(make_frame(item, envelope))), None

    def _stream(self, steps: SyncSteps | AsyncSteps, envelope: dict[str, Any]) -> Iterator[bytes]:
        """Drive the generator, yielding SSE events as it produces them."""
        send_value: Any = None
        to_throw: BaseException | None = None
        try:
            while True:
                try:
                    if to_throw is not None:
                        item = steps.throw(to_throw)
                    else:
                        item = steps.send(send_value)
                except BaseException as exc:  # noqa: BLE001 - the handler failed
                    self._log_failure(envelope, exc)
                    yield sse_event("error", dumps(processing_error(exc)))
                    break
                if item is END:
                    break
                to_throw = None
                send_value = None
                try:
                    event, send_value = self._control(item, envelope)
                except Exception as exc:  # noqa: BLE001 - goes back to the handler
                    to_throw = exc
                    continue
                if event is not None:
                    yield event
            yield DONE_EVENT
        finally:
            try:
                steps.close()
            except Exception:  # noqa: BLE001 - closing must not mask the answer
                log.warning("closing the handler's generator raised", exc_info=True)
