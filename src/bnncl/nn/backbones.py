"""BNN backbones (Bi-Real / ReActNet style) with named latent-replay split points.

Layout: real stem (3x3 conv + BN + RPReLU) -> binary blocks -> global average pooling -> bias-free
linear head. A binary block is ``RPReLU(BN(BinaryConv3x3(sign(x + b))) + shortcut(x))``; the shortcut
is the identity, or 2x2 average pooling when the block has stride 2, with the channels repeated when
the block doubles them (parameter-free, ReActNet style).

Split points are named ``block{i}`` (the input of binary block ``i``) and ``gap`` (the input of the
pooling). The tail for ``K`` trainable blocks starts at ``split_for_tail(K)``. A split listed in
``binary_latents`` is binarized by construction: the block there sees ``x' = sign(x + b)`` for both
its conv and its shortcut, so a 1-bit latent replay at that point is exact (docs/design.md §1.6).

``binary=False`` builds the float twin: the same code path with binarization switched off.

``stem_bits=8`` runs the stem conv with the weights the int8 device stem uses (quantization-aware
training): ``dequantize(int8(w / (255 std))) * 255 std`` per input channel, straight-through gradient
(:func:`bnncl.nn.quantizers.fake_int8_stem_weight`); 32 (default) is the float stem.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from bnncl.device import shapes
from bnncl.nn.layers import BinaryConv2d, LearnableBias, RPReLU
from bnncl.nn.quantizers import SignQuantizer, fake_int8_stem_weight

STEM_BITS = (8, 32)


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture of a backbone; serialised as JSON in model files."""

    name: str
    input_shape: tuple[int, int, int]  # (H, W, C)
    stem_channels: int
    blocks: tuple[tuple[int, int], ...]  # (out_channels, stride) per binary block
    num_classes: int
    binary: bool = True
    binary_latents: tuple[str, ...] = ()
    sign_gradient: str = "ste"
    mean: tuple[float, ...] = field(default=())  # input normalisation per channel, in [0, 1] units
    std: tuple[float, ...] = field(default=())
    stem_bits: int = 32  # 8: the stem conv is fake-quantized as the int8 device stem (QAT)

    def __post_init__(self) -> None:
        if self.stem_bits not in STEM_BITS:
            raise ValueError(f"stem_bits must be one of {STEM_BITS}, got {self.stem_bits!r}")
        for s in self.binary_latents:
            if s not in self.split_names():
                raise ValueError(f"binary latent split {s!r} is not one of {self.split_names()}")

    def split_names(self) -> list[str]:
        """Split points ``block0 .. block{n-1}, gap`` (:func:`bnncl.device.shapes.split_names`)."""
        return shapes.split_names({"blocks": self.blocks})

    def split_for_tail(self, tail_blocks: int) -> str:
        """Name of the split point whose tail holds the last ``tail_blocks`` binary blocks."""
        return shapes.split_for_tail({"blocks": self.blocks}, tail_blocks)

    def float_twin(self) -> BackboneConfig:
        return replace(self, name=self.name + "-fp32", binary=False, binary_latents=())

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BackboneConfig:
        d = json.loads(text)
        d["input_shape"] = tuple(d["input_shape"])
        d["blocks"] = tuple(tuple(b) for b in d["blocks"])
        d["binary_latents"] = tuple(d["binary_latents"])
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        d.setdefault("stem_bits", 32)  # files written before quantization-aware stems
        return cls(**d)


def cifar_config(num_classes: int = 10, binary: bool = True) -> BackboneConfig:
    """8 binary blocks, widths 32..256, for 32x32x3; 1-bit latent at the input of the last 2 blocks."""
    cfg = BackboneConfig(
        name="birealnet8-cifar", input_shape=(32, 32, 3), stem_channels=32,
        blocks=((32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (256, 1)),
        num_classes=num_classes, binary_latents=("block6",),
    )
    return cfg if binary else cfg.float_twin()


def fmnist_config(num_classes: int = 10, binary: bool = True) -> BackboneConfig:
    """6 binary blocks, widths 32..128, for 28x28x1; 1-bit latent at the input of the last 2 blocks."""
    cfg = BackboneConfig(
        name="birealnet6-fmnist", input_shape=(28, 28, 1), stem_channels=32,
        blocks=((32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (128, 1)),
        num_classes=num_classes, binary_latents=("block4",),
    )
    return cfg if binary else cfg.float_twin()


CONFIGS = {"cifar": cifar_config, "fmnist": fmnist_config}


class Shortcut(nn.Module):
    """Parameter-free shortcut: identity, 2x2 average pooling, channel repetition."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if cout % cin:
            raise ValueError(f"shortcut needs out_channels to be a multiple of in_channels, got {cin}->{cout}")
        self.pool = nn.AvgPool2d(2) if stride == 2 else None
        self.repeat = cout // cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        return x.repeat(1, self.repeat, 1, 1) if self.repeat > 1 else x


class StemConv2d(nn.Conv2d):
    """The stem's 3x3 conv (no bias); ``bits=8`` applies :func:`fake_int8_stem_weight` with the
    normalisation ``std`` (all ones when the config has none)."""

    def __init__(self, cin: int, cout: int, bits: int = 32, std: tuple[float, ...] = ()) -> None:
        super().__init__(cin, cout, 3, 1, 1, bias=False)
        self.bits = bits
        self.std = tuple(float(s) for s in std) if std else (1.0,) * cin

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward uses (the dequantized int8 stem when ``bits == 8``)."""
        return fake_int8_stem_weight(self.weight, self.std) if self.bits == 8 else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits == 8:
            return self._conv_forward(x, self.effective_weight(), None)
        return super().forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", int8 (fake-quantized)" if self.bits == 8 else "")


class BinaryBlock(nn.Module):
    """``RPReLU(BN(conv3x3(sign(x + b))) + shortcut(x))``; ``binary_input`` feeds ``sign(x + b)`` to both."""

    def __init__(self, cin: int, cout: int, stride: int, binary: bool = True,
                 binary_input: bool = False, sign_gradient: str = "ste") -> None:
        super().__init__()
        self.move = LearnableBias(cin)
        self.sign = SignQuantizer(sign_gradient) if binary else nn.Identity()
        self.conv = BinaryConv2d(cin, cout, 3, stride, 1, binary=binary)
        self.bn = nn.BatchNorm2d(cout)
        self.shortcut = Shortcut(cin, cout, stride)
        self.act = RPReLU(cout)
        self.binary_input = binary_input and binary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = self.sign(self.move(x))
        if self.binary_input:
            x = xb
        return self.act(self.bn(self.conv(xb)) + self.shortcut(x))


class Backbone(nn.Module):
    """Stem, binary blocks, GAP and a bias-free head; input is normalised float NCHW."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        h, w, c = config.input_shape
        self.stem = nn.Sequential(
            StemConv2d(c, config.stem_channels, config.stem_bits, config.std),
            nn.BatchNorm2d(config.stem_channels),
            RPReLU(config.stem_channels),
        )
        blocks, cin = [], config.stem_channels
        for i, (cout, stride) in enumerate(config.blocks):
            blocks.append(BinaryBlock(cin, cout, stride, config.binary,
                                      f"block{i}" in config.binary_latents, config.sign_gradient))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, config.num_classes, bias=False)
        self.feature_dim = cin

    def forward_to(self, x: torch.Tensor, split: str) -> torch.Tensor:
        """Frozen part: the activations at ``split`` (real, before the split block's own sign)."""
        x = self.stem(x)
        stop = self._index(split)
        for block in self.blocks[:stop]:
            x = block(x)
        return x

    def forward_from(self, z: torch.Tensor, split: str) -> torch.Tensor:
        """Tail: logits from the activations at ``split``."""
        for block in self.blocks[self._index(split):]:
            z = block(z)
        return self.head(torch.flatten(self.pool(z), 1))

    def latent(self, x: torch.Tensor, split: str) -> torch.Tensor:
        """The latent-replay activations at ``split``: ``sign(z + b)`` (exactly ±1) at a binary split,
        the pooled feature vector ``(N, C)`` at ``gap`` (pooling is linear: nothing is lost), else the
        real activations ``z`` (NCHW)."""
        z = self.forward_to(x, split)
        if split == "gap":
            return torch.flatten(self.pool(z), 1)
        if split in self.config.binary_latents:
            block = self.blocks[self._index(split)]
            z = torch.where(block.move(z) < 0, -1.0, 1.0)
        return z

    def tail_from_latent(self, latent: torch.Tensor, split: str) -> torch.Tensor:
        """Logits from what :meth:`latent` returned (the split block skips its own bias + sign at a binary split)."""
        if split == "gap":
            return self.head(latent)
        start = self._index(split)
        if split in self.config.binary_latents:
            block = self.blocks[start]
            latent = block.act(block.bn(block.conv(latent)) + block.shortcut(latent))
            start += 1
        for block in self.blocks[start:]:
            latent = block(latent)
        return self.head(torch.flatten(self.pool(latent), 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (the head's input)."""
        return torch.flatten(self.pool(self.forward_to(x, "gap")), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def _index(self, split: str) -> int:
        if split == "gap":
            return len(self.blocks)
        names = self.config.split_names()
        if split not in names:
            raise ValueError(f"unknown split {split!r}; expected one of {names}")
        return names.index(split)


def build_backbone(config: BackboneConfig) -> Backbone:
    """Instantiate a backbone from its config."""
    return Backbone(config)
