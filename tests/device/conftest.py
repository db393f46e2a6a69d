"""Fixtures of the device kernel tests: every kernel path this machine can run."""

from __future__ import annotations

import numpy as np
import pytest

from bnncl.device import kernels

ALL_PATHS = ["avx512", "avx2", "scalar", "numpy"]


@pytest.fixture(params=ALL_PATHS)
def path(request: pytest.FixtureRequest):
    """Force each kernel path in turn; skip (with the reason) a path this machine lacks."""
    name = request.param
    if name not in kernels.available_paths():
        pytest.skip(f"kernel path {name!r} not available here (CPU lacks it or the C core is not built)")
    with kernels.kernel_path(name):
        yield name


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
