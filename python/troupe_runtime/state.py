"""Handler state: keyed values kept by the sidecar in the actor's store (Redis, PostgreSQL
or memory), shared by every replica of the actor and kept across restarts.

The sidecar serves it (``troupe sidecar --state``) on a Unix socket, by default
``/var/run/asya/state/troupe.sock`` (``TROUPE_STATE_SOCKET`` to change it); the protocol
is in ``docs/state.md``. Every value has a version, so replicas that update one key lose
no update when they write with :func:`compare_and_set`::

    from troupe_runtime import state

    def count(payload):
        for word in payload["text"].split():
            while True:
                seen = state.get_versioned(f"words/{word}")
                n = int(seen.value) if seen else 0
                done, _ = state.compare_and_set(
                    f"words/{word}", seen.version if seen else None, str(n + 1))
                if done:
                    break
        return payload

Keys are file-like paths (``models/v2/weights.bin``): non-empty, at most 512 bytes, no
control characters. Values are bytes (a ``str`` is stored as UTF-8). A value over the
sidecar's limit raises :class:`ValueTooLarge`; a new key past the actor's key limit
raises :class:`TooManyKeys`; nothing is ever cut short.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import socket
import threading
from typing import NamedTuple, Optional, Union
from urllib.parse import quote

DEFAULT_SOCKET = "/var/run/asya/state/troupe.sock"
"""Where the sidecar serves Troupe's state API unless ``TROUPE_STATE_SOCKET`` says."""

Value = Union[bytes, str]


class Versioned(NamedTuple):
    """A value and the version that wrote it."""

    value: bytes
    version: int


class StateError(OSError):
    """The sidecar refused or could not do a state operation."""


class ValueTooLarge(StateError):
    """The value is over the sidecar's ``--state-max-value``."""


class TooManyKeys(StateError):
    """A new key would take the actor past its ``--state-max-keys``."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("state", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


_local = threading.local()


def _socket_path() -> str:
    return os.environ.get("TROUPE_STATE_SOCKET", DEFAULT_SOCKET)


def request(method: str, path: str, body: Optional[bytes] = None, headers: Optional[dict] = None, sock: Optional[str] = None):
    """One request to the state socket ``sock`` (Troupe's API socket by default) on this
    thread's kept-alive connection to it; ``(status, headers, body)``."""
    sock = sock or _socket_path()
    conns = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = {}
    for attempt in (0, 1):
        conn = conns.get(sock)
        if conn is None:
            conn = conns[sock] = _UnixConnection(sock, timeout=30.0)
        try:
            try:
                conn.request(method, path, body=body, headers=headers or {})
            except (BrokenPipeError, ConnectionResetError):
                if not body:
                    raise
                # The sidecar answered before reading the whole value (one far over the
                # limit) and closed: its answer is still there to read.
            response = conn.getresponse()
            data = response.read()
            if response.will_close:
                conn.close()
                conns.pop(sock, None)
            return response.status, response.headers, data
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            conn.close()
            conns.pop(sock, None)
            # A kept-alive connection the sidecar closed: one fresh try.
            if attempt == 1 or isinstance(exc, FileNotFoundError):
                raise ConnectionError(
                    f"the sidecar's state socket {sock} does not answer "
                    f"(is the sidecar serving state: --state, --state-mounts?): {exc}"
                ) from exc
    raise AssertionError("unreachable")





def key_path(key: str) -> str:
    """The URL path of ``key``."""
    if not isinstance(key, str):
        raise TypeError(f"a state key is a str, got {type(key).__name__}")
    return "/keys/" + quote(key, safe="/")


def _bytes(value: Value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"a state value is bytes or str, got {type(value).__name__}")


def _version(headers) -> Optional[int]:
    tag = headers.get("ETag")
    return int(tag.strip('"')) if tag else None


def fail(status: int, data: bytes, key: str):
    """Raises the Python error for a failed answer."""
    try:
        message = json.loads(data)["message"]
    except (ValueError, KeyError, TypeError):
        message = data.decode("utf-8", "replace") or f"HTTP {status}"
    if status == 400:
        raise ValueError(message)
    if status == 404:
        raise FileNotFoundError(errno.ENOENT, message, key)
    if status == 413:
        raise ValueTooLarge(errno.EFBIG, message, key)
    if status == 507:
        raise TooManyKeys(errno.ENOSPC, message, key)
    if status == 503:
        raise ConnectionError(message)
    raise StateError(errno.EIO, message, key)


def get_versioned(key: str) -> Optional[Versioned]:
    """The value under ``key`` and its version, or ``None``."""
    status, headers, data = request("GET", key_path(key))
    if status == 404:
        return None
    if status != 200:
        fail(status, data, key)
    return Versioned(data, _version(headers) or 0)


def get(key: str) -> Optional[bytes]:
    """The value under ``key``, or ``None``."""
    found = get_versioned(key)
    return found.value if found else None


def put(key: str, value: Value) -> int:
    """Writes ``value`` under ``key`` whatever was there; its new version."""
    status, headers, data = request("PUT", key_path(key), _bytes(value))
    if status != 200:
        fail(status, data, key)
    return _version(headers) or 0


def delete(key: str) -> bool:
    """Deletes ``key``; whether it held a value."""
    status, _, data = request("DELETE", key_path(key))
    if status == 404:
        return False
    if status != 200:
        fail(status, data, key)
    return True


def list_keys(prefix: str = "") -> list:
    """The keys starting with ``prefix``, sorted (at most 10,000)."""
    status, _, data = request("GET", "/keys/?prefix=" + quote(prefix, safe=""))
    if status != 200:
        fail(status, data, prefix)
    return json.loads(data)["keys"]


def compare_and_set(key: str, expected: Optional[int], value: Optional[Value]) -> tuple:
    """Writes ``value`` (``None``: deletes) only if ``key`` holds the version ``expected``
    (``None``: holds nothing). Returns ``(True, version)`` when written (``version`` is
    ``None`` for a delete), or ``(False, current)`` with what the key holds now (a
    :class:`Versioned` or ``None``), to retry against."""
    headers = {"If-None-Match": "*"} if expected is None else {"If-Match": f'"{int(expected)}"'}
    if value is None:
        status, answer, data = request("DELETE", key_path(key), headers=headers)
    else:
        status, answer, data = request("PUT", key_path(key), _bytes(value), headers=headers)
    if status == 200:
        return True, _version(answer)
    if status == 412:
        return False, get_versioned(key)
    fail(status, data, key)
    raise AssertionError("unreachable")
