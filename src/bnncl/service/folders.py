"""Image files -> model inputs: one incoming file (:func:`read_item`), a labelled folder
``<dir>/<class>/<image>`` (:func:`load_labelled_folder`). Decoding follows the resize policy of
:func:`bnncl.data.imagefolder.decode_image` (model's channels, shorter side resized, centre crop)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnncl.data.imagefolder import decode_image
from bnncl.errors import DataError
from bnncl.service import inbox


def read_item(item: inbox.Item, image_shape: Sequence[int]) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one incoming file to the model's input; :class:`DataError` if it is not a usable image."""
    try:
        data = item.path.read_bytes()
    except OSError as exc:
        raise DataError(f"{item.path}: unreadable ({exc.strerror or exc})") from None
    h, w, c = (int(v) for v in image_shape)
    if not data:
        raise DataError(f"{item.path}: empty file")
    try:
        arr = decode_image(data, (h, w), c, str(item.path))
    except DataError as exc:
        raise DataError(re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))) from None
    return arr, {"id": item.id, "sha256": inbox.digest(data), "bytes": len(data)}


def load_labelled_folder(root: Path, image_shape: Sequence[int]) -> tuple[np.ndarray, list[str]]:
    """Every image of ``root/<label>/<image>`` decoded (any bad file is an error here)."""
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected <dir>/<class>/<image>)")
    arrays, names = [], []
    for item in inbox.scan(root):
        if not item.label:
            raise DataError(f"{item.path}: not in a class folder (expected <dir>/<class>/<image>)")
        arr, _ = read_item(item, image_shape)
        arrays.append(arr)
        names.append(item.label)
    shape = (0,) + tuple(int(v) for v in image_shape)
    return (np.stack(arrays) if arrays else np.zeros(shape, np.uint8)), names
