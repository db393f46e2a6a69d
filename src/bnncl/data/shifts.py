"""Deterministic image shifts for new-instance (NI) streams: pure NumPy on uint8 NHWC batches.

Each shift is a named, parameterised function ``f(images, **params) -> images`` that returns a new
uint8 array of the same shape and never modifies its input. The same parameters always give the
same output (no randomness), so an experience's shift is part of the protocol, not noise.

* ``none``: identity (a copy).
* ``brightness(delta)``: add ``delta`` (an int in [-255, 255]) to every pixel, clipped to [0, 255].
* ``blur(radius)``: box blur with a ``(2 * radius + 1)`` square window, edges replicated.
* ``rotation(degrees)``: rotate about the image centre, nearest neighbour, edges replicated.
* ``crop(scale, y, x)``: take a ``scale``-sized window (fraction of H and W, in (0, 1]) whose
  top-left corner sits at fraction ``y``/``x`` of the free margin, resize back (nearest neighbour).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    return images


def identity(images: np.ndarray) -> np.ndarray:
    """A copy of ``images``."""
    return _check_images(images).copy()


def brightness(images: np.ndarray, delta: int = 40) -> np.ndarray:
    """Add ``delta`` to every pixel, clipped to [0, 255]."""
    images = _check_images(images)
    if not -255 <= int(delta) <= 255:
        raise ValueError(f"brightness delta must be in [-255, 255], got {delta}")
    return np.clip(images.astype(np.int16) + int(delta), 0, 255).astype(np.uint8)


def blur(images: np.ndarray, radius: int = 1) -> np.ndarray:
    """Box blur with a ``(2 * radius + 1)`` square window; borders replicate the edge pixels."""
    images = _check_images(images)
    r = int(radius)
    if r < 0:
        raise ValueError(f"blur radius must be >= 0, got {radius}")
    if r == 0:
        return images.copy()
    _, h, w, _ = images.shape
    padded = np.pad(images.astype(np.uint32), ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    total = np.zeros(images.shape, dtype=np.uint32)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            total += padded[:, dy : dy + h, dx : dx + w, :]
    n = (2 * r + 1) ** 2
    return ((total + n // 2) // n).astype(np.uint8)


def _resample(images: np.ndarray, src_y: np.ndarray, src_x: np.ndarray) -> np.ndarray:
    """Gather ``images[:, src_y, src_x, :]`` with source coordinates clipped into the image."""
    _, h, w, _ = images.shape
    yy = np.clip(np.rint(src_y).astype(np.int64), 0, h - 1)
    xx = np.clip(np.rint(src_x).astype(np.int64), 0, w - 1)
    return images[:, yy, xx, :]


def rotation(images: np.ndarray, degrees: float = 15.0) -> np.ndarray:
    """Rotate counter-clockwise by ``degrees`` about the centre (nearest neighbour, edge replicated)."""
    images = _check_images(images)
    _, h, w, _ = images.shape
    theta = np.deg2rad(float(degrees))
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    y, x = np.meshgrid(np.arange(h, dtype=np.float64) - cy, np.arange(w, dtype=np.float64) - cx, indexing="ij")
    # Inverse mapping: each output pixel reads the source pixel rotated back by -theta.
    src_x = np.cos(theta) * x - np.sin(theta) * y + cx
    src_y = np.sin(theta) * x + np.cos(theta) * y + cy
    return _resample(images, src_y, src_x)


def crop(images: np.ndarray, scale: float = 0.8, y: float = 0.5, x: float = 0.5) -> np.ndarray:
    """Crop a ``scale`` fraction window at relative position (``y``, ``x``) and resize it back."""
    images = _check_images(images)
    if not 0.0 < float(scale) <= 1.0:
        raise ValueError(f"crop scale must be in (0, 1], got {scale}")
    if not (0.0 <= float(y) <= 1.0 and 0.0 <= float(x) <= 1.0):
        raise ValueError(f"crop position y, x must be in [0, 1], got {y}, {x}")
    _, h, w, _ = images.shape
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = round((h - ch) * y), round((w - cw) * x)
    yy = top + (np.arange(h) * ch) // h
    xx = left + (np.arange(w) * cw) // w
    return images[:, yy[:, None], xx[None, :], :]


SHIFTS: dict[str, Callable[..., np.ndarray]] = {
    "none": identity,
    "brightness": brightness,
    "blur": blur,
    "rotation": rotation,
    "crop": crop,
}


def apply_shift(images: np.ndarray, name: str | None, params: dict[str, Any] | None = None) -> np.ndarray:
    """Apply the shift called ``name`` (``None`` or ``"none"``: a copy) with keyword ``params``."""
    if name is None:
        name = "none"
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; expected one of {sorted(SHIFTS)}")
    try:
        return SHIFTS[name](images, **(params or {}))
    except TypeError as exc:
        raise ValueError(f"bad parameters {params!r} for shift {name!r}: {exc}") from None


def default_ni_shifts(n_experiences: int) -> list[tuple[str, dict[str, Any]]]:
    """A fixed list of ``n_experiences`` shifts, cycling through every kind with varied strength.

    Experience 0 is unshifted; the rest cycle brightness / blur / rotation / crop, each time with a
    different (fixed) parameter, e.g. the CIFAR-10 NI protocol with 8 experiences gets
    none, brightness +40, blur 1, rotation 15, crop 0.8, brightness -40, blur 2, rotation -15.
    """
    if n_experiences < 1:
        raise ValueError(f"n_experiences must be >= 1, got {n_experiences}")
    table: list[tuple[str, dict[str, Any]]] = [
        ("brightness", {"delta": 40}),
        ("blur", {"radius": 1}),
        ("rotation", {"degrees": 15.0}),
        ("crop", {"scale": 0.8, "y": 0.5, "x": 0.5}),
        ("brightness", {"delta": -40}),
        ("blur", {"radius": 2}),
        ("rotation", {"degrees": -15.0}),
        ("crop", {"scale": 0.7, "y": 0.0, "x": 1.0}),
    ]
    out: list[tuple[str, dict[str, Any]]] = [("none", {})]
    i = 0
    while len(out) < n_experiences:
        out.append(table[i % len(table)])
        i += 1
    return out
