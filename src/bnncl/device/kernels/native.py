"""ctypes binding of the C core (``bnncl.device._bnncl_core``).

The extension module is a plain shared library with an empty Python module init; its C
functions are loaded with :class:`ctypes.CDLL`.  Same kernel signatures as
:mod:`bnncl.device.kernels.reference` plus a ``path`` (ISA variant) argument.
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from bnncl.device.bitpack import WORD_DTYPE, words_for
from bnncl.device.kernels.checks import ConvShape

PATH_IDS = {"scalar": 0, "avx2": 1, "avx512": 2, "neon": 3}
_OUT_INT32, _OUT_FLOAT, _OUT_BITS = 0, 1, 2

_p = ctypes.c_void_p
_i64 = ctypes.c_int64
_int = ctypes.c_int


def library_path() -> str | None:
    """File of the built C core, or None when it was not built."""
    try:
        spec = importlib.util.find_spec("bnncl.device._bnncl_core")
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin else None


@lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """The loaded C core with typed entry points, or None when unavailable."""
    path = library_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    lib.bnncl_supported_paths.restype = _int
    lib.bnncl_supported_paths.argtypes = []
    lib.bnncl_gemm.restype = _int
    lib.bnncl_gemm.argtypes = [_p, _p, _i64, _i64, _i64, _i64, _p, _int, _int]
    lib.bnncl_conv2d.restype = _int
    lib.bnncl_conv2d.argtypes = [_p, _i64, _i64, _i64, _i64, _p, _i64, _i64, _i64, _i64, _i64, _i64,
                                 _int, _p, _p, _p, _p, _p, _int, _int]
    lib.bnncl_pack_signs_f32.restype = None
    lib.bnncl_pack_signs_f32.argtypes = [_p, _i64, _i64, _p, _int]
    lib.bnncl_popcnt_probe.restype = _i64
    lib.bnncl_popcnt_probe.argtypes = [_i64, ctypes.POINTER(_int)]
    lib.bnncl_clock_probe.restype = _i64
    lib.bnncl_clock_probe.argtypes = [_i64]
    return lib


def supported_paths() -> list[str]:
    """ISA variants of the C core that this CPU can run (empty without the C core)."""
    return list(_supported())


@lru_cache(maxsize=1)
def _supported() -> tuple[str, ...]:
    lib = load()
    if lib is None:
        return ()
    mask = lib.bnncl_supported_paths()
    return tuple(name for name, bit in PATH_IDS.items() if mask & (1 << bit))


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def bind(signatures: Mapping[str, tuple[object, Sequence[object]]], what: str,
         required: bool = True) -> ctypes.CDLL | None:
    """The C core with the entry points ``name -> (restype, argtypes)`` typed. When the core is not built
    or lacks one of them: a RuntimeError naming ``what``, or None if not ``required`` (the caller falls
    back to NumPy). Callers cache the result."""
    lib = load()
    if lib is None or not all(hasattr(lib, name) for name in signatures):
        if not required:
            return None
        raise RuntimeError(f"{what}: the C core is not built (or is older than this package)")
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, list(argtypes)
    return lib


def check(rc: int, what: str) -> None:
    """Raise for a C core return code: 1 = path not supported, 2 = out of memory, 3 = bad arguments."""
    if rc == 0:
        return
    if rc == 1:
        raise RuntimeError(f"{what}: kernel path not supported by this CPU")
    if rc == 2:
        raise MemoryError(f"{what}: out of memory in the C core")
    if rc == 3:
        raise ValueError(f"{what}: arguments the C core refuses")
    raise RuntimeError(f"{what}: C core error {rc}")


def binary_gemm(a: np.ndarray, b: np.ndarray, k: int, threads: int = 1, path: str = "scalar") -> np.ndarray:
    """``k - 2 * popcount(a[m] XOR b[n])`` as int32 (M, N)."""
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    if out.size:
        rc = load().bnncl_gemm(_ptr(a), _ptr(b), a.shape[0], b.shape[0], a.shape[1], k, _ptr(out),
                               threads, PATH_IDS[path])
        check(rc, "binary_gemm")
    return out


def _conv(x: np.ndarray, w: np.ndarray, s: ConvShape, mode: int, out: np.ndarray, threads: int, path: str,
          scale: np.ndarray | None = None, bias: np.ndarray | None = None,
          thr: np.ndarray | None = None, flip: np.ndarray | None = None) -> np.ndarray:
    rc = load().bnncl_conv2d(
        _ptr(x), s.batch, s.height, s.width, s.words, _ptr(w), s.out_channels, s.kh, s.kw, s.in_channels,
        s.stride, s.padding, mode, _ptr(scale), _ptr(bias), _ptr(thr), _ptr(flip), _ptr(out), threads,
        PATH_IDS[path],
    )
    check(rc, "binary_conv2d")
    return out


def binary_conv2d_int32(x: np.ndarray, w: np.ndarray, s: ConvShape, threads: int = 1,
                        path: str = "scalar") -> np.ndarray:
    """Raw dots as int32 (B, Ho, Wo, O)."""
    out = np.empty((s.batch, *s.out_hw, s.out_channels), dtype=np.int32)
    return _conv(x, w, s, _OUT_INT32, out, threads, path)


def binary_conv2d(x: np.ndarray, w: np.ndarray, s: ConvShape, scale: np.ndarray, bias: np.ndarray,
                  threads: int = 1, path: str = "scalar") -> np.ndarray:
    """``scale[o] * dot + bias[o]`` in float32, shape (B, Ho, Wo, O)."""
    out = np.empty((s.batch, *s.out_hw, s.out_channels), dtype=np.float32)
    return _conv(x, w, s, _OUT_FLOAT, out, threads, path, scale=scale, bias=bias)


def binary_conv2d_packed_out(x: np.ndarray, w: np.ndarray, s: ConvShape, threshold: np.ndarray,
                             flip: np.ndarray, threads: int = 1, path: str = "scalar") -> np.ndarray:
    """Packed output bits (B, Ho, Wo, words_for(O)); see the reference for the meaning."""
    out = np.zeros((s.batch, *s.out_hw, words_for(s.out_channels)), dtype=WORD_DTYPE)
    return _conv(x, w, s, _OUT_BITS, out, threads, path, thr=threshold, flip=flip)


def pack_signs_f32(x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Pack the signs of a C-contiguous float32 array along its last axis."""
    c = x.shape[-1]
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    out = np.empty(x.shape[:-1] + (words_for(c),), dtype=WORD_DTYPE)
    if out.size:
        load().bnncl_pack_signs_f32(_ptr(x), rows, c, _ptr(out), threads)
    return out
