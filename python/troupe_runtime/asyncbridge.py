"""One asyncio event loop, on its own thread, for async handlers.

Requests are served on connection threads (see :mod:`troupe_runtime.server`). When a
handler is a coroutine function (or returns any awaitable), or is an async generator, the
connection thread hands the work to this loop and waits for the result. All async
handler calls share the one loop, so they run concurrently with each other the usual
asyncio way and may share loop-bound resources (clients, locks) created inside them.
The loop starts on first use, so sync-only handlers never pay for it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncGenerator, Awaitable, Coroutine

_END = object()


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _asend(agen: AsyncGenerator[Any, Any], value: Any) -> Any:
    try:
        return await agen.asend(value)
    except StopAsyncIteration:
        return _END


async def _athrow(agen: AsyncGenerator[Any, Any], exc: BaseException) -> Any:
    try:
        return await agen.athrow(exc)
    except StopAsyncIteration:
        return _END


class LoopThread:
    """A lazily started event loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name="troupe-asyncio", daemon=True)
                self._thread.start()
                started.wait()
                self._loop = loop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the loop and block the calling thread for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._ensure()).result()

    def await_(self, awaitable: Awaitable[Any]) -> Any:
        """Like :meth:`run` for any awaitable (futures, custom awaitables)."""
        if asyncio.iscoroutine(awaitable):
            return self.run(awaitable)
        return self.run(_await(awaitable))

    def close(self) -> None:
        """Stop the loop (pending tasks are abandoned) and wait for its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            if not thread.is_alive():
                loop.close()


class SyncSteps:
    """Drives a generator one step at a time; ``send``/``throw`` return the yielded
    value, or :data:`END` when the generator finished (its return value is ignored)."""

    def __init__(self, gen: Any) -> None:
        self._gen = gen

    def send(self, value: Any) -> Any:
        try:
            return self._gen.send(value)
        except StopIteration:
            return _END

    def throw(self, exc: BaseException) -> Any:
        try:
            return self._gen.throw(exc)
        except StopIteration:
            return _END

    def close(self) -> None:
        self._gen.close()


class AsyncSteps:
    """The same interface as :class:`SyncSteps` for an async generator, each step run on
    the loop thread."""

    def __init__(self, agen: AsyncGenerator[Any, Any], loop: LoopThread) -> None:
        self._agen = agen
        self._loop = loop

    def send(self, value: Any) -> Any:
        return self._loop.run(_asend(self._agen, value))

    def throw(self, exc: BaseException) -> Any:
        return self._loop.run(_athrow(self._agen, exc))

    def close(self) -> None:
        self._loop.await_(self._agen.aclose())


END = _END
"""Returned by a ``*Steps`` object when the generator has finished."""
