"""Binary kernels: every available path bit-exact against the NumPy oracle, the oracle against
an independent ±1 float convolution, dispatch controls and argument errors."""

from __future__ import annotations

import numpy as np
import pytest

from bnncl.device import kernels
from bnncl.device.bitpack import pack_signs, unpack_signs, words_for
from bnncl.device.kernels import KernelPathError, reference
from bnncl.device.kernels.checks import conv_args

CONV_CASES = [
    # batch, H, W, cin, cout, k, stride, padding
    (1, 5, 7, 1, 3, 3, 1, 1),
    (2, 6, 5, 3, 5, 3, 2, 1),
    (1, 7, 6, 63, 33, 3, 1, 0),
    (3, 8, 8, 64, 64, 3, 2, 1),
    (2, 5, 9, 65, 40, 1, 1, 0),
    (1, 4, 6, 130, 70, 3, 1, 1),
    (2, 9, 7, 32, 32, 3, 2, 0),
    (1, 6, 6, 96, 17, 1, 2, 1),
    (4, 4, 4, 256, 256, 3, 1, 1),
    # cin % 32 == 0: the AVX-512 direct kernel (32- and 64-channel tiles, ragged last panel, odd units)
    (2, 6, 5, 64, 40, 3, 1, 1),
    (1, 7, 7, 32, 80, 3, 2, 1),
    (3, 5, 6, 96, 100, 3, 1, 1),
    (1, 3, 3, 160, 7, 3, 1, 2),
]


def _pm1(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=shape)


def _conv_inputs(rng, batch, h, w, cin, cout, k):
    x = _pm1(rng, (batch, h, w, cin))
    wt = _pm1(rng, (cout, k, k, cin))
    return x, wt, pack_signs(x), pack_signs(wt)


def float_conv(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Independent ±1 float convolution (NHWC, OHWI) with +1 padding, by explicit tap loops."""
    b, h, wd, c = x.shape
    o, kh, kw, _ = w.shape
    xp = np.ones((b, h + 2 * padding, wd + 2 * padding, c), dtype=np.float64)
    xp[:, padding : padding + h, padding : padding + wd] = x
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    out = np.zeros((b, ho, wo, o))
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[:, ky : ky + stride * (ho - 1) + 1 : stride, kx : kx + stride * (wo - 1) + 1 : stride]
            out += np.einsum("bhwc,oc->bhwo", patch, w[:, ky, kx].astype(np.float64))
    return out


@pytest.mark.parametrize("case", CONV_CASES)
def test_oracle_matches_float_convolution(case, rng: np.random.Generator) -> None:
    batch, h, w, cin, cout, k, stride, padding = case
    x, wt, xp, wp = _conv_inputs(rng, batch, h, w, cin, cout, k)
    xs, ws, shape = conv_args(xp, wp, cin, stride, padding)
    np.testing.assert_array_equal(reference.binary_conv2d_int32(xs, ws, shape), float_conv(x, wt, stride, padding))


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_paths_match_oracle(case, path: str, rng: np.random.Generator) -> None:
    batch, h, w, cin, cout, k, stride, padding = case
    _, _, xp, wp = _conv_inputs(rng, batch, h, w, cin, cout, k)
    scale = rng.standard_normal(cout).astype(np.float32)
    bias = (rng.standard_normal(cout) * 3).astype(np.float32)
    threshold, flip = kernels.threshold_from_affine(scale, bias, k * k * cin)
    xs, ws, shape = conv_args(xp, wp, cin, stride, padding)
    for threads in (1, 2):
        dots = kernels.binary_conv2d_int32(xp, wp, cin, stride, padding, threads=threads)
        np.testing.assert_array_equal(dots, reference.binary_conv2d_int32(xs, ws, shape))
        y = kernels.binary_conv2d(xp, wp, cin, stride, padding, scale, bias, threads=threads)
        np.testing.assert_array_equal(y, reference.binary_conv2d(xs, ws, shape, scale, bias))
        bits = kernels.binary_conv2d_packed_out(xp, wp, cin, stride, padding, threshold, flip, threads=threads)
        np.testing.assert_array_equal(bits, reference.binary_conv2d_packed_out(xs, ws, shape, threshold, flip))
        # the packed output is exactly sign(scale * dot + bias) of the float output
        np.testing.assert_array_equal(bits, pack_signs(np.where(y < 0, -1.0, 1.0)))


def test_packed_out_threshold_semantics(path: str, rng: np.random.Generator) -> None:
    x, wt, xp, wp = _conv_inputs(rng, 2, 5, 5, 20, 70, 3)
    dots = float_conv(x, wt, 1, 1)
    threshold = np.concatenate([[np.inf, -np.inf, np.nan], rng.integers(-20, 20, 67) + 0.5]).astype(np.float32)
    threshold[3:10] = np.round(threshold[3:10])  # integer thresholds: strict comparisons
    flip = (np.arange(70) % 2).astype(bool)
    bits = kernels.binary_conv2d_packed_out(xp, wp, 20, 1, 1, threshold, flip)
    expected = np.where(flip, dots > threshold, dots < threshold)
    np.testing.assert_array_equal(unpack_signs(bits, 70) == -1, expected)


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 5, 63), (13, 33, 64), (6, 70, 65), (25, 64, 1024)])
def test_gemm_paths_match_integer_matmul(m: int, n: int, k: int, path: str, rng: np.random.Generator) -> None:
    a, b = _pm1(rng, (m, k)), _pm1(rng, (n, k))
    for threads in (1, 2):
        out = kernels.binary_gemm(pack_signs(a), pack_signs(b), k, threads=threads)
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, (a @ b.T).astype(np.int32))


def test_threshold_from_affine_is_exact(rng: np.random.Generator) -> None:
    k = 9 * 37
    scale = np.concatenate([[0.0, 0.0, -0.0, np.nan], rng.standard_normal(60)]).astype(np.float32)
    bias = np.concatenate([[-1.0, 1.0, 0.0, 1.0], rng.standard_normal(60) * 50]).astype(np.float32)
    threshold, flip = kernels.threshold_from_affine(scale, bias, k)
    d = np.arange(-k, k + 1, dtype=np.float32)[:, None]
    expected = (scale * d) + bias < 0
    got = np.where(flip.astype(bool), d > threshold, d < threshold)
    np.testing.assert_array_equal(got, expected)


def test_dispatch_controls(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = kernels.available_paths()
    assert paths[-1] == "numpy"
    monkeypatch.delenv("BNNCL_KERNEL", raising=False)
    assert kernels.active_path() == paths[0]
    monkeypatch.setenv("BNNCL_KERNEL", "numpy")
    assert kernels.active_path() == "numpy"
    with kernels.kernel_path(paths[0]) as active:
        assert active == paths[0] == kernels.active_path()
    assert kernels.active_path() == "numpy"
    monkeypatch.setenv("BNNCL_KERNEL", "sse9")
    with pytest.raises(KernelPathError, match="BNNCL_KERNEL: expected one of"):
        kernels.active_path()
    with pytest.raises(KernelPathError, match="set_kernel_path"):
        kernels.set_kernel_path("sse9")


def test_forcing_a_missing_path_is_a_one_line_error() -> None:
    missing = [p for p in ("avx512", "avx2", "neon") if p not in kernels.available_paths()]
    if not missing:
        pytest.skip("this machine has every ISA path")
    with pytest.raises(KernelPathError, match="not available") as info:
        kernels.set_kernel_path(missing[0])
    assert "\n" not in str(info.value)


def _good_conv():
    x = np.zeros((1, 4, 4, 1), np.uint64)
    w = np.zeros((8, 3, 3, 1), np.uint64)
    return x, w


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: a.update(x_packed=a["x_packed"].astype(np.int64)), "x_packed: expected dtype uint64"),
        (lambda a: a.update(w_packed=a["w_packed"][0]), "w_packed: expected 4 dimensions"),
        (lambda a: a.update(in_channels=65), "x_packed: expected 2 words"),
        (lambda a: a.update(w_packed=np.zeros((8, 3, 3, 2), np.uint64)), "w_packed: expected 1 words"),
        (lambda a: a.update(stride=3), "stride: expected 1 or 2"),
        (lambda a: a.update(padding=-1), "padding: expected an integer >= 0"),
        (lambda a: a.update(scale=np.ones(7, np.float32)), r"scale: expected shape \(8,\)"),
        (lambda a: a.update(bias=np.ones((8, 1), np.float32)), r"bias: expected shape \(8,\)"),
        (lambda a: a.update(threads=0), "threads: expected an integer >= 1"),
        (lambda a: a.update(x_packed=np.zeros((1, 1, 1, 1), np.uint64), padding=0), "smaller than the 3x3 kernel"),
    ],
)
def test_conv_bad_arguments(change, match: str) -> None:
    x, w = _good_conv()
    args = dict(x_packed=x, w_packed=w, in_channels=3, stride=1, padding=1,
                scale=np.ones(8, np.float32), bias=np.zeros(8, np.float32))
    change(args)
    with pytest.raises(ValueError, match=match) as info:
        kernels.binary_conv2d(**args)
    assert "\n" not in str(info.value)


def test_gemm_and_packed_out_bad_arguments() -> None:
    a = np.zeros((3, 2), np.uint64)
    with pytest.raises(ValueError, match="a_packed: expected 1 words per row for k=64"):
        kernels.binary_gemm(a, a, 64)
    with pytest.raises(ValueError, match="b_packed: expected 2 words per row"):
        kernels.binary_gemm(a, np.zeros((3, 1), np.uint64), 100)
    with pytest.raises(ValueError, match="a_packed: expected a numpy uint64 array"):
        kernels.binary_gemm([[1]], a, 64)
    x, w = _good_conv()
    with pytest.raises(ValueError, match=r"threshold: expected shape \(8,\)"):
        kernels.binary_conv2d_packed_out(x, w, 3, 1, 1, np.zeros(3, np.float32), np.zeros(8, np.uint8))
    with pytest.raises(ValueError, match="flip: expected a bool or uint8 array"):
        kernels.binary_conv2d_packed_out(x, w, 3, 1, 1, np.zeros(8, np.float32), np.zeros(8, np.float32))


def test_words_for_output_matches_channels(rng: np.random.Generator) -> None:
    _, _, xp, wp = _conv_inputs(rng, 1, 3, 3, 4, 65, 1)
    bits = kernels.binary_conv2d_packed_out(xp, wp, 4, 1, 0, np.zeros(65, np.float32), np.zeros(65, bool))
    assert bits.shape == (1, 3, 3, words_for(65))


def test_missing_core_falls_back_to_numpy_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from bnncl.device.kernels import dispatch, native

    monkeypatch.setattr(native, "supported_paths", lambda: [])
    monkeypatch.setattr(dispatch, "_warned", False)
    monkeypatch.delenv("BNNCL_KERNEL", raising=False)
    a = pack_signs(np.ones((2, 5)))
    with pytest.warns(RuntimeWarning, match="C core not built"):
        np.testing.assert_array_equal(kernels.binary_gemm(a, a, 5), np.full((2, 2), 5))
    assert kernels.active_path() == "numpy"  # no second warning (pytest would not fail, but _warned is set)
    assert dispatch._warned
    with pytest.raises(KernelPathError, match="the C core is not built"):
        kernels.set_kernel_path("scalar")
