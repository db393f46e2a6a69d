"""Building blocks of the trainable tail on the device (NumPy + the C binary kernels, channels-last).

* :func:`im2col_pm1` / :func:`col2im`: the 3x3 patch matrix of a ±1 map (int8, +1 padding) and its
  scatter-add adjoint;
* :func:`pm1_weight_grad`: the weight gradient of a binary conv, ``G[o, k] = sum_p x[p, k] * dy[p, o]``
  with ``x`` in {-1, +1}: additions and subtractions only (a float32 GEMM whose one operand is ±1, so
  every multiply-add is exactly an addition or a subtraction of a ``dy`` value; optionally exact
  integer sums of the ``q_b`` codes);
* shortcut (2x2 average pooling, channel repetition) and their adjoints.
"""

from __future__ import annotations

import numpy as np

from bnncl.device.quantize import FLOAT_BITS, QTensor
from bnncl.device.shapes import conv_out_hw

_F32_EXACT = 1 << 24


def im2col_pm1(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """``x`` (B, H, W, C) int8 ±1 -> (B*Ho*Wo, k*k*C) int8, taps ordered (ky, kx, c), padding +1."""
    b, h, w, c = x.shape
    ho, wo = conv_out_hw(h, w, k, stride, pad)
    xp = np.ones((b, h + 2 * pad, w + 2 * pad, c), dtype=np.int8)
    xp[:, pad : pad + h, pad : pad + w] = x
    cols = np.empty((b, ho, wo, k, k, c), dtype=np.int8)
    for ky in range(k):
        for kx in range(k):
            cols[:, :, :, ky, kx] = xp[:, ky : ky + stride * ho : stride, kx : kx + stride * wo : stride]
    return cols.reshape(b * ho * wo, k * k * c)


def col2im(cols: np.ndarray, shape: tuple[int, int, int, int], k: int, stride: int, pad: int) -> np.ndarray:
    """Adjoint of :func:`im2col_pm1`: (B*Ho*Wo, k*k*C) float -> (B, H, W, C), padded taps dropped."""
    b, h, w, c = shape
    ho, wo = conv_out_hw(h, w, k, stride, pad)
    cols = cols.reshape(b, ho, wo, k, k, c)
    out = np.zeros((b, h + 2 * pad, w + 2 * pad, c), dtype=cols.dtype)
    for ky in range(k):
        for kx in range(k):
            out[:, ky : ky + stride * ho : stride, kx : kx + stride * wo : stride] += cols[:, :, :, ky, kx]
    return out[:, pad : pad + h, pad : pad + w]


def pm1_weight_grad(cols: np.ndarray, dy: QTensor | np.ndarray, exact: bool = False) -> np.ndarray:
    """``G = cols.T @ dy`` (K, O) for ±1 ``cols`` (P, K) int8, by additions/subtractions only.

    Default: one float32 GEMM of the ±1 patch matrix with the ``dy`` values. A product with ±1 is
    exact, so each multiply-add is exactly the float addition or subtraction of a ``dy`` value: the
    GEMM is a signed accumulation in the BLAS's summation order, rounded as float32 sums are.

    ``exact=True`` (``dy`` a :class:`QTensor` at <= 24 bits): integer sums of ±codes, no rounding. The
    codes are split into base-256 digits placed side by side, one float32 GEMM ``cols.T @ [d0 | d1..]``
    sums ±digits (every partial sum an integer below ``255 * rows < 2^24``, rows chunked at 65,793,
    hence exact), digit sums are recombined in int64 and ``G = min * colsum + sum / s`` in float64.
    Twice the GEMM work at 16 bits; used to check the default path.
    """
    x = np.ascontiguousarray(cols, dtype=np.float32)
    q = dy if isinstance(dy, QTensor) else None
    if q is None or q.bits == FLOAT_BITS or not exact:
        values = q.dequantize() if q is not None else np.asarray(dy, dtype=np.float32)
        return x.T @ values
    o = q.shape[1]
    colsum = cols.sum(axis=0, dtype=np.int64)
    if q.constant:  # every dy = lo
        return np.repeat((np.float64(q.lo) * colsum)[:, None], o, axis=1).astype(np.float32)
    n_digits = (q.bits + 7) // 8
    codes = q.codes.astype(np.int64)
    digits = np.concatenate([(codes >> (8 * d)) & 255 for d in range(n_digits)], axis=1).astype(np.float32)
    acc = np.zeros((cols.shape[1], n_digits * o), dtype=np.int64)
    chunk = (_F32_EXACT - 1) // 255
    for r in range(0, cols.shape[0], chunk):
        acc += (x[r : r + chunk].T @ digits[r : r + chunk]).astype(np.int64)  # exact integers
    total = sum(acc[:, d * o : (d + 1) * o] << (8 * d) for d in range(n_digits))
    g = np.float64(q.lo) * colsum[:, None] + total / np.float64(q.scale)
    return g.astype(np.float32)


def avgpool2(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling, stride 2, NHWC (even H and W)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4), dtype=np.float32)


def avgpool2_backward(d: np.ndarray) -> np.ndarray:
    """Adjoint of :func:`avgpool2`: each input gets a quarter of its window's gradient."""
    q = (d * np.float32(0.25)).astype(np.float32, copy=False)
    return np.repeat(np.repeat(q, 2, axis=1), 2, axis=2)


def shortcut(x: np.ndarray, stride: int, repeat: int) -> np.ndarray:
    """Parameter-free shortcut: 2x2 average pooling when ``stride`` is 2, channels tiled ``repeat`` times."""
    if stride == 2:
        x = avgpool2(x)
    return np.tile(x, (1, 1, 1, repeat)) if repeat > 1 else x


def shortcut_backward(d: np.ndarray, stride: int, repeat: int) -> np.ndarray:
    if repeat > 1:
        b, h, w, c = d.shape
        d = d.reshape(b, h, w, repeat, c // repeat).sum(axis=3, dtype=np.float32)
    return avgpool2_backward(d) if stride == 2 else d
