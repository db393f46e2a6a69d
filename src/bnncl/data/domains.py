"""Dataset conversions between domains: a model's image geometry, a class-balanced subset.

:func:`to_geometry` makes a dataset fit a model trained on another one (cross-domain protocols):
RGB -> gray is the ITU-R 601 luma (``L = 0.299 R + 0.587 G + 0.114 B``, Pillow's ``convert("L")``),
gray -> RGB replicates the channel, and the size changes with Pillow's bilinear resize (antialiased
when shrinking). Colour is converted before a resize, gray is replicated after one. Deterministic.

Geometry strings are ``HxWxC`` (``32x32x3``); a dataset spec ``NAME@HxWxC`` asks
:func:`bnncl.data.load_dataset` for the converted dataset.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from bnncl.data.dataset import ImageDataset
from bnncl.errors import DataError

Geometry = tuple[int, int, int]
_GEOMETRY = re.compile(r"(\d+)x(\d+)x(\d+)")


def parse_geometry(text: str) -> Geometry:
    """``"32x32x3"`` -> ``(32, 32, 3)``; a one-line :class:`DataError` for anything else."""
    m = _GEOMETRY.fullmatch(text.strip())
    if m is None:
        raise DataError(f"image geometry {text!r}: expected HxWxC, e.g. 32x32x3 or 28x28x1")
    h, w, c = (int(g) for g in m.groups())
    if h < 1 or w < 1 or c not in (1, 3):
        raise DataError(f"image geometry {text!r}: expected HxWxC with H, W >= 1 and C 1 (gray) or 3 (RGB)")
    return h, w, c


def format_geometry(geometry: Geometry) -> str:
    """``(32, 32, 3)`` -> ``"32x32x3"``."""
    return "x".join(str(int(v)) for v in geometry)


def split_geometry(spec: str) -> tuple[str, Geometry | None]:
    """``"embedded@32x32x3"`` -> ``("embedded", (32, 32, 3))``; a spec without ``@HxWxC`` -> ``(spec, None)``."""
    base, sep, tail = spec.rpartition("@")
    if not sep or not base or not re.fullmatch(r"[0-9x]+", tail):
        return spec, None
    return base, parse_geometry(tail)


def _convert_one(img: np.ndarray, geometry: Geometry) -> np.ndarray:
    h, w, c = geometry
    pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img, "L" if img.shape[2] == 1 else "RGB")
    if c == 1 and pil.mode != "L":
        pil = pil.convert("L")  # ITU-R 601-2 luma
    if (pil.height, pil.width) != (h, w):
        pil = pil.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.asarray(pil, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    return np.repeat(arr, 3, axis=2) if c == 3 and arr.shape[2] == 1 else arr


def to_geometry(dataset: ImageDataset, geometry: Geometry) -> ImageDataset:
    """``dataset`` with its images converted to ``geometry`` ``(H, W, C)`` (a new dataset; labels kept).

    A dataset already at ``geometry`` is returned as it is.
    """
    geometry = parse_geometry(format_geometry(geometry))
    if dataset.image_shape == geometry:
        return dataset
    images = np.empty((len(dataset),) + geometry, dtype=np.uint8)
    for i, img in enumerate(dataset.images):
        images[i] = _convert_one(img, geometry)
    return ImageDataset(images, dataset.labels, dataset.class_names, f"{dataset.source}@{format_geometry(geometry)}")


def balanced_subset(dataset: ImageDataset, per_class: int, seed: int = 0) -> ImageDataset:
    """A seeded class-balanced subset: ``per_class`` random rows of each class (all rows of a class that
    has fewer), in dataset order. The same ``seed`` gives the same rows on every machine."""
    if per_class < 1:
        raise DataError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(len(dataset.class_names)):
        rows = np.flatnonzero(dataset.labels == c)
        picks.append(rows if len(rows) <= per_class else rng.choice(rows, per_class, replace=False))
    out = dataset.select(np.sort(np.concatenate(picks)))
    return ImageDataset(out.images, out.labels, out.class_names, f"{dataset.source}[{per_class}/class]")
