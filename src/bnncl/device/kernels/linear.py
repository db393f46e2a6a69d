"""Float32 matrix product in a fixed summation order (C core ``csrc/linear.c`` + NumPy oracle).

``matmul(a, b)[i, j]`` adds the float32 products ``a[i, t] * b[t, j]`` one by one for t = 0, 1, ...,
starting from +0, with no fused multiply-add. Every kernel path and the oracle give the same bits, and
row ``i`` of the result depends on row ``i`` of ``a`` only: the result is the same whatever the batch
size, the thread count, the NumPy/BLAS version. ``a @ b`` through BLAS promises none of that. The heads
of the frozen engine and of the device tail (forward and gradients) use it.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np

from bnncl.device.kernels import native
from bnncl.device.kernels.dispatch import active_path

_p, _i64, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {"bnncl_matmul_f32": (_int, [_p, _p, _i64, _i64, _i64, _p, _int])}


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    return native.bind(_SIGNATURES, "matmul", required=False)


def reference_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The NumPy oracle: one float32 multiply-then-add per ``t``, in increasing ``t``."""
    out = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    for t in range(a.shape[1]):
        out += a[:, t : t + 1] * b[t]
    return out


def matmul(a: np.ndarray, b: np.ndarray, path: str | None = None) -> np.ndarray:
    """``a @ b`` for float32 ``a`` (N, K) and ``b`` (K, M), summed over K in order (see the module)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: expected (N, K) and (K, M) arrays, got {a.shape} and {b.shape}")
    path = path or active_path()
    lib = None if path == "numpy" else _lib()
    if lib is None:
        return reference_matmul(a, b)
    n, k = a.shape
    m = b.shape[1]
    out = np.empty((n, m), dtype=np.float32)
    native.check(lib.bnncl_matmul_f32(a.ctypes.data, b.ctypes.data, n, k, m, out.ctypes.data,
                                      native.PATH_IDS[path]), "matmul")
    return out
