"""Fused block epilogue of the frozen engine: affine, shortcut, RPReLU and the next sign-pack in one pass.

:func:`block_epilogue` runs the C core (``csrc/epilogue.c``) on every native path and the NumPy
reference :func:`reference_block_epilogue` on the ``numpy`` path (or without the C core); both do
the same float32 operations in the same order, so their outputs are identical.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np

from bnncl.device.bitpack import WORD_DTYPE, pack_signs, words_for
from bnncl.device.kernels import native
from bnncl.device.kernels.dispatch import active_path


def shortcut(x: np.ndarray, stride: int, repeat: int) -> np.ndarray:
    """Parameter-free shortcut on NHWC: 2x2 average pooling (stride 2), channels repeated."""
    if stride == 2:
        x = ((x[:, 0::2, 0::2] + x[:, 0::2, 1::2]) + (x[:, 1::2, 0::2] + x[:, 1::2, 1::2])) * np.float32(0.25)
    if repeat > 1:
        x = np.concatenate([x] * repeat, axis=-1)
    return x


def reference_block_epilogue(y: np.ndarray, act: tuple[np.ndarray, np.ndarray, np.ndarray],
                             mul: np.ndarray | None = None, addmap: np.ndarray | None = None,
                             src: np.ndarray | None = None, stride: int = 1, src_bias: np.ndarray | None = None,
                             next_bias: np.ndarray | None = None) -> np.ndarray | None:
    """NumPy oracle of :func:`block_epilogue` (same arguments, same in-place result)."""
    if mul is not None:
        np.multiply(y, mul, out=y)
        np.add(y, addmap, out=y)
    if src is not None:
        s = src if src_bias is None else np.where(src + src_bias < 0, np.float32(-1), np.float32(1))
        y += shortcut(s, stride, y.shape[-1] // src.shape[-1])
    shift_in, slope, shift_out = act
    np.subtract(y, shift_in, out=y)
    np.multiply(y, slope, out=y, where=y < 0)
    np.add(y, shift_out, out=y)
    return None if next_bias is None else pack_signs(y + next_bias)


def native_epilogue() -> ctypes._CFuncPtr | None:
    """The C ``bnncl_block_epilogue`` (raw pointers, no checks; argument order as in ``csrc/epilogue.c``;
    last argument 1 = use the AVX-512 row when the CPU has it), or None without the C core."""
    return _fn()


@lru_cache(maxsize=1)
def _fn() -> ctypes._CFuncPtr | None:
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib = native.bind({"bnncl_block_epilogue": (None, [p, i64, i64, i64, i64, p, p, p, i64, i64, i64, i64,
                                                       p, p, p, p, p, p, c_int, c_int])},
                      "block_epilogue", required=False)
    return None if lib is None else lib.bnncl_block_epilogue


def _f32(name: str, a: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if a is None:
        return None
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
    return a


def block_epilogue(y: np.ndarray, act: tuple[np.ndarray, np.ndarray, np.ndarray],
                   mul: np.ndarray | None = None, addmap: np.ndarray | None = None,
                   src: np.ndarray | None = None, stride: int = 1, src_bias: np.ndarray | None = None,
                   next_bias: np.ndarray | None = None, threads: int = 1) -> np.ndarray | None:
    """In place on ``y`` float32 (N, Ho, Wo, O), C-contiguous:

    ``y = y * mul + addmap`` (when ``mul`` is given; ``addmap`` (Ho, Wo, O)); ``y += shortcut(s)``
    with ``s = src`` (N, H, W, I) or ``sign(src + src_bias)`` (2x2 average pool when ``stride`` is 2,
    channels repeated ``O / I`` times); ``y = PReLU(y - shift_in) + shift_out`` with
    ``act = (shift_in, slope, shift_out)``.  Returns the packed signs of ``y + next_bias``
    (uint64 (N, Ho, Wo, words)) when ``next_bias`` is given, else None.
    """
    if not (isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 4 and y.flags.c_contiguous):
        raise ValueError("y: expected a C-contiguous float32 array (N, Ho, Wo, O)")
    n, ho, wo, o = y.shape
    act = tuple(_f32(k, a, (o,)) for k, a in zip(("shift_in", "slope", "shift_out"), act))
    mul = _f32("mul", mul, (o,))
    if (mul is None) != (addmap is None):
        raise ValueError("mul and addmap: give both or neither")
    addmap = _f32("addmap", addmap, (ho, wo, o))
    h = w = cin = 0
    if src is not None:
        src = np.ascontiguousarray(src, dtype=np.float32)
        if src.ndim != 4 or src.shape[0] != n or o % src.shape[3] or stride not in (1, 2) \
                or src.shape[1] != ho * stride or src.shape[2] != wo * stride:
            raise ValueError(f"src: shape {src.shape} does not fit output {y.shape} with stride {stride}")
        _, h, w, cin = src.shape
        src_bias = _f32("src_bias", src_bias, (cin,))
    next_bias = _f32("next_bias", next_bias, (o,))
    fn, path = _fn(), active_path()
    if fn is None or path == "numpy":
        return reference_block_epilogue(y, act, mul, addmap, src, stride, src_bias, next_bias)
    bits = None if next_bias is None else np.empty((n, ho, wo, words_for(o)), WORD_DTYPE)
    ptr = lambda a: None if a is None else a.ctypes.data  # noqa: E731
    fn(ptr(y), n, ho, wo, o, ptr(mul), ptr(addmap), ptr(src), h, w, cin, stride, ptr(src_bias),
       ptr(act[0]), ptr(act[1]), ptr(act[2]), ptr(next_bias), ptr(bits), int(threads), int(path == "avx512"))
    return bits
