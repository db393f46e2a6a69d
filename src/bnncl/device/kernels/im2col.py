"""The real-valued 3x3 stem conv of uint8 images (stride 1, zero padding 1).

* :func:`im2col3x3_u8`: the patch matrix (for a GEMM);
* :func:`stem_conv3x3_u8`: the conv itself with a fixed summation order (the taps in im2col column
  order, float32 multiply then add, no FMA), so every path gives the same float32 result:
  batch-independent, unlike a BLAS GEMM.

C core (``csrc/im2col_u8.c``) on native paths, NumPy on the ``numpy`` path; identical output.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np

from bnncl.device.kernels import native
from bnncl.device.kernels.dispatch import active_path


def reference_im2col3x3(x: np.ndarray, dtype: np.typing.DTypeLike = np.float32) -> np.ndarray:
    """NumPy oracle: (N, H, W, C) -> (N*H*W, 9*C) patches, column order (ky, kx, c), zero padding."""
    n, h, w, c = x.shape
    xp = np.zeros((n, h + 2, w + 2, c), x.dtype)
    xp[:, 1:-1, 1:-1] = x
    cols = np.empty((n, h, w, 3, 3, c), dtype)
    for ky in range(3):
        for kx in range(3):
            cols[:, :, :, ky, kx, :] = xp[:, ky:ky + h, kx:kx + w, :]
    return cols.reshape(n * h * w, 9 * c)


def reference_stem_conv3x3(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """NumPy oracle of :func:`stem_conv3x3_u8`: uint8 (N, H, W, C), float32 (9*C, O) -> float32 (N, H, W, O),
    ``(((0 + x_0 * w_0) + x_1 * w_1) + ...)`` over the taps in column order (ky, kx, c)."""
    n, h, wd, c = x.shape
    xp = np.zeros((n, h + 2, wd + 2, c), np.float32)
    xp[:, 1:-1, 1:-1] = x
    w = np.asarray(w, np.float32)
    acc = np.zeros((n, h, wd, w.shape[1]), np.float32)
    for ky in range(3):
        for kx in range(3):
            for ci in range(c):
                k = (ky * 3 + kx) * c + ci
                acc += xp[:, ky:ky + h, kx:kx + wd, ci, None] * w[k]
    return acc


@lru_cache(maxsize=1)
def _stem_fn() -> ctypes._CFuncPtr | None:
    i64, p, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib = native.bind({"bnncl_stem_conv3x3_u8": (c_int, [p, i64, i64, i64, i64, p, i64, p, c_int, c_int])},
                      "stem_conv3x3_u8", required=False)
    return None if lib is None else lib.bnncl_stem_conv3x3_u8


def stem_conv3x3_u8(x: np.ndarray, w: np.ndarray, threads: int = 1) -> np.ndarray:
    """uint8 (N, H, W, C) C-contiguous, float32 weights (9*C, O) in im2col column order -> float32
    (N, H, W, O), the same on every path (see :func:`reference_stem_conv3x3`)."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4):
        raise ValueError("x: expected a uint8 array (N, H, W, C)")
    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim != 2 or w.shape[0] != 9 * x.shape[3]:
        raise ValueError(f"w: expected float32 (9*C, O) = ({9 * x.shape[3]}, O), got {w.shape}")
    fn, path = _stem_fn(), active_path()
    if fn is None or path == "numpy":
        return reference_stem_conv3x3(x, w)
    x = np.ascontiguousarray(x)
    n, h, wd, c = x.shape
    out = np.empty((n, h, wd, w.shape[1]), np.float32)
    if out.size:
        native.check(fn(x.ctypes.data, n, h, wd, c, w.ctypes.data, w.shape[1], out.ctypes.data, int(threads),
                        native.PATH_IDS[path]), "stem_conv3x3_u8")
    return out


@lru_cache(maxsize=1)
def _fn() -> ctypes._CFuncPtr | None:
    i64, p = ctypes.c_int64, ctypes.c_void_p
    lib = native.bind({"bnncl_im2col3x3_u8": (None, [p, i64, i64, i64, i64, p, ctypes.c_int])}, "im2col3x3_u8",
                      required=False)
    return None if lib is None else lib.bnncl_im2col3x3_u8


def im2col3x3_u8(x: np.ndarray, threads: int = 1) -> np.ndarray:
    """uint8 (N, H, W, C) C-contiguous -> float32 (N*H*W, 9*C) patches (see :func:`reference_im2col3x3`)."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4):
        raise ValueError("x: expected a uint8 array (N, H, W, C)")
    fn = _fn()
    if fn is None or active_path() == "numpy":
        return reference_im2col3x3(x)
    x = np.ascontiguousarray(x)
    n, h, w, c = x.shape
    cols = np.empty((n * h * w, 9 * c), np.float32)
    if cols.size:
        fn(x.ctypes.data, n, h, w, c, cols.ctypes.data, int(threads))
    return cols
