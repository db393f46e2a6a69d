"""`bnncl bench kernels` records both conv timings (per-call and prepacked) and renders them."""

import numpy as np

from bnncl.bench import kernels as bench


def test_conv_case_has_per_call_and_prepacked_figures():
    row = bench._bench_conv(("toy 6x6 64->64 s1", 6, 6, 64, 64, 1), 2, 1, 1, 0.0, None, np.random.default_rng(0))
    assert row["binary_macs"] == 2 * 6 * 6 * 64 * 9 * 64
    for key in ("bnncl_seconds", "prepacked_seconds"):
        assert row[key] > 0
    assert np.isclose(row["prepacked_ops_per_s"], 2 * row["binary_macs"] / row["prepacked_seconds"])
    row["limit_fraction"] = 0.5
    table = bench.markdown({"torch_version": None, "results": [row]})
    assert "prepacked GOP/s" in table.splitlines()[0] and "toy 6x6" in table
