"""The HTTP/1.1 subset spoken on the runtime socket.

Requests: a request line, headers, and a body framed by ``Content-Length`` or
``Transfer-Encoding: chunked``; ``Expect: 100-continue`` is honoured. Connections are
kept alive (HTTP/1.1 default) until the client sends ``Connection: close``, speaks
HTTP/1.0 without ``Connection: keep-alive``, or sends something unparseable.

Responses always carry ``Content-Length`` (none for 204), so the connection survives.
Streams use ``Transfer-Encoding: chunked``, one chunk per SSE event, so keep-alive
survives them too (HTTP/1.0 clients get a close-delimited stream instead).
"""

from __future__ import annotations

from typing import BinaryIO

MAX_LINE = 8192
MAX_HEADERS = 100
MAX_BODY = 256 * 1024 * 1024

REASONS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class HttpError(Exception):
    """A request that cannot be read; answered with :attr:`status` and the connection
    closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Request:
    """A parsed request. Header names are lower-case bytes."""

    __slots__ = ("method", "path", "http10", "headers", "body", "keep_alive")

    def __init__(
        self, method: bytes, path: bytes, http10: bool, headers: dict[bytes, bytes]
    ) -> None:
        self.method = method
        self.path = path
        self.http10 = http10
        self.headers = headers
        self.body = b""
        connection = headers.get(b"connection", b"").lower()
        if http10:
            self.keep_alive = b"keep-alive" in connection
        else:
            self.keep_alive = b"close" not in connection


def _read_line(rfile: BinaryIO) -> bytes:
    line = rfile.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise HttpError(431, "line too long")
    return line


_BLANK = (b"\r\n", b"\n")


def read_head(rfile: BinaryIO) -> Request | None:
    """Read the request line and headers; ``None`` on a clean end of stream."""
    # This runs for every call: names are bound locally and the header loop is inlined
    # (about a tenth off the cost of reading a request, measured against a helper call
    # per line).
    readline = rfile.readline
    line = _read_line(rfile)
    while line in _BLANK:  # tolerate blank lines between requests
        line = _read_line(rfile)
    if not line:
        return None
    parts = line.split()
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version == b"HTTP/1.1":
        http10 = False
    elif version == b"HTTP/1.0":
        http10 = True
    elif version.startswith(b"HTTP/"):
        raise HttpError(505, "only HTTP/1.x is supported")
    else:
        raise HttpError(400, "malformed request line")
    headers: dict[bytes, bytes] = {}
    while True:
        line = readline(MAX_LINE + 1)
        if line in _BLANK:
            break
        if len(line) > MAX_LINE:
            raise HttpError(431, "line too long")
        if not line:
            raise HttpError(400, "connection closed inside the headers")
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        name = name.lower()
        value = value.strip()
        if name in headers:
            if name == b"content-length" and headers[name] != value:
                raise HttpError(400, "conflicting Content-Length headers")
            if name != b"content-length":
                value = headers[name] + b", " + value
        elif len(headers) >= MAX_HEADERS:
            raise HttpError(431, "too many headers")
        headers[name] = value
    path = target.partition(b"?")[0]
    return Request(method, path, http10, headers)


def _read_exact(rfile: BinaryIO, n: int) -> bytes:
    data = rfile.read(n)
    if len(data) != n:
        raise HttpError(400, "connection closed inside the body")
    return data


def _read_chunked(rfile: BinaryIO) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = _read_line(rfile).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise HttpError(400, "malformed chunk size") from None
        if size < 0:
            raise HttpError(400, "malformed chunk size")
        if size == 0:
            while _read_line(rfile) not in (b"\r\n", b"\n", b""):
                pass  # trailers are ignored
            return b"".join(parts)
        total += size
        if total > MAX_BODY:
            raise HttpError(413, "body too large")
        parts.append(_read_exact(rfile, size))
        if _read_line(rfile) not in (b"\r\n", b"\n"):
            raise HttpError(400, "malformed chunk")


def read_body(request: Request, rfile: BinaryIO) -> bytes:
    """Read the body announced by the request's headers."""
    headers = request.headers
    te = headers.get(b"transfer-encoding")
    if te is not None:
        if te.lower() != b"chunked":
            raise HttpError(501, "only chunked transfer encoding is supported")
        return _read_chunked(rfile)
    length = headers.get(b"content-length")
    if length is None:
        return b""
    try:
        n = int(length)
    except ValueError:
        raise HttpError(400, "malformed Content-Length") from None
    if n < 0:
        raise HttpError(400, "malformed Content-Length")
    if n > MAX_BODY:
        raise HttpError(413, "body too large")
    return _read_exact(rfile, n) if n else b""


def response(status: int, body: bytes, content_type: str, close: bool = False) -> bytes:
    """A complete response with ``Content-Length`` (no body or length for 204)."""
    head = f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
    if status != 204:
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode("latin-1") + body


def stream_head(chunked: bool, close: bool) -> bytes:
    """Status line and headers opening an SSE stream."""
    head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    if chunked:
        head += "Transfer-Encoding: chunked\r\n"
    if close or not chunked:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
