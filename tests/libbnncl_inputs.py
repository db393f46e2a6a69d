"""The inputs the libbnncl learning tests use: a shipped model (fmnist-b5 with its embedded subset, or
cifar10-b5 with CIFAR-10 from ``shared/data``), its base images, a seeded mix of new-class train images and a
seeded sample of test images."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bnncl import assets
from bnncl.data.embedded import load_embedded
from bnncl.device.modelfile import DeviceModel


class LearningInputs(NamedTuple):
    model: DeviceModel
    base_images: np.ndarray
    base_labels: np.ndarray
    images: np.ndarray
    labels: np.ndarray  # int32, as the C programs read them
    test: np.ndarray


def splits(name: str):
    """(train, test) datasets of a shipped model: the embedded subset for fmnist-b5, CIFAR-10 for cifar10-b5
    (``pytest.skip`` when it is not found)."""
    if name == "fmnist-b5":
        return load_embedded("train"), load_embedded("test")
    import pytest

    from bnncl.data.cifar10 import default_cifar10_path, load_cifar10

    path = default_cifar10_path()
    if not path.exists():
        pytest.skip(f"CIFAR-10 not found ({path}; set BNNCL_CIFAR10)")
    return load_cifar10(path, "train"), load_cifar10(path, "test")


def learning_inputs(new_classes: tuple[int, ...], per_class: int, ntest: int, seed: int = 13,
                    model_name: str = "fmnist-b5", base_per_class: int | None = None) -> LearningInputs:
    """``per_class`` train images of each of ``new_classes`` (shuffled) and ``ntest`` test images; the base
    images: every train image of the pretrained classes, or the first ``base_per_class`` of each."""
    train, test_split = splits(model_name)
    model = DeviceModel.load(assets.model_path(model_name, ".bnn"))
    if base_per_class is None:
        base = np.flatnonzero(np.isin(train.labels, model.pretrained_classes))
    else:
        base = np.concatenate([np.flatnonzero(train.labels == c)[:base_per_class] for c in model.pretrained_classes])
    rng = np.random.default_rng(seed)
    new = rng.permutation(np.concatenate([np.flatnonzero(train.labels == c)[:per_class] for c in new_classes]))
    test = test_split.images[rng.choice(len(test_split.images), ntest, replace=False)]
    return LearningInputs(model, train.images[base], train.labels[base], train.images[new],
                          train.labels[new].astype(np.int32), test)
