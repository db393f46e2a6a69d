"""NumPy oracle of the binary kernels: plain, obviously-correct word-level code.

Same signatures as :mod:`bnncl.device.kernels.native`; arguments are assumed validated
(:mod:`bnncl.device.kernels.checks`).  Padding convention: out-of-image taps are +1, i.e.
all-zero words, and every dot counts all ``KH*KW*in_channels`` terms.
"""

from __future__ import annotations

import numpy as np

from bnncl.device.bitpack import WORD_DTYPE, words_for
from bnncl.device.kernels.checks import ConvShape

_CHUNK_WORDS = 1 << 22  # bound the (rows, N, W) temporary


def binary_gemm(a: np.ndarray, b: np.ndarray, k: int, threads: int = 1) -> np.ndarray:
    """``out[m, n] = k - 2 * popcount(a[m] XOR b[n])`` as int32 (M, N)."""
    m, w = a.shape
    out = np.empty((m, b.shape[0]), dtype=np.int32)
    step = max(1, _CHUNK_WORDS // max(1, b.shape[0] * w))
    for r in range(0, m, step):
        x = np.bitwise_xor(a[r : r + step, None, :], b[None, :, :])
        out[r : r + step] = k - 2 * np.bitwise_count(x).sum(axis=-1, dtype=np.int64)
    return out


def im2col(x: np.ndarray, s: ConvShape) -> np.ndarray:
    """Word-level im2col: (B*Ho*Wo, KH*KW*words) with zero words for padded taps."""
    p = s.padding
    xp = np.zeros((s.batch, s.height + 2 * p, s.width + 2 * p, s.words), dtype=WORD_DTYPE)
    xp[:, p : p + s.height, p : p + s.width] = x
    ho, wo = s.out_hw
    cols = np.empty((s.batch, ho, wo, s.kh, s.kw, s.words), dtype=WORD_DTYPE)
    for ky in range(s.kh):
        for kx in range(s.kw):
            cols[:, :, :, ky, kx] = xp[:, ky : ky + s.stride * ho : s.stride, kx : kx + s.stride * wo : s.stride]
    return cols.reshape(s.batch * ho * wo, -1)


def binary_conv2d_int32(x: np.ndarray, w: np.ndarray, s: ConvShape, threads: int = 1) -> np.ndarray:
    """Raw dots as int32 (B, Ho, Wo, O)."""
    dots = binary_gemm(im2col(x, s), w.reshape(s.out_channels, -1), s.terms)
    return dots.reshape(s.batch, *s.out_hw, s.out_channels)


def binary_conv2d(
    x: np.ndarray, w: np.ndarray, s: ConvShape, scale: np.ndarray, bias: np.ndarray, threads: int = 1
) -> np.ndarray:
    """``scale[o] * dot + bias[o]`` in float32 (multiply, then add), shape (B, Ho, Wo, O)."""
    dots = binary_conv2d_int32(x, w, s).astype(np.float32)
    return (dots * scale) + bias


def binary_conv2d_packed_out(
    x: np.ndarray, w: np.ndarray, s: ConvShape, threshold: np.ndarray, flip: np.ndarray, threads: int = 1
) -> np.ndarray:
    """Packed output bits: bit 1 (-1) where ``dot < threshold`` (flip 0) or ``dot > threshold`` (flip 1)."""
    dots = binary_conv2d_int32(x, w, s).astype(np.float64)
    thr = threshold.astype(np.float64)
    bits = np.where(flip.astype(bool), dots > thr, dots < thr)
    nw = words_for(s.out_channels)
    padded = np.zeros(bits.shape[:-1] + (nw * 64,), dtype=np.uint8)
    padded[..., : s.out_channels] = bits
    return np.ascontiguousarray(np.packbits(padded, axis=-1, bitorder="little")).view(WORD_DTYPE)


def pack_signs_f32(x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Pack the signs of a float32 array along its last axis (see :func:`bitpack.pack_signs`)."""
    from bnncl.device.bitpack import pack_signs

    return pack_signs(x)
