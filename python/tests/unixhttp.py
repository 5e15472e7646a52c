"""A tiny HTTP client over a Unix socket, for the tests and nothing else."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` connection to a Unix socket path."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def envelope(
    payload: Any = None,
    *,
    id: str = "env-1",
    prev: tuple[str, ...] = (),
    curr: str = "a",
    next: tuple[str, ...] = ("b", "c"),
    **extra: Any,
) -> dict[str, Any]:
    """An envelope in the current route form."""
    env: dict[str, Any] = {
        "id": id,
        "route": {"prev": list(prev), "curr": curr, "next": list(next)},
        "payload": payload,
    }
    env.update(extra)
    return env


class Answer:
    """One response, read completely."""

    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.getheaders()}
        self.body = resp.read()

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[tuple[str, Any]]:
        return parse_sse(self.body)


def post(conn: http.client.HTTPConnection, body: Any, path: str = "/invoke") -> Answer:
    """POST ``body`` (bytes as is, anything else as JSON) and read the answer."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=raw, headers={"Content-Type": "application/json"})
    return Answer(conn.getresponse())


def get(conn: http.client.HTTPConnection, path: str) -> Answer:
    conn.request("GET", path)
    return Answer(conn.getresponse())


def parse_sse(body: bytes) -> list[tuple[str, Any]]:
    """``[(event name, decoded data), ...]``; checks the one-line framing strictly."""
    events = []
    text = body.decode("utf-8")
    assert text.endswith("\n\n"), f"stream does not end with a blank line: {text[-40:]!r}"
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 2, f"an event must be exactly two lines: {block!r}"
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        events.append((lines[0][len("event: "):], json.loads(lines[1][len("data: "):])))
    return events


def read_raw_response(sock_file: Any) -> tuple[int, dict[str, str], bytes]:
    """Read one Content-Length response from a raw socket file (keep-alive tests)."""
    status_line = sock_file.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = sock_file.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    return status, headers, sock_file.read(length)
