"""Durable file primitives (one place for all of bnncl): create + write + fsync, atomic replace, mkdir,
rename, unlink, rmtree and directory fsync.

Every durable operation of the state store and of the ``bnncl learn`` file moves goes through this
module, for two kinds of test:

- every byte goes through :func:`write_all`, so a test can make it fail (e.g. raise
  ``OSError(ENOSPC)``) to simulate a full disk at any write;
- :func:`set_hook` installs a recorder that sees each operation after it succeeded
  (``hook(op, path, dst, data)``, op one of :data:`OPS`), so a crash simulator can rebuild what a
  power cut at any point would leave on disk (``tests/crashsim.py``).

POSIX guarantees used: ``rename``/``os.replace`` within one directory is atomic (a reader sees the
old name target or the new one, never a mix); data and directory entries are on stable storage only
after ``fsync`` of the file and of the directory that holds the entry (so a new directory is durable
only after its parent is fsync'ed: :func:`makedirs` does that).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

CHUNK = 1 << 20

OPS = ("create", "write", "fsync", "fsync_dir", "mkdir", "rename", "unlink", "rmdir")
"""Operations a hook sees: a new empty file, bytes appended to it, fsync of a file or a directory,
a new directory, a rename (``dst`` set), removal of a file or an empty directory."""

Hook = Callable[[str, str, "str | None", "bytes | None"], None]
_hook: Hook | None = None


def set_hook(hook: Hook | None) -> Hook | None:
    """Install ``hook`` (None removes it); returns the one installed before. Test use only."""
    global _hook
    previous, _hook = _hook, hook
    return previous


def _note(op: str, path: str | os.PathLike, dst: str | os.PathLike | None = None, data: bytes | None = None) -> None:
    if _hook is not None:
        _hook(op, os.fspath(path), None if dst is None else os.fspath(dst), data)


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
    _note("fsync_dir", path)


def write_new_file(path: str | os.PathLike, data: bytes) -> None:
    """Create ``path`` (it must not exist), write ``data``, fsync it. The caller fsyncs the directory.

    On failure the partial file is removed (best effort) and the ``OSError`` is re-raised.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _note("create", path)
        write_all(fd, data)
        _note("write", path, data=bytes(data))
        os.fsync(fd)
        _note("fsync", path)
    except BaseException:
        os.close(fd)
        unlink(path, missing_ok=True, quiet=True)
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
    unlink(tmp, missing_ok=True, quiet=True)
    write_new_file(tmp, data)
    try:
        rename(tmp, path)
    except BaseException:
        unlink(tmp, missing_ok=True, quiet=True)
        raise
    fsync_dir(path.parent)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to the new file ``dst`` (written and fsync'ed; the caller fsyncs the directory)."""
    with open(src, "rb") as fh:
        data = fh.read()
    write_new_file(dst, data)


def mkdir(path: str | os.PathLike) -> None:
    """Create one directory (its parent must exist); the caller fsyncs the parent to make it durable."""
    os.mkdir(path)
    _note("mkdir", path)


def makedirs(path: str | os.PathLike) -> None:
    """Create ``path`` and any missing parents, each made durable (its parent fsync'ed) before the next."""
    path = Path(path)
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            mkdir(folder)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue
        fsync_dir(folder.parent)


def rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.rename``; durable once the directory of ``dst`` (and of ``src``) is fsync'ed."""
    os.rename(src, dst)
    _note("rename", src, dst)


def unlink(path: str | os.PathLike, *, missing_ok: bool = False, quiet: bool = False) -> None:
    """Remove a file (``missing_ok``: no error if it is gone; ``quiet``: no error at all)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        if not (missing_ok or quiet):
            raise
        return
    except OSError:
        if not quiet:
            raise
        return
    _note("unlink", path)


def rmtree(path: str | os.PathLike, *, ignore_errors: bool = False) -> None:
    """Remove a directory tree bottom-up (symbolic links are removed, never followed); a missing
    ``path`` is not an error. Not durable by itself: removal happens under a hidden or unused name."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError:
        if ignore_errors:
            return
        raise
    try:
        if not stat.S_ISDIR(mode):
            unlink(path)
            return
        with os.scandir(path) as it:
            entries = list(it)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                rmtree(entry.path, ignore_errors=ignore_errors)
            else:
                unlink(entry.path, missing_ok=True)
        os.rmdir(path)
        _note("rmdir", path)
    except OSError:
        if not ignore_errors:
            raise
