"""Runtime settings read from the environment.

Every setting has an Asya name and a Troupe alias. When both are set (non-empty) to
different values the runtime refuses to start and names both variables, so that a
deployment never silently runs with the value it did not mean.

=====================================  ====================================  =====================
Asya name                              Troupe alias                          default
=====================================  ====================================  =====================
``ASYA_HANDLER``                       ``TROUPE_HANDLER``                    (required)
``ASYA_SOCKET_PATH``                   ``TROUPE_SOCKET_PATH``                ``<dir>/asya-runtime.sock``
``ASYA_SOCKET_DIR``                    ``TROUPE_SOCKET_DIR``                 ``/var/run/asya``
``ASYA_RUNTIME_CONCURRENCY``           ``TROUPE_RUNTIME_CONCURRENCY``        ``8``
``ASYA_LOG_LEVEL``                     ``TROUPE_LOG_LEVEL``                  ``INFO``
``ASYA_RUNTIME_SHUTDOWN_GRACE_S``      ``TROUPE_RUNTIME_SHUTDOWN_GRACE_S``   ``10``
=====================================  ====================================  =====================

``*_SOCKET_PATH`` (full path of the socket file) wins over ``*_SOCKET_DIR``; the
``runtime-ready`` file is always written in the socket's folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from . import DEFAULT_SOCKET_DIR, READY_NAME, SOCKET_NAME

DEFAULT_CONCURRENCY = 8
DEFAULT_SHUTDOWN_GRACE_S = 10.0
_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class ConfigError(Exception):
    """A setting is missing, malformed, or set twice with different values."""


@dataclass(frozen=True)
class Settings:
    """Everything the runtime process needs to start."""

    handler: str
    socket_path: Path
    concurrency: int = DEFAULT_CONCURRENCY
    log_level: str = "INFO"
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S

    @property
    def ready_path(self) -> Path:
        """The readiness marker: ``runtime-ready`` in the socket's folder."""
        return self.socket_path.parent / READY_NAME


def env_alias(env: Mapping[str, str], asya: str, troupe: str) -> str | None:
    """The value of a setting known under two names; ``None`` when neither is set.

    Empty strings count as unset. Raises :class:`ConfigError` naming both variables when
    they are set to different values.
    """
    a = env.get(asya) or None
    t = env.get(troupe) or None
    if a is not None and t is not None and a != t:
        raise ConfigError(
            f"{asya}={a!r} and {troupe}={t!r} are both set and differ; set only one of them"
        )
    return a if a is not None else t


def _positive_int(raw: str, names: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{names} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ConfigError(f"{names} must be a positive integer, got {raw!r}")
    return value


def _non_negative_float(raw: str, names: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{names} must be a number of seconds, got {raw!r}") from None
    if not value >= 0:
        raise ConfigError(f"{names} must be >= 0, got {raw!r}")
    return value


def load_settings(env: Mapping[str, str]) -> Settings:
    """Read :class:`Settings` from an environment mapping (normally ``os.environ``)."""
    handler = env_alias(env, "ASYA_HANDLER", "TROUPE_HANDLER")
    if handler is None:
        raise ConfigError(
            "no handler: set ASYA_HANDLER (or TROUPE_HANDLER) to module.function "
            "or module.Class.method"
        )

    socket_path_raw = env_alias(env, "ASYA_SOCKET_PATH", "TROUPE_SOCKET_PATH")
    if socket_path_raw is not None:
        socket_path = Path(socket_path_raw)
    else:
        socket_dir = env_alias(env, "ASYA_SOCKET_DIR", "TROUPE_SOCKET_DIR") or DEFAULT_SOCKET_DIR
        socket_path = Path(socket_dir) / SOCKET_NAME

    concurrency = DEFAULT_CONCURRENCY
    raw = env_alias(env, "ASYA_RUNTIME_CONCURRENCY", "TROUPE_RUNTIME_CONCURRENCY")
    if raw is not None:
        concurrency = _positive_int(raw, "ASYA_RUNTIME_CONCURRENCY/TROUPE_RUNTIME_CONCURRENCY")

    log_level = (env_alias(env, "ASYA_LOG_LEVEL", "TROUPE_LOG_LEVEL") or "INFO").upper()
    if log_level == "WARN":
        log_level = "WARNING"
    if log_level not in _LOG_LEVELS:
        raise ConfigError(
            f"ASYA_LOG_LEVEL/TROUPE_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}, "
            f"got {log_level!r}"
        )

    grace = DEFAULT_SHUTDOWN_GRACE_S
    raw = env_alias(env, "ASYA_RUNTIME_SHUTDOWN_GRACE_S", "TROUPE_RUNTIME_SHUTDOWN_GRACE_S")
    if raw is not None:
        grace = _non_negative_float(
            raw, "ASYA_RUNTIME_SHUTDOWN_GRACE_S/TROUPE_RUNTIME_SHUTDOWN_GRACE_S"
        )

    return Settings(
        handler=handler,
        socket_path=socket_path,
        concurrency=concurrency,
        log_level=log_level,
        shutdown_grace_s=grace,
    )


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``. Payloads are never logged at INFO or above."""
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
