"""Tail backward kernels (csrc/tail_grad.c): every C path equals the NumPy oracle bit for bit, and the
oracles equal the plain dense definitions."""

from __future__ import annotations

import numpy as np
import pytest

from bnncl.device import kernels
from bnncl.device.bitpack import pack_signs
from bnncl.device.kernels import tailgrad
from bnncl.device.tail_layers import col2im as dense_col2im
from bnncl.device.tail_layers import im2col_pm1

PATHS = [p for p in kernels.available_paths() if p != "numpy"]
SHAPES = [(2, 5, 5, 8, 1), (3, 6, 6, 70, 2), (2, 4, 3, 128, 1)]  # b, h, w, cin, stride


def _maps(b, h, w, c, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([-1, 1], np.int8), size=(b, h, w, c))
    return x, pack_signs(x.astype(np.float32))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", [8, 16, 24])
def test_wgrad_exact_on_every_path(shape, bits) -> None:
    b, h, w, c, stride = shape
    x, xp = _maps(b, h, w, c)
    cols = im2col_pm1(x, 3, stride, 1)  # (P, 9c) ±1
    rng = np.random.default_rng(bits)
    o = 21
    codes = rng.integers(0, 2**bits, size=(cols.shape[0], o))
    codes[:, 3] = 2**bits - 1
    want = cols.astype(np.float64).T @ codes.astype(np.float64)  # exact: small sums
    wb = xp.shape[-1] * 64  # bits per tap
    for path in ["numpy", *PATHS]:
        pat = tailgrad.patterns(xp, stride, path)
        assert np.array_equal(pat, tailgrad.patterns(xp, stride, "numpy"))
        s, ones = tailgrad.wgrad_minus(pat, codes, 2**bits - 1, path)
        full = codes.sum(axis=0)[None, :] - 2 * s  # (9 * wb, O)
        got = full.reshape(9, wb, o)[:, :c].reshape(9 * c, o)
        assert np.array_equal(got, want.astype(np.int64)), path
        colsum = (cols.shape[0] - 2 * ones).reshape(9, wb)[:, :c].reshape(-1)
        assert np.array_equal(colsum, cols.sum(axis=0)), path


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("o", [8, 13, 128])
def test_dgrad_and_col2im_bit_identical_on_every_path(shape, o) -> None:
    b, h, w, c, stride = shape
    ho, wo = tailgrad.out_hw(h, w, stride)
    rng = np.random.default_rng(o)
    d = rng.standard_normal((b * ho * wo, o)).astype(np.float32)
    wneg = rng.random((o, 9 * c)) < 0.5
    s = np.where(wneg, -1.0, 1.0)
    want = dense_col2im((d.astype(np.float64) @ s), (b, h, w, c), 3, stride, 1)
    dt = tailgrad.dgrad_operand(d)
    wpat = tailgrad.weight_patterns(wneg)
    ref = tailgrad.dgrad(dt, wpat, "numpy")
    ref_dx = tailgrad.col2im(ref, (b, h, w, c), stride, "numpy")
    np.testing.assert_allclose(ref_dx, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    for path in PATHS:
        got = tailgrad.dgrad(dt, wpat, path)
        assert np.array_equal(got[:, : d.shape[0]], ref[:, : d.shape[0]]), path
        dx = tailgrad.col2im(got, (b, h, w, c), stride, path)
        assert np.array_equal(dx, ref_dx), path


def test_wgrad_chunks_large_codes() -> None:
    """24-bit codes: int32 tables are flushed every 128 positions, still exact."""
    x, xp = _maps(4, 9, 9, 16, seed=3)
    cols = im2col_pm1(x, 3, 1, 1)
    codes = np.full((cols.shape[0], 16), 2**24 - 1)
    for path in ["numpy", *PATHS]:
        s, _ = tailgrad.wgrad_minus(tailgrad.patterns(xp, 1, path), codes, 2**24 - 1, path)
        full = (codes.sum(axis=0)[None, :] - 2 * s).reshape(9, 64, 16)[:, :16].reshape(144, 16)
        assert np.array_equal(full, (cols.astype(np.int64).T @ codes)), path


@pytest.mark.parametrize("groups", [1, 3, 4, 7])
def test_wgrad_any_group_count_and_zero_runs(groups) -> None:
    """Groups not a multiple of the 4 the kernel shares a code load between; long runs of pattern 0
    (sent to dummy rows) and of one repeated pattern; ragged output tile (o = 19)."""
    rng = np.random.default_rng(groups)
    npos, o = 301, 19
    pat = rng.integers(0, 256, size=(groups, npos), dtype=np.uint8)
    pat[:, 20:90] = 0
    pat[:, 150:200] = 255
    codes = rng.integers(0, 2**16, size=(npos, o))
    want_s, want_ones = tailgrad.wgrad_minus(pat, codes, 2**16 - 1, "numpy")
    bits = np.unpackbits(pat[:, :, None], axis=2, bitorder="little").transpose(0, 2, 1).reshape(8 * groups, npos)
    assert np.array_equal(want_s, bits.astype(np.int64) @ codes)
    for path in PATHS:
        s, ones = tailgrad.wgrad_minus(pat, codes, 2**16 - 1, path)
        assert np.array_equal(s, want_s), path
        assert np.array_equal(ones, want_ones), path


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES + [(3, 4, 4, 32, 2), (5, 7, 7, 16, 1), (9, 2, 2, 16, 2), (4, 3, 3, 48, 1)])
def test_dgrad_col2im_fused_on_every_path(shape, threads) -> None:
    """Fused input gradient (staged per image, small images spanning several images per block of 16
    positions included): bit for bit the separate dgrad + tap-ordered col2im, on every path and thread
    count."""
    b, h, w, c, stride = shape
    ho, wo = tailgrad.out_hw(h, w, stride)
    o = 24
    rng = np.random.default_rng(c + h)
    d = rng.standard_normal((b * ho * wo, o)).astype(np.float32)
    wpat = tailgrad.weight_patterns(rng.random((o, 9 * c)) < 0.5)
    dt = tailgrad.dgrad_operand(d)
    ref = tailgrad.col2im(tailgrad.dgrad(dt, wpat, "numpy"), (b, h, w, c), stride, "numpy")
    assert np.array_equal(tailgrad.dgrad_col2im(dt, wpat, (b, h, w, c), stride, "numpy"), ref)
    for path in PATHS:
        got = tailgrad.dgrad_col2im(dt, wpat, (b, h, w, c), stride, path, threads)
        assert np.array_equal(got, ref), path


@pytest.mark.parametrize("threads", [2, 3])
def test_wgrad_threads_equal_one_thread(threads) -> None:
    rng = np.random.default_rng(threads)
    pat = rng.integers(0, 256, size=(9, 500), dtype=np.uint8)
    pat[:, :100] = 0
    codes = rng.integers(0, 2**16, size=(500, 40)).astype(np.int32)
    full = np.zeros((500, 48), np.int32)
    full[:, :40] = codes
    ctile = np.ascontiguousarray(full.reshape(500, 3, 16).transpose(1, 0, 2))
    for path in PATHS:
        one = tailgrad.wgrad_minus_tiled(pat, ctile, 40, 2**16 - 1, path, 1)
        many = tailgrad.wgrad_minus_tiled(pat, ctile, 40, 2**16 - 1, path, threads)
        assert all(np.array_equal(a, b) for a, b in zip(one, many)), path
        assert all(np.array_equal(a, b) for a, b in zip(one, tailgrad.wgrad_minus(pat, codes, 2**16 - 1, "numpy")))
