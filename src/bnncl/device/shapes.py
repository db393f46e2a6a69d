"""Shapes of a backbone: split points, block geometry, latent shapes, the tail (torch-free, one place).

An architecture is the plain dict of a device model file (``DeviceModel.architecture``) or of
``nn.backbones.BackboneConfig`` (:func:`architecture_dict` accepts both): ``input_shape`` (H, W, C),
``stem_channels``, ``blocks`` ((out_channels, stride) per binary 3x3 block, padding 1), ``num_classes``.

Split points are named ``block0 .. block{n-1}`` (the input of that block) and ``gap`` (the pooled
feature vector after the last block). A tail of ``K`` trainable blocks starts at
:func:`split_for_tail` ``(arch, K)``: ``block{n-K}``, or ``gap`` for ``K = 0``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

MAX_TAIL_BLOCKS = 3  # trainable binary blocks above the latent-replay split


def conv_out_hw(h: int, w: int, k: int, stride: int, pad: int) -> tuple[int, int]:
    """Output height and width of a ``k x k`` convolution."""
    return (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1


def architecture_dict(arch: Any) -> dict[str, Any]:
    """A backbone architecture as a plain dict: a ``BackboneConfig`` (anything with ``to_json``) or a
    mapping such as ``DeviceModel.architecture``."""
    if isinstance(arch, Mapping):
        d = dict(arch)
    elif hasattr(arch, "to_json"):
        d = json.loads(arch.to_json())
    else:
        raise ValueError(f"architecture: expected a BackboneConfig or a dict, got {type(arch).__name__}")
    for key in ("input_shape", "stem_channels", "blocks", "num_classes"):
        if key not in d:
            raise ValueError(f"architecture: missing key {key!r}")
    d.setdefault("binary", True)
    d.setdefault("binary_latents", [])
    d.setdefault("sign_gradient", "ste")
    return d


def split_names(arch: Mapping[str, Any]) -> list[str]:
    """Split points ``block0 .. block{n-1}, gap``."""
    return [f"block{i}" for i in range(len(arch["blocks"]))] + ["gap"]


def split_index(arch: Mapping[str, Any], split: str) -> int:
    """Index of the first block after ``split`` (``len(blocks)`` for ``gap``)."""
    names = split_names(arch)
    if split not in names:
        raise ValueError(f"split: expected one of {', '.join(names)}, got {split!r}")
    return names.index(split)


def max_tail_blocks(arch: Mapping[str, Any]) -> int:
    """The most trainable blocks this backbone's tail can hold."""
    return min(MAX_TAIL_BLOCKS, len(arch["blocks"]))


def split_for_tail(arch: Mapping[str, Any], tail_blocks: int) -> str:
    """The split whose tail holds the last ``tail_blocks`` binary blocks (``gap`` for 0)."""
    n, most = len(arch["blocks"]), max_tail_blocks(arch)
    if isinstance(tail_blocks, bool) or not isinstance(tail_blocks, int) or not 0 <= tail_blocks <= most:
        raise ValueError(f"tail_blocks: expected 0..{most}, got {tail_blocks!r}")
    return "gap" if tail_blocks == 0 else f"block{n - tail_blocks}"


def block_geometry(arch: Mapping[str, Any]) -> list[dict[str, int]]:
    """Per binary block: ``in_channels, out_channels, stride, in_h, in_w, out_h, out_w``."""
    h, w, _ = arch["input_shape"]
    cin = int(arch["stem_channels"])
    out = []
    for cout, stride in arch["blocks"]:
        ho, wo = conv_out_hw(h, w, 3, int(stride), 1)
        out.append({"in_channels": cin, "out_channels": int(cout), "stride": int(stride), "in_h": h, "in_w": w,
                    "out_h": ho, "out_w": wo})
        cin, h, w = int(cout), ho, wo
    return out


def feature_dim(arch: Mapping[str, Any]) -> int:
    """Length of the pooled feature vector (the head's input)."""
    return int(arch["blocks"][-1][0]) if arch["blocks"] else int(arch["stem_channels"])


def split_latent_shape(arch: Mapping[str, Any], split: str) -> tuple[int, ...]:
    """Shape of one latent at ``split``: channels-last ``(H, W, C)`` at a block input; ``(C,)`` at
    ``gap``, where the latent is the pooled feature vector (pooling is linear, so storing the pooled
    vector instead of the ``(H, W, C)`` map loses nothing and is ``H * W`` times smaller)."""
    i = split_index(arch, split)
    if split == "gap":
        return (feature_dim(arch),)
    g = block_geometry(arch)[i]
    return (g["in_h"], g["in_w"], g["in_channels"])
