"""The device model file (``.bnn``): safetensors tensors + one JSON manifest, torch-free.

Layout (format ``bnncl-device-model``, version 1).  Metadata keys: ``format``,
``format_version`` and ``manifest`` (JSON: ``architecture`` = the BackboneConfig as a dict,
``layers`` with bit widths, ``class_names``, ``pretrained_classes``, ``lr_split``, ``input``
normalisation, ``tail_blocks`` with raw parameters, ``latent_weight_bits``, ``checksum`` =
``{"algorithm": "sha256", "value": sha256 over every tensor's name, dtype, shape and bytes in sorted
name order, "manifest": sha256 of the manifest without its checksum as canonical JSON}``, ``source``).
Files written before the ``manifest`` digest existed (no such key) load with the tensors checked only.

Tensors (all channels-last; ``i`` a binary block):

* ``stem.weight`` int8 (O, KH, KW, C): the stem conv with the input normalisation's ``1/(255 std)``
  folded in, quantized per output channel (symmetric, ``stem.weight_scale`` float32 (O,));
  ``stem.weight_float`` float32 (O, KH, KW, C): the same folded weights unquantized (a few KB; the
  int8 stem flips enough signs downstream to change ~4% of predictions, see frozen.py);
  ``stem.input_offset`` float32 (C,) = ``255 * mean`` (the pixel value that normalises to 0, also
  the value of torch's zero padding); ``stem.scale`` / ``stem.bias`` float32 (O,): batch norm as
  ``scale * conv + bias``; ``stem.act.{shift_in,slope,shift_out}`` RPReLU.
* ``fused.blocks.{i}.weight`` uint64 (O, 3, 3, words_for(I)): :func:`bitpack.pack_signs` of the
  binary weights; ``fused.blocks.{i}.scale`` / ``.bias`` float32 (O,): ``mean|W| * BN`` fused
  (``scale * dot + bias``); ``fused.blocks.{i}.input_bias`` float32 (I,): the learnable bias
  before the sign; ``fused.blocks.{i}.act.{shift_in,slope,shift_out}`` float32 (O,).
* ``head.weight`` float32 (classes, F).
* raw parameters of the last ``tail_blocks`` blocks, by state_dict name: ``blocks.{i}.conv.weight.codes``
  uint8 (O, I, KH, KW) + ``blocks.{i}.conv.weight.range`` float32 (2,) = (min, max) of the
  uniform quantizer of docs/design.md §1.5; float32 ``blocks.{i}.move.bias``,
  ``blocks.{i}.bn.{weight,bias,running_mean,running_var}``, ``blocks.{i}.act.{shift_in,slope,shift_out}``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from bnncl.atomic import replace_file
from bnncl.device.bitpack import words_for
from bnncl.device.shapes import MAX_TAIL_BLOCKS, block_geometry, split_for_tail, split_index, split_names
from bnncl.errors import ModelFileError

FORMAT = "bnncl-device-model"
FORMAT_VERSION = 1
STEM_BITS = 8
LATENT_WEIGHT_BITS = 8
BN_EPS = 1e-5

_ACT = ("shift_in", "slope", "shift_out")
_BN = ("weight", "bias", "running_mean", "running_var")
_ARCH_KEYS = {"name", "input_shape", "stem_channels", "blocks", "num_classes", "binary", "binary_latents",
              "sign_gradient", "mean", "std"}


# ---------------------------------------------------------------------------------------------
# Architecture (a plain dict, the JSON of nn.backbones.BackboneConfig; no torch here)


def _is_int(v: Any) -> bool:
    """A JSON integer (not a bool, not a float such as ``1.0``)."""
    return isinstance(v, int) and not isinstance(v, bool)


MAX_SIDE = 4096  # input height / width a device model may declare
MAX_INPUT_CHANNELS = 4  # grey, RGB, RGBA
MAX_CHANNELS = 1 << 16  # stem / block channels and classes


def _check_architecture(arch: Any) -> dict[str, Any]:
    if not isinstance(arch, dict) or not _ARCH_KEYS <= set(arch):
        got = sorted(arch) if isinstance(arch, dict) else type(arch).__name__
        raise ValueError(f"architecture: expected keys {sorted(_ARCH_KEYS)}, got {got}")
    ints = lambda v: _is_int(v) and 0 < v <= MAX_CHANNELS  # noqa: E731
    shape = arch["input_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v) for v in shape)
            and 0 < shape[0] <= MAX_SIDE and 0 < shape[1] <= MAX_SIDE and 0 < shape[2] <= MAX_INPUT_CHANNELS):
        raise ValueError(f"architecture.input_shape: expected [H, W, C] with 1 <= H, W <= {MAX_SIDE} and "
                         f"1 <= C <= {MAX_INPUT_CHANNELS}, got {shape!r}")
    if not ints(arch["stem_channels"]) or not ints(arch["num_classes"]):
        raise ValueError(f"architecture: stem_channels and num_classes must be ints in [1, {MAX_CHANNELS}]")
    blocks = arch["blocks"]
    if not (isinstance(blocks, list) and blocks and all(
            isinstance(b, list) and len(b) == 2 and ints(b[0]) and ints(b[1]) and b[1] in (1, 2) for b in blocks)):
        raise ValueError(f"architecture.blocks: expected [[out_channels, stride 1|2], ...], got {blocks!r}")
    if arch["binary"] is not True:
        raise ValueError("architecture.binary: the device runs binary backbones only")
    if arch.get("stem_bits", 32) not in (8, 32) or isinstance(arch.get("stem_bits"), bool):
        raise ValueError(f"architecture.stem_bits: expected 8 (trained int8 stem) or 32, got {arch['stem_bits']!r}")
    c = shape[2]
    for key in ("mean", "std"):
        v = arch[key]
        if not (isinstance(v, list) and len(v) == c and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            raise ValueError(f"architecture.{key}: expected {c} finite numbers (one per input channel), got {v!r}")
    if any(s <= 0 for s in arch["std"]):
        raise ValueError("architecture.std: expected positive values")
    latents = arch["binary_latents"]
    if not isinstance(latents, list) or any(s not in split_names(arch) for s in latents):
        raise ValueError(f"architecture.binary_latents: expected split names, got {latents!r}")
    for i, g in enumerate(block_geometry(arch)):
        if g["out_channels"] % g["in_channels"]:
            raise ValueError(f"architecture.blocks[{i}]: out_channels must be a multiple of in_channels")
        if g["stride"] == 2 and (g["in_h"] % 2 or g["in_w"] % 2):
            raise ValueError(f"architecture.blocks[{i}]: stride 2 needs an even input size")
    return arch


# ---------------------------------------------------------------------------------------------
# Expected tensors


def expected_tensors(arch: Mapping[str, Any], tail_blocks: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every tensor name of a model file for ``arch`` -> (shape, dtype)."""
    f32, o = np.dtype(np.float32), arch["stem_channels"]
    c = arch["input_shape"][2]
    spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {
        "stem.weight": ((o, 3, 3, c), np.dtype(np.int8)),
        "stem.weight_scale": ((o,), f32), "stem.weight_float": ((o, 3, 3, c), f32),
        "stem.input_offset": ((c,), f32),
        "stem.scale": ((o,), f32), "stem.bias": ((o,), f32),
    }
    spec.update({f"stem.act.{k}": ((o,), f32) for k in _ACT})
    geo = block_geometry(arch)
    n = len(geo)
    for i, g in enumerate(geo):
        ci, co = g["in_channels"], g["out_channels"]
        p = f"fused.blocks.{i}."
        spec[p + "weight"] = ((co, 3, 3, words_for(ci)), np.dtype(np.uint64))
        spec.update({p + k: ((co,), f32) for k in ("scale", "bias")})
        spec[p + "input_bias"] = ((ci,), f32)
        spec.update({f"{p}act.{k}": ((co,), f32) for k in _ACT})
        if i >= n - tail_blocks:
            r = f"blocks.{i}."
            spec[r + "conv.weight.codes"] = ((co, ci, 3, 3), np.dtype(np.uint8))
            spec[r + "conv.weight.range"] = ((2,), f32)
            spec[r + "move.bias"] = ((ci,), f32)
            spec.update({f"{r}bn.{k}": ((co,), f32) for k in _BN})
            spec.update({f"{r}act.{k}": ((co,), f32) for k in _ACT})
    spec["head.weight"] = ((arch["num_classes"], geo[-1]["out_channels"]), f32)
    return spec


def checksum(tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest minus its ``checksum`` entry, as canonical JSON (sorted keys, no spaces)."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Uniform min/max quantizer (docs/design.md §1.5) of the stored latent weights


def quantize_uniform(x: np.ndarray, bits: int = LATENT_WEIGHT_BITS) -> tuple[np.ndarray, np.ndarray]:
    """``(codes uint8/uint16, range float32 [min, max])`` with ``codes = round((x - min) * s)``."""
    x = np.asarray(x, dtype=np.float32)
    lo, hi = np.float32(x.min()), np.float32(x.max())
    dtype = np.uint8 if bits <= 8 else np.uint16
    if hi <= lo:
        return np.zeros(x.shape, dtype), np.array([lo, hi], np.float32)
    s = np.float32(2**bits - 1) / (hi - lo)
    codes = np.clip(np.round((x - lo) * s), 0, 2**bits - 1).astype(dtype)
    return codes, np.array([lo, hi], np.float32)


def dequantize_uniform(codes: np.ndarray, rng: np.ndarray, bits: int = LATENT_WEIGHT_BITS) -> np.ndarray:
    """Float32 ``codes / s + min`` (the quantizer's output ``q(x)``); a constant tensor gives ``min``."""
    lo, hi = np.float32(rng[0]), np.float32(rng[1])
    if hi <= lo:
        return np.full(codes.shape, lo, np.float32)
    s = np.float32(2**bits - 1) / (hi - lo)
    return (codes.astype(np.float32) / s + lo).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Manifest and the model


def _check_manifest(man: Any) -> dict[str, Any]:
    if not isinstance(man, dict):
        raise ValueError("manifest: expected a JSON object")
    need = {"architecture", "layers", "class_names", "pretrained_classes", "lr_split", "input",
            "tail_blocks", "latent_weight_bits", "checksum"}
    missing = need - set(man)
    if missing:
        raise ValueError(f"manifest: missing {', '.join(sorted(missing))}")
    arch = _check_architecture(man["architecture"])
    names, classes = man["class_names"], man["pretrained_classes"]
    if not (isinstance(names, list) and all(isinstance(s, str) for s in names)):
        raise ValueError("manifest.class_names: expected a list of strings")
    if not (isinstance(classes, list) and len(classes) == arch["num_classes"]
            and all(_is_int(c) and 0 <= c < max(len(names), 1) for c in classes)
            and len(set(classes)) == len(classes)):
        raise ValueError(f"manifest.pretrained_classes: expected {arch['num_classes']} distinct class indices "
                         f"into class_names, got {classes!r}")
    if man["lr_split"] not in split_names(arch):
        raise ValueError(f"manifest.lr_split: expected one of {split_names(arch)}, got {man['lr_split']!r}")
    tb = man["tail_blocks"]
    if not (_is_int(tb) and 0 <= tb <= min(MAX_TAIL_BLOCKS, len(arch["blocks"]))):
        raise ValueError(f"manifest.tail_blocks: expected 0..{MAX_TAIL_BLOCKS}, got {tb!r}")
    if not _is_int(man["latent_weight_bits"]) or man["latent_weight_bits"] != LATENT_WEIGHT_BITS:
        raise ValueError(
            f"manifest.latent_weight_bits: expected {LATENT_WEIGHT_BITS}, got {man['latent_weight_bits']!r}"
        )
    ck = man["checksum"]
    if not (isinstance(ck, dict) and ck.get("algorithm") == "sha256" and isinstance(ck.get("value"), str)
            and set(ck) <= {"algorithm", "value", "manifest"} and isinstance(ck.get("manifest", ""), str)):
        raise ValueError("manifest.checksum: expected {'algorithm': 'sha256', 'value': HEX, 'manifest': HEX}")
    layers = man["layers"]
    if not (isinstance(layers, list) and len(layers) == len(arch["blocks"]) + 2
            and all(isinstance(x, dict) and {"name", "kind", "weight_bits", "input_bits"} <= set(x) for x in layers)):
        raise ValueError("manifest.layers: expected stem, one entry per binary block and head, each with "
                         "name, kind, weight_bits, input_bits")
    return man


@dataclass
class DeviceModel:
    """A loaded (or about to be saved) device model: the manifest and its named tensors."""

    manifest: dict[str, Any]
    tensors: dict[str, np.ndarray]
    path: str = "<memory>"

    # -- properties -----------------------------------------------------------------------
    @property
    def architecture(self) -> dict[str, Any]:
        """The BackboneConfig-equivalent architecture dict (lists for tuples)."""
        return self.manifest["architecture"]

    @property
    def num_blocks(self) -> int:
        return len(self.architecture["blocks"])

    @property
    def lr_split(self) -> str:
        """The default latent-replay split (``binary_latents[0]`` of the exported backbone)."""
        return self.manifest["lr_split"]

    @property
    def class_names(self) -> list[str]:
        return self.manifest["class_names"]

    @property
    def pretrained_classes(self) -> list[int]:
        """Dataset class index of each head row."""
        return self.manifest["pretrained_classes"]

    def is_binary_split(self, split: str) -> bool:
        """Whether the block after ``split`` sees ``sign(x + b)`` for conv and shortcut (1-bit latent)."""
        split_index(self.architecture, split)
        return split in self.architecture["binary_latents"]

    def split_for_tail(self, tail_blocks: int) -> str:
        """Split whose tail holds the last ``tail_blocks`` binary blocks (``gap`` for 0)."""
        return split_for_tail(self.architecture, tail_blocks)

    # -- tail parameters for on-device training ---------------------------------------------
    def tail_parameters(self, tail_blocks: int) -> dict[str, np.ndarray]:
        """Float32 parameters of the last ``tail_blocks`` blocks and the head, by state_dict name
        (``blocks.{i}.conv.weight`` (O, I, 3, 3) de-quantized latent weights, ``blocks.{i}.move.bias``,
        ``blocks.{i}.bn.*``, ``blocks.{i}.act.*``, ``head.weight``); copies, safe to modify."""
        stored = self.manifest["tail_blocks"]
        if isinstance(tail_blocks, bool) or not isinstance(tail_blocks, (int, np.integer)) \
                or not 0 <= tail_blocks <= stored:
            raise ValueError(f"tail_blocks: this model file stores raw parameters for 0..{stored} tail blocks, "
                             f"got {tail_blocks!r}")
        out: dict[str, np.ndarray] = {}
        n = self.num_blocks
        for i in range(n - tail_blocks, n):
            p = f"blocks.{i}."
            out[p + "conv.weight"] = dequantize_uniform(self.tensors[p + "conv.weight.codes"],
                                                        self.tensors[p + "conv.weight.range"])
            for k in ["move.bias"] + [f"bn.{b}" for b in _BN] + [f"act.{a}" for a in _ACT]:
                out[p + k] = self.tensors[p + k].astype(np.float32, copy=True)
        out["head.weight"] = self.tensors["head.weight"].astype(np.float32, copy=True)
        return out

    # -- I/O ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the manifest, every tensor's presence, shape and dtype, and the checksum (ValueError)."""
        man = _check_manifest(self.manifest)
        spec = expected_tensors(man["architecture"], man["tail_blocks"])
        extra = set(self.tensors) - set(spec)
        if extra:
            raise ValueError(f"unexpected tensors: {', '.join(sorted(extra)[:5])}")
        for name, (shape, dtype) in spec.items():
            t = self.tensors.get(name)
            if t is None:
                raise ValueError(f"missing tensor {name}")
            if t.dtype != dtype or tuple(t.shape) != shape:
                raise ValueError(f"tensor {name}: expected {dtype} {shape}, got {t.dtype} {tuple(t.shape)}")
            if t.dtype.kind == "f" and not np.all(np.isfinite(t)):
                raise ValueError(f"tensor {name}: contains NaN or infinity")
        if checksum(self.tensors) != man["checksum"]["value"]:
            raise ValueError("checksum mismatch: the tensors are corrupted")
        if "manifest" in man["checksum"] and manifest_checksum(man) != man["checksum"]["manifest"]:
            raise ValueError("checksum mismatch: the manifest is corrupted")

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file, fsync, rename); fills in the checksum first."""
        self.manifest["checksum"] = {"algorithm": "sha256", "value": checksum(self.tensors),
                                     "manifest": manifest_checksum(self.manifest)}
        try:
            self.validate()
        except ValueError as exc:
            raise ModelFileError(f"{path}: refusing to write an invalid model ({exc})") from None
        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "manifest": json.dumps(self.manifest, sort_keys=True)}
        atomic_save_numpy(self.tensors, meta, path)
        self.path = str(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DeviceModel:
        """Read and fully validate a ``.bnn`` file; any problem is one :class:`ModelFileError` line."""
        p = Path(path)
        if not p.is_file():
            raise ModelFileError(f"{p}: no such model file")
        try:
            from safetensors import safe_open

            with safe_open(str(p), framework="np") as fh:
                meta = dict(fh.metadata() or {})
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            version = meta.get("format_version", "")
            if version != str(FORMAT_VERSION):
                raise ValueError(f"format version {version!r}, this bnncl reads version {FORMAT_VERSION}")
            manifest = json.loads(meta["manifest"])
            tensors = load_file(str(p))
            model = cls(manifest, dict(tensors), str(p))
            model.validate()
        except ModelFileError:
            raise
        except (SafetensorError, OSError, ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelFileError(f"{p}: not a valid bnncl device model ({msg})") from None
        return model

    def __repr__(self) -> str:
        name = Path(self.path).stem if self.path != "<memory>" else self.architecture["name"]
        shape = "x".join(map(str, self.architecture["input_shape"]))
        return (f"DeviceModel({name!r}, {shape}, {self.num_blocks} blocks, {len(self.pretrained_classes)} of "
                f"{len(self.class_names)} classes pretrained, lr split {self.lr_split})")


def atomic_save_numpy(tensors: Mapping[str, np.ndarray], metadata: dict[str, str], path: str | os.PathLike) -> None:
    """safetensors bytes written by :func:`bnncl.atomic.replace_file` (temp, fsync, rename, folder fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata))
