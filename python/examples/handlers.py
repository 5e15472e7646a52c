"""Example handlers for the Troupe Python runtime.

Deterministic, standard library only; used by the end-to-end tests. Run one with::

    PYTHONPATH=python/examples ASYA_HANDLER=handlers.double python -m troupe_runtime

=======================================  ==============================================
spec                                     behaviour
=======================================  ==============================================
``handlers.double``                      ``{"value": v}`` -> ``{"value": 2 * v}``
``handlers.noop``                        returns the payload unchanged (benchmarks)
``handlers.stop``                        returns ``None``: the pipeline ends here (204)
``handlers.Model.predict``               ``{"value": v}`` -> ``{"value": 3 * v, "loads": 1}``
                                         (``loads`` counts ``Model()`` builds: always 1)
``handlers.fan_out``                     generator: appends ``"audit"`` to ``route.next``
                                         then yields two frames ``{"value", "part": 0|1}``
``handlers.reroute``                     generator: ``route.next = payload["next"]``,
                                         then yields the payload
``handlers.report_progress``             generator: ``FLY`` 0.5 and 1.0, then the payload
``handlers.flaky``                       raises ``TransientError`` for the first
                                         ``payload["fail_times"]`` (default 1) calls per
                                         ``payload["key"]``, then returns the payload
``handlers.flaky_by_attempt``            generator: raises ``TransientError`` while
                                         ``.status.attempt`` < ``payload["succeed_on"]``
                                         (default 2), then yields the payload
``handlers.broken``                      always raises ``PermanentError``
``handlers.sleepy``                      sleeps ``payload["sleep_s"]`` s, returns payload
``handlers.async_sleepy``                the same with ``asyncio.sleep``
=======================================  ==============================================
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any


def double(payload: dict[str, Any]) -> dict[str, Any]:
    """The five-line handler: double ``value``."""
    return {"value": payload["value"] * 2}


def noop(payload: Any) -> Any:
    """Return the payload as it came (overhead benchmarks)."""
    return payload


def stop(payload: Any) -> None:
    """Return nothing: the envelope goes to x-sink as succeeded, route not advanced."""
    return None


class Model:
    """Stands for an expensive model: built once per process by the runtime."""

    loads = 0

    def __init__(self) -> None:
        Model.loads += 1
        self.factor = 3  # "weights"

    def predict(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"value": payload["value"] * self.factor, "loads": Model.loads}


def fan_out(payload: dict[str, Any]):
    """Append ``audit`` to the route, then emit two frames."""
    following = yield ("GET", ".route.next")
    yield ("SET", ".route.next", [*following, "audit"])
    for part in range(2):
        yield {"value": payload["value"], "part": part}


def reroute(payload: dict[str, Any]):
    """Dynamic routing: the payload names the actors that come next."""
    yield ("SET", ".route.next", list(payload["next"]))
    yield payload


def report_progress(payload: Any):
    """Progress for the caller (upstream events), then the result."""
    yield ("FLY", {"progress": 0.5})
    yield ("FLY", {"progress": 1.0})
    yield payload


class TransientError(Exception):
    """A failure worth retrying."""


class PermanentError(Exception):
    """A failure that retrying will not fix."""


_calls: Counter[str] = Counter()
_calls_lock = threading.Lock()


def flaky(payload: dict[str, Any]) -> dict[str, Any]:
    """Fail ``fail_times`` times per ``key`` (process-wide counter), then succeed."""
    key = str(payload.get("key", ""))
    with _calls_lock:
        _calls[key] += 1
        calls = _calls[key]
    if calls <= int(payload.get("fail_times", 1)):
        raise TransientError(f"transient failure {calls} for key {key!r}")
    return payload


def flaky_by_attempt(payload: dict[str, Any]):
    """Fail until the envelope's ``status.attempt`` reaches ``succeed_on``."""
    attempt = yield ("GET", ".status.attempt")
    if (attempt or 1) < int(payload.get("succeed_on", 2)):
        raise TransientError(f"transient failure on attempt {attempt or 1}")
    yield payload


def broken(payload: Any) -> Any:
    """Always fail with an error no retry can fix."""
    raise PermanentError("this input can never be processed")


def sleepy(payload: dict[str, Any]) -> dict[str, Any]:
    """Block for ``sleep_s`` seconds (timeouts, concurrency)."""
    time.sleep(float(payload.get("sleep_s", 0)))
    return payload


async def async_sleepy(payload: dict[str, Any]) -> dict[str, Any]:
    """Wait ``sleep_s`` seconds without blocking the loop."""
    await asyncio.sleep(float(payload.get("sleep_s", 0)))
    return payload
