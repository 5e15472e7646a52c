"""Per-call overhead of the runtime: POST /invoke round trips over a Unix socket.

    python python/bench_client.py                 # starts its own runtime (handlers.noop)
    python python/bench_client.py --socket PATH   # measures a runtime already running
    python python/bench_client.py -n 20000 -c 8 --handler handlers.double

Two runs: N sequential calls on one keep-alive connection, then N calls spread over
``-c`` connections, each driven by its own client *process* (so the client's GIL does not
serialise the clients). Reports p50/p99 round-trip latency in microseconds and calls/s.
The client is a minimal raw-socket HTTP/1.1 client, so the numbers are close to the
runtime's own cost plus two socket hops; a Rust sidecar's client is cheaper still.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

ENVELOPE = {
    "id": "bench-0001",
    "route": {"prev": ["ingest"], "curr": "noop", "next": ["sink-a", "sink-b"]},
    "headers": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    "status": {"phase": "processing", "attempt": 1, "max_attempts": 3},
    "payload": {"value": 1, "text": "hello"},
}


def _request_bytes() -> bytes:
    body = json.dumps(ENVELOPE, separators=(",", ":")).encode()
    return (
        b"POST /invoke HTTP/1.1\r\nHost: runtime\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def _call(sock: socket.socket, rfile, request: bytes) -> int:
    sock.sendall(request)
    status_line = rfile.readline()
    length = 0
    while True:
        line = rfile.readline()
        if line == b"\r\n" or not line:
            break
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        rfile.read(length)
    return int(status_line[9:12])


def run_calls(socket_path: str, n: int, warmup: int = 200) -> list[float]:
    """``n`` timed calls (after ``warmup``) on one connection; latencies in seconds."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    rfile = sock.makefile("rb")
    request = _request_bytes()
    for _ in range(warmup):
        assert _call(sock, rfile, request) == 200
    latencies = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        status = _call(sock, rfile, request)
        latencies.append(clock() - t0)
        if status != 200:
            raise RuntimeError(f"status {status}")
    sock.close()
    return latencies


def _process_main(socket_path: str, n: int, out, ready, go) -> None:
    run_calls(socket_path, 0, warmup=100)  # warm the runtime's code paths
    ready.put(1)
    go.wait()  # start together so that all clients overlap
    t0 = time.perf_counter()
    latencies = run_calls(socket_path, n, warmup=0)
    out.put((t0, time.perf_counter(), latencies))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, latencies: list[float], elapsed: float) -> dict:
    result = {
        "run": name,
        "calls": len(latencies),
        "p50_us": round(percentile(latencies, 0.50) * 1e6, 1),
        "p99_us": round(percentile(latencies, 0.99) * 1e6, 1),
        "calls_per_s": round(len(latencies) / elapsed),
    }
    print(
        f"{name:<28} calls={result['calls']:<6} p50={result['p50_us']:>8.1f} us  "
        f"p99={result['p99_us']:>8.1f} us  {result['calls_per_s']:>7} calls/s"
    )
    return result


def start_runtime(handler: str, concurrency: int) -> tuple[subprocess.Popen, str, str]:
    folder = tempfile.mkdtemp(prefix="trb-", dir="/tmp")
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE / "examples")]),
            "ASYA_HANDLER": handler,
            "ASYA_SOCKET_DIR": folder,
            "ASYA_RUNTIME_CONCURRENCY": str(concurrency),
            "ASYA_LOG_LEVEL": "WARNING",
        }
    )
    proc = subprocess.Popen([sys.executable, "-m", "troupe_runtime"], env=env)
    ready = Path(folder) / "runtime-ready"
    deadline = time.monotonic() + 10
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the runtime did not start")
        time.sleep(0.01)
    return proc, str(Path(folder) / "asya-runtime.sock"), folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5000, help="calls per run (default 5000)")
    parser.add_argument("-c", "--connections", type=int, default=8,
                        help="connections for the concurrent run (default 8)")
    parser.add_argument("--socket", help="socket of a running runtime (default: start one)")
    parser.add_argument("--handler", default="handlers.noop",
                        help="handler for the runtime started here (default handlers.noop)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()

    proc = None
    folder = None
    socket_path = args.socket
    if socket_path is None:
        proc, socket_path, folder = start_runtime(args.handler, max(8, args.connections))
    results = []
    try:
        t0 = time.perf_counter()
        latencies = run_calls(socket_path, args.n)
        results.append(report("sequential, 1 connection", latencies, time.perf_counter() - t0))

        per_client = max(1, args.n // args.connections)
        ctx = multiprocessing.get_context("fork")
        out, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        clients = [
            ctx.Process(target=_process_main, args=(socket_path, per_client, out, ready, go))
            for _ in range(args.connections)
        ]
        for c in clients:
            c.start()
        for _ in clients:
            ready.get(timeout=30)
        go.set()
        runs = [out.get(timeout=300) for _ in clients]
        for c in clients:
            c.join()
        start = min(r[0] for r in runs)
        end = max(r[1] for r in runs)
        all_latencies = [x for r in runs for x in r[2]]
        results.append(
            report(f"concurrent, {args.connections} connections", all_latencies, end - start)
        )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
