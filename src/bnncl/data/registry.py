"""Resolve a dataset name or path given on the command line to an :class:`ImageDataset`.

A spec is ``NAME`` or ``PATH``, optionally followed by ``@HxWxC`` to convert the images to a model's
geometry (:func:`bnncl.data.domains.to_geometry`): ``embedded@32x32x3`` is the embedded Fashion-MNIST
subset upscaled to 32x32 RGB, ``cifar10@28x28x1`` CIFAR-10 as 28x28 gray.
"""

from __future__ import annotations

from pathlib import Path

from bnncl.data.cifar10 import find_cifar10, load_cifar10
from bnncl.data.dataset import ImageDataset
from bnncl.data.domains import split_geometry, to_geometry
from bnncl.data.idx import MNIST_CLASSES, load_fashion_mnist, load_idx_dataset
from bnncl.errors import DataError

NAMES = ("fmnist", "cifar10", "embedded", "core50", "core50-cat")


def load_dataset(spec: str, split: str) -> ImageDataset:
    """``fmnist`` (Debian/``$BNNCL_FASHION_MNIST``), ``cifar10`` (``$BNNCL_CIFAR10`` or ``default_cifar10_path``),
    ``embedded`` (the subset shipped in the package), ``core50`` / ``core50-cat`` (CORe50's 50 objects / 10
    categories at 32x32x3 from ``$BNNCL_CORE50``; ``core50:PATH`` for a folder; split ``train`` = its
    training sessions, ``test`` = sessions 3, 7, 10), or a path: an IDX folder (``mnist:PATH`` for digit
    names), a CIFAR-10 folder/archive. Any of them followed by ``@HxWxC`` is converted to that geometry."""
    base, geometry = split_geometry(spec)
    name, _, path = base.partition(":")
    if name in ("core50", "core50-cat"):
        from bnncl.data.core50 import DEFAULT_GEOMETRY, load_core50

        return load_core50(path or None, split, geometry or DEFAULT_GEOMETRY, categories=name == "core50-cat")
    ds = _load(base, split)
    return ds if geometry is None else to_geometry(ds, geometry)


def _load(spec: str, split: str) -> ImageDataset:
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
