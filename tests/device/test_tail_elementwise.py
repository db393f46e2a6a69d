"""Fused element-wise tail passes (csrc/tail_elementwise.c): every C path equals the NumPy oracle bit for bit
(same float32 operations in the same order), and the oracles equal the plain definitions of
bnncl.device.tail_layers / quantize.py (bit for bit where the order is the same; the 2x2 pooling sum
order is fixed here, so the pooled shortcut is compared within 1 ulp)."""

from __future__ import annotations

import numpy as np
import pytest

from bnncl.device import kernels
from bnncl.device.bitpack import pack_signs
from bnncl.device.kernels import tail_elementwise as ew
from bnncl.device.quantize import fake_quantize, quantize
from bnncl.device.tail_layers import shortcut, shortcut_backward

PATHS = [p for p in kernels.available_paths() if p != "numpy"]
# b, h, w, cin, o, stride: channel repetition, ragged words (70, 140 channels), stride 2
SHAPES = [(2, 5, 5, 8, 8, 1), (3, 6, 6, 70, 140, 2), (2, 4, 3, 128, 128, 1), (2, 4, 4, 64, 128, 2),
          (1, 5, 5, 8, 16, 2)]  # the last: odd size at stride 2, refused


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def _x(shape, seed, grid=True):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 1.5).astype(np.float32)
    if grid:
        x[..., 0] = 0.0  # ties and exact values
        x[..., 1] = 1.0
        x[..., 2] = -1.0
    return x


def _q(x, bits):
    return ew.QParams.of(x.min(), x.max(), bits)


@pytest.mark.parametrize("bits", [8, 16, 32])
@pytest.mark.parametrize("shape", SHAPES)
def test_fwd_input_quantizes_packs_signs_and_ste(shape, bits) -> None:
    b, h, w, c, _, _ = shape
    x = _x((b, h, w, c), bits)
    bias = np.random.default_rng(1).standard_normal(c).astype(np.float32) * 0.3
    q = _q(x, bits)
    ref_x = x.copy()
    ref = ew.fwd_input(ref_x, q, bias, True, "numpy")
    assert np.array_equal(ref_x, fake_quantize(x, bits))  # the oracle is quantize.py's quantizer
    t = ref_x + bias
    assert np.array_equal(ref[0], pack_signs(t))
    assert np.array_equal(ew.unpack_bits(ref[1], c), np.abs(t) <= 1)
    for path in PATHS:
        got_x = x.copy()
        got = ew.fwd_input(got_x, q, bias, True, path)
        assert _same(got_x, ref_x), path
        assert _same(got[0], ref[0]) and _same(got[1], ref[1]), path
        got_x = x.copy()
        nob = ew.fwd_input(got_x, q, None, False, path)
        assert nob[1] is None and np.array_equal(nob[0], pack_signs(ref_x)), path


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_fwd_out_on_every_path(shape, binary) -> None:
    b, h, w, cin, o, stride = shape
    rng = np.random.default_rng(cin + o)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    x = fake_quantize(_x((b, h, w, cin), 3), 8)
    xbits = pack_signs(x)
    dot = rng.integers(-9 * cin, 9 * cin + 1, size=(b, ho, wo, o)).astype(np.int32)
    pars = [rng.standard_normal(o).astype(np.float32) for _ in range(6)]
    pars[0] = np.abs(pars[0]) * 0.01
    xs, xb = (None, xbits) if binary else (x, None)
    if stride == 2 and (h % 2 or w % 2):  # the 2x2-pooled shortcut would read past the input
        for path in PATHS:
            with pytest.raises(ValueError, match="tail_fwd_out"):
                ew.fwd_out(dot, xs, xb, x.shape, stride, *pars, path)
        return
    ref, ref_pos, ref_mm = ew.fwd_out(dot, xs, xb, x.shape, stride, *pars, "numpy")
    # the oracle vs the plain definition (tail_layers.shortcut; pooling order may differ by an ulp)
    src = np.where(x < 0, np.float32(-1), np.float32(1)) if binary else x
    sc = shortcut(src, stride, o // cin)
    pre = ((dot.astype(np.float32) * pars[0]) * pars[1] + pars[2]) + sc - pars[3]
    plain = np.where(pre > 0, pre, pre * pars[4]) + pars[5]
    np.testing.assert_allclose(ref, plain, rtol=1e-6, atol=1e-6)
    src_o = ew._avgpool2(src) if stride == 2 else src
    pre_o = ((dot.astype(np.float32) * pars[0]) * pars[1] + pars[2]) + np.tile(src_o, (1, 1, 1, o // cin)) - pars[3]
    assert np.array_equal(ew.unpack_bits(ref_pos, o), pre_o > 0)
    assert ref_mm == (ref.min(), ref.max())
    for path in PATHS:
        got, pos, mm = ew.fwd_out(dot, xs, xb, x.shape, stride, *pars, path)
        assert _same(got, ref) and _same(pos, ref_pos), path
        assert mm == ref_mm, path


@pytest.mark.parametrize("bits", [8, 32])
def test_gap_on_every_path(bits) -> None:
    x = _x((5, 7, 7, 70), bits)
    q = _q(x, bits)
    ref = ew.gap(x, q, "numpy")
    np.testing.assert_allclose(ref, fake_quantize(x, bits).mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)
    for path in PATHS:
        assert _same(ew.gap(x, q, path), ref), path


@pytest.mark.parametrize("bcast", [0, 12])
@pytest.mark.parametrize("bits", [16, 32])
def test_bwd_v_and_codes_on_every_path(bits, bcast) -> None:
    rng = np.random.default_rng(bits + bcast)
    npos, o = 36, 140
    dout = _x((npos // bcast if bcast else npos, o), 5) * np.float32(1e-3)
    q = _q(dout, bits)
    pos_b = rng.random((npos, o)) < 0.6
    pos = ew._pack(pos_b)
    slope = rng.standard_normal(o).astype(np.float32) * 0.2
    a = rng.standard_normal(o).astype(np.float32)
    scale = np.abs(rng.standard_normal(o)).astype(np.float32)
    ref_v, ref_mm = ew.bwd_v(dout, bcast, q, pos, slope, a, "numpy")
    d = fake_quantize(dout, bits) if bits != 32 else dout
    d = np.repeat(d, bcast, axis=0) if bcast else d
    assert np.array_equal(ref_v, np.where(pos_b, d, d * slope) * a)
    ref_c = ew.bwd_codes(ref_v, *ref_mm, 16, scale, True, "numpy")
    qv = quantize(ref_v, 16)
    ct, colsum, dt = ref_c
    assert np.array_equal(ct.transpose(1, 0, 2).reshape(npos, -1)[:, :o], qv.codes.astype(np.int32))
    assert np.array_equal(colsum, qv.codes.sum(axis=0, dtype=np.int64))
    assert np.array_equal(dt[:o, :npos], (qv.dequantize() * scale).T) and not dt[o:].any() and not dt[:, npos:].any()
    for path in PATHS:
        v, mm = ew.bwd_v(dout, bcast, q, pos, slope, a, path)
        assert _same(v, ref_v) and mm == ref_mm, path
        got = ew.bwd_codes(v, *mm, 16, scale, True, path)
        assert all(_same(g, r) for g, r in zip(got, ref_c)), path
        ct2, cs2, none = ew.bwd_codes(v, *mm, 16, scale, False, path)
        assert none is None and _same(ct2, ct) and _same(cs2, colsum), path


def test_bwd_codes_constant() -> None:
    v = np.full((20, 19), 0.25, np.float32)
    scale = np.arange(1, 20, dtype=np.float32)
    ref = ew.bwd_codes(v, np.float32(0.25), np.float32(0.25), 16, scale, True, "numpy")
    assert not ref[0].any() and not ref[1].any()
    assert np.array_equal(ref[2][:19, :20], np.repeat((np.float32(0.25) * scale)[:, None], 20, axis=1))
    for path in PATHS:
        got = ew.bwd_codes(v, np.float32(0.25), np.float32(0.25), 16, scale, True, path)
        assert all(_same(g, r) for g, r in zip(got, ref)), path


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_bwd_dx_on_every_path(shape, binary) -> None:
    b, h, w, cin, o, stride = shape
    rng = np.random.default_rng(cin * o)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    npos = b * ho * wo
    dout = _x((npos, o), 9) * np.float32(1e-2)
    q = _q(dout, 16)
    pos_b = rng.random((npos, o)) < 0.5
    pos = ew._pack(pos_b)
    slope = rng.standard_normal(o).astype(np.float32) * 0.2
    dxb = _x((b, h, w, cin), 11) * np.float32(1e-2)
    ste_b = rng.random((b, h, w, cin)) < 0.7
    ste = ew._pack(ste_b)
    if stride == 2 and (h % 2 or w % 2):  # the shortcut adjoint would write past the input
        for path in PATHS:
            with pytest.raises(ValueError, match="tail_bwd_dx"):
                ew.bwd_dx(dxb, dout, 0, q, pos, slope, stride, ste, binary, path)
        return
    ref, ref_mm = ew.bwd_dx(dxb, dout, 0, q, pos, slope, stride, ste, binary, "numpy")
    d = fake_quantize(dout, 16)
    dz = np.where(pos_b, d, d * slope).reshape(b, ho, wo, o)
    dxs = shortcut_backward(dz, stride, o // cin)
    m = ste_b.astype(np.float32)
    plain = (dxb + dxs) * m if binary else dxb * m + dxs
    np.testing.assert_allclose(ref, plain, rtol=1e-6, atol=1e-9)
    for path in PATHS:
        got, mm = ew.bwd_dx(dxb, dout, 0, q, pos, slope, stride, ste, binary, path)
        assert _same(got, ref) and mm == ref_mm, path


def test_minmax_on_every_path() -> None:
    x = _x((1001,), 4)
    for path in PATHS:
        assert ew.minmax(x, path) == (x.min(), x.max())


@pytest.mark.parametrize("constant", [False, True])
@pytest.mark.parametrize("cin", [8, 70, 128])
def test_weight_g_on_every_path(cin, constant) -> None:
    """From the weight-gradient kernel's integer sums to G: the oracle equals the dense definition
    (float64 ``cols.T @ dy``) within float32 rounding; every C path equals the oracle bit for bit."""
    from bnncl.device.kernels import tailgrad
    from bnncl.device.quantize import _scale
    from bnncl.device.tail_layers import im2col_pm1

    rng = np.random.default_rng(cin + constant)
    b, h, w, o = 2, 5, 4, 24
    x = rng.choice(np.array([-1, 1], np.int8), size=(b, h, w, cin))
    npos = b * h * w
    lo, hi = np.float32(-3e-3), np.float32(-3e-3 if constant else 5e-3)
    codes = np.zeros((npos, o), np.int64) if constant else rng.integers(0, 2**16, size=(npos, o))
    s = np.float32(0.0) if constant else _scale(lo, hi, 16)
    full = np.zeros((npos, 32), np.int32)
    full[:, :o] = codes
    ctile = np.ascontiguousarray(full.reshape(npos, 2, 16).transpose(1, 0, 2))
    pat = tailgrad.patterns(pack_signs(x.astype(np.float32)), 1, "numpy")
    s_minus, ones = tailgrad.wgrad_minus_tiled(pat, ctile, o, 2**16 - 1, "numpy")
    colsum = codes.sum(axis=0)
    ref = ew.weight_g(s_minus, ones, colsum, npos, cin, lo, s, constant, "numpy")
    cols = im2col_pm1(x, 3, 1, 1).astype(np.float64)
    dy = np.full((npos, o), np.float64(lo)) if constant else np.float64(lo) + codes / np.float64(s)
    plain = (cols.T @ dy).T  # (O, K)
    np.testing.assert_allclose(ref, plain, rtol=1e-6, atol=1e-6 * np.abs(plain).max())
    for path in PATHS:
        assert _same(ew.weight_g(s_minus, ones, colsum, npos, cin, lo, s, constant, path), ref), path


@pytest.mark.parametrize("k", [5, 72, 130, 630, 1152])
def test_latent_grad_equals_numpy_on_every_path(k) -> None:
    """The C pass replicates NumPy's pairwise float32 row sum: bit for bit the NumPy expression (the
    oracle), zeros and signed zeros in W and G included."""
    rng = np.random.default_rng(k)
    o = 9
    g = (rng.standard_normal((o, k)) * np.float32(1e-3)).astype(np.float32)
    w = rng.standard_normal((o, k)).astype(np.float32)
    w[0, : k // 2] = 0.0
    w[1, :3] = -0.0
    g[2] = -0.0
    g[3, ::2] = 0.0
    wscale = np.abs(w).mean(axis=1).astype(np.float32)
    ref = ew.latent_grad(g, w, wscale, "numpy")
    for path in PATHS:
        assert _same(ew.latent_grad(g, w, wscale, path), ref), path
