"""A binary convolution whose weights are laid out for the C core's kernels once.

:func:`bnncl.device.kernels.binary_conv2d` rebuilds the weight panels on every call (about 10 us,
most of a batch-1 call on small maps).  :class:`PackedBinaryConv` builds them once (the panels of the
im2col kernels and, for ``in_channels % 32 == 0``, the layout of the AVX-512 direct kernel) and then
calls ``bnncl_conv2d_prepacked``; on the ``numpy`` path (or without the C core) it calls
:func:`binary_conv2d`.  Same output as :func:`binary_conv2d` on every path.
"""

from __future__ import annotations

import ctypes
import weakref
from functools import lru_cache

import numpy as np

from bnncl.device import kernels
from bnncl.device.bitpack import WORD_DTYPE
from bnncl.device.kernels import checks, native
from bnncl.device.kernels.dispatch import active_path


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    return native.bind({
        "bnncl_weights_prepack": (p, [p, i64, i64, i64, i64]),
        "bnncl_weights_free": (None, [p]),
        "bnncl_conv2d_prepacked": (c_int, [p, i64, i64, i64, i64, p, i64, i64, i64, i64, i64, i64, c_int,
                                           p, p, p, p, p, c_int, c_int]),
    }, "PackedBinaryConv", required=False)


@lru_cache(maxsize=1)
def _fast_call():
    """The extension module's ``conv2d_prepacked`` (the same C call without ctypes' per-argument
    conversion: about 3 us less per call), or None (older build, or no C core)."""
    if _lib() is None:
        return None
    try:
        from bnncl.device import _bnncl_core
    except ImportError:
        return None
    return getattr(_bnncl_core, "conv2d_prepacked", None)


class PackedBinaryConv:
    """Binary conv (packed weights (O, KH, KW, words)) with the fused ``scale * dot + bias`` output,
    float32 (B, Ho, Wo, O); arguments validated once, here."""

    def __init__(self, w_packed: np.ndarray, in_channels: int, stride: int, padding: int,
                 scale: np.ndarray, bias: np.ndarray) -> None:
        w = checks.packed("w_packed", w_packed, 4)
        probe = np.zeros((1, w.shape[1] + 2 * padding, w.shape[2] + 2 * padding, w.shape[3]), WORD_DTYPE)
        _, w, shape = checks.conv_args(probe, w, in_channels, stride, padding)
        self.w, self.in_channels, self.stride, self.padding = w, shape.in_channels, shape.stride, shape.padding
        self.out_channels, self.kh, self.kw, self.words = shape.out_channels, shape.kh, shape.kw, shape.words
        self.scale = checks.per_channel("scale", scale, self.out_channels, np.float32)
        self.bias = checks.per_channel("bias", bias, self.out_channels, np.float32)
        self._panels: int | None = None
        # fixed call arguments, converted once (a batch-1 call on a small map is a few us of work)
        self._scale_p, self._bias_p = self.scale.ctypes.data, self.bias.ctypes.data
        lib = _lib()
        if lib is not None:
            handle = lib.bnncl_weights_prepack(w.ctypes.data, self.out_channels, self.kh, self.kw, self.in_channels)
            if not handle:
                raise MemoryError("PackedBinaryConv: out of memory packing the weight panels")
            self._panels = handle
            weakref.finalize(self, lib.bnncl_weights_free, handle)

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """Output size for an ``h x w`` input."""
        return ((h + 2 * self.padding - self.kh) // self.stride + 1,
                (w + 2 * self.padding - self.kw) // self.stride + 1)

    def __call__(self, x_packed: np.ndarray, threads: int = 1) -> np.ndarray:
        """float32 (B, Ho, Wo, O) of ``scale[o] * dot + bias[o]`` for packed input (B, H, W, words)."""
        path = active_path()
        if self._panels is None or path == "numpy":
            return kernels.binary_conv2d(x_packed, self.w, self.in_channels, self.stride, self.padding,
                                         self.scale, self.bias, threads)
        if not (isinstance(x_packed, np.ndarray) and x_packed.dtype == np.uint64 and x_packed.ndim == 4
                and x_packed.shape[3] == self.words):
            raise ValueError(f"x_packed: expected a uint64 array (B, H, W, {self.words})")
        x = np.ascontiguousarray(x_packed)
        b, h, w, _ = x.shape
        ho = (h + 2 * self.padding - self.kh) // self.stride + 1  # (out_hw, inlined: this is the hot path)
        wo = (w + 2 * self.padding - self.kw) // self.stride + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"x_packed: image {h}x{w} is smaller than the {self.kh}x{self.kw} kernel")
        if type(threads) is not int or threads < 1:
            threads = checks.positive_int("threads", threads)
        out = np.empty((b, ho, wo, self.out_channels), np.float32)
        fast = _fast_call()
        if out.size and fast is not None:
            rc = fast(self._panels, x, out, b, h, w, self.words, self.out_channels, self.kh, self.kw, self.in_channels,
                      self.stride, self.padding, self._scale_p, self._bias_p, threads, native.PATH_IDS[path])
            if rc:
                native.check(rc, "PackedBinaryConv")
        elif out.size:
            rc = _lib().bnncl_conv2d_prepacked(
                x.ctypes.data, b, h, w, self.words, self._panels, self.out_channels, self.kh, self.kw,
                self.in_channels, self.stride, self.padding, 1, self._scale_p, self._bias_p,
                None, None, out.ctypes.data, threads, native.PATH_IDS[path])
            native.check(rc, "PackedBinaryConv")
        return out
