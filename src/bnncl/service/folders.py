"""Image files -> model inputs: one incoming file (:func:`read_item`), a labelled folder
``<dir>/<class>/<image>`` (:func:`load_labelled_folder`). Decoding follows the resize policy of
:func:`bnncl.data.imagefolder.decode_image` (model's channels, shorter side resized, centre crop)."""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnncl.data.imagefolder import decode_image, pixel_limit
from bnncl.errors import DataError
from bnncl.service import inbox


def max_file_bytes(image_shape: Sequence[int]) -> int:
    """The largest file read for a model input: 8 bytes for each pixel :func:`pixel_limit` allows
    (uncompressed 16-bit RGBA), plus 1 MiB of headers."""
    return 8 * pixel_limit((int(image_shape[0]), int(image_shape[1]))) + (1 << 20)


def read_file(path: Path, limit: int, follow: bool = False) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; :class:`DataError` for anything else.
    ``follow=False``: a symbolic link is refused (the incoming folder); a FIFO never blocks."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        why = "a symbolic link" if exc.errno == errno.ELOOP and not follow else f"unreadable ({exc.strerror or exc})"
        raise DataError(f"{path}: {why}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise DataError(f"{path}: file too large ({info.st_size} bytes; at most {limit} for the model's input)")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(limit + 1)
    except OSError as exc:
        raise DataError(f"{path}: unreadable ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def read_item(item: inbox.Item, image_shape: Sequence[int], follow: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one incoming file to the model's input; :class:`DataError` if it is not a usable image
    (``follow``: a symbolic link is read, as ``bnncl predict`` does for the files it is given)."""
    data = read_file(item.path, max_file_bytes(image_shape), follow)
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
    for item in inbox.scan(root, follow=True):  # read only: links may point anywhere
        if not item.label:
            raise DataError(f"{item.path}: not in a class folder (expected <dir>/<class>/<image>)")
        arr, _ = read_item(item, image_shape, follow=True)
        arrays.append(arr)
        names.append(item.label)
    shape = (0,) + tuple(int(v) for v in image_shape)
    return (np.stack(arrays) if arrays else np.zeros(shape, np.uint8)), names


def shipped_fmnist_sha() -> str | None:
    """sha256 of the shipped fmnist-b5 device model, or None when it is not installed."""
    from bnncl.assets import model_path
    from bnncl.cl.state import sha256_file
    from bnncl.errors import BnnclError

    try:
        return sha256_file(model_path("fmnist-b5", ".bnn"))
    except (BnnclError, OSError):
        return None


def deployment_images(model_sha: str, base: str | os.PathLike | None, image_shape: Sequence[int],
                      where: str) -> tuple[np.ndarray, list[str]]:
    """The base-class images a deployment starts from and their class names: the ImageFolder ``base``, or,
    for the shipped fmnist-b5 model (``model_sha``), the embedded subset's base-class train images.
    :class:`BnnclError` naming ``where`` (the model) when neither applies or ``base`` holds no image."""
    from bnncl.errors import BnnclError

    if base is not None:
        images, names = load_labelled_folder(Path(base), image_shape)
        if not len(images):
            raise BnnclError(f"--base {base}: no images found (expected <base>/<class>/<image>)")
        return images, names
    if model_sha != shipped_fmnist_sha():
        raise BnnclError(f"{where}: not the shipped fmnist-b5 model; give --base DIR (an ImageFolder of its "
                         f"base-class images) for the deployment")
    from bnncl.data.embedded import BASE_CLASSES, load_embedded

    train = load_embedded("train")
    keep = np.isin(train.labels, BASE_CLASSES)
    return train.images[keep], [train.class_names[int(c)] for c in train.labels[keep]]
