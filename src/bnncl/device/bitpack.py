"""The one bit convention of bnncl (as Larq Compute Engine).

* bit 1 means -1, bit 0 means +1; sign(0) = +1 (so ``x < 0`` sets the bit);
* values are packed along the last axis (channels, channels-last layout) into little-endian
  ``uint64`` words: bit ``i`` of word ``j`` holds channel ``64 * j + i``;
* padding bits (channels beyond ``C`` in the last word) are 0 in every operand, so they never
  count in ``popcount(a XOR b)`` and ``dot = C - 2 * popcount(a XOR b)`` holds with the real ``C``.

Every other module (kernels, engine, replay buffer, export) packs and unpacks through here.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64
WORD_DTYPE = np.dtype("<u8")


def words_for(channels: int) -> int:
    """Number of 64-bit words that hold ``channels`` bits."""
    if channels < 0:
        raise ValueError(f"channels must be >= 0, got {channels}")
    return (channels + WORD_BITS - 1) // WORD_BITS


def pack_signs(x: np.ndarray) -> np.ndarray:
    """Pack the signs of ``x`` along its last axis: shape ``(..., C)`` -> ``(..., words_for(C))`` uint64."""
    x = np.asarray(x)
    channels = x.shape[-1]
    n_words = words_for(channels)
    bits = np.zeros(x.shape[:-1] + (n_words * WORD_BITS,), dtype=np.uint8)
    bits[..., :channels] = x < 0
    packed = np.packbits(bits, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view(WORD_DTYPE)


def unpack_signs(packed: np.ndarray, channels: int, dtype: np.typing.DTypeLike = np.int8) -> np.ndarray:
    """Inverse of :func:`pack_signs`: ``(..., words)`` uint64 -> ``(..., channels)`` of +1/-1."""
    packed = np.ascontiguousarray(np.asarray(packed, dtype=WORD_DTYPE))
    if packed.shape[-1] != words_for(channels):
        raise ValueError(
            f"packed last axis has {packed.shape[-1]} words, expected {words_for(channels)} for {channels} channels"
        )
    bits = np.unpackbits(packed.view(np.uint8), axis=-1, bitorder="little")[..., :channels]
    return (1 - 2 * bits.astype(np.int8)).astype(dtype, copy=False)


def popcount(words: np.ndarray) -> np.ndarray:
    """Per-element popcount of uint64 words (NumPy >= 2 ``bitwise_count``)."""
    return np.bitwise_count(np.asarray(words, dtype=WORD_DTYPE))


def xnor_dot(a: np.ndarray, b: np.ndarray, channels: int) -> np.ndarray:
    """Dot product of two packed ±1 vectors along the last axis: ``C - 2 * popcount(a XOR b)``."""
    mismatches = popcount(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int64)
    return channels - 2 * mismatches
