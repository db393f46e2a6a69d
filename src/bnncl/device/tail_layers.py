"""Building blocks of the trainable tail on the device (NumPy + the C binary kernels, channels-last).

* :func:`im2col_pm1` / :func:`col2im`: the 3x3 patch matrix of a ±1 map (int8, +1 padding) and its
  scatter-add adjoint;
* :func:`pm1_weight_grad`: the weight gradient of a binary conv, ``G[o, k] = sum_p x[p, k] * dy[p, o]``
  with ``x`` in {-1, +1}: additions and subtractions only. With ``dy`` stored at ``q_b`` bits
  (``dy = min + code / s``) it is ``G = min * sum_p x[p, k] + (sum_p x[p, k] * code[p, o]) / s``: the
  sums are exact integer sums of ±codes (a float32 GEMM used as an exact integer adder: every product
  is ±1 times an integer and row chunks keep every partial sum below 2^24), then one float scaling;
* shortcut (2x2 average pooling, channel repetition) and their adjoints; bit masks packed with
  :func:`numpy.packbits` (1 bit per element) for what the backward pass needs.
"""

from __future__ import annotations

import numpy as np

from bnncl.device.quantize import FLOAT_BITS, QTensor

_F32_EXACT = 1 << 24


def conv_out_hw(h: int, w: int, k: int, stride: int, pad: int) -> tuple[int, int]:
    return (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1


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


def pm1_weight_grad(cols: np.ndarray, dy: QTensor | np.ndarray) -> np.ndarray:
    """``G = cols.T @ dy`` (K, O) for ±1 ``cols`` (P, K) int8, by additions/subtractions only.

    ``dy`` (P, O) is a :class:`QTensor` at <= 24 bits (exact integer path, module docstring) or float32
    values (``q_b = 32``: a float32 GEMM whose one operand is ±1, i.e. signed accumulation). Returns
    float32 (K, O).
    """
    if isinstance(dy, QTensor) and dy.bits == FLOAT_BITS:
        dy = dy.codes
    if not isinstance(dy, QTensor):
        return cols.T.astype(np.float32) @ np.asarray(dy, dtype=np.float32)
    p = cols.shape[0]
    if dy.constant:  # every dy = lo
        return (np.float64(dy.lo) * cols.sum(axis=0, dtype=np.int64)[:, None]).astype(np.float32).repeat(
            dy.shape[1], axis=1)
    max_code = (1 << dy.bits) - 1
    chunk = max(1, (_F32_EXACT - 1) // max_code)
    codes = dy.codes.astype(np.float32)
    xt = cols.T.astype(np.float32)
    acc = np.zeros((cols.shape[1], dy.shape[1]), dtype=np.int64)
    for r in range(0, p, chunk):
        acc += (xt[:, r : r + chunk] @ codes[r : r + chunk]).astype(np.int64)  # exact: |partial| < 2^24
    colsum = cols.sum(axis=0, dtype=np.int64)
    g = np.float64(dy.lo) * colsum[:, None] + acc / np.float64(dy.scale)
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


def pack_mask(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """A boolean array stored at 1 bit per element."""
    return np.packbits(mask.reshape(-1)), mask.shape


def unpack_mask(packed: tuple[np.ndarray, tuple[int, ...]]) -> np.ndarray:
    bits, shape = packed
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)
