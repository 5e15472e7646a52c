"""``python -m troupe_runtime``: load the handler, serve it, stop cleanly on SIGTERM/SIGINT.

Start-up order (the sidecar relies on it):

1. read the settings from the environment (exit 2 on a bad setting);
2. remove a stale socket and ``runtime-ready`` left by an earlier process;
3. load the handler: import it and, for ``module.Class.method``, build the class once
   (exit 3 when that fails; no socket is ever created);
4. bind and listen on the socket (exit 4 when that fails), then write ``runtime-ready``.

On SIGTERM or SIGINT the runtime stops accepting, removes ``runtime-ready`` and the
socket, waits up to the shutdown grace for calls in flight, and exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

from . import __version__, state_files
from .config import ConfigError, configure_logging, load_settings
from .handler import HandlerLoadError, load_handler
from .invoke import Invoker
from .server import RuntimeServer, remove_stale

log = logging.getLogger("troupe_runtime")

EXIT_CONFIG = 2
EXIT_HANDLER = 3
EXIT_SOCKET = 4


def main() -> int:
    """Run the runtime until a stop signal; returns the process exit status."""
    try:
        settings = load_settings(os.environ)
    except ConfigError as exc:
        sys.stderr.write(f"troupe_runtime: configuration error: {exc}\n")
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    log.info("troupe_runtime %s starting, handler %s", __version__, settings.handler)

    try:
        remove_stale(settings.socket_path, settings.ready_path)
    except OSError as exc:
        log.error("cannot remove stale socket files: %s", exc)
        return EXIT_SOCKET

    mounts_spec = os.environ.get("ASYA_STATE_PROXY_MOUNTS", "")
    if mounts_spec.strip():
        try:
            mounts = state_files.install(mounts_spec)
        except ValueError as exc:
            sys.stderr.write(f"troupe_runtime: configuration error: ASYA_STATE_PROXY_MOUNTS: {exc}\n")
            return EXIT_CONFIG
        log.info("state mounts: %s", ", ".join(f"{m.path} -> {m.socket}" for m in mounts))

    try:
        handler = load_handler(settings.handler)
    except HandlerLoadError as exc:
        log.error("cannot load handler: %s", exc, exc_info=exc.__cause__ is not None)
        return EXIT_HANDLER
    log.info("handler %s loaded (%s)", handler.spec, handler.kind)

    invoker = Invoker(handler)
    server = RuntimeServer(
        invoker, settings.socket_path, concurrency=settings.concurrency,
        ready_path=settings.ready_path,
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received, shutting down", signal.Signals(signum).name)
        server.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        server.bind()
    except OSError as exc:
        log.error("cannot listen on %s: %s", settings.socket_path, exc)
        return EXIT_SOCKET
    try:
        server.serve_forever()
    finally:
        server.drain(settings.shutdown_grace_s)
        server.close()
        invoker.close()
    log.info("stopped")
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
