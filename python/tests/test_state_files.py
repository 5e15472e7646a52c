"""Path resolution of the file-style state mounts (the I/O is tested end to end against the
sidecar in bin/tests/state_e2e.rs)."""

import pytest

from troupe_runtime.state_files import parse_mounts, resolve


def test_mounts_are_parsed_with_their_sockets():
    mounts = parse_mounts("meta:/state/meta:write=buffered;media:/state/media/:write=passthrough;", "/run/s")
    assert {(m.name, m.path, m.socket) for m in mounts} == {
        ("meta", "/state/meta/", "/run/s/meta.sock"),
        ("media", "/state/media/", "/run/s/media.sock"),
    }
    assert parse_mounts("", "/run/s") == []


@pytest.mark.parametrize("spec", ["meta", "meta:/state/meta", "meta:relative:write=buffered", ":/x:write=buffered"])
def test_malformed_mounts_are_refused(spec):
    with pytest.raises(ValueError):
        parse_mounts(spec, "/run/s")


def test_paths_resolve_to_the_most_specific_mount():
    mounts = parse_mounts("all:/state:write=buffered;meta:/state/meta:write=buffered", "/run/s")
    assert resolve("/state/meta/users/1", mounts)[0].name == "meta"
    assert resolve("/state/meta/users/1", mounts)[1] == "users/1"
    assert resolve("/state/other", mounts)[0].name == "all"
    assert resolve("/state/meta", mounts)[1] == ""
    assert resolve(b"/state/meta/x", mounts)[1] == "x"
    assert resolve("/state/metadata/x", mounts)[0].name == "all", "a partial name is no match"
    assert resolve("/tmp/x", mounts) == (None, None)
    assert resolve("relative/x", mounts) == (None, None)
    assert resolve(3, mounts) == (None, None), "file descriptors pass through"
