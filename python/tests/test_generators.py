"""The generator yield protocol (sync and async) through a real socket."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from unixhttp import envelope, get, post


def stream(rt, env) -> tuple[int, dict, list]:
    answer = post(rt.connect(), env)
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/event-stream"
    assert answer.headers["transfer-encoding"] == "chunked"
    return answer.status, answer.headers, answer.events()


def as_async(gen_fn):
    """An async generator with the same protocol behaviour as ``gen_fn``."""

    async def agen(payload):
        gen = gen_fn(payload)
        value, error = None, None
        while True:
            try:
                item = gen.throw(error) if error is not None else gen.send(value)
            except StopIteration:
                return
            value, error = None, None
            await asyncio.sleep(0)  # really suspend on the loop
            try:
                value = yield item
            except Exception as exc:  # forward what the runtime throws in
                error = exc

    return agen


def both(fn):
    return pytest.mark.parametrize("make", [lambda: fn, lambda: as_async(fn)], ids=["sync", "async"])


def fan_out_like(payload):
    nxt = yield ("GET", ".route.next")
    yield ("SET", ".route.next", nxt + ["audit"])
    yield {"part": 0}
    yield ("FLY", {"progress": 0.5})
    yield ("DEL", ".route.next[0]")
    yield ("SET", ".headers.x-step", "2")
    yield ("DEL", ".headers.drop-me")
    yield {"part": 1}
    return "ignored"


@both(fan_out_like)
def test_frames_get_set_del_fly(serve, make) -> None:
    rt = serve(make())
    _, _, events = stream(rt, envelope({"v": 1}, prev=("p",), curr="a", next=("b", "c"),
                                       headers={"drop-me": "1", "keep": "k"}))
    assert events == [
        ("downstream", {"payload": {"part": 0},
                        "route": {"prev": ["p", "a"], "curr": "b", "next": ["c", "audit"]},
                        "headers": {"drop-me": "1", "keep": "k"}}),
        ("upstream", {"progress": 0.5}),
        ("downstream", {"payload": {"part": 1},
                        "route": {"prev": ["p", "a"], "curr": "c", "next": ["audit"]},
                        "headers": {"keep": "k", "x-step": "2"}}),
        ("done", {}),
    ]


def reader(payload):
    got = {}
    for path in (".id", ".route.curr", ".route.prev[0:2]", ".route.next[-1]", ".headers.h",
                 ".status.attempt", ".payload.items[1]", ".missing", ".route.prev[1:]"):
        got[path] = yield ("GET", path)
    yield got


@both(reader)
def test_get_paths_and_slices(serve, make) -> None:
    rt = serve(make())
    env = envelope({"items": [10, 20]}, id="E", prev=("x", "y", "z"), curr="a", next=("b", "c"),
                   headers={"h": "v"}, status={"attempt": 3})
    _, _, events = stream(rt, env)
    assert events[0][1]["payload"] == {
        ".id": "E", ".route.curr": "a", ".route.prev[0:2]": ["x", "y"], ".route.next[-1]": "c",
        ".headers.h": "v", ".status.attempt": 3, ".payload.items[1]": 20, ".missing": None,
        ".route.prev[1:]": ["y", "z"],
    }
    assert events[-1] == ("done", {})


def forbidden_caught(payload):
    caught = []
    for path in (".id", ".route.curr", ".route.prev", ".payload.x"):
        try:
            yield ("SET", path, "x")
        except PermissionError as exc:
            caught.append([path, type(exc).__name__, "read-only" in str(exc)])
    try:
        yield ("DEL", ".route.prev[0]")
    except PermissionError:
        caught.append(["del", "PermissionError", True])
    try:
        yield ("SET", ".route.next", "not-a-list")
    except TypeError:
        caught.append(["next", "TypeError", True])
    try:
        yield ("BOGUS", 1)
    except TypeError:
        caught.append(["verb", "TypeError", True])
    try:
        yield ("GET", "no-dot")
    except ValueError:
        caught.append(["syntax", "ValueError", True])
    try:
        yield {"bad": object()}
    except TypeError:
        caught.append(["encode", "TypeError", True])
    yield {"caught": caught}


@both(forbidden_caught)
def test_bad_control_items_are_thrown_into_the_generator(serve, make) -> None:
    rt = serve(make())
    _, _, events = stream(rt, envelope({}))
    assert [name for name, _ in events] == ["downstream", "done"]
    frame = events[0][1]
    assert frame["payload"]["caught"] == [
        [".id", "PermissionError", True],
        [".route.curr", "PermissionError", True],
        [".route.prev", "PermissionError", True],
        [".payload.x", "PermissionError", True],
        ["del", "PermissionError", True],
        ["next", "TypeError", True],
        ["verb", "TypeError", True],
        ["syntax", "ValueError", True],
        ["encode", "TypeError", True],
    ]
    assert frame["route"] == {"prev": ["a"], "curr": "b", "next": ["c"]}  # nothing changed


def forbidden_uncaught(payload):
    yield {"first": True}
    yield ("SET", ".id", "new-id")
    yield {"never": True}


@both(forbidden_uncaught)
def test_uncaught_forbidden_write_ends_with_error_then_done(serve, make) -> None:
    rt = serve(make())
    _, _, events = stream(rt, envelope({}))
    assert [name for name, _ in events] == ["downstream", "error", "done"]
    error = events[1][1]
    assert error["error"] == "processing_error"
    assert error["details"]["type"] == "PermissionError"
    assert error["details"]["mro"] == ["PermissionError", "OSError", "Exception", "BaseException"]
    assert ".id" in error["details"]["message"]
    assert "Traceback" in error["details"]["traceback"]


def raises_midway(payload):
    yield {"n": 1}
    raise ValueError("midway")


@both(raises_midway)
def test_handler_error_in_stream(serve, make) -> None:
    rt = serve(make())
    _, _, events = stream(rt, envelope({}))
    assert [name for name, _ in events] == ["downstream", "error", "done"]
    assert events[1][1]["details"]["type"] == "ValueError"
    assert events[1][1]["details"]["message"] == "midway"


def empty(payload):
    return
    yield


@both(empty)
def test_generator_without_frames_is_just_done(serve, make) -> None:
    rt = serve(make())
    _, _, events = stream(rt, envelope({}))
    assert events == [("done", {})]


def yields_none_and_values(payload):
    yield None
    yield [1, 2]
    yield "text"


def test_none_is_ignored_other_values_are_payloads(serve) -> None:
    rt = serve(yields_none_and_values)
    _, _, events = stream(rt, envelope({}))
    assert [e[1]["payload"] for e in events[:-1]] == [[1, 2], "text"]


def test_example_fan_out(serve) -> None:
    rt = serve("handlers.fan_out")
    _, _, events = stream(rt, envelope({"value": 5}, curr="split", next=("sum",)))
    assert events == [
        ("downstream", {"payload": {"value": 5, "part": 0},
                        "route": {"prev": ["split"], "curr": "sum", "next": ["audit"]}}),
        ("downstream", {"payload": {"value": 5, "part": 1},
                        "route": {"prev": ["split"], "curr": "sum", "next": ["audit"]}}),
        ("done", {}),
    ]


def test_example_flaky_by_attempt(serve) -> None:
    rt = serve("handlers.flaky_by_attempt")
    _, _, events = stream(rt, envelope({"succeed_on": 2}, status={"attempt": 1}))
    assert [e[0] for e in events] == ["error", "done"]
    assert events[0][1]["details"]["type"] == "handlers.TransientError"
    _, _, events = stream(rt, envelope({"succeed_on": 2}, status={"attempt": 2}))
    assert [e[0] for e in events] == ["downstream", "done"]


def test_keep_alive_survives_streams(serve) -> None:
    rt = serve("handlers.report_progress")
    conn = rt.connect()
    for i in range(5):
        answer = post(conn, envelope({"i": i}))
        assert [e[0] for e in answer.events()] == ["upstream", "upstream", "downstream", "done"]
    assert get(conn, "/healthz").status == 200
    assert rt.server.accepted == 1


def test_frames_are_streamed_while_the_handler_runs(serve) -> None:
    release = threading.Event()

    def slow(payload):
        yield {"early": True}
        released = release.wait(5)
        yield {"late": True, "released": released}

    rt = serve(slow)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(rt.socket_path))
    body = json.dumps(envelope({})).encode()
    sock.sendall(b"POST /invoke HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    received = b""
    while b'"early":true' not in received:
        data = sock.recv(4096)
        assert data, "stream ended early"
        received += data
    assert b'"late"' not in received
    release.set()
    while not received.endswith(b"0\r\n\r\n"):
        data = sock.recv(4096)
        assert data
        received += data
    assert b'"late":true,"released":true' in received
    sock.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_client_disconnect_closes_the_generator(serve, kind: str) -> None:
    closed = threading.Event()

    def endless(payload):
        try:
            while True:
                yield {"tick": time.monotonic()}
                time.sleep(0.005)
        finally:
            closed.set()

    async def aendless(payload):
        try:
            while True:
                yield {"tick": time.monotonic()}
                await asyncio.sleep(0.005)
        finally:
            closed.set()

    rt = serve(endless if kind == "sync" else aendless)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(rt.socket_path))
    body = json.dumps(envelope({})).encode()
    sock.sendall(b"POST /invoke HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    received = b""
    while b"downstream" not in received:
        data = sock.recv(4096)
        assert data, "stream ended early"
        received += data
    sock.close()
    assert closed.wait(5), "generator was not closed after the client went away"
    assert get(rt.connect(), "/healthz").status == 200
