import json

import pytest

from troupe_runtime.envelope import EnvelopeError, parse_envelope
from troupe_runtime.frames import advance_route, make_frame


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_valid_envelope_keeps_unknown_fields() -> None:
    env = parse_envelope(
        body({"id": "1", "route": {"prev": [], "curr": "a", "next": []}, "payload": None, "x": 1})
    )
    assert env["x"] == 1 and env["payload"] is None


def test_missing_prev_next_default_to_empty() -> None:
    env = parse_envelope(body({"id": "1", "route": {"curr": "a"}, "payload": 1}))
    assert env["route"] == {"curr": "a", "prev": [], "next": []}


@pytest.mark.parametrize(
    "actors, current, route",
    [
        (["a", "b", "c"], 0, {"prev": [], "curr": "a", "next": ["b", "c"]}),
        (["a", "b", "c"], 1, {"prev": ["a"], "curr": "b", "next": ["c"]}),
        (["a", "b", "c"], 3, {"prev": ["a", "b", "c"], "curr": "", "next": []}),
        ([], 0, {"prev": [], "curr": "", "next": []}),
    ],
)
def test_old_route_form(actors: list, current: int, route: dict) -> None:
    env = parse_envelope(body({"id": "1", "route": {"actors": actors, "current": current}, "payload": 1}))
    assert env["route"] == route


@pytest.mark.parametrize(
    "raw, field",
    [
        (b"not json", None),
        (b"\xff\xfe", None),
        (b'{"id":"1","route":{"curr":"a"},"payload":NaN}', None),
        (b"[1,2]", None),
        (body({"route": {"curr": "a"}, "payload": 1}), "id"),
        (body({"id": "", "route": {"curr": "a"}, "payload": 1}), "id"),
        (body({"id": 7, "route": {"curr": "a"}, "payload": 1}), "id"),
        (body({"id": "1", "payload": 1}), "route"),
        (body({"id": "1", "route": "a", "payload": 1}), "route"),
        (body({"id": "1", "route": {"prev": []}, "payload": 1}), "route.curr"),
        (body({"id": "1", "route": {"curr": "a", "next": "b"}, "payload": 1}), "route.next"),
        (body({"id": "1", "route": {"curr": "a", "prev": [1]}, "payload": 1}), "route.prev"),
        (body({"id": "1", "route": {"actors": ["a"], "current": 2}, "payload": 1}), "route.current"),
        (body({"id": "1", "route": {"actors": ["a"], "current": True}, "payload": 1}), "route.current"),
        (body({"id": "1", "route": {"actors": "a", "current": 0}, "payload": 1}), "route.actors"),
        (body({"id": "1", "route": {"curr": "a"}}), "payload"),
        (body({"id": "1", "route": {"curr": "a"}, "payload": 1, "headers": []}), "headers"),
        (body({"id": "1", "route": {"curr": "a"}, "payload": 1, "status": "x"}), "status"),
    ],
)
def test_rejected(raw: bytes, field: str | None) -> None:
    with pytest.raises(EnvelopeError) as err:
        parse_envelope(raw)
    assert err.value.details["message"]
    assert err.value.details.get("field") == field


def test_advance_route() -> None:
    route = {"prev": ["p"], "curr": "a", "next": ["b", "c"]}
    assert advance_route(route) == {"prev": ["p", "a"], "curr": "b", "next": ["c"]}
    assert route == {"prev": ["p"], "curr": "a", "next": ["b", "c"]}
    assert advance_route({"prev": [], "curr": "a", "next": []}) == {"prev": ["a"], "curr": "", "next": []}


def test_make_frame_copies_headers_and_status_only_when_present() -> None:
    env = {"id": "1", "route": {"prev": [], "curr": "a", "next": []}, "payload": 1}
    assert set(make_frame(2, env)) == {"payload", "route"}
    env["headers"] = {"h": 1}
    env["status"] = {"phase": "processing"}
    frame = make_frame(2, env)
    assert frame["headers"] == {"h": 1} and frame["status"] == {"phase": "processing"}
