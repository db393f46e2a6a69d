"""The soak script runs (a few rounds here; the 200-round figure is in benchmarks/soak.md)."""

from __future__ import annotations

from bnncl.bench import soak


def test_soak_runs(tmp_path, kit):
    result = soak.soak(4, 3, kit.FAST, tmp_path, say=lambda m: None)
    assert result["images_learned"] == 12 and result["final_generation"] == 5
    assert len(result["rss_kib"]) == 4 and all(v > 0 for v in result["rss_kib"])
