from pathlib import Path

import pytest

from troupe_runtime.config import ConfigError, load_settings


def test_defaults() -> None:
    s = load_settings({"ASYA_HANDLER": "m.f"})
    assert s.handler == "m.f"
    assert s.socket_path == Path("/var/run/asya/asya-runtime.sock")
    assert s.ready_path == Path("/var/run/asya/runtime-ready")
    assert s.concurrency == 8
    assert s.log_level == "INFO"


def test_troupe_alias_and_socket_dir() -> None:
    s = load_settings({"TROUPE_HANDLER": "m.C.f", "TROUPE_SOCKET_DIR": "/tmp/x"})
    assert s.handler == "m.C.f"
    assert s.socket_path == Path("/tmp/x/asya-runtime.sock")


def test_socket_path_wins_over_dir() -> None:
    s = load_settings(
        {"ASYA_HANDLER": "m.f", "ASYA_SOCKET_DIR": "/tmp/x", "ASYA_SOCKET_PATH": "/tmp/y/r.sock"}
    )
    assert s.socket_path == Path("/tmp/y/r.sock")
    assert s.ready_path == Path("/tmp/y/runtime-ready")


def test_same_value_under_both_names_is_fine() -> None:
    assert load_settings({"ASYA_HANDLER": "m.f", "TROUPE_HANDLER": "m.f"}).handler == "m.f"


def test_conflicting_aliases_name_both_variables() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({"ASYA_HANDLER": "m.f", "TROUPE_HANDLER": "m.g"})
    assert "ASYA_HANDLER" in str(err.value) and "TROUPE_HANDLER" in str(err.value)


def test_missing_handler() -> None:
    with pytest.raises(ConfigError, match="ASYA_HANDLER"):
        load_settings({"ASYA_HANDLER": ""})


@pytest.mark.parametrize("raw", ["0", "-1", "two"])
def test_bad_concurrency(raw: str) -> None:
    with pytest.raises(ConfigError, match="CONCURRENCY"):
        load_settings({"ASYA_HANDLER": "m.f", "TROUPE_RUNTIME_CONCURRENCY": raw})


def test_log_level() -> None:
    assert load_settings({"ASYA_HANDLER": "m.f", "ASYA_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert load_settings({"ASYA_HANDLER": "m.f", "TROUPE_LOG_LEVEL": "warn"}).log_level == "WARNING"
    with pytest.raises(ConfigError):
        load_settings({"ASYA_HANDLER": "m.f", "ASYA_LOG_LEVEL": "loud"})
