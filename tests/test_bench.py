"""`bnncl bench kernels` records both conv timings (per-call and prepacked) and renders them."""

import numpy as np
import pytest

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


def test_learning_bench_sizes_one_experience_by_the_protocol():
    from bnncl.bench.learning import experience_shape

    assert experience_shape("fmnist-b5") == (600, 8, 0.05)
    assert experience_shape("cifar10-b5") == (300, 16, 0.2)
    assert experience_shape("fmnist-full-b5")[0] == 600
    with pytest.raises(SystemExit, match="cifar10-ni"):
        experience_shape("cifar10-ni")


def test_learning_bench_times_both_engines_on_the_embedded_protocol():
    from bnncl.bench.learning import run

    res = run([0, 1], steps=1, experience=False, threads=1, protocol="fmnist-b5")
    assert res["protocol"]["steps_per_experience"] == 8 * 17
    for row in res["rows"]:
        assert row["device_step_ms"] > 0 and row["torch_step_ms"] > 0
        assert row["device_state_bytes"] < row["torch_state_bytes"]


def test_learning_bench_times_the_default_strategy_against_the_torch_cwr_star_tail():
    from bnncl.bench.learning import run_slda

    res = run_slda("fmnist-b5", repeats=1, threads=1, epochs=1)
    (row,) = res["rows"]
    assert row["images"] == 600 and row["torch_tail_blocks"] == 2 and res["protocol"]["epochs"] == 1
    assert row["device_slda_s"] > 0 and row["torch_cwr_star_s"] > 0
    assert row["ratio"] == row["torch_cwr_star_s"] / row["device_slda_s"]
    assert row["slda_state_bytes"] > 0
