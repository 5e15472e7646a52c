"""``python -m troupe_runtime`` as a subprocess: start-up order, signals, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from unixhttp import UnixHTTPConnection, envelope, get, post

PYTHON_DIR = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent


def start(env_extra: dict, socket_dir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYA_", "TROUPE_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PYTHON_DIR), str(PYTHON_DIR / "examples"), str(TESTS_DIR)]
    )
    env["ASYA_SOCKET_DIR"] = str(socket_dir)
    env.update(env_extra)
    return subprocess.Popen(
        [sys.executable, "-m", "troupe_runtime"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def finish(proc: subprocess.Popen, timeout: float = 10.0) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"runtime did not exit in {timeout}s; stderr:\n{err}")
    return proc.returncode, err


def test_ready_only_after_handler_load_and_bind(short_dir: Path) -> None:
    sock = short_dir / "asya-runtime.sock"
    ready = short_dir / "runtime-ready"
    marker = short_dir / "marker.json"
    sock.write_text("stale")  # leftovers from a crashed runtime
    ready.write_text("stale")
    proc = start(
        {"ASYA_HANDLER": "slow_start.Slow.handle", "MARKER": str(marker), "SOCK": str(sock),
         "READY": str(ready)},
        short_dir,
    )
    try:
        # The handler is being built (it takes 0.5 s): stale files are gone, nothing new yet.
        assert wait_for(lambda: marker.exists() and marker.stat().st_size > 0)
        assert not ready.exists() and not sock.exists()
        violations = []

        def ready_seen() -> bool:
            if ready.exists():
                if not sock.exists():
                    violations.append("ready before the socket")
                return True
            return False

        assert wait_for(ready_seen), "runtime-ready never appeared"
        assert violations == []
        seen = json.loads(marker.read_text())
        assert seen == {"socket_exists": False, "ready_exists": False}, seen
        assert ready.read_text().strip() == str(proc.pid)
        conn = UnixHTTPConnection(str(sock))
        assert get(conn, "/healthz").json() == {"status": "ready"}
        assert post(conn, envelope({"x": 1})).json()["frames"][0]["payload"] == {"x": 1}
    finally:
        proc.send_signal(signal.SIGTERM)
        finish(proc)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_removes_files_and_exits_zero(short_dir: Path, sig: signal.Signals) -> None:
    sock = short_dir / "asya-runtime.sock"
    ready = short_dir / "runtime-ready"
    proc = start({"TROUPE_HANDLER": "handlers.double"}, short_dir)
    assert wait_for(ready.exists), "runtime-ready never appeared"
    conn = UnixHTTPConnection(str(sock))
    assert post(conn, envelope({"value": 2})).json()["frames"][0]["payload"] == {"value": 4}
    proc.send_signal(sig)
    code, err = finish(proc)
    assert code == 0, err
    assert not sock.exists()
    assert not ready.exists()
    assert sig.name in err


def test_sigterm_lets_a_call_in_flight_finish(short_dir: Path) -> None:
    sock = short_dir / "asya-runtime.sock"
    proc = start({"ASYA_HANDLER": "handlers.sleepy"}, short_dir)
    assert wait_for((short_dir / "runtime-ready").exists)
    result = {}

    def call() -> None:
        result["answer"] = post(UnixHTTPConnection(str(sock)), envelope({"sleep_s": 0.6}))

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: not sock.exists(), timeout=2), "socket not removed at once"
    t.join(5)
    code, err = finish(proc)
    assert code == 0, err
    assert result["answer"].status == 200
    assert result["answer"].json()["frames"][0]["payload"] == {"sleep_s": 0.6}


def test_bad_handler_exits_without_socket(short_dir: Path) -> None:
    proc = start({"ASYA_HANDLER": "handlers.does_not_exist"}, short_dir)
    code, err = finish(proc)
    assert code == 3
    assert "handlers.does_not_exist" in err and "has no attribute" in err
    assert not (short_dir / "asya-runtime.sock").exists()
    assert not (short_dir / "runtime-ready").exists()


def test_conflicting_handler_variables(short_dir: Path) -> None:
    proc = start({"ASYA_HANDLER": "handlers.double", "TROUPE_HANDLER": "handlers.noop"}, short_dir)
    code, err = finish(proc)
    assert code == 2
    assert "ASYA_HANDLER" in err and "TROUPE_HANDLER" in err


def test_socket_path_override(short_dir: Path) -> None:
    sock = short_dir / "custom" / "rt.sock"
    proc = start({"ASYA_HANDLER": "handlers.noop", "TROUPE_SOCKET_PATH": str(sock)}, short_dir)
    try:
        assert wait_for((sock.parent / "runtime-ready").exists)
        assert get(UnixHTTPConnection(str(sock)), "/healthz").status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
    assert code == 0, err
    assert not sock.exists()
