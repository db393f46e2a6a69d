"""``bnncl info FILE.bnn``: layers, bit widths and memory by component of a device model file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bnncl.device.modelfile import DeviceModel

#: Component of each tensor, by name prefix (first match wins).
COMPONENTS = (
    ("stem.weight_float", "stem float32 weights (float-trained stem)"),
    ("stem.", "stem int8 + per-channel"),
    ("fused.blocks.", "binary blocks (packed weights + fused per-channel)"),
    ("blocks.", "tail raw parameters (8-bit latent weights + float32)"),
    ("head.", "head float32"),
)


def component_of(name: str) -> str:
    """The memory component a tensor name belongs to."""
    for prefix, label in COMPONENTS:
        if name.startswith(prefix):
            return label
    return "other"


def describe(model: DeviceModel) -> dict[str, Any]:
    """Layers, split, classes and bytes by component (plain JSON-able dict)."""
    memory: dict[str, int] = {label: 0 for _, label in COMPONENTS}
    for name, t in model.tensors.items():
        label = component_of(name)
        memory[label] = memory.get(label, 0) + int(t.nbytes)
    packed = sum(int(t.nbytes) for n, t in model.tensors.items() if n.startswith("fused.") and n.endswith(".weight"))
    return {
        "name": model.architecture["name"], "path": model.path, "layers": model.manifest["layers"],
        "lr_split": model.lr_split, "binary_latents": model.architecture["binary_latents"],
        "classes": [model.class_names[c] if c < len(model.class_names) else str(c)
                    for c in model.pretrained_classes],
        "tail_blocks_stored": model.manifest["tail_blocks"], "memory_bytes": memory,
        "packed_binary_weight_bytes": packed, "total_bytes": sum(memory.values()),
        "input": model.manifest["input"], "checksum": model.manifest["checksum"]["value"],
        "stem_trained_bits": int(model.architecture.get("stem_bits", 32)),
    }


def format_info(d: dict[str, Any]) -> str:
    """Plain-text rendering of :func:`describe`."""
    lines = [f"{d['name']}  ({d['path']})",
             f"{'layer':<10}{'kind':<42}{'in':>5}{'out':>5}{'stride':>7}{'input HxW':>11}{'w bits':>7}{'in bits':>8}"]
    for layer in d["layers"]:
        hw = "x".join(map(str, layer.get("input_hw", []))) or "-"
        lines.append(f"{layer['name']:<10}{layer['kind']:<42}{layer.get('in_channels', ''):>5}"
                     f"{layer.get('out_channels', ''):>5}{layer.get('stride', ''):>7}{hw:>11}"
                     f"{layer['weight_bits']:>7}{layer['input_bits']:>8}")
    lines.append(f"LR split: {d['lr_split']} (1-bit latents at {', '.join(d['binary_latents']) or 'none'}); "
                 f"raw parameters stored for the last {d['tail_blocks_stored']} blocks")
    lines.append(f"pretrained classes: {', '.join(d['classes'])}")
    trained = d.get("stem_trained_bits", 32)
    lines.append("stem: trained with its int8 weights (quantization-aware): the engine runs the int8 stem, "
                 "which matches the host model"
                 if trained == 8 else "stem: trained in float32; the engine runs the float32 stem, "
                 "the one that matches the host "
                 "model (the int8 stem loses some argmax agreement, benchmarks/inference.md)")
    lines.append("memory by component:")
    for label, n in d["memory_bytes"].items():
        lines.append(f"  {label:<56}{n:>12,} B")
    lines.append(f"  {'total':<56}{d['total_bytes']:>12,} B  (packed binary weights: "
                 f"{d['packed_binary_weight_bytes']:,} B)")
    lines.append(f"sha256 of tensors: {d['checksum']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``bnncl info FILE.bnn [--json]``."""
    ap = argparse.ArgumentParser(prog="bnncl info", description="Describe a device model file (.bnn).")
    ap.add_argument("model", help="device model file (.bnn, from `bnncl export`)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    d = describe(DeviceModel.load(args.model))
    print(json.dumps(d, indent=2) if args.json else format_info(d))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
