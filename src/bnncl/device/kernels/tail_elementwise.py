"""Fused element-wise passes of the device tail (C core ``csrc/tail_elementwise.c`` + NumPy oracles).

One binary block of :mod:`bnncl.device.tail` is, around its conv and the backward kernels of
:mod:`bnncl.device.kernels.tailgrad`, a chain of float32 element-wise operations. Each function here is
that chain as one pass (C) or as the NumPy oracle (``path="numpy"``), with the same float32 operations
in the same order, so every path agrees bit for bit (``tests/device/test_tail_elementwise.py``):

* :func:`fwd_input`: ``x <- Q_f(x)`` in place, ``t = x + b`` (or ``x``), sign bits of ``t`` (the conv
  operand) and the clipped-STE bits ``|t| <= 1``;
* :func:`fwd_out`: int32 dots -> ``out = RPReLU((dot * s) * a + c + shortcut)`` (2x2 average
  ``((x00 + x01) + x10) + x11`` times 1/4, channels tiled), the RPReLU bits ``pre > 0``, min/max;
* :func:`gap`: pooled features of ``Q_f(x)``, summed over H*W in order, divided by H*W;
* :func:`bwd_v`: ``v = dz * a``, ``dz = d`` or ``d * slope`` by the RPReLU bits, ``d = Q_b(dout)``
  (optionally one vector per image broadcast over H*W); min/max;
* :func:`bwd_codes`: the ``q_b`` codes of ``v`` tile-major for :func:`tailgrad.wgrad_minus_tiled`,
  their column sums, and the input-gradient operand ``(code / s + lo) * scale`` transposed
  (the layout :func:`tailgrad.dgrad` reads);
* :func:`weight_g`: the conv's weight gradient ``G = lo * (P - 2 ones) + (colsum - 2 S) / s`` (float64,
  then float32) from the exact integer sums of :func:`tailgrad.wgrad_minus_tiled`;
* :func:`latent_grad`: ``dW = mean|W| G + (sum_k sign(W) G) / K sgn(W)`` (the C pass sums each row in
  NumPy's own pairwise order, so it equals the NumPy expression bit for bit);
* :func:`bwd_dx`: ``dx = (dxb + dxs) * ste`` (binary shortcut input) or ``dxb * ste + dxs``, ``dxs`` the
  shortcut adjoint of ``dz`` (copies summed in order, 2x2 pool: a quarter each); min/max.
* :func:`softmax_exp`: the exp of the head's softmax as the C core (and libbnncl) computes it, the same bits
  on every target (C only: the one copy of the algorithm is ``bnncl_softmax_expf``; NumPy's own exp is up to 3
  ULP apart and differs between CPUs).

``Q`` is docs/design.md §1.5's quantizer with the tensor's own min/max (:class:`QParams`); bit maps are
packed like :mod:`bnncl.device.bitpack` (uint64 words along channels, bit 1 = set).
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from bnncl.device.kernels import native
from bnncl.device.quantize import FLOAT_BITS, grid_scale

LANES = 16
_p, _i64, _int, _f = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float

_SIGNATURES = {
    "bnncl_tail_minmax": (_int, [_p, _i64, _p, _int]),
    "bnncl_tail_fwd_input": (_int, [_p, _i64, _i64, _int, _f, _f, _p, _p, _p, _int]),
    "bnncl_tail_fwd_out": (_int, [_p, _i64, _i64, _i64, _i64, _p, _p, _i64, _i64, _i64, _i64, _p, _p, _p, _p, _p,
                           _p, _p, _p, _p, _int]),
    "bnncl_tail_gap": (_int, [_p, _i64, _i64, _i64, _int, _f, _f, _p, _int]),
    "bnncl_tail_bwd_v": (_int, [_p, _i64, _int, _f, _f, _p, _p, _i64, _i64, _p, _p, _p, _int]),
    "bnncl_tail_bwd_codes": (_int, [_p, _i64, _i64, _int, _f, _f, _p, _p, _p, _p, _i64, _i64, _int]),
    "bnncl_tail_weight_g": (_int, [_p, _p, _p, _i64, _i64, _i64, _i64, _f, _f, _int, _p, _int]),
    "bnncl_tail_latent_grad": (_int, [_p, _p, _p, _i64, _i64, _p, _int]),
    "bnncl_tail_bwd_dx": (_int, [_p, _p, _i64, _int, _f, _f, _p, _p, _i64, _i64, _i64, _i64, _i64, _i64, _p, _int,
                          _p, _p, _int]),
}


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    return native.bind(_SIGNATURES, "tail kernels")


@lru_cache(maxsize=1)
def _exp_lib() -> ctypes.CDLL:
    return native.bind({"bnncl_softmax_exp_f32": (_int, [_p, _i64, _p])}, "the portable softmax exp")


def softmax_exp(x: np.ndarray) -> np.ndarray:
    """``exp`` of a float32 array by the C core's ``bnncl_softmax_expf`` (a new array of the same shape);
    RuntimeError when the C core is not built."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(a)
    native.check(_exp_lib().bnncl_softmax_exp_f32(a.ctypes.data, a.size, out.ctypes.data), "softmax_exp")
    return out


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


class QParams(NamedTuple):
    """A quantizer ``Q`` fixed by a tensor's range: ``on`` is False where ``Q`` leaves values as they
    are (32 bits, or a constant tensor)."""

    on: bool
    lo: np.float32
    s: np.float32

    @staticmethod
    def of(lo: float, hi: float, bits: int) -> QParams:
        lo, hi = np.float32(lo), np.float32(hi)
        s = None if bits == FLOAT_BITS else grid_scale(lo, hi, bits)
        if s is None:  # 32 bits, a constant tensor, or a range below float32 resolution
            return QParams(False, lo, np.float32(0.0))
        return QParams(True, lo, s)


OFF = QParams(False, np.float32(0.0), np.float32(0.0))


def _q(x: np.ndarray, q: QParams) -> np.ndarray:
    """The oracle quantizer: ``rint((x - lo) * s) / s + lo`` in float32 (as quantize.py)."""
    if not q.on:
        return x
    return np.rint((x - q.lo) * q.s) / q.s + q.lo


def _pack(bits: np.ndarray) -> np.ndarray:
    """bool (..., C) -> (..., ceil(C / 64)) uint64 words, bit i of word j = channel 64 j + i."""
    c = bits.shape[-1]
    nw = (c + 63) // 64
    full = np.zeros(bits.shape[:-1] + (nw * 64,), dtype=bool)
    full[..., :c] = bits
    return np.ascontiguousarray(np.packbits(full, axis=-1, bitorder="little")).view(np.uint64)


def unpack_bits(words: np.ndarray, c: int) -> np.ndarray:
    """Inverse of the packing: (..., words) uint64 -> (..., c) bool."""
    w = np.ascontiguousarray(words).view(np.uint8)
    return np.unpackbits(w, axis=-1, bitorder="little")[..., :c].astype(bool)


def minmax(x: np.ndarray, path: str) -> tuple[np.float32, np.float32]:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if path == "numpy" or x.size == 0:
        return (np.float32(x.min()), np.float32(x.max())) if x.size else (np.float32(0), np.float32(0))
    mm = np.empty(2, dtype=np.float32)
    native.check(_lib().bnncl_tail_minmax(x.ctypes.data, x.size, mm.ctypes.data, native.PATH_IDS[path]), "tail_minmax")
    return mm[0], mm[1]


def fwd_input(x: np.ndarray, q: QParams, bias: np.ndarray | None, want_ste: bool,
              path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` (..., C) float32 C-contiguous, quantized **in place** by ``q``; returns the sign bits of
    ``t = x + bias`` (``x`` when ``bias`` is None) and, if ``want_ste``, the bits ``|t| <= 1``."""
    if not (x.flags.c_contiguous and x.dtype == np.float32 and x.flags.writeable):
        raise ValueError("fwd_input: x must be a writable C-contiguous float32 array")
    c = x.shape[-1]
    if path == "numpy":
        x[...] = _q(x, q)
        t = x if bias is None else x + bias
        return _pack(t < 0), (_pack(np.abs(t) <= 1) if want_ste else None)
    nw = (c + 63) // 64
    packed = np.empty(x.shape[:-1] + (nw,), dtype=np.uint64)
    ste = np.empty_like(packed) if want_ste else None
    b = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    rc = _lib().bnncl_tail_fwd_input(x.ctypes.data, x.size // c, c, int(q.on), q.lo, q.s, _ptr(b), packed.ctypes.data,
                                     _ptr(ste), native.PATH_IDS[path])
    native.check(rc, "tail_fwd_input")
    return packed, ste


def _avgpool2(x: np.ndarray) -> np.ndarray:
    """((x00 + x01) + x10) + x11, times 1/4 (NHWC, even H and W)."""
    return (((x[:, 0::2, 0::2] + x[:, 0::2, 1::2]) + x[:, 1::2, 0::2]) + x[:, 1::2, 1::2]) * np.float32(0.25)


def fwd_out(dot: np.ndarray, xs: np.ndarray | None, xbits: np.ndarray | None, in_shape: tuple[int, ...], stride: int,
            scale: np.ndarray, a: np.ndarray, c: np.ndarray, shift_in: np.ndarray, slope: np.ndarray,
            shift_out: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray, tuple[np.float32, np.float32]]:
    """``dot`` (B, Ho, Wo, O) int32; shortcut source ``xs`` (B, H, W, Cin) float32 or its sign bits
    ``xbits``; returns ``out`` (B, Ho, Wo, O) float32 (not quantized), the RPReLU bits, (min, max)."""
    b, h, w, cin = in_shape
    _, ho, wo, o = dot.shape
    if path == "numpy":
        src = xs if xs is not None else np.where(unpack_bits(xbits, cin), np.float32(-1.0), np.float32(1.0))
        sc = _avgpool2(src) if stride == 2 else src
        if o > cin:
            sc = np.tile(sc, (1, 1, 1, o // cin))
        y = dot.astype(np.float32) * scale
        pre = ((y * a + c) + sc) - shift_in
        pos = pre > 0
        out = np.where(pos, pre, pre * slope) + shift_out
        return out, _pack(pos), (np.float32(out.min()), np.float32(out.max()))
    out = np.empty(dot.shape, dtype=np.float32)
    pos = np.empty((b, ho, wo, (o + 63) // 64), dtype=np.uint64)
    mm = np.empty(2, dtype=np.float32)
    f32 = [np.ascontiguousarray(v, dtype=np.float32) for v in (scale, a, c, shift_in, slope, shift_out)]
    rc = _lib().bnncl_tail_fwd_out(
        np.ascontiguousarray(dot, dtype=np.int32).ctypes.data, b, ho, wo, o,
        _ptr(None if xs is None else np.ascontiguousarray(xs)), _ptr(None if xs is not None else xbits), h, w, cin,
        stride, *[v.ctypes.data for v in f32], out.ctypes.data, pos.ctypes.data, mm.ctypes.data, native.PATH_IDS[path])
    native.check(rc, "tail_fwd_out")
    return out, pos, (mm[0], mm[1])


def gap(x: np.ndarray, q: QParams, path: str) -> np.ndarray:
    """``x`` (B, H, W, C) -> (B, C): ``Q(x)`` summed over H*W in order (from the first), / (H*W)."""
    b, h, w, c = x.shape
    if path == "numpy":
        v = _q(x, q).reshape(b, h * w, c)
        acc = v[:, 0].copy()
        for i in range(1, h * w):
            acc = acc + v[:, i]
        return acc / np.float32(h * w)
    f = np.empty((b, c), dtype=np.float32)
    rc = _lib().bnncl_tail_gap(np.ascontiguousarray(x).ctypes.data, b, h * w, c, int(q.on), q.lo, q.s, f.ctypes.data,
                               native.PATH_IDS[path])
    native.check(rc, "tail_gap")
    return f


def _dout_dense(dout: np.ndarray, bcast: int, q: QParams, npos: int) -> np.ndarray:
    d = _q(dout.reshape(-1, dout.shape[-1]), q)
    return np.repeat(d, bcast, axis=0) if bcast else d.reshape(npos, -1)


def _dz(dout: np.ndarray, bcast: int, q: QParams, pos: np.ndarray, slope: np.ndarray, npos: int) -> np.ndarray:
    o = slope.shape[0]
    d = _dout_dense(dout, bcast, q, npos)
    return np.where(unpack_bits(pos, o).reshape(npos, o), d, d * slope)


def bwd_v(dout: np.ndarray, bcast: int, q: QParams, pos: np.ndarray, slope: np.ndarray, a: np.ndarray,
          path: str) -> tuple[np.ndarray, tuple[np.float32, np.float32]]:
    """``v = dz * a`` (P, O); ``dout`` is (P, O), or (P / bcast, O) broadcast over ``bcast`` positions;
    ``pos`` the RPReLU bits (P, words)."""
    o = slope.shape[0]
    npos = pos.size // pos.shape[-1]
    if path == "numpy":
        v = _dz(dout, bcast, q, pos, slope, npos) * a
        return v, (np.float32(v.min()), np.float32(v.max()))
    v = np.empty((npos, o), dtype=np.float32)
    mm = np.empty(2, dtype=np.float32)
    rc = _lib().bnncl_tail_bwd_v(np.ascontiguousarray(dout, dtype=np.float32).ctypes.data, bcast, int(q.on), q.lo, q.s,
                                 np.ascontiguousarray(pos).ctypes.data,
                                 np.ascontiguousarray(slope, dtype=np.float32).ctypes.data, npos, o,
                                 np.ascontiguousarray(a, dtype=np.float32).ctypes.data, v.ctypes.data, mm.ctypes.data,
                                 native.PATH_IDS[path])
    native.check(rc, "tail_bwd_v")
    return v, (mm[0], mm[1])


def bwd_codes(v: np.ndarray, lo: np.float32, hi: np.float32, bits: int, scale: np.ndarray, want_dt: bool,
              path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``v`` (P, O) -> codes (ceil(O / 16), P, 16) int32 (lanes past O zero), their column sums (O,)
    int64 and, if ``want_dt``, the operand (8 * ceil(O / 8), P rounded up to 16) float32 of
    ``(code / s + lo) * scale[o]`` transposed, zero padded (``lo * scale`` for a constant ``v``)."""
    npos, o = v.shape
    lo, hi = np.float32(lo), np.float32(hi)
    grid = grid_scale(lo, hi, bits)
    constant = grid is None  # constant, or a range below float32 resolution: every code 0
    s = np.float32(0.0) if constant else grid
    ntiles = (o + LANES - 1) // LANES
    dt_rows, dt_cols = o + (-o) % 8, npos + (-npos) % LANES
    if path == "numpy":
        codes = np.zeros((npos, o), dtype=np.float32) if constant else np.rint((v - lo) * s)
        ci = codes.astype(np.int64)
        full = np.zeros((npos, ntiles * LANES), dtype=np.int32)
        full[:, :o] = ci
        ctile = np.ascontiguousarray(full.reshape(npos, ntiles, LANES).transpose(1, 0, 2))
        dt = None
        if want_dt:
            dy = np.full((npos, o), lo, dtype=np.float32) if constant else codes / s + lo
            dt = np.zeros((dt_rows, dt_cols), dtype=np.float32)
            dt[:o, :npos] = (dy * scale).T
        return ctile, ci.sum(axis=0), dt
    ctile = np.empty((ntiles, npos, LANES), dtype=np.int32)
    colsum = np.empty(o, dtype=np.int64)
    dt = np.empty((dt_rows, dt_cols), dtype=np.float32) if want_dt else None
    rc = _lib().bnncl_tail_bwd_codes(np.ascontiguousarray(v, dtype=np.float32).ctypes.data, npos, o, int(constant), lo,
                                     s, ctile.ctypes.data, colsum.ctypes.data,
                                     np.ascontiguousarray(scale, dtype=np.float32).ctypes.data, _ptr(dt), dt_rows,
                                     dt_cols, native.PATH_IDS[path])
    native.check(rc, "tail_bwd_codes")
    return ctile, colsum, dt


def bwd_dx(dxb: np.ndarray, dout: np.ndarray, bcast: int, q: QParams, pos: np.ndarray, slope: np.ndarray,
           stride: int, ste: np.ndarray, binary_input: bool,
           path: str) -> tuple[np.ndarray, tuple[np.float32, np.float32]]:
    """``dxb`` (B, H, W, Cin) the gradient through the conv; ``dz`` recomputed as in :func:`bwd_v`;
    returns the block's input gradient (not quantized) and its (min, max)."""
    b, h, w, cin = dxb.shape
    o = slope.shape[0]
    npos = pos.size // pos.shape[-1]
    if path == "numpy":
        dz = _dz(dout, bcast, q, pos, slope, npos)
        ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
        dz = dz.reshape(b, ho, wo, o)
        s = dz[..., :cin]
        for r in range(1, o // cin):
            s = s + dz[..., r * cin : (r + 1) * cin]
        if stride == 2:
            s = np.repeat(np.repeat(s * np.float32(0.25), 2, axis=1), 2, axis=2)
        m = unpack_bits(ste, cin).astype(np.float32)
        dx = (dxb + s) * m if binary_input else dxb * m + s
        return dx, (np.float32(dx.min()), np.float32(dx.max()))
    dx = np.empty((b, h, w, cin), dtype=np.float32)
    mm = np.empty(2, dtype=np.float32)
    rc = _lib().bnncl_tail_bwd_dx(np.ascontiguousarray(dxb, dtype=np.float32).ctypes.data,
                                  np.ascontiguousarray(dout, dtype=np.float32).ctypes.data, bcast, int(q.on), q.lo,
                                  q.s, np.ascontiguousarray(pos).ctypes.data,
                                  np.ascontiguousarray(slope, dtype=np.float32).ctypes.data, b, h, w, cin, o, stride,
                                  np.ascontiguousarray(ste).ctypes.data, int(binary_input), dx.ctypes.data,
                                  mm.ctypes.data, native.PATH_IDS[path])
    native.check(rc, "tail_bwd_dx")
    return dx, (mm[0], mm[1])


def weight_g(s_minus: np.ndarray, ones: np.ndarray, colsum: np.ndarray, npos: int, cin: int, lo: np.float32,
             s: np.float32, constant: bool, path: str) -> np.ndarray:
    """The conv's weight gradient ``G`` (O, 9 cin) float32 from the weight-gradient kernel's integer sums:
    ``s_minus`` (9 nb, O) int64, ``ones`` (9 nb,), ``colsum`` (O,) (``nb`` bits per tap >= ``cin``);
    ``G = lo * (P - 2 ones) + (colsum - 2 s_minus) / s`` in float64, rounded once to float32."""
    o = colsum.shape[0]
    nb = ones.shape[0] // 9
    k = 9 * cin
    if path == "numpy":
        total = (colsum[None, :] - 2 * s_minus).reshape(9, nb, o)[:, :cin].reshape(k, o)
        os_ = (npos - 2 * ones).reshape(9, nb)[:, :cin].reshape(k)
        gd = np.float64(lo) * os_[:, None]
        if not constant:
            gd = gd + total / np.float64(s)
        return np.ascontiguousarray(np.broadcast_to(gd.astype(np.float32), (k, o)).T)
    g = np.empty((o, k), dtype=np.float32)
    rc = _lib().bnncl_tail_weight_g(np.ascontiguousarray(s_minus, dtype=np.int64).ctypes.data,
                                    np.ascontiguousarray(ones, dtype=np.int64).ctypes.data,
                                    np.ascontiguousarray(colsum, dtype=np.int64).ctypes.data, npos, cin, nb, o,
                                    np.float32(lo), np.float32(s), int(constant), g.ctypes.data, native.PATH_IDS[path])
    native.check(rc, "tail_weight_g")
    return g


def latent_grad(g: np.ndarray, w: np.ndarray, wscale: np.ndarray, path: str) -> np.ndarray:
    """``g`` (O, K) float32 C-contiguous, ``w`` (O, K) latent weights, ``wscale`` (O,) mean|W| ->
    ``dW = wscale G + (sum_k sign(W) G) / K sgn(W)`` (sign(0) = 1 in the sum, sgn(0) = 0), float32."""
    o, k = g.shape
    if path == "numpy":
        sw = np.where(w < 0, np.float32(-1.0), np.float32(1.0))
        dscale = (sw * g).sum(axis=1, dtype=np.float32)
        return wscale[:, None] * g + (dscale / np.float32(k))[:, None] * np.sign(w).astype(np.float32)
    dw = np.empty((o, k), dtype=np.float32)
    rc = _lib().bnncl_tail_latent_grad(np.ascontiguousarray(g, dtype=np.float32).ctypes.data,
                                       np.ascontiguousarray(w, dtype=np.float32).ctypes.data,
                                       np.ascontiguousarray(wscale, dtype=np.float32).ctypes.data, o, k,
                                       dw.ctypes.data, native.PATH_IDS[path])
    native.check(rc, "tail_latent_grad")
    return dw
