"""The embedded default: a small real subset of Fashion-MNIST shipped inside the package.

It holds, in the official IDX format, a class-balanced random subset (seed 0) of the official
Fashion-MNIST release: from the *train* split ``BASE_PER_CLASS`` images of each base class 0-4 (they
fill the latent-replay buffer at deployment) and ``NEW_PER_CLASS`` images of each new class 5-9 (the
device learns from them); from the *test* split ``TEST_PER_CLASS`` images of every class. Enough for
the ``fmnist-b5`` protocol end to end, offline. Licence: MIT (Zalando SE), see ``LICENSE`` beside it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from bnncl.data.dataset import ImageDataset
from bnncl.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist, load_idx_dataset, write_idx
from bnncl.errors import DataError

BASE_PER_CLASS = 300
NEW_PER_CLASS = 600
TEST_PER_CLASS = 500
BASE_CLASSES = (0, 1, 2, 3, 4)
SEED = 0


def embedded_root() -> Path:
    """Folder of the shipped IDX files."""
    return Path(str(resources.files("bnncl") / "assets" / "data" / "fmnist-subset"))


def load_embedded(split: str = "train") -> ImageDataset:
    """The shipped Fashion-MNIST subset (``train`` or ``test``)."""
    root = embedded_root()
    if not root.is_dir():
        raise DataError(f"{root}: embedded data missing from the installation (reinstall bnncl)")
    return load_idx_dataset(root, split, FASHION_MNIST_CLASSES)


def _balanced(labels: np.ndarray, per_class: dict[int, int], rng: np.random.Generator) -> np.ndarray:
    picks = [rng.choice(np.flatnonzero(labels == c), n, replace=False) for c, n in sorted(per_class.items())]
    return np.sort(np.concatenate(picks))


def build_embedded(out: str | Path, source: str | Path | None = None) -> dict[str, int]:
    """Write the subset's IDX files into ``out`` from the full release (maintainers only)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    train, test = load_fashion_mnist("train", source), load_fashion_mnist("test", source)
    train_counts = {c: BASE_PER_CLASS if c in BASE_CLASSES else NEW_PER_CLASS for c in range(10)}
    sizes = {}
    for ds, prefix, counts in ((train, "train", train_counts), (test, "t10k", {c: TEST_PER_CLASS for c in range(10)})):
        idx = _balanced(ds.labels, counts, rng)
        write_idx(out / f"{prefix}-images-idx3-ubyte.xz", ds.images[idx, :, :, 0])
        write_idx(out / f"{prefix}-labels-idx1-ubyte.xz", ds.labels[idx].astype(np.uint8))
        sizes[prefix] = len(idx)
    return sizes
