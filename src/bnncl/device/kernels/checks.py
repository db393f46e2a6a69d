"""Argument checks shared by every kernel path: one-line ``ValueError`` naming the argument."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnncl.device.bitpack import WORD_DTYPE, words_for


def packed(name: str, arr: object, ndim: int) -> np.ndarray:
    """``arr`` as a C-contiguous little-endian uint64 array of ``ndim`` dimensions."""
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name}: expected a numpy uint64 array, got {type(arr).__name__}")
    if arr.dtype != np.uint64:
        raise ValueError(f"{name}: expected dtype uint64 (packed bits), got {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=WORD_DTYPE)


def per_channel(name: str, arr: object, channels: int, dtype: np.dtype) -> np.ndarray:
    """A 1-D per-output-channel vector of ``channels`` entries, converted to ``dtype``."""
    a = np.asarray(arr)
    if a.shape != (channels,):
        raise ValueError(f"{name}: expected shape ({channels},) (one per output channel), got {a.shape}")
    if dtype == np.float32 and not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: expected a float array, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


def positive_int(name: str, value: object, minimum: int = 1) -> int:
    """An ``int`` >= ``minimum`` (bool rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def gemm_args(a: object, b: object, k: object) -> tuple[np.ndarray, np.ndarray, int]:
    """Validated ``(a, b, k)`` of :func:`binary_gemm`."""
    a = packed("a_packed", a, 2)
    b = packed("b_packed", b, 2)
    k = positive_int("k", k)
    if a.shape[1] != words_for(k):
        raise ValueError(f"a_packed: expected {words_for(k)} words per row for k={k}, got {a.shape[1]}")
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"b_packed: expected {a.shape[1]} words per row (as a_packed), got {b.shape[1]}")
    return a, b, k


@dataclass(frozen=True)
class ConvShape:
    """Validated geometry of a packed binary convolution."""

    batch: int
    height: int
    width: int
    words: int
    out_channels: int
    kh: int
    kw: int
    in_channels: int
    stride: int
    padding: int

    @property
    def out_hw(self) -> tuple[int, int]:
        """``(Ho, Wo)`` with ``Ho = (H + 2p - KH) // stride + 1``."""
        return (
            (self.height + 2 * self.padding - self.kh) // self.stride + 1,
            (self.width + 2 * self.padding - self.kw) // self.stride + 1,
        )

    @property
    def terms(self) -> int:
        """Number of ±1 products in one output dot (padded taps included)."""
        return self.kh * self.kw * self.in_channels


def conv_args(
    x: object, w: object, in_channels: object, stride: object, padding: object
) -> tuple[np.ndarray, np.ndarray, ConvShape]:
    """Validated packed input, packed weights and geometry of a binary convolution."""
    x = packed("x_packed", x, 4)
    w = packed("w_packed", w, 4)
    cin = positive_int("in_channels", in_channels)
    stride = positive_int("stride", stride)
    if stride not in (1, 2):
        raise ValueError(f"stride: expected 1 or 2, got {stride}")
    padding = positive_int("padding", padding, minimum=0)
    nw = words_for(cin)
    if x.shape[3] != nw:
        raise ValueError(f"x_packed: expected {nw} words on the last axis for in_channels={cin}, got {x.shape[3]}")
    if w.shape[3] != nw:
        raise ValueError(f"w_packed: expected {nw} words on the last axis for in_channels={cin}, got {w.shape[3]}")
    shape = ConvShape(x.shape[0], x.shape[1], x.shape[2], nw, w.shape[0], w.shape[1], w.shape[2], cin, stride, padding)
    if shape.out_channels < 1 or shape.kh < 1 or shape.kw < 1:
        raise ValueError(f"w_packed: expected shape (O, KH, KW, words) with O, KH, KW >= 1, got {w.shape}")
    ho, wo = shape.out_hw
    if ho < 1 or wo < 1:
        raise ValueError(
            f"x_packed: image {shape.height}x{shape.width} with padding {padding} is smaller than the "
            f"{shape.kh}x{shape.kw} kernel"
        )
    return x, w, shape
