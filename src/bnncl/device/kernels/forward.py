"""One C call per frozen forward pass: the stem epilogue and the whole binary block loop (``csrc/forward.c``).

:class:`ForwardPlan` holds the C plan of one network: weights pre-packed in both kernel layouts,
padded scale/bias tables, and scratch (two activation buffers, two packed-input buffers in the
layout their consumer reads, per-thread im2col rows) that grows to the largest batch seen and is
then reused.  :meth:`ForwardPlan.run` does, per stage, the same float32 operations in the same order
as the per-layer path (:class:`~bnncl.device.kernels.prepacked.PackedBinaryConv` +
:func:`~bnncl.device.kernels.epilogue.block_epilogue`), so its activations and packed signs are
bit-identical to it on every native kernel path.  No NumPy fallback here: on the ``numpy`` path (or
without the C core) the caller runs the per-layer path.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from bnncl.device.bitpack import WORD_DTYPE, words_for
from bnncl.device.kernels import native

_p, _i64, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    return native.bind({
        "bnncl_fwd_new": (_p, [_i64, _p, _p, _p, _i64, _i64, _i64, _i64, _p]),
        "bnncl_fwd_free": (None, [_p]),
        "bnncl_fwd_run": (_int, [_p, _p, _i64, _i64, _int, _p, _p, _int, _int]),
    }, "ForwardPlan", required=False)


def available() -> bool:
    """Whether the C core has the one-call forward."""
    return _lib() is not None


def _f32(a: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
    return a


def _addresses(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([a.ctypes.data for a in arrays], dtype=np.uintp)


class ForwardPlan:
    """The frozen forward of one network as a C plan.

    ``stem_shape`` (H, W, C) of the stem output, ``in_channels`` of the uint8 images (H, W, in_channels);
    ``stem_w`` float32 (9 * in_channels, C) in im2col column order; ``stem_vecs`` = (mul (C,),
    addmap (H, W, C), shift_in, slope, shift_out).  Per block: ``weights[i]`` packed (O, 3, 3, words) uint64,
    ``geoms[i]`` = (in_channels, out_channels, stride, in_h, in_w, binary_input), ``vecs[i]`` = (scale, bias,
    input_bias, shift_in, slope, shift_out), each (C,) float32 (input_bias of the block's input
    channels, the others of its output channels).  The plan keeps references to the arrays it borrows.
    """

    def __init__(self, stem_shape: tuple[int, int, int], in_channels: int, stem_w: np.ndarray,
                 stem_vecs: Sequence[np.ndarray],
                 weights: Sequence[np.ndarray], geoms: Sequence[Sequence[int]],
                 vecs: Sequence[Sequence[np.ndarray]]) -> None:
        lib = _lib()
        if lib is None:
            raise RuntimeError("ForwardPlan: the C core is not built (or has no one-call forward)")
        if not (len(weights) == len(geoms) == len(vecs)):
            raise ValueError("weights, geoms and vecs: expected one entry per block")
        sh, sw, sc = (int(v) for v in stem_shape)
        ic = int(in_channels)
        mul, addmap, *act = stem_vecs
        self._stem = [_f32(stem_w, (9 * ic, sc), "stem_w"), _f32(mul, (sc,), "stem mul"),
                      _f32(addmap, (sh, sw, sc), "stem addmap")] + [_f32(a, (sc,), "stem act") for a in act]
        keep: list[np.ndarray] = list(self._stem)
        self.out_shapes: list[tuple[int, int, int]] = []
        geom_rows, wptrs, vptrs = [], [], []
        h, w, c = sh, sw, sc
        for i, (wt, g, v) in enumerate(zip(weights, geoms, vecs)):
            cin, o, stride, in_h, in_w, binary_input = (int(x) for x in g)
            if (cin, in_h, in_w) != (c, h, w) or stride not in (1, 2) or o < 1:
                raise ValueError(f"block {i}: geometry {tuple(g)} does not follow the previous stage {(h, w, c)}")
            if o % cin or (stride == 2 and (in_h % 2 or in_w % 2)):
                raise ValueError(f"block {i}: geometry {tuple(g)}: the shortcut needs out_channels a multiple of "
                                 "in_channels and, at stride 2, an even input size")
            wt = np.ascontiguousarray(wt)
            if wt.dtype != WORD_DTYPE or wt.shape != (o, 3, 3, words_for(cin)):
                raise ValueError(f"block {i}: weights: expected uint64 {(o, 3, 3, words_for(cin))}")
            scale, bias, input_bias, *block_act = v
            arrs = [_f32(scale, (o,), "scale"), _f32(bias, (o,), "bias"), _f32(input_bias, (cin,), "input_bias")] + \
                [_f32(a, (o,), "act") for a in block_act]
            keep += [wt, *arrs]
            geom_rows.append((cin, o, stride, in_h, in_w, int(bool(binary_input))))
            wptrs.append(wt)
            vptrs += arrs
            h, w, c = (in_h + 2 - 3) // stride + 1, (in_w + 2 - 3) // stride + 1, o
            self.out_shapes.append((h, w, c))
        self.stem_shape = (sh, sw, sc)
        self.image_shape = (sh, sw, ic)
        self.nblocks = len(weights)
        geom = np.asarray(geom_rows, dtype=np.int64).reshape(-1, 6)
        wa, va, sa = _addresses(wptrs), _addresses(vptrs), _addresses(self._stem)
        handle = lib.bnncl_fwd_new(self.nblocks, geom.ctypes.data, wa.ctypes.data, va.ctypes.data, sh, sw, sc, ic,
                                   sa.ctypes.data)
        if not handle:
            raise MemoryError("ForwardPlan: out of memory building the plan")
        self._handle = handle
        self._keep = keep
        self._run = lib.bnncl_fwd_run
        self._lock = threading.Lock()  # the scratch is shared; ctypes releases the GIL during the call
        weakref.finalize(self, lib.bnncl_fwd_free, handle)

    def run(self, images: np.ndarray, stop: int, pack_last: bool, threads: int, path: str
            ) -> tuple[np.ndarray, np.ndarray | None]:
        """Stem (:func:`~bnncl.device.kernels.im2col.stem_conv3x3_u8` + its epilogue) on uint8 ``images``
        (N, H, W, C) C-contiguous, and blocks ``0 .. stop - 1``: the activations at split ``stop`` and,
        with ``pack_last``, the packed signs of ``x + input_bias[stop]`` (uint64 (N, H, W, words))."""
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.flags.c_contiguous
                and images.shape[1:] == self.image_shape):
            raise ValueError(
                f"images: expected a C-contiguous uint8 array (N, {', '.join(map(str, self.image_shape))})"
            )
        if not 0 <= stop <= self.nblocks or (pack_last and stop >= self.nblocks):
            raise ValueError(f"stop: expected 0..{self.nblocks} (below {self.nblocks} with pack_last), got {stop}")
        n = images.shape[0]
        x = np.empty((n, *(self.out_shapes[stop - 1] if stop else self.stem_shape)), np.float32)
        bits = None
        if pack_last:
            h, w, c = x.shape[1:]
            bits = np.empty((n, h, w, words_for(c)), WORD_DTYPE)
        with self._lock:
            rc = self._run(self._handle, images.ctypes.data, n, stop, int(pack_last), x.ctypes.data,
                           None if bits is None else bits.ctypes.data, threads, native.PATH_IDS[path])
        native.check(rc, f"ForwardPlan (kernel path {path!r})")
        return x, bits
