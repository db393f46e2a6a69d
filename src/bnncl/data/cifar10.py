"""CIFAR-10: the standard ``cifar-10-batches-py`` folder, or an ImageFolder directory / ``.tar.gz``.

Labels are always the canonical CIFAR-10 ones, mapped by class *name* (folder order is alphabetical,
which is not the canonical order).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from bnncl.data.arraycache import cached_dataset
from bnncl.data.dataset import ImageDataset
from bnncl.data.imagefolder import load_image_folder, load_image_folder_tar
from bnncl.errors import DataError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_SPLITS = ("train", "test")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Reads the official CIFAR python batches but refuses anything beyond plain containers and arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes inside protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            batch = _ArraysOnlyUnpickler(fh, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: CIFAR-10 batch without 'data'/'labels' entries")
    return batch


def load_cifar10_batches(root: str | os.PathLike, split: str = "train") -> ImageDataset:
    """Load the official ``cifar-10-batches-py`` folder (``data_batch_1..5``, ``test_batch``)."""
    root = Path(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(f"{root}: missing {missing} (expected the cifar-10-batches-py layout)")
    images, labels = [], []
    for name in names:
        batch = _read_batch(root / name)
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{root / name}: data of shape {data.shape}, expected (N, 3072)")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    return ImageDataset(
        np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), CIFAR10_CLASSES, f"{root}:{split}"
    )


def load_cifar10(path: str | os.PathLike, split: str = "train") -> ImageDataset:
    """CIFAR-10 from a ``cifar-10-batches-py`` folder, an ImageFolder folder or its ``.tar.gz``.

    Decoded JPEG/PNG arrays are cached (see :mod:`bnncl.data.arraycache`).
    """
    if split not in _SPLITS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (expected cifar-10-batches-py, an ImageFolder or its .tar.gz)")
    if path.is_file():
        if not path.name.endswith((".tar.gz", ".tgz", ".tar")):
            raise DataError(f"{path}: expected a .tar.gz archive or a folder")
        return cached_dataset(
            path, f"cifar10-tar:{split}",
            lambda: load_image_folder_tar(path, split, (32, 32), 3, CIFAR10_CLASSES),
        )
    if (path / "data_batch_1").is_file() or (path / "test_batch").is_file():
        return load_cifar10_batches(path, split)
    nested = path / "cifar-10-batches-py"
    if nested.is_dir():
        return load_cifar10_batches(nested, split)
    if (path / split).is_dir():
        return cached_dataset(
            path / split, "cifar10-folder",
            lambda: load_image_folder(path / split, (32, 32), 3, CIFAR10_CLASSES),
        )
    raise DataError(
        f"{path}: not a CIFAR-10 layout (expected data_batch_1..5/test_batch, or {split}/<class>/<image>)"
    )


def default_cifar10_path() -> Path:
    """``$BNNCL_CIFAR10``, else a copy found by its path (``shared/data/cifar10/cifar10-jpeg.tar.gz`` in a
    parent folder of the package or of the working directory)."""
    env = os.environ.get("BNNCL_CIFAR10")
    if env:
        return Path(env)
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            candidate = parent / "shared" / "data" / "cifar10" / "cifar10-jpeg.tar.gz"
            if candidate.is_file():
                return candidate
    return Path("cifar10-jpeg.tar.gz")


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def find_cifar10() -> Path:
    """:func:`default_cifar10_path` when it exists, else one :class:`DataError` line saying where bnncl
    looked and how to provide CIFAR-10."""
    path = default_cifar10_path()
    if path.exists():
        return path
    env = os.environ.get("BNNCL_CIFAR10")
    if env:
        where = f"$BNNCL_CIFAR10={env}: no such file or folder"
    else:
        starts = sorted({str(Path(__file__).resolve().parent), str(Path.cwd().resolve())})
        where = (f"$BNNCL_CIFAR10 (not set), shared/data/cifar10/cifar10-jpeg.tar.gz in the parent folders of "
                 f"{' and '.join(starts)}")
    raise DataError(f"CIFAR-10 not found (looked in {where}); download cifar-10-python.tar.gz from {CIFAR10_URL}, "
                    "extract it and set BNNCL_CIFAR10=<folder> (cifar-10-batches-py or the folder holding it)")
