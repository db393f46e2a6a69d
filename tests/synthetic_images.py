"""Small uint8 images of Gaussian classes for learner tests (tests/cl): each class a fixed mean over 16
pixels, each image that mean plus unit noise, mapped to 170 + 30 x and clipped to uint8, shaped (N, 4, 4, 1)."""

from __future__ import annotations

import numpy as np

SHAPE = (4, 4, 1)


def class_images(classes: int, n_per_class: int, seed: int, means_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` images of each of ``classes`` classes (labels 0 .. classes - 1, grouped by class): the
    class means come from ``means_seed``, the noise from ``seed``."""
    means = np.random.default_rng(means_seed).standard_normal((classes, 16)) * 0.8
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = means[y] + rng.standard_normal((len(y), 16))
    return np.clip(170 + 30 * x, 0, 255).astype(np.uint8).reshape((-1,) + SHAPE), y.astype(np.int64)
