"""ImageFolder layouts (``root/<class>/<image>``), as a directory or inside a ``.tar.gz``.

Resize policy for user photos: the image is converted to the model's channels (RGB or grayscale),
its shorter side is resized to the target size (bilinear, antialiased), then the centre is cropped to
the target height x width. Images already at the target size are taken unchanged. 16-bit samples
(e.g. a 16-bit grayscale PNG) are scaled to 8 bits (/257, rounded); 32-bit integer or float samples
are refused (they have no agreed range).

Pixel limit: a file is decoded only if its header says it has at most :func:`pixel_limit` pixels
(:data:`MAX_SCALE` times the target size on each side, at most :data:`MAX_PIXELS`), so a small file
that decompresses to gigabytes (a decompression bomb) is refused before any pixel is decoded and
the memory a decode takes stays bounded.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from bnncl.data.dataset import ImageDataset
from bnncl.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


MAX_SCALE = 128
"""An image may be at most this many times the model's input size on each side (in pixels: a 28x28
model takes up to 3584x3584 = 12.8 million pixels, e.g. a 12 MP phone photo)."""
MAX_PIXELS = 1 << 26
"""Never more pixels than this (64 Mi, under Pillow's decompression-bomb limit), whatever the input size."""


class UnsupportedImage(ValueError):
    """A readable image bnncl does not decode (its reason is the whole message)."""


def pixel_limit(size: tuple[int, int] | None) -> int:
    """Most pixels a file may have to be decoded for the target ``size`` (H, W); None: no resize."""
    if size is None:
        return MAX_PIXELS
    return min(MAX_PIXELS, MAX_SCALE * MAX_SCALE * int(size[0]) * int(size[1]))


def _too_large(found: str, size: tuple[int, int] | None) -> str:
    limit = pixel_limit(size)
    if size is None:
        return f"image too large ({found}; at most {limit} pixels)"
    h, w = (int(v) for v in size)
    return (f"image too large ({found}; at most {MAX_SCALE * w}x{MAX_SCALE * h} = {limit} pixels for the model's "
            f"{h}x{w} input)")


def _open(src: io.BytesIO | os.PathLike | str, size: tuple[int, int] | None) -> Image.Image:
    """Open an image and check its size from the header (nothing is decoded yet)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(src)
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = found.group(1) if found else f"over {2 * Image.MAX_IMAGE_PIXELS}"
            raise UnsupportedImage(_too_large(f"{pixels} pixels", size)) from None
    if img.width * img.height > pixel_limit(size):
        img.close()
        raise UnsupportedImage(_too_large(f"{img.width}x{img.height} pixels", size))
    return img


def _convert(img: Image.Image, channels: int) -> Image.Image:
    """``img`` in 8-bit L (channels 1) or RGB (3). 16-bit samples are scaled (/257, rounded), not clipped
    as Pillow's ``convert`` does; 32-bit integer or float samples have no agreed range: rejected."""
    mode = "L" if channels == 1 else "RGB"
    if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):
        wide = np.asarray(img).astype(np.uint32)
        img = Image.fromarray(((wide + 128) // 257).clip(0, 255).astype(np.uint8), "L")
    elif img.mode in ("I", "F"):
        kind = "integer" if img.mode == "I" else "float"
        raise UnsupportedImage(f"unsupported pixel format {img.mode!r} (32-bit {kind} samples); "
                               f"expected 1-, 8- or 16-bit samples")
    return img if img.mode == mode else img.convert(mode)


def decode_image(data: bytes | os.PathLike | str, size: tuple[int, int] | None, channels: int, name: str) -> np.ndarray:
    """Decode one image to uint8 ``(H, W, channels)``; resize/crop to ``size`` (H, W) when given.

    :class:`DataError` (one line, naming the file) for a file that is not an image, is damaged, has
    more pixels than :func:`pixel_limit` allows, or has 32-bit samples (16-bit ones are scaled)."""
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        img = _open(src, size)
    except UnsupportedImage as exc:
        raise DataError(f"{name}: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name}: unreadable image ({exc.__class__.__name__}: {exc})") from None
    try:
        with img:
            img = _convert(img, channels)
            if size is not None and (img.height, img.width) != tuple(size):
                img = resize_center_crop(img, size)
            arr = np.asarray(img, dtype=np.uint8)
    except UnsupportedImage as exc:
        raise DataError(f"{name}: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name}: unreadable image ({exc.__class__.__name__}: {exc})") from None
    return arr[..., None] if channels == 1 else arr


def resize_center_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize the shorter side to fit ``size`` (H, W) then crop the centre (the documented policy)."""
    th, tw = size
    scale = max(th / img.height, tw / img.width)
    nh, nw = max(th, round(img.height * scale)), max(tw, round(img.width * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return img.crop((left, top, left + tw, top + th))


def _class_index(names: Iterable[str], class_names: Sequence[str] | None, where: str) -> dict[str, int]:
    found = sorted(set(names))
    if class_names is None:
        return {n: i for i, n in enumerate(found)}
    index = {n: i for i, n in enumerate(class_names)}
    unknown = [n for n in found if n not in index]
    if unknown:
        raise DataError(f"{where}: unknown class folder(s) {unknown[:5]}; expected names among {list(class_names)}")
    return index


def _stack(arrays: list[np.ndarray], names: list[str], where: str) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        odd = next(n for a, n in zip(arrays, names) if a.shape != first)
        raise DataError(f"{where}: images of different sizes ({first} vs {odd}); pass a target size to resize them")
    return np.stack(arrays)


def load_image_folder(
    root: str | os.PathLike,
    size: tuple[int, int] | None = None,
    channels: int = 3,
    class_names: Sequence[str] | None = None,
) -> ImageDataset:
    """Load ``root/<class>/<image>``; labels by class name (``class_names`` order, else sorted names)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected an ImageFolder: <root>/<class>/<image>)")
    files = sorted(
        p for p in root.glob("*/*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise DataError(f"{root}: no images found (expected <root>/<class>/<image>.jpg|png|...)")
    index = _class_index((p.parent.name for p in files), class_names, str(root))
    arrays = [decode_image(p, size, channels, str(p)) for p in files]
    labels = np.array([index[p.parent.name] for p in files], dtype=np.int64)
    names = tuple(class_names) if class_names is not None else tuple(sorted(index, key=index.get))
    return ImageDataset(_stack(arrays, [str(p) for p in files], str(root)), labels, names, source=str(root))


def load_image_folder_tar(
    archive: str | os.PathLike,
    split: str,
    size: tuple[int, int] | None = None,
    channels: int = 3,
    class_names: Sequence[str] | None = None,
) -> ImageDataset:
    """Load ``<split>/<class>/<image>`` members of a ``.tar(.gz)`` archive (any leading folder is allowed)."""
    archive = Path(archive)
    entries: list[tuple[str, str, bytes]] = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = PurePosixPath(member.name).parts
                if (len(parts) < 3 or parts[-3] != split
                        or PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES):
                    continue
                fh = tar.extractfile(member)
                if fh is not None:
                    entries.append((member.name, parts[-2], fh.read()))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"{archive}: unreadable archive ({exc}); expected a .tar.gz of <split>/<class>/<image>"
        ) from None
    if not entries:
        raise DataError(f"{archive}: no '{split}/<class>/<image>' members found")
    entries.sort(key=lambda e: e[0])
    index = _class_index((e[1] for e in entries), class_names, str(archive))
    arrays = [decode_image(data, size, channels, f"{archive}:{name}") for name, _, data in entries]
    labels = np.array([index[c] for _, c, _ in entries], dtype=np.int64)
    names = tuple(class_names) if class_names is not None else tuple(sorted(index, key=index.get))
    return ImageDataset(
        _stack(arrays, [e[0] for e in entries], str(archive)), labels, names, source=f"{archive}:{split}"
    )
