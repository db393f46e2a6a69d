"""Resolve a dataset name or path given on the command line to an :class:`ImageDataset`."""

from __future__ import annotations

from pathlib import Path

from bnncl.data.cifar10 import find_cifar10, load_cifar10
from bnncl.data.dataset import ImageDataset
from bnncl.data.idx import MNIST_CLASSES, load_fashion_mnist, load_idx_dataset
from bnncl.errors import DataError

NAMES = ("fmnist", "cifar10", "embedded")


def load_dataset(spec: str, split: str) -> ImageDataset:
    """``fmnist`` (Debian/``$BNNCL_FASHION_MNIST``), ``cifar10`` (``$BNNCL_CIFAR10`` or ``default_cifar10_path``),
    ``embedded`` (the subset shipped in the package), or a path: an IDX folder
    (``mnist:PATH`` for digit names), a CIFAR-10 folder/archive."""
    if spec == "fmnist":
        return load_fashion_mnist(split)
    if spec == "cifar10":
        return load_cifar10(find_cifar10(), split)
    if spec == "embedded":
        from bnncl.data.embedded import load_embedded

        return load_embedded(split)
    if spec.startswith("mnist:"):
        return load_idx_dataset(spec[6:], split, MNIST_CLASSES)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"dataset {spec!r}: not one of {list(NAMES)} and no such path")
    if path.is_dir() and any(path.glob("*-idx3-ubyte*")):
        return load_idx_dataset(path, split)
    return load_cifar10(path, split)
