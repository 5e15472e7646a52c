"""Every answer of the protocol table, through a real Unix socket."""

from __future__ import annotations

import json
import socket

import pytest

from unixhttp import envelope, get, post, read_raw_response


def test_healthz(serve) -> None:
    rt = serve("handlers.noop")
    conn = rt.connect()
    answer = get(conn, "/healthz")
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"status": "ready"}


def test_value_is_one_frame_with_advanced_route(serve) -> None:
    rt = serve("handlers.double")
    env = envelope(
        {"value": 21}, prev=("p",), curr="a", next=("b", "c"),
        headers={"traceparent": "00-abc"}, status={"phase": "processing", "attempt": 1},
    )
    answer = post(rt.connect(), env)
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {
        "frames": [
            {
                "payload": {"value": 42},
                "route": {"prev": ["p", "a"], "curr": "b", "next": ["c"]},
                "headers": {"traceparent": "00-abc"},
                "status": {"phase": "processing", "attempt": 1},
            }
        ]
    }


def test_last_actor_gives_empty_curr(serve) -> None:
    rt = serve("handlers.noop")
    answer = post(rt.connect(), envelope({"v": 1}, curr="z", next=()))
    frame = answer.json()["frames"][0]
    assert frame["route"] == {"prev": ["z"], "curr": "", "next": []}
    assert set(frame) == {"payload", "route"}


def test_old_route_form_is_answered_in_new_form(serve) -> None:
    rt = serve("handlers.noop")
    env = {"id": "1", "route": {"actors": ["a", "b", "c"], "current": 1}, "payload": 5}
    answer = post(rt.connect(), env)
    assert answer.json()["frames"][0]["route"] == {"prev": ["a", "b"], "curr": "c", "next": []}


def test_class_method_handler(serve) -> None:
    import handlers

    before = handlers.Model.loads
    rt = serve("handlers.Model.predict")
    conn = rt.connect()
    for _ in range(3):
        frame = post(conn, envelope({"value": 2})).json()["frames"][0]
        assert frame["payload"] == {"value": 6, "loads": before + 1}


def test_list_return_is_one_frame(serve) -> None:
    rt = serve(lambda p: [1, 2])
    assert post(rt.connect(), envelope(None)).json()["frames"][0]["payload"] == [1, 2]


def test_none_is_204(serve) -> None:
    rt = serve("handlers.stop")
    conn = rt.connect()
    answer = post(conn, envelope({"v": 1}))
    assert answer.status == 204
    assert answer.body == b""
    assert "content-length" not in answer.headers
    assert post(conn, envelope({"v": 1})).status == 204  # the connection survived


def test_async_function(serve) -> None:
    async def handler(payload):
        return {"got": payload}

    rt = serve(handler)
    assert post(rt.connect(), envelope(3)).json()["frames"][0]["payload"] == {"got": 3}


def test_async_none_is_204(serve) -> None:
    async def handler(payload):
        return None

    rt = serve(handler)
    assert post(rt.connect(), envelope(3)).status == 204


def test_non_json_values_are_encoded(serve) -> None:
    import datetime
    import decimal
    import uuid

    rt = serve(lambda p: {"d": decimal.Decimal("0.1"), "u": uuid.UUID(int=1), "b": b"x",
                          "t": datetime.date(2026, 1, 1)})
    payload = post(rt.connect(), envelope(None)).json()["frames"][0]["payload"]
    assert payload == {"d": "0.1", "u": "00000000-0000-0000-0000-000000000001", "b": "eA==",
                       "t": "2026-01-01"}


@pytest.mark.parametrize(
    "body, field",
    [
        (b"{not json", None),
        (b'"a string"', None),
        (json.dumps({"route": {"curr": "a"}, "payload": 1}).encode(), "id"),
        (json.dumps({"id": "", "route": {"curr": "a"}, "payload": 1}).encode(), "id"),
        (json.dumps({"id": "1", "payload": 1}).encode(), "route"),
        (json.dumps({"id": "1", "route": {"curr": "a"}}).encode(), "payload"),
        (json.dumps({"id": "1", "route": {"curr": 3}, "payload": 1}).encode(), "route.curr"),
        (b"", None),
    ],
)
def test_bad_envelope_is_400(serve, body: bytes, field: str | None) -> None:
    called = []
    rt = serve(lambda p: called.append(p))
    conn = rt.connect()
    answer = post(conn, body)
    assert answer.status == 400
    data = answer.json()
    assert data["error"] == "msg_parsing_error"
    assert isinstance(data["details"]["message"], str) and data["details"]["message"]
    assert data["details"].get("field") == field
    assert called == []
    assert get(conn, "/healthz").status == 200  # the connection survived


class CustomError(Exception):
    class Inner(LookupError):
        pass


def _raise_value_error(payload):
    raise ValueError(f"bad value {payload['v']}")


def _raise_nested(payload):
    raise CustomError.Inner("deep")


@pytest.mark.parametrize(
    "handler, type_, mro, message",
    [
        (_raise_value_error, "ValueError", ["ValueError", "Exception", "BaseException"], "bad value 7"),
        (
            lambda p: {}["k"],
            "KeyError",
            ["KeyError", "LookupError", "Exception", "BaseException"],
            "'k'",
        ),
        (
            _raise_nested,
            "test_http.CustomError.Inner",
            ["test_http.CustomError.Inner", "LookupError", "Exception", "BaseException"],
            "deep",
        ),
    ],
)
def test_raise_is_500(serve, handler, type_: str, mro: list, message: str) -> None:
    rt = serve(handler)
    conn = rt.connect()
    answer = post(conn, envelope({"v": 7}))
    assert answer.status == 500
    assert answer.headers["content-type"] == "application/json"
    data = answer.json()
    assert data["error"] == "processing_error"
    details = data["details"]
    assert details["type"] == type_
    assert details["mro"] == mro
    assert details["message"] == message
    assert details["traceback"].startswith("Traceback (most recent call last):")
    assert "test_http.py" in details["traceback"]
    assert "troupe_runtime" not in details["traceback"].splitlines()[1]  # starts in user code
    assert get(conn, "/healthz").status == 200


def test_example_errors_carry_module_qualified_names(serve) -> None:
    rt = serve("handlers.broken")
    details = post(rt.connect(), envelope({})).json()["details"]
    assert details["type"] == "handlers.PermanentError"
    assert details["mro"] == ["handlers.PermanentError", "Exception", "BaseException"]


def test_unencodable_result_is_500(serve) -> None:
    rt = serve(lambda p: {"obj": object()})
    answer = post(rt.connect(), envelope(None))
    assert answer.status == 500
    details = answer.json()["details"]
    assert details["type"] == "troupe_runtime.encoding.EncodingError"
    assert "TypeError" in details["mro"]
    assert "not JSON-encodable" in details["message"] and "object" in details["message"]


def test_async_raise_is_500(serve) -> None:
    async def handler(payload):
        raise RuntimeError("async boom")

    answer = post(serve(handler).connect(), envelope(None))
    assert answer.status == 500
    assert answer.json()["details"]["type"] == "RuntimeError"
    assert answer.json()["details"]["message"] == "async boom"


def test_keep_alive_many_requests_one_connection(serve) -> None:
    rt = serve("handlers.double")
    conn = rt.connect()
    for i in range(50):
        answer = post(conn, envelope({"value": i}, id=f"e{i}"))
        assert answer.status == 200
        assert answer.json()["frames"][0]["payload"] == {"value": 2 * i}
        assert "connection" not in answer.headers
    assert rt.server.accepted == 1


def test_pipelined_requests_on_a_raw_socket(serve) -> None:
    rt = serve("handlers.double")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(rt.socket_path))
    wire = b""
    for i in range(5):
        body = json.dumps(envelope({"value": i})).encode()
        wire += b"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    wire += b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    sock.sendall(wire)
    rfile = sock.makefile("rb")
    for i in range(5):
        status, _, body = read_raw_response(rfile)
        assert status == 200
        assert json.loads(body)["frames"][0]["payload"] == {"value": 2 * i}
    assert read_raw_response(rfile)[0] == 200
    sock.close()
    assert rt.server.accepted == 1


def test_chunked_request_body_and_expect_continue(serve) -> None:
    rt = serve("handlers.double")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(rt.socket_path))
    body = json.dumps(envelope({"value": 4})).encode()
    half = len(body) // 2
    sock.sendall(
        b"POST /invoke HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
        + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
    )
    rfile = sock.makefile("rb")
    assert rfile.readline() == b"HTTP/1.1 100 Continue\r\n"
    assert rfile.readline() == b"\r\n"
    status, _, answer = read_raw_response(rfile)
    assert status == 200
    assert json.loads(answer)["frames"][0]["payload"] == {"value": 8}
    sock.close()


def test_connection_close_is_honoured(serve) -> None:
    rt = serve("handlers.noop")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(rt.socket_path))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    rfile = sock.makefile("rb")
    status, headers, _ = read_raw_response(rfile)
    assert status == 200 and headers["connection"] == "close"
    assert rfile.read() == b""  # server closed
    sock.close()


def test_http10_closes_by_default(serve) -> None:
    rt = serve("handlers.noop")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(rt.socket_path))
    sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    rfile = sock.makefile("rb")
    assert read_raw_response(rfile)[0] == 200
    assert rfile.read() == b""
    sock.close()


def test_head_healthz_has_no_body(serve) -> None:
    rt = serve("handlers.noop")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(rt.socket_path))
    sock.sendall(b"HEAD /healthz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n")
    rfile = sock.makefile("rb")
    assert rfile.readline() == b"HTTP/1.1 200 OK\r\n"
    while rfile.readline() != b"\r\n":
        pass
    status, _, body = read_raw_response(rfile)  # the next answer follows right away
    assert status == 200 and json.loads(body) == {"status": "ready"}
    sock.close()


def test_unknown_path_and_method(serve) -> None:
    rt = serve("handlers.noop")
    conn = rt.connect()
    assert get(conn, "/nope").status == 404
    answer = get(conn, "/invoke")
    assert answer.status == 405 and answer.headers["allow"] == "POST"
    assert post(conn, {}, path="/healthz").status == 405
    assert get(conn, "/healthz?probe=1").status == 200


@pytest.mark.parametrize(
    "wire, status",
    [
        (b"garbage\r\n\r\n", 400),
        (b"POST /invoke HTTP/2.0\r\n\r\n", 505),
        (b"POST /invoke HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"POST /invoke HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"POST /invoke HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST /invoke HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n", 413),
    ],
)
def test_malformed_http_is_answered_and_closed(serve, wire: bytes, status: int) -> None:
    rt = serve("handlers.noop")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(rt.socket_path))
    sock.sendall(wire)
    rfile = sock.makefile("rb")
    got, headers, _ = read_raw_response(rfile)
    assert got == status
    assert headers["connection"] == "close"
    sock.close()
