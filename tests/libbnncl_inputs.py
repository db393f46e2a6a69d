"""The inputs both libbnncl learning tests use: the shipped fmnist-b5 model, its embedded base images, a
seeded mix of new-class train images and a seeded sample of test images."""

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


def learning_inputs(new_classes: tuple[int, ...], per_class: int, ntest: int, seed: int = 13) -> LearningInputs:
    """``per_class`` train images of each of ``new_classes`` (shuffled) and ``ntest`` test images."""
    train, test_split = load_embedded("train"), load_embedded("test")
    model = DeviceModel.load(assets.model_path("fmnist-b5", ".bnn"))
    base = np.isin(train.labels, model.pretrained_classes)
    rng = np.random.default_rng(seed)
    new = rng.permutation(np.concatenate([np.flatnonzero(train.labels == c)[:per_class] for c in new_classes]))
    test = test_split.images[rng.choice(len(test_split.images), ntest, replace=False)]
    return LearningInputs(model, train.images[base], train.labels[base], train.images[new],
                          train.labels[new].astype(np.int32), test)
