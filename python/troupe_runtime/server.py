"""The runtime's socket: lifecycle, connections, concurrency and shutdown.

Concurrency model: **one thread per connection**, with a semaphore of
``concurrency`` permits around each ``/invoke``.

Why threads rather than an asyncio server: the sidecar opens a handful of long-lived
keep-alive connections and sends one request at a time on each. With a thread per
connection, a sync handler (the common case: model inference, CPU work, blocking
clients) runs directly on the thread that read the request and writes the answer on the
same thread: no hand-off between an event loop and a worker pool, no per-request thread,
so the per-call overhead is a few tens of microseconds. An asyncio server would need two
cross-thread hops per sync call (loop -> pool -> loop). Async handlers are not left out:
they run on one shared event loop (:mod:`troupe_runtime.asyncbridge`), so many of them
can wait concurrently on I/O.

Requests on different connections run in parallel up to ``concurrency`` (the GIL still
serialises pure-Python CPU work; handlers that release it, e.g. numpy, torch or I/O,
overlap for real). Set ``concurrency=1`` for handlers that are not thread-safe. A call
waits for a permit; ``/healthz`` never does.

Lifecycle: :meth:`RuntimeServer.bind` creates the socket (removing a stale one) and then
writes ``runtime-ready``; :meth:`serve_forever` accepts until :meth:`request_stop`
(signal-safe); it then removes ``runtime-ready`` and the socket file. :meth:`drain`
waits up to a grace period for calls in flight, then closes all connections. A sync
handler cannot be interrupted: a call the client gave up on runs to its end and its
answer is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import threading
import time
from pathlib import Path

from . import READY_NAME
from .encoding import dumps
from .http11 import (
    CONTINUE,
    LAST_CHUNK,
    HttpError,
    Request,
    chunk,
    read_body,
    read_head,
    response,
    stream_head,
)
from .invoke import JSON, Invoker, Reply, StreamReply  # noqa: F401 - re-exported

log = logging.getLogger("troupe_runtime.server")

_READY = b'{"status":"ready"}'
_HEALTHY = response(200, _READY, JSON)
_READ_BUFFER = 64 * 1024


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def remove_stale(socket_path: Path, ready_path: Path | None = None) -> None:
    """Remove a socket and ready file left behind by an earlier runtime."""
    ready_path = ready_path or socket_path.parent / READY_NAME
    for path in (ready_path, socket_path):
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory")
        _unlink(path)


class _Permits:
    """A counting semaphore whose acquire and release are each one C call.

    ``threading.Semaphore`` is Python code over a ``Condition``: about ten times the cost
    of ``SimpleQueue.get``/``put``, paid twice on every call.
    """

    __slots__ = ("_tokens",)

    def __init__(self, count: int) -> None:
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(count):
            self._tokens.put(None)

    def acquire(self, timeout: float | None = None) -> bool:
        """Take a permit, waiting up to ``timeout`` seconds (forever when ``None``)."""
        try:
            self._tokens.get(timeout=timeout)
        except queue.Empty:
            return False
        return True

    def release(self) -> None:
        """Give a permit back."""
        self._tokens.put(None)


def _error_body(status: int, message: str) -> bytes:
    return dumps({"error": "bad_request" if status < 500 else "server_error", "message": message})


class RuntimeServer:
    """Serves an :class:`~troupe_runtime.invoke.Invoker` on a Unix socket."""

    def __init__(
        self,
        invoker: Invoker,
        socket_path: str | os.PathLike[str],
        *,
        concurrency: int = 8,
        ready_path: str | os.PathLike[str] | None = None,
        backlog: int = 128,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.invoker = invoker
        self.socket_path = Path(socket_path)
        self.ready_path = Path(ready_path) if ready_path else self.socket_path.parent / READY_NAME
        self.concurrency = concurrency
        self.backlog = backlog
        self.accepted = 0
        """Connections accepted so far (tests, stats)."""
        self._permits = _Permits(concurrency)
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------

    def bind(self) -> None:
        """Create and listen on the socket, then write the ready file."""
        path = str(self.socket_path)
        if len(os.fsencode(path)) > 107:
            raise OSError(f"socket path {path!r} is too long for a Unix socket (max 107 bytes)")
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(self.socket_path, self.ready_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(self.backlog)
        except BaseException:
            listener.close()
            raise
        listener.setblocking(False)
        self._listener = listener
        self._inode = os.stat(path).st_ino
        tmp = self.ready_path.with_name(self.ready_path.name + ".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.ready_path)
        log.info("listening on %s (concurrency %d)", path, self.concurrency)

    def request_stop(self) -> None:
        """Ask :meth:`serve_forever` to return. Safe from a signal handler or any thread."""
        self._stopping.set()
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"x")

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def serve_forever(self) -> None:
        """Accept connections until :meth:`request_stop`; then remove the socket files."""
        if self._listener is None:
            raise RuntimeError("bind() first")
        listener = self._listener
        try:
            while not self._stopping.is_set():
                readable, _, _ = select.select([listener, self._wake_r], [], [])
                if self._wake_r in readable or self._stopping.is_set():
                    break
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    log.warning("accept failed: %s", exc)
                    time.sleep(0.01)
                    continue
                conn.setblocking(True)
                self.accepted += 1
                with self._conns_lock:
                    self._conns.add(conn)
                threading.Thread(
                    target=self._serve_connection, args=(conn,), name="troupe-conn", daemon=True
                ).start()
        finally:
            self._close_listener()

    def _close_listener(self) -> None:
        _unlink(self.ready_path)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(OSError):
                if os.stat(self.socket_path).st_ino == self._inode:
                    _unlink(self.socket_path)
        log.info("socket closed; no new connections")

    def drain(self, grace_s: float) -> bool:
        """Wait up to ``grace_s`` for calls in flight, then close every connection.

        Returns ``True`` when no call was left running.
        """
        deadline = time.monotonic() + grace_s
        taken = 0
        for _ in range(self.concurrency):
            if not self._permits.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
            taken += 1
        idle = taken == self.concurrency
        if not idle:
            log.warning("%d call(s) still running after %.1fs", self.concurrency - taken, grace_s)
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _ in range(taken):
            self._permits.release()
        return idle

    def close(self) -> None:
        """Release the wake-up pipe (after :meth:`serve_forever` returned)."""
        wake_r, wake_w = self._wake_r, self._wake_w
        self._wake_r = self._wake_w = -1
        for fd in (wake_r, wake_w):
            if fd >= 0:
                os.close(fd)

    # -- one connection ------------------------------------------------------------------

    def _serve_connection(self, conn: socket.socket) -> None:
        rfile = conn.makefile("rb", buffering=_READ_BUFFER)
        try:
            while True:
                try:
                    request = read_head(rfile)
                    if request is None:
                        break
                    if request.headers.get(b"expect", b"").lower() == b"100-continue":
                        conn.sendall(CONTINUE)
                    request.body = read_body(request, rfile)
                except HttpError as exc:
                    body = _error_body(exc.status, str(exc))
                    conn.sendall(response(exc.status, body, JSON, True))
                    break
                if not self._answer(conn, request):
                    break
        except OSError:
            pass  # the peer went away
        except Exception:  # noqa: BLE001 - a bug here must not kill the process
            log.exception("connection failed")
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            rfile.close()
            conn.close()

    def _answer(self, conn: socket.socket, request: Request) -> bool:
        """Answer one request; ``False`` when the connection must close."""
        keep_alive = request.keep_alive
        path, method = request.path, request.method
        if path == b"/invoke":
            if method != b"POST":
                conn.sendall(_method_not_allowed(b"POST", not keep_alive))
                return keep_alive
            permits = self._permits
            permits.acquire()
            try:
                reply = self.invoker.invoke(request.body)
                if isinstance(reply, StreamReply):
                    return self._send_stream(conn, reply, request)
                answer = response(reply.status, reply.body, reply.content_type, not keep_alive)
                conn.sendall(answer)
            finally:
                permits.release()
            return keep_alive
        if path == b"/healthz":
            if method not in (b"GET", b"HEAD"):
                conn.sendall(_method_not_allowed(b"GET", not keep_alive))
            else:
                if self._stopping.is_set():
                    answer = response(503, b'{"status":"stopping"}', JSON, not keep_alive)
                else:
                    answer = _HEALTHY if keep_alive else response(200, _READY, JSON, True)
                if method == b"HEAD":  # same headers, no body
                    answer = answer[: answer.index(b"\r\n\r\n") + 4]
                conn.sendall(answer)
            return keep_alive
        conn.sendall(response(404, b'{"error":"not_found"}', JSON, not keep_alive))
        return keep_alive

    def _send_stream(self, conn: socket.socket, reply: StreamReply, request: Request) -> bool:
        chunked = not request.http10
        keep_alive = request.keep_alive and chunked
        with contextlib.closing(reply.events) as events:  # type: ignore[type-var]
            conn.sendall(stream_head(chunked, not keep_alive))
            for event in events:
                conn.sendall(chunk(event) if chunked else event)
        if chunked:
            conn.sendall(LAST_CHUNK)
        return keep_alive


def _method_not_allowed(allow: bytes, close: bool) -> bytes:
    raw = response(405, b'{"error":"method_not_allowed"}', JSON, close)
    head, sep, body = raw.partition(b"\r\n\r\n")
    return head + b"\r\nAllow: " + allow + sep + body


__all__ = ["RuntimeServer", "remove_stale", "Reply", "StreamReply"]
