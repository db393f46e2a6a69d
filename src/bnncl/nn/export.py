"""Export a pretrained host backbone (torch) to the device model file (``.bnn``, torch-free).

``bnncl export MODEL -o FILE.bnn [--split NAME]``.  What is fused and how: see
:mod:`bnncl.device.modelfile`.  Batch norm uses its running statistics (eval mode):
``alpha = gamma / sqrt(var + eps)``, ``beta = bias - mean * alpha``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from bnncl.assets import resolve_model
from bnncl.device.bitpack import pack_signs
from bnncl.device.modelfile import (
    FORMAT,
    LATENT_WEIGHT_BITS,
    STEM_BITS,
    DeviceModel,
    quantize_uniform,
)
from bnncl.device.shapes import MAX_TAIL_BLOCKS, block_geometry
from bnncl.errors import BnnclError, ModelFileError
from bnncl.nn.backbones import Backbone, BackboneConfig
from bnncl.nn.checkpoint import load_model, read_metadata
from bnncl.nn.quantizers import dequantize_per_channel, fold_stem_weight, stem_int8


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _bn_affine(bn: torch.nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode batch norm as ``alpha * x + beta`` (float64)."""
    var = _np(bn.running_var).astype(np.float64)
    alpha = _np(bn.weight).astype(np.float64) / np.sqrt(var + bn.eps)
    beta = _np(bn.bias).astype(np.float64) - _np(bn.running_mean).astype(np.float64) * alpha
    return alpha, beta


def _act(prefix: str, act: torch.nn.Module) -> dict[str, np.ndarray]:
    return {f"{prefix}act.{k}": _np(getattr(act, k)).astype(np.float32) for k in ("shift_in", "slope", "shift_out")}


def _stem_tensors(model: Backbone) -> dict[str, np.ndarray]:
    """Stem weights with ``1/(255 std)`` folded in, int8 by :func:`bnncl.nn.quantizers.stem_int8` (the
    quantizer the host's ``stem_bits=8`` forward uses) plus a float32 copy: the folded float weights,
    or for a ``stem_bits=8`` model the dequantized int8 weights (what that model was trained with)."""
    cfg = model.config
    conv, bn, act = model.stem
    q, wscale = stem_int8(conv.weight, cfg.std)
    if cfg.stem_bits == 8:
        folded = dequantize_per_channel(q, wscale, torch.float64)
    else:
        folded = fold_stem_weight(conv.weight, cfg.std)
    alpha, beta = _bn_affine(bn)
    return {
        "stem.weight": np.ascontiguousarray(_np(q).transpose(0, 2, 3, 1)),  # (O, KH, KW, C)
        "stem.weight_scale": _np(wscale).astype(np.float32),
        "stem.weight_float": _np(folded).transpose(0, 2, 3, 1).astype(np.float32),
        "stem.input_offset": (np.asarray(cfg.mean, np.float64) * 255.0).astype(np.float32),
        "stem.scale": alpha.astype(np.float32),
        "stem.bias": beta.astype(np.float32),
        **_act("stem.", act),
    }


def _block_tensors(i: int, block: torch.nn.Module, raw: bool) -> dict[str, np.ndarray]:
    p = f"fused.blocks.{i}."
    w = _np(block.conv.weight).transpose(0, 2, 3, 1)  # (O, KH, KW, I)
    alpha, beta = _bn_affine(block.bn)
    mean_abs = _np(block.conv.scale()).astype(np.float64)
    out = {
        p + "weight": pack_signs(w),
        p + "scale": (mean_abs * alpha).astype(np.float32),
        p + "bias": beta.astype(np.float32),
        p + "input_bias": _np(block.move.bias).astype(np.float32),
        **_act(p, block.act),
    }
    if raw:
        r = f"blocks.{i}."
        codes, rng = quantize_uniform(_np(block.conv.weight), LATENT_WEIGHT_BITS)
        out[r + "conv.weight.codes"] = codes
        out[r + "conv.weight.range"] = rng
        out[r + "move.bias"] = _np(block.move.bias).astype(np.float32)
        for k in ("weight", "bias", "running_mean", "running_var"):
            out[f"{r}bn.{k}"] = _np(getattr(block.bn, k)).astype(np.float32)
        out.update(_act(r, block.act))
    return out


def _layers(cfg: BackboneConfig, tail_blocks: int) -> list[dict[str, Any]]:
    h, w, c = cfg.input_shape
    arch = json.loads(cfg.to_json())
    layers: list[dict[str, Any]] = [{
        "name": "stem", "kind": "conv3x3 + BN + RPReLU (int8; float32 copy)" if cfg.stem_bits != 8 else
        "conv3x3 + BN + RPReLU (int8, quantization-aware trained; float32 copy = dequantized int8)",
        "weight_bits": STEM_BITS, "input_bits": 8,
        "in_channels": c, "out_channels": cfg.stem_channels, "stride": 1, "input_hw": [h, w]}]
    n = len(cfg.blocks)
    for i, g in enumerate(block_geometry(arch)):
        layers.append({
            "name": f"blocks.{i}", "kind": "binary conv3x3 + BN + shortcut + RPReLU", "weight_bits": 1,
            "input_bits": 1, "in_channels": g["in_channels"], "out_channels": g["out_channels"],
            "stride": g["stride"], "input_hw": [g["in_h"], g["in_w"]],
            "binary_shortcut": f"block{i}" in cfg.binary_latents,
            "raw_latent_weight_bits": LATENT_WEIGHT_BITS if i >= n - tail_blocks else None})
    layers.append({"name": "head", "kind": "GAP + linear (no bias)", "weight_bits": 32, "input_bits": 32,
                   "in_channels": layers[-1]["out_channels"], "out_channels": cfg.num_classes, "stride": 1})
    return layers


def build_device_model(model: Backbone, info: dict[str, Any] | None = None, split: str | None = None) -> DeviceModel:
    """The :class:`DeviceModel` of a host backbone (in memory; ``.save(path)`` writes it)."""
    cfg = model.config
    info = dict(info or {})
    if not cfg.binary:
        raise BnnclError(f"{cfg.name}: only binary backbones can be exported to the device")
    if not cfg.mean or not cfg.std:
        raise BnnclError(f"{cfg.name}: the model has no input normalisation (mean/std) in its config")
    split = split or (cfg.binary_latents[0] if cfg.binary_latents else cfg.split_for_tail(min(2, len(cfg.blocks))))
    if split not in cfg.split_names():
        raise BnnclError(f"--split: expected one of {', '.join(cfg.split_names())}, got {split!r}")
    model = model.eval()
    n = len(cfg.blocks)
    tail_blocks = min(MAX_TAIL_BLOCKS, n)
    tensors: dict[str, np.ndarray] = {}
    with torch.no_grad():
        tensors.update(_stem_tensors(model))
        for i, block in enumerate(model.blocks):
            tensors.update(_block_tensors(i, block, i >= n - tail_blocks))
        tensors["head.weight"] = _np(model.head.weight).astype(np.float32)
    classes = [int(c) for c in info.get("classes", range(cfg.num_classes))]
    names = info.get("all_class_names") or [f"class{c}" for c in range(max(classes) + 1)]
    manifest = {
        "architecture": json.loads(cfg.to_json()),
        "layers": _layers(cfg, tail_blocks),
        "class_names": [str(s) for s in names],
        "pretrained_classes": classes,
        "lr_split": split,
        "input": {"layout": "NHWC uint8", "pixel_scale": 255.0, "mean": list(cfg.mean), "std": list(cfg.std),
                  "normalised": "(x / 255 - mean) / std"},
        "tail_blocks": tail_blocks,
        "latent_weight_bits": LATENT_WEIGHT_BITS,
        "checksum": {"algorithm": "sha256", "value": ""},
        "source": {k: info[k] for k in ("dataset", "test_accuracy", "train_seconds") if k in info},
    }
    return DeviceModel(manifest, tensors)


def export_model(model: Backbone, info: dict[str, Any] | None, path: str | os.PathLike,
                 split: str | None = None) -> DeviceModel:
    """Export ``model`` (from :func:`bnncl.nn.checkpoint.load_model`) to ``path``; returns the model written."""
    dm = build_device_model(model, info, split)
    dm.save(path)
    return dm


def load_host_model(path: str | os.PathLike) -> tuple[Backbone, dict[str, Any]]:
    """A host model file (``save_model``) or a pretraining checkpoint (``*.ckpt``, keys ``model.*``)."""
    meta = read_metadata(path)
    if meta.get("format") == "bnncl-torch-model":
        return load_model(path)
    if meta.get("format") == FORMAT:
        raise ModelFileError(f"{path}: this is already a device model (.bnn); expected a host model")
    if "config" not in meta:
        raise ModelFileError(f"{path}: not a bnncl model or pretraining checkpoint (no 'config' metadata)")
    try:
        cfg = BackboneConfig.from_json(meta["config"])
        settings = json.loads(meta.get("settings", "{}"))
        model = Backbone(cfg)
        state = {k[6:]: v for k, v in load_file(str(path)).items() if k.startswith("model.")}
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: checkpoint does not hold a valid model ({str(exc).splitlines()[0]})") from None
    info = {"classes": settings.get("classes", list(range(cfg.num_classes)))}
    return model.eval(), info


def main(argv: list[str] | None = None) -> int:
    """``bnncl export MODEL -o FILE.bnn [--split NAME]``."""
    ap = argparse.ArgumentParser(prog="bnncl export", description="Export a host model to the device format (.bnn).")
    ap.add_argument("model", help="host model (.safetensors from `bnncl pretrain`, or its .ckpt), or a shipped "
                                  "model's name (fmnist-b5, cifar10-b5, ...)")
    ap.add_argument("-o", "--output", required=True, help="device model file to write (.bnn)")
    ap.add_argument("--split", default=None, help="default latent-replay split (default: the backbone's "
                    "first binary latent, e.g. block6)")
    args = ap.parse_args(argv)
    model, info = load_host_model(resolve_model(args.model, ".safetensors"))
    dm = export_model(model, info, args.output, args.split)
    size = Path(args.output).stat().st_size
    print(f"wrote {args.output}: {dm.architecture['name']}, {size:,} bytes, LR split {dm.lr_split}, "
          f"raw parameters for the last {dm.manifest['tail_blocks']} blocks")
    return 0


__all__ = ["build_device_model", "export_model", "load_host_model", "main"]


if __name__ == "__main__":
    raise SystemExit(main())
