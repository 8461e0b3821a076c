"""Cache files that can be trusted: written atomically with a SHA-256 checksum beside them, verified before
use, and built under a per-entry lock so that concurrent runs of the same recipe build it once and share it.

A damaged entry (truncated, garbled, or without its checksum) is removed with one warning line and built
again; nothing else is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

CHECKSUM = ".sha256"


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tmp_path(path: Path, suffix: str = "") -> Path:
    """A temporary name beside `path`, tagged with this process (`sweep` removes those of ended processes)."""
    return path.with_name(f".{path.name}.{owner()}.tmp{suffix}")


_TMP = re.compile(r"^\.(.+)\.(\d+(?:-[0-9a-f]{8})?)\.tmp")


def written_as(path: str) -> str:
    """The file a temporary name of `tmp_path` stands for (other paths as they are): what errors name."""
    found = _TMP.match(os.path.basename(path))
    return os.path.join(os.path.dirname(path), found[1]) if found else path


STALE_S = 24 * 3600  # a temporary file or run marker of another host's (or container's) process is swept after this


@functools.cache
def _namespace() -> str:
    """This host and PID namespace, hashed: a pid names a process only within them (a results folder may be
    shared by containers or hosts)."""
    try:
        space = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        space = 0
    return hashlib.sha256(f"{socket.gethostname()}/{space}".encode()).hexdigest()[:8]


def owner() -> str:
    """This process as temporary names and run markers record it: `PID-NAMESPACE`."""
    return f"{os.getpid()}-{_namespace()}"


def ended(recorded: str, mtime: float) -> bool:
    """Whether the process that `owner()` gave as `recorded` has ended. A pid alone (older harness versions) is
    judged here; one of another host or PID namespace, or an unreadable record, only by age (`STALE_S`)."""
    pid, _, space = recorded.strip().partition("-")
    if not pid.isdigit() or space not in ("", _namespace()):
        return time.time() - mtime > STALE_S
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, OverflowError):  # no such process, or no pid at all
        return True
    except PermissionError:  # another user's process
        return False
    return False


def sweep(root: Path) -> int:
    """Remove the temporary files that ended processes left under `root`; returns how many."""
    removed = 0
    for path in root.rglob(".*.tmp*") if root.is_dir() else []:
        found = _TMP.match(path.name)
        with contextlib.suppress(FileNotFoundError):  # its writer renamed it meanwhile
            if found and path.is_file() and ended(found[2], path.stat().st_mtime):
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write `data` to `path` whole or not at all: into a temporary file beside it, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM)


def write(path: Path, writer: Callable[[Path], object]) -> str:
    """Write `path` through `writer(tmp)` atomically, then its checksum; returns the checksum.

    A crash leaves either the old entry or none (the next run rebuilds it), never a partial file in its place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        writer(tmp)
        digest = file_digest(tmp)
        _sidecar(path).unlink(missing_ok=True)  # never a new file beside an old checksum
        os.replace(tmp, path)
        side_tmp = tmp.with_name(tmp.name + CHECKSUM)
        side_tmp.write_text(digest + "\n")
        os.replace(side_tmp, _sidecar(path))
        return digest
    finally:
        tmp.unlink(missing_ok=True)


def has_checksum(path: Path) -> bool:
    return _sidecar(path).is_file()


def adopt(path: Path) -> str:
    """Record the checksum of a file that was written atomically by someone else (e.g. a library)."""
    digest = file_digest(path)
    side_tmp = tmp_path(path, CHECKSUM)
    side_tmp.write_text(digest + "\n")
    os.replace(side_tmp, _sidecar(path))
    return digest


def digest(path: Path) -> str | None:
    """The recorded checksum of an intact entry, or None (after removing it, with a warning) when it is not."""
    if not path.is_file():
        return None
    side = _sidecar(path)
    recorded = side.read_text().strip() if side.is_file() else None
    if recorded is not None and recorded == file_digest(path):
        return recorded
    discard(path, "no checksum" if recorded is None else "its checksum does not match")
    return None


def discard(path: Path, reason: str) -> None:
    """Remove a damaged entry (and its checksum) with one warning line; the caller builds it again."""
    log.warning("cache: %s is damaged (%s); building it again", path, reason)
    path.unlink(missing_ok=True)
    _sidecar(path).unlink(missing_ok=True)


@contextlib.contextmanager
def locked(entry: Path) -> Iterator[None]:
    """Hold the lock of cache entry `entry` (a file or folder path): one builder at a time, others wait."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.with_name(entry.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
