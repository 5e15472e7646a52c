"""Shared fixtures: an in-process runtime on a temporary Unix socket."""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from troupe_runtime.handler import Handler, load_handler
from troupe_runtime.invoke import Invoker
from troupe_runtime.server import RuntimeServer

PYTHON_DIR = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = PYTHON_DIR / "examples"
if str(EXAMPLES_DIR) not in sys.path:
    sys.path.insert(0, str(EXAMPLES_DIR))

from unixhttp import UnixHTTPConnection  # noqa: E402


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temporary folder with a short path (Unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="trt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Running:
    """A runtime served on a background thread."""

    def __init__(self, server: RuntimeServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread
        self.socket_path = server.socket_path

    def connect(self, timeout: float = 10.0) -> UnixHTTPConnection:
        return UnixHTTPConnection(str(self.socket_path), timeout=timeout)

    def stop(self) -> None:
        self.server.request_stop()
        self.thread.join(timeout=5)
        self.server.drain(2)
        self.server.close()
        self.server.invoker.close()


@pytest.fixture
def serve(short_dir: Path) -> Iterator[Callable[..., Running]]:
    """``serve(handler, concurrency=8)`` starts a runtime; a spec string or a callable."""
    started: list[Running] = []

    def start(handler: str | Callable[[Any], Any], concurrency: int = 8) -> Running:
        loaded = load_handler(handler) if isinstance(handler, str) else Handler.from_callable(handler)
        sock = short_dir / f"rt{len(started)}" / "asya-runtime.sock"
        server = RuntimeServer(Invoker(loaded), sock, concurrency=concurrency)
        server.bind()
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running = Running(server, thread)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
