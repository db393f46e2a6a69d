"""The incoming folder of ``bnncl learn``: scan, take in a fixed order, move out of the way.

Layout: ``INCOMING/<label>/<image>``. ``<label>`` is a class name; a ``/`` in a class name (e.g.
Fashion-MNIST's ``T-shirt/top``) is written ``_`` in the folder name (:func:`folder_name`).
Ignored: hidden entries (names starting with ``.``: write a file under a hidden name and rename it
when complete, so a half-written file is never taken), the processed and rejected folders when
they lie inside ``INCOMING``, folders below the label level. A plain file directly in ``INCOMING``
has no label: it is rejected.

Order: files are taken sorted by ``(file name, label)``, so a stream whose file names count up
(camera counters, timestamps) is learned in arrival order, and the same folder content always
gives the same experiences. An item's id is ``<label folder>/<file name>``.

Moves are renames (atomic on one filesystem); across filesystems the file is copied, fsync'ed and
then removed. A name already taken in the destination gets a numbered suffix (``a.png`` ->
``a.1.png``), so nothing is overwritten.
"""

from __future__ import annotations

import errno
import hashlib
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


def scan(incoming: Path, exclude: Iterable[Path] = ()) -> list[Item]:
    """Every candidate file in ``incoming`` (module docstring), in learning order."""
    skip = {p.resolve() for p in exclude}
    items: list[Item] = []
    try:
        entries = sorted(incoming.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.startswith(".") or entry.resolve() in skip:
            continue
        if entry.is_file():
            items.append(Item("", entry.name, entry))
            continue
        if not entry.is_dir():
            continue
        for f in entry.iterdir():
            if not f.name.startswith(".") and f.is_file():
                items.append(Item(entry.name, f.name, f))
    items.sort(key=lambda it: (it.name, it.label))
    return items


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    stem, dot, suffix = name.partition(".")
    n = 0
    while target.exists():
        n += 1
        target = folder / (f"{stem}.{n}{dot}{suffix}" if dot else f"{name}.{n}")
    return target


def _target(item: Item, dest_root: Path) -> Path:
    folder = dest_root / (item.label or "_unlabelled")
    atomic.makedirs(folder)
    return _free_name(folder, item.name)


def _rename(src: Path, target: Path) -> None:
    folder = target.parent
    try:
        atomic.rename(src, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        tmp = folder / f".{target.name}.part"
        atomic.unlink(tmp, missing_ok=True)
        atomic.copy_file(src, tmp)
        atomic.rename(tmp, target)
        fsync_dir(folder)
        atomic.unlink(src)
    fsync_dir(folder)
    fsync_dir(src.parent)


def move(item: Item, dest_root: Path) -> Path:
    """Move ``item`` to ``dest_root/<label>/`` (a free name there); returns the new path."""
    target = _target(item, dest_root)
    _rename(item.path, target)
    return target


def reject(item: Item, rejected_root: Path, reason: str) -> Path:
    """Move ``item`` to ``rejected_root/<label>/`` with ``<name>.reason.txt`` (written first) beside it."""
    target = _target(item, rejected_root)
    replace_file(target.with_name(target.name + ".reason.txt"), (reason.rstrip() + "\n").encode())
    _rename(item.path, target)
    return target
