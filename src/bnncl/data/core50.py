"""CORe50 (Lomonaco & Maltoni 2017): 50 objects of 10 categories filmed in 11 sessions.

The published folder layout (``core50_128x128.zip``): ``ROOT/s1..s11/o1..o50/*.png``, 128x128 RGB
PNGs named like ``C_01_01_000.png``. ``ROOT`` may also be the folder holding ``core50_128x128``.
Classes are the 50 objects (label ``k - 1`` for ``o<k>``) or, with ``categories=True``, the 10
categories (objects ``5k+1..5k+5`` form category ``k``). Images are resized (Pillow bilinear,
antialiased) to the requested geometry, 32x32x3 by default; decoded arrays are cached in the user
cache folder (:mod:`bnncl.data.arraycache`).

Splits follow the CORe50 benchmarks: ``train`` = sessions 1, 2, 4, 5, 6, 8, 9, 11; ``test`` = sessions
3, 7, 10; ``all`` = every session. :func:`core50_sessions` gives each image's session (1..11), in the
order of :func:`load_core50`'s rows, without decoding any image.

CORe50 is not shipped and never downloaded: get it from https://vlomonaco.github.io/core50/ and set
``BNNCL_CORE50`` (or pass the folder).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnncl.data.arraycache import cached_dataset
from bnncl.data.dataset import ImageDataset
from bnncl.data.domains import Geometry, format_geometry, parse_geometry
from bnncl.data.imagefolder import decode_image
from bnncl.errors import DataError

CORE50_URL = "https://vlomonaco.github.io/core50/"
SESSIONS = tuple(range(1, 12))
TEST_SESSIONS = (3, 7, 10)
TRAIN_SESSIONS = tuple(s for s in SESSIONS if s not in TEST_SESSIONS)
SPLITS = {"train": TRAIN_SESSIONS, "test": TEST_SESSIONS, "all": SESSIONS}
CATEGORIES = (
    "plug_adapter", "mobile_phone", "scissor", "light_bulb", "can",
    "glass", "ball", "marker", "cup", "remote_control",
)
#: Object ``o<k>`` is ``OBJECT_CLASSES[k - 1]`` (``plug_adapter1`` .. ``remote_control5``).
OBJECT_CLASSES = tuple(f"{cat}{i}" for cat in CATEGORIES for i in range(1, 6))
DEFAULT_GEOMETRY: Geometry = (32, 32, 3)

_SESSION_DIR = re.compile(r"s(\d+)")
_OBJECT_DIR = re.compile(r"o(\d+)")


@dataclass(frozen=True)
class Core50Index:
    """The image files of one split, sorted by (session, object, file name), with their object label
    (0..49) and session (1..11); listing only, nothing decoded."""

    root: Path
    paths: tuple[Path, ...]
    objects: np.ndarray
    sessions: np.ndarray


def _missing(where: str) -> DataError:
    return DataError(f"CORe50 not found ({where}); download core50_128x128.zip from {CORE50_URL}, extract it and "
                     "set BNNCL_CORE50=<folder> (the one holding s1..s11)")


def find_core50(root: str | os.PathLike | None = None) -> Path:
    """The CORe50 folder (the one holding ``s1..s11``): ``root``, else ``$BNNCL_CORE50``; a folder holding
    ``core50_128x128`` is accepted too. When none is there, one :class:`DataError` line says where bnncl
    looked and that CORe50 must be downloaded by the user."""
    if root is None:
        env = os.environ.get("BNNCL_CORE50")
        if not env:
            raise _missing("$BNNCL_CORE50 is not set and no folder was given")
        where, path = f"$BNNCL_CORE50={env}", Path(env)
    else:
        where, path = str(root), Path(root)
    for candidate in (path, path / "core50_128x128"):
        if candidate.is_dir() and any(_SESSION_DIR.fullmatch(p.name) for p in candidate.iterdir() if p.is_dir()):
            return candidate
    reason = "no s1..s11 session folders" if path.is_dir() else "no such folder"
    raise _missing(f"looked in {where}: {reason}")


def _numbered_dirs(folder: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    out = []
    for p in folder.iterdir():
        m = pattern.fullmatch(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def core50_index(root: str | os.PathLike | None = None, split: str = "all") -> Core50Index:
    """List the PNGs of ``split`` (``train``, ``test`` or ``all``) under :func:`find_core50`'s folder."""
    if split not in SPLITS:
        raise DataError(f"CORe50 split must be one of {sorted(SPLITS)}, got {split!r}")
    folder = find_core50(root)
    wanted = SPLITS[split]
    paths: list[Path] = []
    objects: list[int] = []
    sessions: list[int] = []
    for s, sdir in _numbered_dirs(folder, _SESSION_DIR):
        if s not in wanted:
            continue
        for o, odir in _numbered_dirs(sdir, _OBJECT_DIR):
            if not 1 <= o <= len(OBJECT_CLASSES):
                raise DataError(f"{odir}: object folders must be o1..o{len(OBJECT_CLASSES)}")
            files = sorted(p for p in odir.iterdir() if p.suffix.lower() == ".png")
            paths += files
            objects += [o - 1] * len(files)
            sessions += [s] * len(files)
    if not paths:
        names = ", ".join(f"s{s}" for s in wanted)
        raise DataError(f"{folder}: no PNG images in the {split} sessions ({names}/o1..o50/*.png); "
                        f"expected the CORe50 layout from {CORE50_URL}")
    return Core50Index(folder, tuple(paths), np.array(objects, dtype=np.int64), np.array(sessions, dtype=np.int64))


def _decode(paths: tuple[Path, ...], geometry: Geometry) -> np.ndarray:
    h, w, c = geometry
    out = np.empty((len(paths), h, w, c), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = decode_image(paths[i], (h, w), c, str(paths[i]))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(len(paths))))  # Pillow decodes without the GIL
    return out


def load_core50(
    root: str | os.PathLike | None = None,
    split: str = "train",
    geometry: Geometry | str = DEFAULT_GEOMETRY,
    categories: bool = False,
) -> ImageDataset:
    """CORe50's ``split`` at ``geometry`` ``(H, W, C)``; labels = objects (50) or ``categories`` (10).

    The rows are in :func:`core50_index` order; :func:`core50_sessions` gives their sessions."""
    geometry = parse_geometry(geometry if isinstance(geometry, str) else format_geometry(geometry))
    index = core50_index(root, split)
    g = format_geometry(geometry)
    objects = cached_dataset(
        index.root, f"core50:{split}:{g}:{len(index.paths)}",
        lambda: ImageDataset(_decode(index.paths, geometry), index.objects, OBJECT_CLASSES,
                             f"{index.root}:{split}@{g}"),
    )
    if not np.array_equal(objects.labels, index.objects):  # a cache entry from other files of the same count
        objects = ImageDataset(_decode(index.paths, geometry), index.objects, OBJECT_CLASSES, objects.source)
    if not categories:
        return objects
    return ImageDataset(objects.images, objects.labels // 5, CATEGORIES, objects.source + ":categories")


def core50_sessions(root: str | os.PathLike | None = None, split: str = "train") -> np.ndarray:
    """The session (1..11) of each row of ``load_core50(root, split)``, from the file listing alone."""
    return core50_index(root, split).sessions
