"""The device's uniform quantizer: stored codes, bit-exact agreement with the torch fake-quantizer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bnncl.device.quantize import QTensor, check_bits, code_dtype, codes_on_grid, fake_quantize, quantize

torch = pytest.importorskip("torch")
from bnncl.nn.quantizers import uniform_quantize  # noqa: E402

BITS = [1, 2, 3, 4, 5, 7, 8, 12, 16, 20, 24]


def _torch_q(x: np.ndarray, bits: int) -> np.ndarray:
    return uniform_quantize(torch.from_numpy(x.copy()), bits).numpy()


@pytest.mark.parametrize("bits", BITS)
def test_equals_torch_quantizer_on_random_tensors(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for trial in range(60):
        shape = tuple(int(s) for s in rng.integers(1, 9, size=int(rng.integers(1, 4))))
        scale = float(rng.choice([1e-6, 1e-2, 1.0, 50.0]))
        x = (rng.standard_normal(shape) * scale + rng.standard_normal() * scale).astype(np.float32)
        np.testing.assert_array_equal(fake_quantize(x, bits), _torch_q(x, bits), err_msg=f"trial {trial}")


@settings(max_examples=200, deadline=None)
@given(
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=7),
                 elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False)),
    bits=st.sampled_from(BITS + [32]),
)
def test_equals_torch_quantizer_property(x: np.ndarray, bits: int) -> None:
    np.testing.assert_array_equal(fake_quantize(x, bits), _torch_q(x, bits))


def test_constant_and_zero_tensors_unchanged() -> None:
    for x in (np.zeros((3, 4), np.float32), np.full(5, -2.5, np.float32)):
        q = quantize(x, 8)
        assert q.constant and q.step == 0.0
        np.testing.assert_array_equal(q.dequantize(), x)
        np.testing.assert_array_equal(q.dequantize(), _torch_q(x, 8))


def test_storage_dtypes_and_nbytes() -> None:
    x = np.random.default_rng(0).standard_normal((10, 10)).astype(np.float32)
    for bits, dtype, size in ((4, np.uint8, 100), (8, np.uint8, 100), (16, np.uint16, 200), (24, np.uint32, 400)):
        q = quantize(x, bits)
        assert q.codes.dtype == dtype and code_dtype(bits) == dtype
        assert q.nbytes == size + 8  # codes + float32 (min, max)
        assert int(q.codes.max()) == 2**bits - 1 and int(q.codes.min()) == 0
    q32 = quantize(x, 32)
    assert q32.codes.dtype == np.float32 and q32.nbytes == 400
    np.testing.assert_array_equal(q32.dequantize(), x)


def test_range_and_step() -> None:
    x = np.linspace(-1, 3, 50, dtype=np.float32)
    q = quantize(x, 8)
    assert q.lo == np.float32(-1) and q.hi == np.float32(3)
    assert q.step == pytest.approx(4 / 255, rel=1e-6)
    d = q.dequantize()
    assert np.abs(d - x).max() <= q.step / 2 + 1e-6
    np.testing.assert_array_equal(codes_on_grid(d, q), q.codes)


def test_idempotent_on_its_grid() -> None:
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    for bits in (4, 8, 16):
        d = fake_quantize(x, bits)
        np.testing.assert_array_equal(quantize(d, bits).codes, quantize(x, bits).codes)


def test_empty_tensor() -> None:
    q = quantize(np.zeros((0, 3), np.float32), 8)
    assert q.dequantize().shape == (0, 3)


@pytest.mark.parametrize("bad", [0, 25, 31, 33, -1, 2.5, True, "8"])
def test_bad_bits_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="bit width"):
        check_bits("qf", bad)
    with pytest.raises(ValueError):
        quantize(np.ones(3, np.float32), bad)  # type: ignore[arg-type]


def test_codes_on_grid_needs_a_grid() -> None:
    with pytest.raises(ValueError, match="no grid"):
        codes_on_grid(np.ones(2), QTensor(np.ones(2, np.float32), np.float32(0), np.float32(0), 32))


def test_range_below_float32_resolution_is_one_level() -> None:
    # s = 7 / 1.2e-38 overflows float32: both quantizers give the constant min (was NaN / 0)
    x = np.array([1.1754944e-38, 0.0], dtype=np.float32)
    q = quantize(x, 3)
    assert q.constant and np.array_equal(q.dequantize(), np.zeros(2, np.float32))
    np.testing.assert_array_equal(_torch_q(x, 3), np.zeros(2, np.float32))


def test_requantize_update_nearest_is_quantize_of_the_clipped_update():
    from bnncl.device.quantize import requantize_update

    rng = np.random.default_rng(0)
    w = quantize(rng.standard_normal((64, 9)).astype(np.float32), 8).dequantize()
    new = w - np.float32(0.01) * rng.standard_normal(w.shape).astype(np.float32)
    got = requantize_update(new, w.min(), w.max(), 8)
    ref = quantize(np.clip(new, w.min(), w.max()), 8)
    assert np.array_equal(got.codes, ref.codes) and (got.lo, got.hi) == (ref.lo, ref.hi)
    with pytest.raises(ValueError, match="float32"):
        requantize_update(new, w.min(), w.max(), 32)


def test_stochastic_rounding_keeps_small_updates_on_average_on_a_fixed_grid():
    from bnncl.device.quantize import requantize_update, rounding_noise

    rng = np.random.default_rng(1)
    q = quantize(rng.uniform(-1, 1, 4096).astype(np.float32), 8)
    w = q.dequantize()
    delta = np.float32(0.2 * q.step)  # a fifth of a step: nearest rounding drops every such update
    keep_ends = np.full(w.shape, delta)
    keep_ends[[w.argmin(), w.argmax()]] = 0  # (the extremes stay: nearest rounding's grid follows them)
    assert np.array_equal(requantize_update(w - keep_ends, q.lo, q.hi, 8).dequantize(), w)
    means = np.zeros_like(w, dtype=np.float64)
    for step in range(200):
        r = requantize_update(w - delta, q.lo, q.hi, 8, rounding_noise(7, step, 0, w.shape))
        assert (r.lo, r.hi) == (q.lo, q.hi) and r.codes.dtype == np.uint8  # the grid stays put
        means += r.dequantize() / 200
    inner = (w > q.lo + q.step) & (w < q.hi - q.step)  # away from the clipped ends
    # unbiased: the mean moved by delta (to 0.1 step over 200 draws per weight, averaged over weights)
    assert abs(float(np.mean((w - means)[inner])) - float(delta)) < 0.01 * q.step


def test_rounding_noise_is_a_function_of_seed_step_and_tensor():
    from bnncl.device.quantize import check_rounding, rounding_noise

    a = rounding_noise(3, 10, 1, (5, 7))
    assert a.dtype == np.float32 and a.shape == (5, 7) and 0 <= a.min() and a.max() < 1
    assert np.array_equal(a, rounding_noise(3, 10, 1, (5, 7)))
    assert not np.array_equal(a, rounding_noise(3, 11, 1, (5, 7)))
    assert not np.array_equal(a, rounding_noise(3, 10, 0, (5, 7)))
    assert not np.array_equal(a, rounding_noise(4, 10, 1, (5, 7)))
    with pytest.raises(ValueError, match="weight_rounding"):
        check_rounding("up")
