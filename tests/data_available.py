"""Skip markers for tests that read the real datasets (installed by .ci/run in CI)."""

from pathlib import Path

import pytest

from bnncl.data.cifar10 import default_cifar10_path
from bnncl.data.idx import fashion_mnist_root


def fmnist_available() -> bool:
    return (fashion_mnist_root() / "train-images-idx3-ubyte.gz").is_file()


def cifar_available() -> bool:
    return Path(default_cifar10_path()).is_file()


needs_fmnist = pytest.mark.skipif(
    not fmnist_available(), reason="Fashion-MNIST IDX files not found (apt-get install dataset-fashion-mnist)"
)
needs_cifar = pytest.mark.skipif(
    not cifar_available(),
    reason="CIFAR-10 archive not found (set BNNCL_CIFAR10 or provide shared/data/cifar10/ in a parent folder)",
)
