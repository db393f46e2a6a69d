"""Bit convention: round trips, sign(0) = +1, padding bits, xnor_dot, the fast C pack."""

from __future__ import annotations

import numpy as np
import pytest

from bnncl.device import kernels
from bnncl.device.bitpack import pack_signs, popcount, unpack_signs, words_for, xnor_dot


@pytest.mark.parametrize("channels", [1, 3, 63, 64, 65, 130, 256])
def test_round_trip(channels: int, rng: np.random.Generator) -> None:
    x = rng.choice([-1, 1], size=(4, 5, channels)).astype(np.int8)
    packed = pack_signs(x)
    assert packed.dtype == np.uint64 and packed.shape == (4, 5, words_for(channels))
    np.testing.assert_array_equal(unpack_signs(packed, channels), x)


def test_sign_of_zero_is_plus_one_and_bit_layout() -> None:
    x = np.array([0.0, -0.0, -1e-9, 2.0, -3.0], dtype=np.float32)
    packed = pack_signs(x)
    assert packed.shape == (1,)
    assert int(packed[0]) == 0b10100  # bit i = channel i; only x < 0 sets a bit
    np.testing.assert_array_equal(unpack_signs(packed, 5), [1, 1, -1, 1, -1])


@pytest.mark.parametrize("channels", [1, 63, 65, 130])
def test_padding_bits_are_zero(channels: int) -> None:
    packed = pack_signs(-np.ones((2, channels)))
    total = popcount(packed).sum(axis=-1)
    np.testing.assert_array_equal(total, [channels, channels])


@pytest.mark.parametrize("channels", [1, 7, 64, 100])
def test_xnor_dot_matches_integer_dot(channels: int, rng: np.random.Generator) -> None:
    a = rng.choice([-1, 1], size=(6, channels))
    b = rng.choice([-1, 1], size=(6, channels))
    np.testing.assert_array_equal(xnor_dot(pack_signs(a), pack_signs(b), channels), (a * b).sum(axis=-1))


def test_unpack_rejects_wrong_word_count() -> None:
    with pytest.raises(ValueError, match="expected 2"):
        unpack_signs(np.zeros((3, 1), np.uint64), 65)


@pytest.mark.parametrize("channels", [1, 3, 64, 65, 130])
def test_fast_pack_matches_numpy(channels: int, path: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 4, channels)).astype(np.float32)
    x[0, 0, 0] = 0.0
    x[0, 0, -1] = -0.0
    np.testing.assert_array_equal(kernels.pack_signs_f32(x), pack_signs(x))


def test_fast_pack_rejects_non_float32() -> None:
    with pytest.raises(ValueError, match="x: expected dtype float32"):
        kernels.pack_signs_f32(np.zeros((2, 3), np.float64))
