"""The one in-memory dataset type: uint8 NHWC images, int64 labels, class names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bnncl.errors import DataError


@dataclass(frozen=True)
class ImageDataset:
    """Images ``(N, H, W, C)`` uint8, labels ``(N,)`` int64 in ``[0, len(class_names))``."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(
                f"{self.source or 'dataset'}: images must be uint8 (N, H, W, C), "
                f"got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise DataError(
                f"{self.source or 'dataset'}: {len(self.images)} images but labels of shape {self.labels.shape}"
            )
        object.__setattr__(self, "labels", self.labels.astype(np.int64, copy=False))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DataError(
                f"{self.source or 'dataset'}: labels must lie in [0, {len(self.class_names)}), "
                f"got [{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def select(self, indices: np.ndarray | Sequence[int]) -> ImageDataset:
        """A dataset holding the given rows (a copy of those rows only)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageDataset(self.images[idx], self.labels[idx], self.class_names, self.source)

    def with_classes(self, classes: Sequence[int]) -> ImageDataset:
        """The rows whose label is in ``classes`` (labels keep their original values)."""
        classes = [int(c) for c in classes]
        bad = [c for c in classes if not 0 <= c < len(self.class_names)]
        if bad:
            raise DataError(f"classes {bad} are not in [0, {len(self.class_names)}) for {self.source or 'dataset'}")
        return self.select(np.flatnonzero(np.isin(self.labels, classes)))

    def class_counts(self) -> np.ndarray:
        """Number of images per class, ``(num_classes,)``."""
        return np.bincount(self.labels, minlength=len(self.class_names))

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.image_shape))
        return f"ImageDataset({self.source or 'arrays'!r}, {len(self)} images {shape}, {len(self.class_names)} classes)"
