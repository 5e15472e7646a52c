import copy

import pytest

from troupe_runtime.paths import (
    PathSyntaxError,
    delete_path,
    get_path,
    parse_path,
    set_path,
)


def env() -> dict:
    return {
        "id": "e1",
        "route": {"prev": ["p1", "p2", "p3"], "curr": "a", "next": ["b", "c", "d"]},
        "headers": {"x-trace": "t1", "a.b": 2},
        "status": {"phase": "processing", "attempt": 2},
        "payload": {"items": [{"name": "n0"}, {"name": "n1"}], "text": "hello"},
    }


@pytest.mark.parametrize(
    "path, segments",
    [
        (".", ()),
        (".id", ("id",)),
        (".route.next", ("route", "next")),
        (".route.next[0]", ("route", "next", 0)),
        (".route.next.[-1]", ("route", "next", -1)),
        (".route.prev[1:3]", ("route", "prev", slice(1, 3))),
        (".route.prev[:2]", ("route", "prev", slice(None, 2))),
        (".route.prev[ 1 : ]", ("route", "prev", slice(1, None))),
        (".headers.x-trace", ("headers", "x-trace")),
        ('.headers."a.b"', ("headers", "a.b")),
        ('.headers["a]b"]', ("headers", "a]b")),
        (".payload.items[1].name", ("payload", "items", 1, "name")),
        ("  .id  ", ("id",)),
    ],
)
def test_parse(path: str, segments: tuple) -> None:
    assert parse_path(path) == segments


@pytest.mark.parametrize("path", ["id", "", "..a", ".a[", ".a[x]", ".a]", '.a."b', ".a[1:x]"])
def test_parse_errors(path: str) -> None:
    with pytest.raises(PathSyntaxError):
        parse_path(path)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        parse_path(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "path, value",
    [
        (".id", "e1"),
        (".route.curr", "a"),
        (".route.next", ["b", "c", "d"]),
        (".route.next[0]", "b"),
        (".route.next[-1]", "d"),
        (".route.next[5]", None),
        (".route.prev[1:3]", ["p2", "p3"]),
        (".route.prev[:1]", ["p1"]),
        (".payload.text[1:3]", "el"),
        (".headers.x-trace", "t1"),
        ('.headers."a.b"', 2),
        (".headers.missing", None),
        (".missing.deeper.still", None),
        (".status.phase", "processing"),
        (".payload.items[1].name", "n1"),
    ],
)
def test_get(path: str, value: object) -> None:
    assert get_path(env(), path) == value


def test_get_whole_envelope_and_copies() -> None:
    e = env()
    whole = get_path(e, ".")
    assert whole == e
    got = get_path(e, ".route.next")
    got.append("zzz")
    assert e["route"]["next"] == ["b", "c", "d"]


def test_get_type_mismatch() -> None:
    with pytest.raises(TypeError):
        get_path(env(), ".route.next.key")
    with pytest.raises(TypeError):
        get_path(env(), ".headers[0]")


def test_set_route_next_variants() -> None:
    e = env()
    set_path(e, ".route.next", ["x"])
    assert e["route"]["next"] == ["x"]
    set_path(e, ".route.next[0]", "y")
    assert e["route"]["next"] == ["y"]
    set_path(e, ".route.next[1]", "z")  # index == len appends
    assert e["route"]["next"] == ["y", "z"]
    set_path(e, ".route.next[0:1]", ["p", "q"])
    assert e["route"]["next"] == ["p", "q", "z"]
    set_path(e, ".route.next[-1]", "last")
    assert e["route"]["next"] == ["p", "q", "last"]


def test_set_copies_value() -> None:
    e = env()
    value = ["x"]
    set_path(e, ".route.next", value)
    value.append("y")
    assert e["route"]["next"] == ["x"]


def test_set_headers_and_status() -> None:
    e = env()
    set_path(e, ".headers.new", "v")
    set_path(e, ".headers.nested.deep", 1)
    set_path(e, ".status.phase", "done")
    assert e["headers"]["new"] == "v"
    assert e["headers"]["nested"] == {"deep": 1}
    assert e["status"]["phase"] == "done"
    e2 = {"id": "x", "route": {"prev": [], "curr": "a", "next": []}, "payload": None}
    set_path(e2, ".headers.k", "v")
    assert e2["headers"] == {"k": "v"}


@pytest.mark.parametrize(
    "path",
    [".id", ".payload.x", ".route.curr", ".route.prev", ".route.prev[0]", ".route", ".", ".parent_id"],
)
def test_forbidden_writes(path: str) -> None:
    e = env()
    before = copy.deepcopy(e)
    with pytest.raises(PermissionError, match="read-only"):
        set_path(e, path, "x")
    with pytest.raises(PermissionError):
        delete_path(e, path)
    assert e == before


@pytest.mark.parametrize(
    "path, value, error",
    [
        (".route.next", "b", TypeError),
        (".route.next", ["b", 3], TypeError),
        (".route.next[0]", 7, TypeError),
        (".route.next[9]", "x", IndexError),
        (".route.next[0:1]", "x", TypeError),
        (".headers", "flat", TypeError),
        (".status", ["phase"], TypeError),
        (".headers.x-trace.inner", 1, TypeError),
    ],
)
def test_invalid_writes_leave_envelope_unchanged(path: str, value: object, error: type) -> None:
    e = env()
    before = copy.deepcopy(e)
    with pytest.raises(error):
        set_path(e, path, value)
    assert e == before


def test_delete() -> None:
    e = env()
    delete_path(e, ".headers.x-trace")
    assert "x-trace" not in e["headers"]
    delete_path(e, ".headers.not-there")  # no-op
    delete_path(e, ".route.next[0]")
    assert e["route"]["next"] == ["c", "d"]
    delete_path(e, ".route.next[7]")  # no-op
    delete_path(e, ".route.next[0:1]")
    assert e["route"]["next"] == ["d"]
    delete_path(e, ".route.next")
    assert e["route"]["next"] == []
    delete_path(e, ".status")
    assert "status" not in e
    delete_path(e, ".status.phase")  # no status any more: no-op
    assert "status" not in e
