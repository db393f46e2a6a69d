"""The incoming folder of ``bnncl learn``: scan, take in a fixed order, move out of the way.

Layout: ``INCOMING/<label>/<image>``. ``<label>`` is a class name; a ``/`` in a class name (e.g.
Fashion-MNIST's ``T-shirt/top``) is written ``_`` in the folder name (:func:`folder_name`).
Ignored: hidden entries (names starting with ``.``: write a file under a hidden name and rename it
when complete, so a half-written file is never taken), the processed and rejected folders when
they lie inside ``INCOMING``. Never taken, and reported by :func:`scan` (the loop warns once per
entry): symbolic links (to files or folders: never followed, so nothing outside ``INCOMING`` is
read or moved), FIFOs, sockets and devices, folders below the label level. A plain file directly in
``INCOMING`` has no label: it is rejected.

Order: files are taken sorted by ``(file name, label)``, so a stream whose file names count up
(camera counters, timestamps) is learned in arrival order, and the same folder content always
gives the same experiences. An item's id is ``<label folder>/<file name>``.

Moves are renames (atomic on one filesystem); across filesystems the file is copied, fsync'ed and
then removed. A name already taken in the destination gets a numbered suffix (``a.png`` ->
``a.1.png``), so nothing is overwritten; a name that would then exceed the file system's limit
(255 bytes) is shortened in the middle (``aaaa~.1.png``), so a move never fails for its name.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bnncl import atomic
from bnncl.atomic import fsync_dir, replace_file


def folder_name(class_name: str) -> str:
    """The folder name that stands for ``class_name`` (``/`` -> ``_``)."""
    return class_name.replace("/", "_")


@dataclass(frozen=True)
class Item:
    """One file waiting in the incoming folder."""

    label: str
    """The label folder's name."""
    name: str
    """The file name."""
    path: Path

    @property
    def id(self) -> str:
        return f"{self.label}/{self.name}" if self.label else self.name


Skipped = list[tuple[Path, str]]
"""Entries a scan will never take, with the reason (symbolic links, FIFOs, deeper folders ...)."""


def _kind(entry: os.DirEntry, follow: bool = False) -> str:
    """'file', 'dir', or why the entry is never taken. Links are not followed unless ``follow``: in
    INCOMING one may point outside it, and taking it would read and move files there."""
    try:
        if entry.is_symlink() and not follow:
            return "a symbolic link (bnncl learn never follows links; move the files themselves into INCOMING)"
        if entry.is_dir(follow_symlinks=follow):
            return "dir"
        if entry.is_file(follow_symlinks=follow):
            return "file"
        mode = entry.stat(follow_symlinks=follow).st_mode
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    what = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device or special file"
    return f"{what}, not a regular file"


def _entries(folder: str | Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def scan(incoming: Path, exclude: Iterable[Path] = (), skipped: Skipped | None = None,
         follow: bool = False) -> list[Item]:
    """Every candidate file in ``incoming`` (module docstring), in learning order. Entries that will
    never be taken are added to ``skipped`` with the reason. ``follow``: symbolic links are taken as
    what they point to (a read-only folder such as ``--base``; never for ``INCOMING``)."""
    skip = {p.resolve() for p in exclude}
    skipped = [] if skipped is None else skipped
    items: list[Item] = []
    try:
        entries = _entries(incoming)
    except FileNotFoundError:
        return []
    for entry in entries:
        path = Path(entry.path)
        if path.resolve() in skip:
            continue
        kind = _kind(entry, follow)
        if kind == "file":
            items.append(Item("", entry.name, path))
        elif kind != "dir":
            skipped.append((path, kind))
        else:
            items += _scan_label(path, skipped, follow)
    items.sort(key=lambda it: (it.name, it.label))
    return items


def _scan_label(folder: Path, skipped: Skipped, follow: bool) -> list[Item]:
    items = []
    try:
        entries = _entries(folder)
    except OSError as exc:
        skipped.append((folder, f"unreadable ({exc.strerror or exc})"))
        return []
    for entry in entries:
        kind = _kind(entry, follow)
        if kind == "file":
            items.append(Item(folder.name, entry.name, Path(entry.path)))
        else:
            why = "a folder below the class level (expected INCOMING/<class>/<image>)" if kind == "dir" else kind
            skipped.append((Path(entry.path), why))
    return items


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


NAME_MAX = 255
"""File-name limit in bytes where the file system does not say (``pathconf``)."""
REASON_SUFFIX = ".reason.txt"
_REASON_ROOM = len(REASON_SUFFIX) + len("..tmp")  # the reason file and its temp name (atomic.replace_file)


def name_max(folder: Path) -> int:
    """The longest file name (bytes) ``folder``'s file system takes."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return NAME_MAX


def _cut(text: str, nbytes: int) -> str:
    """``text`` cut to at most ``nbytes`` bytes of UTF-8 (never inside a character)."""
    return text.encode("utf-8", "surrogateescape")[:max(0, nbytes)].decode("utf-8", "ignore")


def numbered_name(name: str, n: int, limit: int) -> str:
    """``name`` with the number ``n`` before its extension (``a.png`` -> ``a.1.png``; ``n`` = 0: no
    number), shortened in the middle so that it takes at most ``limit`` bytes."""
    stem, dot, suffix = name.partition(".")
    tag = f".{n}" if n else ""
    head, tail = (stem, f"{tag}{dot}{suffix}") if dot else (name, tag)
    if len(tail.encode("utf-8", "surrogateescape")) > limit // 2:  # a long "extension": keep the number only
        head, tail = name, tag
    room = limit - len(tail.encode("utf-8", "surrogateescape"))
    if len(head.encode("utf-8", "surrogateescape")) > room:
        head = _cut(head, room - 1) + "~"
    return head + tail


def free_name(folder: Path, name: str, reserve: int = 0) -> Path:
    """A path in ``folder`` for ``name`` that does not exist yet: the name itself, else numbered
    (``a.1.png``, ``a.2.png`` ...), always short enough for the file system with ``reserve`` bytes
    to spare (a name never exceeds the limit, so a move never fails for its name)."""
    limit = name_max(folder) - reserve
    n = 0
    while True:
        target = folder / numbered_name(name, n, limit)
        if not os.path.lexists(target):
            return target
        n += 1


def target(item: Item, dest_root: Path, reserve: int = 0) -> Path:
    """Where ``item`` goes in ``dest_root/<label>/`` (the folder is created, durably)."""
    folder = dest_root / (item.label or "_unlabelled")
    atomic.makedirs(folder)
    return free_name(folder, item.name, reserve)


def _rename(src: Path, target: Path) -> None:
    folder = target.parent
    try:
        atomic.rename(src, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        tmp = folder / ".bnncl-move.part"  # short: a long target name must not make it too long
        atomic.unlink(tmp, missing_ok=True)
        atomic.copy_file(src, tmp)
        atomic.rename(tmp, target)
        fsync_dir(folder)
        atomic.unlink(src)
    fsync_dir(folder)
    fsync_dir(src.parent)


def move(item: Item, dest_root: Path, to: Path | None = None) -> Path:
    """Move ``item`` to ``to`` (default: a free name in ``dest_root/<label>/``); returns the new path."""
    to = to or target(item, dest_root)
    _rename(item.path, to)
    return to


def reject(item: Item, rejected_root: Path, reason: str) -> Path:
    """Move ``item`` to ``rejected_root/<label>/`` with ``<name>.reason.txt`` (written first) beside it.
    If a file of the same name and bytes is there with its reason already (a move across file systems
    cut short: the copy was done, the original not yet removed), the original is removed instead."""
    done = rejected_copy(item, rejected_root)
    if done is not None:
        remove(item)
        return done
    to = target(item, rejected_root, reserve=_REASON_ROOM)
    replace_file(to.with_name(to.name + REASON_SUFFIX), (reason.rstrip() + "\n").encode())
    _rename(item.path, to)
    return to


def same_bytes(a: Path, b: Path) -> bool:
    """True if ``a`` and ``b`` are both readable files with the same content."""
    try:
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def rejected_copy(item: Item, rejected_root: Path) -> Path | None:
    """A file in ``rejected_root/<label>/`` under ``item``'s name (or a numbered one) with the same bytes
    and a reason beside it, or None."""
    folder = rejected_root / (item.label or "_unlabelled")
    limit = name_max(folder) - _REASON_ROOM if folder.is_dir() else 0
    n = 0
    while limit > 0:
        candidate = folder / numbered_name(item.name, n, limit)
        if not os.path.lexists(candidate):
            return None
        if same_bytes(candidate, item.path) and candidate.with_name(candidate.name + REASON_SUFFIX).exists():
            return candidate
        n += 1
    return None


def remove(item: Item) -> None:
    """Remove ``item`` from the incoming folder, durably (a copy of it is already where it goes)."""
    atomic.unlink(item.path)
    fsync_dir(item.path.parent)
