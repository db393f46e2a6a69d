"""Cache of decoded image arrays in the user cache folder (never beside the data)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bnncl.cache import cache_dir
from bnncl.data.dataset import ImageDataset

CACHE_VERSION = 1


def _key(source: Path, extra: str) -> str:
    st = source.stat()
    ident = f"v{CACHE_VERSION}|{source.resolve()}|{st.st_size}|{st.st_mtime_ns}|{extra}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def cached_dataset(source: Path, extra: str, decode: Callable[[], ImageDataset]) -> ImageDataset:
    """Return ``decode()``'s dataset, decoding only on the first call for this file/folder and ``extra``.

    Arrays are stored as ``.npy`` (no pickle) with a JSON sidecar, written atomically.
    """
    if os.environ.get("BNNCL_NO_DATA_CACHE"):
        return decode()
    folder = cache_dir("datasets") / _key(source, extra)
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            images = np.load(folder / "images.npy", allow_pickle=False, mmap_mode=None)
            labels = np.load(folder / "labels.npy", allow_pickle=False)
            return ImageDataset(images, labels, tuple(meta["class_names"]), meta["source"])
        except (OSError, ValueError, KeyError):
            pass  # damaged cache entry: decode again and overwrite it
    ds = decode()
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (("images.npy", ds.images), ("labels.npy", ds.labels)):
        tmp = folder / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.replace(tmp, folder / name)
    tmp = folder / ".meta.json.tmp"
    tmp.write_text(json.dumps({"class_names": list(ds.class_names), "source": ds.source}))
    os.replace(tmp, meta_path)  # the meta file is written last: its presence marks a complete entry
    return ds
