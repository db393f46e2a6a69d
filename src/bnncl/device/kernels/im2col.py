"""im2col of uint8 images for the real-valued 3x3 stem conv (stride 1, zero padding 1).

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


@lru_cache(maxsize=1)
def _fn() -> ctypes._CFuncPtr | None:
    lib = native.load()
    if lib is None or not hasattr(lib, "bnncl_im2col3x3_u8"):
        return None
    f = lib.bnncl_im2col3x3_u8
    f.restype = None
    i64 = ctypes.c_int64
    f.argtypes = [ctypes.c_void_p, i64, i64, i64, i64, ctypes.c_void_p, ctypes.c_int]
    return f


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
