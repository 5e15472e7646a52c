"""Troupe's Python runtime.

A separate process that holds user code and serves it to the Troupe (or Asya) sidecar over
HTTP/1.1 on a Unix stream socket, following the sidecar <-> runtime protocol (design note
``protocol.md`` section 4). Run it with ``python -m troupe_runtime``; see ``README.md``.

Modules, one job each:

- :mod:`troupe_runtime.config`     environment variables -> :class:`Settings`
- :mod:`troupe_runtime.handler`    ``module.function`` / ``module.Class.method`` loading
- :mod:`troupe_runtime.envelope`   envelope parsing and validation (the 400 rules)
- :mod:`troupe_runtime.frames`     route advance and frame building
- :mod:`troupe_runtime.paths`      jq-like paths for the generator GET/SET/DEL protocol
- :mod:`troupe_runtime.encoding`   JSON encoding of handler output (non-JSON types)
- :mod:`troupe_runtime.errors`     ``processing_error`` details (type, mro, traceback)
- :mod:`troupe_runtime.asyncbridge` the asyncio loop thread that runs async handlers
- :mod:`troupe_runtime.invoke`     one ``/invoke`` call: envelope in, reply out
- :mod:`troupe_runtime.http11`     the HTTP/1.1 subset spoken on the socket
- :mod:`troupe_runtime.server`     socket lifecycle, connections, concurrency, shutdown
"""

__version__ = "0.1.0"

SOCKET_NAME = "asya-runtime.sock"
"""File name of the runtime socket inside the socket folder."""

READY_NAME = "runtime-ready"
"""File written next to the socket once the socket is bound and listening."""

DEFAULT_SOCKET_DIR = "/var/run/asya"
"""Socket folder used when no environment variable names one."""
