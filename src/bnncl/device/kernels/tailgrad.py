"""Backward kernels of the device tail's binary 3x3 convs (C core ``csrc/tail_grad.c`` + NumPy oracles).

* :func:`patterns`: the bytes of the implicit 3x3 im2col of packed ±1 maps, ``[tap * wb + byte][p]``
  (+1 padding = byte 0). Byte ``g`` bit ``j`` is tap ``g // wb``, channel ``8 * (g % wb) + j``.
* :func:`wgrad_minus` (:func:`wgrad_minus_tiled`: codes already tile-major): exact integers
  ``S[g*8+j, o] = sum_{p: bit set} c[p, o]`` (bit set = ``x = -1``) and ``ones[g*8+j]`` = positions with
  the bit set, so ``sum_p x[p, k] c[p, o] = sum_p c[p, o] - 2 S`` and ``sum_p x[p, k] = P - 2 ones``:
  additions only (per-pattern tables, "four Russians").
* :func:`dgrad`: float32 ``D[k, p] = sum_o d[p, o] * s[o, k]`` for ``s`` = ±1 given as bits
  (:func:`weight_patterns`), through tables of the 256 signed sums of 8 channels' ``d``; the
  summation order is fixed (see the C file), so every path and the oracle agree bit for bit.
* :func:`col2im`: tap-ordered scatter-add of ``D`` back to the (B, H, W, C) input;
* :func:`dgrad_col2im`: both fused (each block of 16 positions is staged per image and an image's col2im
  runs as soon as its last position is done: no (9 C) x P buffer), the same additions in the same order.

Every function takes ``path`` (``numpy`` = oracle, else a C core path as in
:mod:`bnncl.device.kernels.dispatch`).
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np

from bnncl.device.kernels import native

LANES = 16
_p, _i64, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int

_SIGNATURES = {
    "bnncl_tail_wgrad": (_int, [_p, _i64, _i64, _p, _i64, _i64, _p, _p, _int, _int]),
    "bnncl_tail_wgrad_tiled": (_int, [_p, _i64, _i64, _p, _i64, _i64, _p, _p, _int, _int]),
    "bnncl_tail_dgrad": (_int, [_p, _i64, _i64, _p, _i64, _p, _int, _int]),
    "bnncl_tail_dgrad_col2im": (_int, [_p, _i64, _i64, _p, _i64, _i64, _i64, _i64, _i64, _i64, _p, _int, _int]),
    "bnncl_tail_patterns": (None, [_p, _i64, _i64, _i64, _i64, _i64, _p]),
    "bnncl_tail_col2im": (None, [_p, _i64, _i64, _i64, _i64, _i64, _i64, _p]),
}


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    return native.bind(_SIGNATURES, "tail kernels")


def out_hw(h: int, w: int, stride: int) -> tuple[int, int]:
    return (h - 1) // stride + 1, (w - 1) // stride + 1


def patterns(x_packed: np.ndarray, stride: int, path: str) -> np.ndarray:
    """``x_packed`` (B, H, W, words) uint64 -> (9 * 8 * words, B * Ho * Wo) uint8."""
    x = np.ascontiguousarray(x_packed).view(np.uint8)
    b, h, w, wb = x.shape
    ho, wo = out_hw(h, w, stride)
    if path != "numpy":
        out = np.empty((9 * wb, b * ho * wo), dtype=np.uint8)
        _lib().bnncl_tail_patterns(x.ctypes.data, b, h, w, wb, stride, out.ctypes.data)
        return out
    xp = np.zeros((b, h + 2, w + 2, wb), dtype=np.uint8)
    xp[:, 1 : h + 1, 1 : w + 1] = x
    taps = [xp[:, ky : ky + stride * ho : stride, kx : kx + stride * wo : stride] for ky in range(3) for kx in range(3)]
    return np.ascontiguousarray(np.stack(taps).transpose(0, 4, 1, 2, 3).reshape(9 * wb, b * ho * wo))


def wgrad_minus(pat: np.ndarray, codes: np.ndarray, maxcode: int, path: str,
                threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``pat`` (G, P) uint8, ``codes`` (P, O) non-negative integers <= ``maxcode`` (< 2^31) ->
    ``S`` (8G, O) int64, ``ones`` (8G,) int64."""
    g, npos = pat.shape
    o = codes.shape[1]
    if path == "numpy":
        bits = np.unpackbits(pat[:, :, None], axis=2, bitorder="little")  # (G, P, 8)
        bits = bits.transpose(0, 2, 1).reshape(8 * g, npos)
        ones = bits.sum(axis=1, dtype=np.int64)
        # float64 sums of integers below 2^53 are exact
        s = bits.astype(np.float64) @ codes.astype(np.float64)
        return s.astype(np.int64), ones
    c = np.ascontiguousarray(codes, dtype=np.int32)
    pat = np.ascontiguousarray(pat)
    out = np.empty((8 * g, o), dtype=np.int64)
    ones = np.empty(8 * g, dtype=np.int64)
    rc = _lib().bnncl_tail_wgrad(pat.ctypes.data, g, npos, c.ctypes.data, o, int(maxcode), out.ctypes.data,
                                 ones.ctypes.data, threads, native.PATH_IDS[path])
    native.check(rc, "tail_wgrad")
    return out, ones


def wgrad_minus_tiled(pat: np.ndarray, ctile: np.ndarray, o: int, maxcode: int, path: str,
                      threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`wgrad_minus` with the codes tile-major: ``ctile`` (ceil(O / 16), P, 16) int32, lanes past
    ``O`` zero (``tail_elementwise.bwd_codes`` writes them so; no (P, O) copy)."""
    ntiles, npos, lanes = ctile.shape
    if lanes != LANES or ntiles != (o + LANES - 1) // LANES or pat.shape[1] != npos:
        raise ValueError(f"wgrad_minus_tiled: codes {ctile.shape} do not fit {o} outputs and patterns {pat.shape}")
    if path == "numpy":
        codes = ctile.transpose(1, 0, 2).reshape(npos, ntiles * LANES)[:, :o]
        return wgrad_minus(pat, codes, maxcode, path, threads)
    g = pat.shape[0]
    pat = np.ascontiguousarray(pat)
    ct = np.ascontiguousarray(ctile, dtype=np.int32)
    out = np.empty((8 * g, o), dtype=np.int64)
    ones = np.empty(8 * g, dtype=np.int64)
    rc = _lib().bnncl_tail_wgrad_tiled(pat.ctypes.data, g, npos, ct.ctypes.data, o, int(maxcode), out.ctypes.data,
                                       ones.ctypes.data, threads, native.PATH_IDS[path])
    native.check(rc, "tail_wgrad_tiled")
    return out, ones


def weight_patterns(w_neg: np.ndarray) -> np.ndarray:
    """``w_neg`` (O, K) bool (sign(W) = -1) -> (K, ceil(O / 8)) uint8, bit ``j`` of byte ``g`` = channel
    ``8g + j``."""
    o, k = w_neg.shape
    pad = (-o) % 8
    if pad:
        w_neg = np.concatenate([w_neg, np.zeros((pad, k), dtype=bool)])
    return np.ascontiguousarray(np.packbits(w_neg, axis=0, bitorder="little").T)


def dgrad_operand(d: np.ndarray) -> np.ndarray:
    """``d`` (P, O) float32 -> the transposed operand (8 * ceil(O / 8), P rounded up to 16), zero padded."""
    npos, o = d.shape
    out = np.zeros((o + (-o) % 8, npos + (-npos) % LANES), dtype=np.float32)
    out[:o, :npos] = d.T
    return out


def dgrad(d_t: np.ndarray, wpat: np.ndarray, path: str, threads: int = 1) -> np.ndarray:
    """``d_t`` from :func:`dgrad_operand`, ``wpat`` (K, G) from :func:`weight_patterns` ->
    ``D`` (K, P_padded) float32."""
    rows, npos = d_t.shape
    k, g = wpat.shape
    if rows != 8 * g:
        raise ValueError(f"dgrad: operand has {rows} rows, patterns need {8 * g}")
    if path != "numpy":
        out = np.empty((k, npos), dtype=np.float32)
        rc = _lib().bnncl_tail_dgrad(d_t.ctypes.data, npos, g, np.ascontiguousarray(wpat).ctypes.data, k,
                                     out.ctypes.data, threads, native.PATH_IDS[path])
        native.check(rc, "tail_dgrad")
        return out
    acc = None
    for gi in range(g):
        t = np.zeros((1, npos), dtype=np.float32)
        for j in range(8):
            dj = d_t[8 * gi + j]
            t = np.concatenate([t + dj, t - dj])  # new index = old + (bit j) * 2^j; bit set = subtract
        term = t[wpat[:, gi]]
        acc = term if acc is None else acc + term
    return acc


def col2im(cols: np.ndarray, shape: tuple[int, int, int, int], stride: int, path: str) -> np.ndarray:
    """``cols`` (9 * C, P_stride) from :func:`dgrad` -> (B, H, W, C) float32, the taps summed in
    (ky, kx) order starting from zero."""
    b, h, w, c = shape
    ho, wo = out_hw(h, w, stride)
    npos = b * ho * wo
    if path != "numpy":
        out = np.empty(shape, dtype=np.float32)
        _lib().bnncl_tail_col2im(np.ascontiguousarray(cols).ctypes.data, cols.shape[1], b, h, w, c, stride,
                                 out.ctypes.data)
        return out
    v = cols[:, :npos].reshape(9, c, b, ho, wo).transpose(2, 3, 4, 0, 1)  # (B, Ho, Wo, 9, C)
    outp = np.zeros((b, h + 2, w + 2, c), dtype=np.float32)
    for tap in range(9):
        ky, kx = divmod(tap, 3)
        outp[:, ky : ky + stride * ho : stride, kx : kx + stride * wo : stride] += v[:, :, :, tap]
    return outp[:, 1 : h + 1, 1 : w + 1]


def dgrad_col2im(d_t: np.ndarray, wpat: np.ndarray, shape: tuple[int, int, int, int], stride: int, path: str,
                 threads: int = 1) -> np.ndarray:
    """:func:`dgrad` then :func:`col2im` to (B, H, W, C) float32, fused in C (no (9 C) x P buffer), bit
    for bit the same."""
    rows, npos = d_t.shape
    k, g = wpat.shape
    b, h, w, c = shape
    if rows != 8 * g or k != 9 * c:
        raise ValueError(f"dgrad_col2im: operand rows {rows}, patterns {wpat.shape}, channels {c} do not fit")
    if path == "numpy":
        return col2im(dgrad(d_t, wpat, path), shape, stride, path)
    out = np.empty(shape, dtype=np.float32)
    rc = _lib().bnncl_tail_dgrad_col2im(np.ascontiguousarray(d_t).ctypes.data, npos, g,
                                        np.ascontiguousarray(wpat).ctypes.data, k, b, h, w, c, stride,
                                        out.ctypes.data, threads, native.PATH_IDS[path])
    native.check(rc, "tail_dgrad_col2im")
    return out
