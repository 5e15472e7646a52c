"""Handler state latency from a Python handler's side, per store: put and get p50/p99
through `troupe_runtime.state` and the sidecar's state socket.

    cargo build --release -p troupe-cli --all-features
    PYTHONPATH=python python3 benches/python/bench_state.py \\
        --troupe "$CARGO_TARGET_DIR/release/troupe" \\
        --stores memory redis://127.0.0.1:6379 postgres://postgres@127.0.0.1:5432/test

For each store it starts one `troupe sidecar --state` (on the embedded broker: state needs
none), times `--ops` puts then as many gets of `--value-bytes` values over 1,000 keys from
one thread, deletes its keys, stops the sidecar and prints a table row.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from troupe_runtime import state


def percentile(sorted_ns: list, q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


def timed(call, n: int) -> list:
    out = []
    for i in range(n):
        start = time.perf_counter_ns()
        call(i)
        out.append(time.perf_counter_ns() - start)
    return sorted(out)


def bench(troupe: str, store: str, ops: int, value_bytes: int) -> str:
    with tempfile.TemporaryDirectory(prefix="troupe-state-bench-") as tmp:
        state_dir = os.path.join(tmp, "state")
        socket = os.path.join(state_dir, "troupe.sock")
        actor = f"bench-{os.getpid()}"
        sidecar = subprocess.Popen(
            [troupe, "sidecar", "--actor", actor, "--transport", "memory", "--socket-dir", os.path.join(tmp, "rt"),
             "--metrics-addr", "127.0.0.1:0", "--store", store, "--state", "true", "--state-socket-dir", state_dir],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(socket):
                if sidecar.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the sidecar did not serve state for {store}")
                time.sleep(0.05)
            os.environ["TROUPE_STATE_SOCKET"] = socket
            value = b"v" * value_bytes
            state.put("warm-up", value)
            started = time.perf_counter()
            puts = timed(lambda i: state.put(f"k{i % 1000}", value), ops)
            gets = timed(lambda i: state.get(f"k{i % 1000}"), ops)
            per_second = 2 * ops / (time.perf_counter() - started)
            for key in state.list_keys(""):
                state.delete(key)
        finally:
            sidecar.terminate()
            sidecar.wait(timeout=30)
    shown = store.split("@")[-1] if "@" in store else store
    return (
        f"| {shown} | {percentile(puts, 0.5):.2f} ms | {percentile(puts, 0.99):.2f} ms | "
        f"{percentile(gets, 0.5):.2f} ms | {percentile(gets, 0.99):.2f} ms | {per_second:,.0f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    parser.add_argument("--troupe", default=os.path.join(target, "release", "troupe"))
    parser.add_argument("--stores", nargs="+", default=["memory"])
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--value-bytes", type=int, default=100)
    args = parser.parse_args()
    print(f"state from Python: {args.ops} puts then {args.ops} gets of {args.value_bytes} B, one thread")
    print("| store | put p50 | put p99 | get p50 | get p99 | ops/s |")
    print("|---|---|---|---|---|---|")
    for store in args.stores:
        print(bench(args.troupe, store, args.ops, args.value_bytes), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
