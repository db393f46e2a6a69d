"""Model summary: parameters and memory by bit width (as deployed), binary vs real MACs per image."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bnncl.nn.backbones import Backbone
from bnncl.nn.layers import BinaryConv2d

#: Bit width at which each kind of parameter is stored on the device.
STEM_BITS = 8
REAL_BITS = 32


@dataclass
class LayerRow:
    name: str
    kind: str
    params: int
    bits: int
    binary_macs: int
    real_macs: int
    derived: bool = False  # stored on the device but not a trainable parameter (e.g. mean|W| scales)

    @property
    def bytes(self) -> int:
        return (self.params * self.bits + 7) // 8


@dataclass
class ModelSummary:
    name: str
    rows: list[LayerRow] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows if not r.derived)

    def bytes_by_bits(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for r in self.rows:
            out[r.bits] = out.get(r.bits, 0) + r.bytes
        return dict(sorted(out.items()))

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.rows)

    @property
    def binary_macs(self) -> int:
        return sum(r.binary_macs for r in self.rows)

    @property
    def real_macs(self) -> int:
        return sum(r.real_macs for r in self.rows)

    def to_dict(self) -> dict:
        return {"name": self.name, "params": self.params, "bytes": self.bytes,
                "bytes_by_bits": {str(k): v for k, v in self.bytes_by_bits().items()},
                "float32_bytes": self.params * 4,
                "binary_macs": self.binary_macs, "real_macs": self.real_macs}

    def __repr__(self) -> str:
        return (f"ModelSummary({self.name!r}, {len(self.rows)} rows, {self.params:,} parameters, {self.bytes:,} bytes "
                f"deployed, {self.binary_macs:,} binary / {self.real_macs:,} real MACs)")


def summarize(model: Backbone) -> ModelSummary:
    """Walk ``model`` with a dummy image and count parameters, bits and MACs per layer."""
    cfg = model.config
    h, w, c = cfg.input_shape
    summary = ModelSummary(cfg.name)
    out_shapes: dict[nn.Module, tuple[int, ...]] = {}
    hooks = [m.register_forward_hook(lambda mod, _i, o: out_shapes.__setitem__(mod, tuple(o.shape)))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, c, h, w))
    model.train(was_training)
    for hk in hooks:
        hk.remove()
    stem_conv = model.stem[0]
    for name, mod in model.named_modules():
        own = [p for p in mod.parameters(recurse=False)]
        if not own:
            continue
        n = sum(p.numel() for p in own)
        if isinstance(mod, nn.Conv2d):
            shape = out_shapes[mod]
            macs = shape[1] * shape[2] * shape[3] * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
            if isinstance(mod, BinaryConv2d) and mod.binary:
                summary.rows.append(LayerRow(name, "binary conv", n, 1, macs, 0))
                # per-channel scale, fused with batch norm on the device
                summary.rows.append(LayerRow(name + ".scale", "per-channel", mod.out_channels, REAL_BITS, 0, 0, True))
            else:
                bits = STEM_BITS if (mod is stem_conv and cfg.binary) else REAL_BITS
                summary.rows.append(LayerRow(name, "real conv", n, bits, 0, macs))
        elif isinstance(mod, nn.Linear):
            summary.rows.append(LayerRow(name, "linear", n, REAL_BITS, 0, mod.in_features * mod.out_features))
        else:
            summary.rows.append(LayerRow(name, type(mod).__name__, n, REAL_BITS, 0, 0))
    return summary


def format_summary(s: ModelSummary) -> str:
    """A plain-text table of a :class:`ModelSummary`."""
    lines = [f"{s.name}",
             f"{'layer':<28}{'kind':<16}{'params':>10}{'bits':>6}{'bytes':>10}{'bin MACs':>12}{'real MACs':>12}"]
    for r in s.rows:
        lines.append(f"{r.name:<28}{r.kind:<16}{r.params:>10}{r.bits:>6}{r.bytes:>10}{r.binary_macs:>12}{r.real_macs:>12}")
    by = ", ".join(f"{b}-bit: {n:,} B" for b, n in s.bytes_by_bits().items())
    lines.append(f"total: {s.params:,} parameters, {s.bytes:,} bytes deployed ({by}); "
                 f"float32 would be {s.params * 4:,} B")
    lines.append(f"MACs per image: {s.binary_macs:,} binary, {s.real_macs:,} real")
    return "\n".join(lines)
