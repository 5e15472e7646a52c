"""Calls on different connections run in parallel, up to the configured concurrency."""

from __future__ import annotations

import threading
import time

import pytest

from unixhttp import envelope, get, post

SLEEP = 0.4


def run_parallel(rt, spec_payloads: list) -> tuple[float, list]:
    results: list = [None] * len(spec_payloads)

    def call(i: int, payload: dict) -> None:
        results[i] = post(rt.connect(), envelope(payload, id=f"e{i}"))

    threads = [threading.Thread(target=call, args=(i, p)) for i, p in enumerate(spec_payloads)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return time.monotonic() - start, results


@pytest.mark.parametrize("spec", ["handlers.sleepy", "handlers.async_sleepy"])
def test_slow_calls_overlap(serve, spec: str) -> None:
    rt = serve(spec, concurrency=2)
    elapsed, results = run_parallel(rt, [{"sleep_s": SLEEP}, {"sleep_s": SLEEP}])
    assert [r.status for r in results] == [200, 200]
    assert elapsed < 1.75 * SLEEP, f"two {SLEEP}s calls took {elapsed:.2f}s: not concurrent"


def test_concurrency_one_serialises(serve) -> None:
    rt = serve("handlers.sleepy", concurrency=1)
    elapsed, results = run_parallel(rt, [{"sleep_s": SLEEP}, {"sleep_s": SLEEP}])
    assert [r.status for r in results] == [200, 200]
    assert elapsed >= 2 * SLEEP * 0.95, f"took {elapsed:.2f}s: calls were not serialised"


def test_overlap_is_measured_inside_the_handler(serve) -> None:
    lock = threading.Lock()
    active = 0
    peak = 0

    def handler(payload):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.2)
        with lock:
            active -= 1
        return payload

    rt = serve(handler, concurrency=3)
    elapsed, results = run_parallel(rt, [{}] * 5)
    assert all(r.status == 200 for r in results)
    assert peak == 3, f"peak concurrency {peak}, expected the limit 3"


def test_healthz_is_not_blocked_by_busy_handlers(serve) -> None:
    rt = serve("handlers.sleepy", concurrency=1)
    t = threading.Thread(target=lambda: post(rt.connect(), envelope({"sleep_s": 0.5})))
    t.start()
    time.sleep(0.1)
    start = time.monotonic()
    assert get(rt.connect(), "/healthz").status == 200
    assert time.monotonic() - start < 0.3
    t.join(5)
