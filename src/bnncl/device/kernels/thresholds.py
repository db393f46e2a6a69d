"""Fold a per-channel float affine into the integer threshold of the packed-output conv."""

from __future__ import annotations

import numpy as np

from bnncl.device.kernels.checks import positive_int


def threshold_from_affine(scale: np.ndarray, bias: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(threshold float32 (O,), flip uint8 (O,))`` such that, for every reachable dot
    ``d`` in ``[-k, k]``, ``(d < threshold) if flip == 0 else (d > threshold)`` equals
    ``float32(scale) * float32(d) + float32(bias) < 0`` (multiply, then add, in float32).

    ``k`` is the number of terms of each dot (``KH*KW*in_channels``).  Exact by construction:
    the affine is evaluated on every integer in ``[-k, k]`` (it is monotone in ``d``).
    """
    k = positive_int("k", k)
    scale = np.asarray(scale, dtype=np.float32).reshape(-1)
    bias = np.asarray(bias, dtype=np.float32).reshape(-1)
    if scale.shape != bias.shape:
        raise ValueError(f"bias: expected shape {scale.shape} (as scale), got {bias.shape}")
    d = np.arange(-k, k + 1, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        negative = (scale[:, None] * d[None, :]) + bias[:, None] < 0
    count = negative.sum(axis=1)
    flip = (scale < 0) & (count > 0) & (count < 2 * k + 1)
    low = np.float32(-k) + count.astype(np.float32) - np.float32(0.5)  # d < low: the lowest `count` values
    high = np.float32(k) - count.astype(np.float32) + np.float32(0.5)  # d > high: the highest `count` values
    threshold = np.where(flip, high, low).astype(np.float32)
    return threshold, flip.astype(np.uint8)
