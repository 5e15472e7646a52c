"""Handlers used by the tests (loaded by spec, so the loader is exercised too)."""

from __future__ import annotations

from typing import Any

BUILDS = 0
NOT_CALLABLE = 42


class Counted:
    def __init__(self) -> None:
        global BUILDS
        BUILDS += 1

    def handle(self, payload: Any) -> dict[str, int]:
        return {"builds": BUILDS}

    async def handle_async(self, payload: Any) -> dict[str, int]:
        return {"builds": BUILDS}


class NeedsArgs:
    def __init__(self, model_path: str) -> None:
        self.model_path = model_path

    def handle(self, payload: Any) -> Any:
        return payload


class FailsToBuild:
    def __init__(self) -> None:
        raise RuntimeError("no GPU here")

    def handle(self, payload: Any) -> Any:
        return payload


def echo(payload: Any) -> Any:
    return payload


async def async_echo(payload: Any) -> Any:
    return payload


def no_args() -> None:
    return None


def two_args(a: Any, b: Any) -> None:
    return None


def with_default(payload: Any, extra: int = 1) -> Any:
    return payload
