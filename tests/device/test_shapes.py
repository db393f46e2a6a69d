"""Backbone shapes in one place: split names, tail splits, block geometry, latent shapes."""

import pytest

from bnncl.device.shapes import (
    MAX_TAIL_BLOCKS,
    block_geometry,
    feature_dim,
    split_for_tail,
    split_index,
    split_latent_shape,
    split_names,
)

ARCH = {"input_shape": [28, 28, 1], "stem_channels": 32, "blocks": [[32, 1], [64, 2], [64, 1], [128, 2]],
        "num_classes": 5}


def test_splits_and_tails():
    assert split_names(ARCH) == ["block0", "block1", "block2", "block3", "gap"]
    assert split_index(ARCH, "gap") == 4 and split_index(ARCH, "block2") == 2
    assert [split_for_tail(ARCH, k) for k in range(MAX_TAIL_BLOCKS + 1)] == ["gap", "block3", "block2", "block1"]
    for bad in (-1, MAX_TAIL_BLOCKS + 1, True, 1.0):
        with pytest.raises(ValueError, match="tail_blocks"):
            split_for_tail(ARCH, bad)
    with pytest.raises(ValueError, match="split: expected one of"):
        split_index(ARCH, "block9")
    assert split_for_tail({"blocks": [[8, 1]]}, 1) == "block0"
    with pytest.raises(ValueError, match=r"0\.\.1"):
        split_for_tail({"blocks": [[8, 1]]}, 2)


def test_geometry_and_latent_shapes():
    g = block_geometry(ARCH)
    assert [(b["in_h"], b["out_h"], b["in_channels"], b["out_channels"]) for b in g] == [
        (28, 28, 32, 32), (28, 14, 32, 64), (14, 14, 64, 64), (14, 7, 64, 128)]
    assert split_latent_shape(ARCH, "block3") == (14, 14, 64)
    assert split_latent_shape(ARCH, "gap") == (128,) == (feature_dim(ARCH),)
