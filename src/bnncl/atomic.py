"""Durable file primitives (one place for all of bnncl): write + fsync, atomic replace, directory fsync.

Every byte the state store writes goes through :func:`write_all`, so a test can make it fail
(e.g. raise ``OSError(ENOSPC)``) to simulate a full disk at any write.

POSIX guarantees used: ``rename``/``os.replace`` within one directory is atomic (a reader sees the
old name target or the new one, never a mix); data and directory entries are on stable storage only
after ``fsync`` of the file and of the directory that holds the entry.
"""

from __future__ import annotations

import os
from pathlib import Path

CHUNK = 1 << 20


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` to the open file descriptor ``fd`` (loops over short writes)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view[:CHUNK])
        view = view[written:]


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: str | os.PathLike, data: bytes) -> None:
    """Create ``path`` (it must not exist), write ``data``, fsync it. The caller fsyncs the directory.

    On failure the partial file is removed (best effort) and the ``OSError`` is re-raised.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _remove_quietly(Path(path))
        raise
    os.close(fd)


def replace_file(path: str | os.PathLike, data: bytes) -> None:
    """Atomically make ``path`` hold ``data``: temp file, fsync, rename over ``path``, fsync the folder.

    A reader (or a restart after a crash) sees either the old content or the new one, never a mix.
    The temp name is fixed (``.NAME.tmp``), so a crashed writer's leftover is reused, not piled up;
    callers serialize writers of one ``path`` (the state store holds a lock).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    _remove_quietly(tmp)
    write_new_file(tmp, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    fsync_dir(path.parent)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
