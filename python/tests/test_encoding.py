import dataclasses
import datetime
import decimal
import enum
import json
import math
import pathlib
import uuid

import pytest

from troupe_runtime.encoding import EncodingError, dumps


class Color(enum.Enum):
    RED = "red"
    ONE = 1


@dataclasses.dataclass
class Point:
    x: int
    when: datetime.date
    tags: set


class FakePydanticV2:
    def model_dump(self, mode: str = "python") -> dict:
        assert mode == "json"
        return {"v": 2}


class FakePydanticV1:
    __fields__ = {"v": None}

    def dict(self) -> dict:
        return {"v": 1}


class HasJson:
    def __json__(self) -> list:
        return [1, 2]


class FakeArray:
    def tolist(self) -> list:
        return [[1.5, 2.5]]


def roundtrip(value: object) -> object:
    return json.loads(dumps(value))


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"a": [1, "x", None, True]}, {"a": [1, "x", None, True]}),
        ((1, 2), [1, 2]),
        (Color.RED, "red"),
        (Color.ONE, 1),
        (datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc), "2026-01-02T03:04:05+00:00"),
        (datetime.date(2026, 1, 2), "2026-01-02"),
        (datetime.time(3, 4, 5), "03:04:05"),
        (datetime.timedelta(seconds=90), 90.0),
        (uuid.UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
        (decimal.Decimal("1.10"), "1.10"),
        (b"\x00\xffhi", "AP9oaQ=="),
        (bytearray(b"ab"), "YWI="),
        ({3, 1, 2}, [1, 2, 3]),
        (frozenset({"b", "a"}), ["a", "b"]),
        (pathlib.PurePosixPath("/a/b"), "/a/b"),
        (FakePydanticV2(), {"v": 2}),
        (FakePydanticV1(), {"v": 1}),
        (HasJson(), [1, 2]),
        (FakeArray(), [[1.5, 2.5]]),
        (Point(1, datetime.date(2026, 5, 6), {"z", "y"}), {"x": 1, "when": "2026-05-06", "tags": ["y", "z"]}),
        ({"nested": [Color.RED, {"d": decimal.Decimal("2")}]}, {"nested": ["red", {"d": "2"}]}),
    ],
)
def test_encodes(value: object, expected: object) -> None:
    assert roundtrip(value) == expected


def test_unsortable_set_is_still_a_list() -> None:
    out = roundtrip({1, "a"})
    assert sorted(map(str, out)) == ["1", "a"]


def test_output_is_compact_one_line_utf8() -> None:
    raw = dumps({"text": "line1\nline2 é ✓"})
    assert b"\n" not in raw
    assert raw == '{"text":"line1\\nline2 é ✓"}'.encode()


def test_lone_surrogate_falls_back_to_escapes() -> None:
    assert dumps("\ud800") == b'"\\ud800"'


@pytest.mark.parametrize("value", [object(), {"k": object()}, math.nan, [math.inf]])
def test_unencodable(value: object) -> None:
    with pytest.raises(EncodingError, match="not JSON-encodable"):
        dumps(value)


def test_circular() -> None:
    a: list = []
    a.append(a)
    with pytest.raises(EncodingError):
        dumps(a)


def test_encoding_error_is_a_type_error() -> None:
    assert issubclass(EncodingError, TypeError)
