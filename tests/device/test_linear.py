"""The fixed-order float32 matmul: every kernel path equals the NumPy oracle bit for bit, and a row's
result does not depend on the other rows of the call (batch invariance)."""

import numpy as np
import pytest

from bnncl.device.kernels.linear import matmul, reference_matmul


@pytest.mark.parametrize("n,k,m", [(1, 1, 1), (37, 256, 10), (5, 7, 33), (128, 10, 256), (0, 4, 3), (3, 0, 2)])
def test_every_path_equals_the_oracle(path, rng, n, k, m):
    a = rng.normal(size=(n, k)).astype(np.float32)
    b = rng.normal(size=(k, m)).astype(np.float32)
    got = matmul(a, b)
    assert got.dtype == np.float32 and got.shape == (n, m)
    assert np.array_equal(got, reference_matmul(a, b))
    if n and k:
        np.testing.assert_allclose(got, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-4, atol=1e-4)


def test_rows_do_not_depend_on_the_batch(path, rng):
    a = (rng.normal(size=(300, 256)) * 10).astype(np.float32)
    b = rng.normal(size=(256, 10)).astype(np.float32)
    whole = matmul(a, b)
    assert np.array_equal(np.concatenate([matmul(a[i:i + 7], b) for i in range(0, 300, 7)]), whole)
    assert np.array_equal(matmul(a[123:124], b), whole[123:124])


def test_the_sum_runs_in_increasing_k():
    # 1e8 + 1 - 1e8 in float32: in order the 1 is absorbed (0), pairwise or reversed it is not
    a = np.array([[1e8, 1.0, -1e8]], np.float32)
    b = np.ones((3, 1), np.float32)
    for p in ("numpy", None):
        assert matmul(a, b, p)[0, 0] == 0.0


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(N, K\) and \(K, M\)"):
        matmul(np.zeros((2, 3), np.float32), np.zeros((4, 1), np.float32))
