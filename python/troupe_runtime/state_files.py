"""File-style access to handler state under Asya's mounts (``ASYA_STATE_PROXY_MOUNTS``).

With ``ASYA_STATE_PROXY_MOUNTS=name:/path:write=buffered|passthrough;...`` set, the runtime
routes file operations under each mount's path to the sidecar's connector socket for that
mount, ``{state socket dir}/{name}.sock`` (``/var/run/asya/state`` unless
``TROUPE_STATE_SOCKET_DIR`` says), so a handler written for Asya's state proxy runs
unchanged::

    with open("/state/notes/today.txt", "w") as f:   # a PUT when the file closes
        f.write("hello")
    open("/state/notes/today.txt").read()            # a GET
    os.listdir("/state/notes")                       # a listing, one level
    os.stat("/state/notes/today.txt").st_size        # a HEAD
    os.unlink("/state/notes/today.txt")              # a DELETE

Patched: ``open`` (``r``, ``w``, ``x``, ``a``, binary or text; ``+`` modes are refused),
``os.stat`` (and so ``os.path.exists``/``isfile``/``isdir``), ``os.listdir``,
``os.unlink``/``os.remove``, ``os.makedirs`` (a no-op: directories are implicit) and
``os.getxattr``/``os.setxattr`` (attributes beside a key). A file is written when it is
closed, in one request, in both write modes (``passthrough`` is accepted and buffered: a
value is bounded by the sidecar's ``--state-max-value`` anyway). Paths outside every mount
go to the original functions.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import stat as stat_module
from typing import NamedTuple, Optional
from urllib.parse import quote

from . import state

DEFAULT_SOCKET_DIR = "/var/run/asya/state"


class Mount(NamedTuple):
    """One mount: its name, its path (ending in ``/``) and its socket."""

    name: str
    path: str
    socket: str


def parse_mounts(spec: str, socket_dir: Optional[str] = None) -> list:
    """``name:/path:options;...`` -> mounts. Raises ``ValueError`` on a malformed entry."""
    socket_dir = socket_dir or os.environ.get("TROUPE_STATE_SOCKET_DIR", DEFAULT_SOCKET_DIR)
    mounts = []
    for entry in (e.strip() for e in spec.split(";")):
        if not entry:
            continue
        parts = entry.split(":", 2)
        if len(parts) != 3 or not parts[0] or not parts[1].startswith("/"):
            raise ValueError(f"state mount {entry!r} is not name:/absolute/path:options")
        name, path, _options = parts
        mounts.append(Mount(name, path.rstrip("/") + "/", os.path.join(socket_dir, f"{name}.sock")))
    # The most specific path first, so nested mounts resolve to the inner one.
    return sorted(mounts, key=lambda m: len(m.path), reverse=True)


def resolve(path, mounts: list):
    """``(mount, key)`` for a path under a mount (``key`` is ``""`` for its root), or
    ``(None, None)``."""
    if isinstance(path, int):
        return None, None
    path = os.fsdecode(os.fspath(path))
    if not os.path.isabs(path):
        return None, None
    path = os.path.normpath(path)
    for mount in mounts:
        root = mount.path.rstrip("/")
        if path == root:
            return mount, ""
        if path.startswith(mount.path):
            return mount, path[len(mount.path) :]
    return None, None


class _WriteFile(io.BytesIO):
    """Collects what is written; one PUT when closed."""

    def __init__(self, mount: Mount, key: str, initial: bytes = b"", create_only: bool = False):
        super().__init__()
        self._mount, self._key, self._create_only, self._sent = mount, key, create_only, False
        if initial:
            self.write(initial)

    def close(self) -> None:
        if not self._sent and not self.closed:
            self._sent = True
            headers = {"If-None-Match": "*"} if self._create_only else {}
            status, _, data = state.request(
                "PUT", state.key_path(self._key), self.getvalue(), headers, sock=self._mount.socket
            )
            if status == 412:
                raise FileExistsError(errno.EEXIST, "file exists", self._mount.path + self._key)
            if status != 200:
                state.fail(status, data, self._mount.path + self._key)
        super().close()


def _get(mount: Mount, key: str) -> bytes:
    status, _, data = state.request("GET", state.key_path(key), sock=mount.socket)
    if status != 200:
        state.fail(status, data, mount.path + key)
    return data


def install(spec: str) -> list:
    """Patches the file functions for the mounts of ``spec``; returns the mounts."""
    mounts = parse_mounts(spec)
    if not mounts:
        return mounts
    original_open = builtins.open
    original = {name: getattr(os, name) for name in ("stat", "listdir", "unlink", "remove", "makedirs")}
    original_getxattr = getattr(os, "getxattr", None)
    original_setxattr = getattr(os, "setxattr", None)

    def state_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True, opener=None):
        mount, key = resolve(file, mounts)
        if mount is None:
            return original_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        if "+" in mode:
            raise io.UnsupportedOperation(f"state files are read or written whole; mode {mode!r} is not supported")
        if not key:
            raise IsADirectoryError(errno.EISDIR, "is a directory", file)
        if "w" in mode or "x" in mode:
            raw = _WriteFile(mount, key, create_only="x" in mode)
        elif "a" in mode:
            try:
                existing = _get(mount, key)
            except FileNotFoundError:
                existing = b""
            raw = _WriteFile(mount, key, existing)
        else:
            raw = io.BytesIO(_get(mount, key))
        if "b" in mode:
            return raw
        return io.TextIOWrapper(raw, encoding=encoding or "utf-8", errors=errors, newline=newline, write_through=True)

    def state_stat(path, *args, **kwargs):
        mount, key = resolve(path, mounts)
        if mount is None:
            return original["stat"](path, *args, **kwargs)
        if not key:
            return os.stat_result((stat_module.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, 0, 0, 0))
        status, headers, data = state.request("HEAD", state.key_path(key), sock=mount.socket)
        if status != 200:
            state.fail(status, data, os.fspath(path))
        if headers.get("X-Is-File", "true") == "false":
            return os.stat_result((stat_module.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, 0, 0, 0))
        size = int(headers.get("Content-Length", "0"))
        return os.stat_result((stat_module.S_IFREG | 0o644, 0, 0, 1, 0, 0, size, 0, 0, 0))

    def state_listdir(path="."):
        mount, key = resolve(path, mounts)
        if mount is None:
            return original["listdir"](path)
        prefix = key + "/" if key else ""
        query = "/keys/?prefix=" + quote(prefix, safe="") + "&delimiter=%2F"
        status, _, data = state.request("GET", query, sock=mount.socket)
        if status != 200:
            state.fail(status, data, os.fspath(path))
        listing = json.loads(data)
        names = [k[len(prefix) :] for k in listing["keys"]]
        names += [p[len(prefix) :].rstrip("/") for p in listing["prefixes"]]
        if key and not names:
            raise FileNotFoundError(errno.ENOENT, "no such directory", os.fspath(path))
        return sorted(names)

    def state_unlink(path, *args, **kwargs):
        mount, key = resolve(path, mounts)
        if mount is None:
            return original["unlink"](path, *args, **kwargs)
        status, _, data = state.request("DELETE", state.key_path(key), sock=mount.socket)
        if status != 200:
            state.fail(status, data, os.fspath(path))

    def state_makedirs(name, mode=0o777, exist_ok=False):
        mount, _ = resolve(name, mounts)
        if mount is None:
            return original["makedirs"](name, mode, exist_ok)
        return None

    def meta_path(key: str, attribute) -> str:
        return "/meta/" + quote(key, safe="/") + "?attr=" + quote(os.fsdecode(attribute), safe="")

    def state_getxattr(path, attribute, *args, **kwargs):
        mount, key = resolve(path, mounts)
        if mount is None:
            return original_getxattr(path, attribute, *args, **kwargs)
        status, _, data = state.request("GET", meta_path(key, attribute), sock=mount.socket)
        if status == 404:
            raise OSError(errno.ENODATA, "no such attribute", os.fspath(path))
        if status != 200:
            state.fail(status, data, os.fspath(path))
        return data

    def state_setxattr(path, attribute, value, *args, **kwargs):
        mount, key = resolve(path, mounts)
        if mount is None:
            return original_setxattr(path, attribute, value, *args, **kwargs)
        status, _, data = state.request("PUT", meta_path(key, attribute), bytes(value), sock=mount.socket)
        if status != 200:
            state.fail(status, data, os.fspath(path))

    builtins.open = state_open
    os.stat = state_stat
    os.listdir = state_listdir
    os.unlink = state_unlink
    os.remove = state_unlink
    os.makedirs = state_makedirs
    if original_getxattr is not None:
        os.getxattr = state_getxattr
        os.setxattr = state_setxattr
    return mounts
