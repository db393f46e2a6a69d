"""MNIST / Fashion-MNIST in the IDX format (``.gz`` as released by their authors, ``.xz`` or raw)."""

from __future__ import annotations

import gzip
import lzma
import os
from pathlib import Path

import numpy as np

from bnncl.data.dataset import ImageDataset
from bnncl.errors import DataError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))
#: Where Debian's ``dataset-fashion-mnist`` package puts the files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_PREFIX = {"train": "train", "test": "t10k"}
SUFFIXES = ("", ".gz", ".xz")  # raw, the official gzip release, xz (the embedded subset: smaller)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzip- or xz-compressed, or raw) of unsigned bytes into an array."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupted gzip stream ({exc})") from None
    elif raw[:6] == b"\xfd7zXZ\x00":
        try:
            raw = lzma.decompress(raw, format=lzma.FORMAT_XZ)
        except lzma.LZMAError as exc:
            raise DataError(f"{path}: corrupted xz stream ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (expected magic 0x0000TTDD)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: IDX element type 0x{dtype_code:02x}, expected 0x08 (unsigned byte)")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX body has {len(raw) - header} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + suffix for suffix in SUFFIXES):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: missing {stem}[.gz] (expected the official MNIST/Fashion-MNIST IDX files)")


def load_idx_dataset(
    root: str | os.PathLike, split: str = "train", class_names: tuple[str, ...] = FASHION_MNIST_CLASSES
) -> ImageDataset:
    """Load ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` from ``root`` as (N, 28, 28, 1) images."""
    if split not in _PREFIX:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected a folder with MNIST/Fashion-MNIST IDX files)")
    images = read_idx(_find(root, f"{_PREFIX[split]}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{_PREFIX[split]}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{root}: expected images (N, H, W) and labels (N,), got {images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} images but {len(labels)} labels in the {split} split")
    return ImageDataset(images[..., None].copy(), labels.astype(np.int64), class_names, source=f"{root}:{split}")


def fashion_mnist_root() -> Path:
    """``$BNNCL_FASHION_MNIST`` or the Debian package's folder."""
    return Path(os.environ.get("BNNCL_FASHION_MNIST", DEBIAN_FASHION_MNIST))


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> ImageDataset:
    """Fashion-MNIST from ``root`` (default :func:`fashion_mnist_root`; when nothing is there, one
    :class:`DataError` line says where bnncl looked and how to provide the files)."""
    if root is None:
        root = fashion_mnist_root()
        stem = f"{_PREFIX.get(split, 'train')}-images-idx3-ubyte"
        if not any((root / (stem + suffix)).is_file() for suffix in SUFFIXES):
            env = os.environ.get("BNNCL_FASHION_MNIST")
            where = f"$BNNCL_FASHION_MNIST={env}" if env else f"$BNNCL_FASHION_MNIST (not set), {DEBIAN_FASHION_MNIST}"
            raise DataError(
                f"Fashion-MNIST not found (looked for {stem}[.gz] in {where}); apt-get install "
                "dataset-fashion-mnist, or set BNNCL_FASHION_MNIST to the folder with the official IDX files "
                "(train/t10k-images-idx3-ubyte.gz, train/t10k-labels-idx1-ubyte.gz from "
                "https://github.com/zalandoresearch/fashion-mnist)"
            )
    return load_idx_dataset(root, split, FASHION_MNIST_CLASSES)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (compressed when ``path`` ends in ``.gz`` or ``.xz``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    elif str(path).endswith(".xz"):
        data = lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    Path(path).write_bytes(data)
