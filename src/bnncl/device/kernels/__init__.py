"""Binary (XNOR-popcount) kernels: GEMM and 2-D convolution on packed ±1 tensors.

Every kernel has a NumPy oracle (:mod:`.reference`) and a C implementation (:mod:`.native`,
ISA variants chosen at run time); :mod:`.dispatch` picks the path.  Inputs follow the bit
convention of :mod:`bnncl.device.bitpack`.  Convolution padding: out-of-image taps are +1
(all-zero words) and each dot counts all ``KH*KW*in_channels`` terms.
"""

from __future__ import annotations

import numpy as np

from bnncl.device.kernels import checks, native, reference
from bnncl.device.kernels.dispatch import (
    KernelPathError,
    active_path,
    available_paths,
    kernel_path,
    set_kernel_path,
)
from bnncl.device.kernels.thresholds import threshold_from_affine

__all__ = [
    "KernelPathError",
    "active_path",
    "available_paths",
    "binary_conv2d",
    "binary_conv2d_int32",
    "binary_conv2d_packed_out",
    "binary_gemm",
    "kernel_path",
    "pack_signs_f32",
    "set_kernel_path",
    "threshold_from_affine",
]


def _threads(threads: object) -> int:
    return checks.positive_int("threads", threads)


def binary_gemm(a_packed: np.ndarray, b_packed: np.ndarray, k: int, threads: int = 1) -> np.ndarray:
    """Binary GEMM: int32 (M, N) of ``k - 2 * popcount(a[m] XOR b[n])``; a (M, W), b (N, W) uint64."""
    a, b, k = checks.gemm_args(a_packed, b_packed, k)
    threads = _threads(threads)
    path = active_path()
    if path == "numpy":
        return reference.binary_gemm(a, b, k)
    return native.binary_gemm(a, b, k, threads, path)


def binary_conv2d_int32(x_packed: np.ndarray, w_packed: np.ndarray, in_channels: int, stride: int = 1,
                        padding: int = 0, threads: int = 1) -> np.ndarray:
    """Raw binary convolution dots, int32 (B, Ho, Wo, O); x (B, H, W, Wc), w (O, KH, KW, Wc) uint64."""
    x, w, s = checks.conv_args(x_packed, w_packed, in_channels, stride, padding)
    threads = _threads(threads)
    path = active_path()
    if path == "numpy":
        return reference.binary_conv2d_int32(x, w, s)
    return native.binary_conv2d_int32(x, w, s, threads, path)


def binary_conv2d(x_packed: np.ndarray, w_packed: np.ndarray, in_channels: int, stride: int, padding: int,
                  scale: np.ndarray, bias: np.ndarray, threads: int = 1) -> np.ndarray:
    """Binary convolution with a fused per-channel affine: float32 (B, Ho, Wo, O) of
    ``scale[o] * dot + bias[o]`` (float32 multiply, then add)."""
    x, w, s = checks.conv_args(x_packed, w_packed, in_channels, stride, padding)
    scale = checks.per_channel("scale", scale, s.out_channels, np.float32)
    bias = checks.per_channel("bias", bias, s.out_channels, np.float32)
    threads = _threads(threads)
    path = active_path()
    if path == "numpy":
        return reference.binary_conv2d(x, w, s, scale, bias)
    return native.binary_conv2d(x, w, s, scale, bias, threads, path)


def binary_conv2d_packed_out(x_packed: np.ndarray, w_packed: np.ndarray, in_channels: int, stride: int,
                             padding: int, threshold: np.ndarray, flip: np.ndarray,
                             threads: int = 1) -> np.ndarray:
    """Binary convolution whose output is packed signs, uint64 (B, Ho, Wo, words_for(O)).

    Output bit of channel ``o`` is 1 (meaning -1) iff ``dot < threshold[o]`` when ``flip[o]`` is
    0, or ``dot > threshold[o]`` when ``flip[o]`` is 1 (comparisons exact, dot an integer);
    padding bits are 0.  :func:`threshold_from_affine` turns a fused ``scale*dot + bias`` into
    ``(threshold, flip)`` so that bit = ``scale*dot + bias < 0`` exactly as
    :func:`binary_conv2d` computes it.
    """
    x, w, s = checks.conv_args(x_packed, w_packed, in_channels, stride, padding)
    threshold = checks.per_channel("threshold", threshold, s.out_channels, np.float32)
    flip_arr = np.asarray(flip)
    if flip_arr.dtype != np.bool_ and not np.issubdtype(flip_arr.dtype, np.integer):
        raise ValueError(f"flip: expected a bool or uint8 array, got dtype {flip_arr.dtype}")
    flip_u8 = checks.per_channel("flip", flip_arr != 0, s.out_channels, np.uint8)
    threads = _threads(threads)
    path = active_path()
    if path == "numpy":
        return reference.binary_conv2d_packed_out(x, w, s, threshold, flip_u8)
    return native.binary_conv2d_packed_out(x, w, s, threshold, flip_u8, threads, path)


def pack_signs_f32(x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Fast :func:`bitpack.pack_signs` for float32 input (C core when available), same output."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise ValueError(f"x: expected dtype float32, got {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"x: expected at least 1 dimension, got shape {x.shape}")
    threads = _threads(threads)
    if active_path() == "numpy":
        return reference.pack_signs_f32(x)
    return native.pack_signs_f32(np.ascontiguousarray(x), threads)
