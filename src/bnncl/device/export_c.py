"""``bnncl export-c``: a device model as const C arrays for libbnncl (``libbnncl/include/bnncl.h``).

Writes three files into the output folder:

* ``model.c``: the arrays (binary weights in the C core's panel layout, the fused per-channel
  transforms, the int8 stem, the head) and the ``bnncl_model`` that points at them;
* ``model.h``: declares that model (``bnncl_exported_model`` unless ``--symbol``);
* ``model_config.h``: ``BNNCL_ARENA_BYTES`` (the exact arena :func:`arena_bytes`, the same figure as the
  library's ``bnncl_arena_size``, predict and learn included), the input shape, the class counts, the
  bytes of a saved state and of the arrays.

Learning is streaming LDA on the pooled features (:class:`bnncl.cl.slda.StreamingLDA`) over ``capacity``
rows (dataset classes ``0 .. capacity - 1``; default: the model's class names). ``slda`` (optional) is an
initial state, e.g. the one ``bnncl.api.Learner(model).deploy(images, labels)`` computes on the base
classes (``learner.learner.feature_head``): its means, counts, covariance and leave-one-out counts
(``loo_correct``, so the device chooses the shrinkage as :attr:`StreamingLDA.effective_shrinkage` does) are
written as const arrays that ``bnncl_init`` copies into the arena, so the device predicts with it from the
start. Without it the device starts empty and predicts with the pretrained head until it learns.

The values are the ones :class:`bnncl.device.frozen.FrozenEngine` computes and runs (its stem weights,
fused stem bias with the border correction, block transforms and transposed head), written exactly
(hexadecimal floats), so libbnncl's predict is bit-identical to the engine's logits.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bnncl.cl.slda import DEFAULT_SHRINKAGE, SHRINKAGE_GRID, StreamingLDA
from bnncl.device.bitpack import words_for
from bnncl.device.frozen import FrozenEngine, resolve_stem
from bnncl.device.modelfile import DeviceModel
from bnncl.device.shapes import block_geometry
from bnncl.errors import BnnclError

NB = 32  # output channels per weight panel (BNNCL_NB)
ROWS = 12  # im2col rows per block in libbnncl (src/bnncl.c)
CTX_RESERVE = 512  # arena bytes reserved for the context (src/bnncl.c)
MODEL_VERSION = 3
STATE_HEADER = 32  # bytes of a saved state's header (include/bnncl.h)
ADDMAP_FULL, ADDMAP_NINE = 0, 1
_C_TYPES = {np.dtype(np.uint64): "uint64_t", np.dtype(np.float32): "float", np.dtype(np.int8): "int8_t",
            np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t"}


def conv_panels(weight: np.ndarray, in_channels: int) -> np.ndarray:
    """Packed (O, 3, 3, words) weights -> the C core's panels (ceil(O / 32), kk, 32) uint64: per output
    channel the bit stream of its 9 taps (``cin`` bits each, tap-major), as ``conv_panels`` in core.c."""
    o, kh, kw, _ = weight.shape
    taps = np.unpackbits(np.ascontiguousarray(weight).view(np.uint8).reshape(o, kh * kw, -1), axis=2,
                         bitorder="little")[:, :, :in_channels]
    k = kh * kw * in_channels
    kk = words_for(k)
    stream = np.zeros((o, kk * 64), np.uint8)
    stream[:, :k] = taps.reshape(o, k)
    rows = np.packbits(stream, axis=1, bitorder="little").view(np.uint64).reshape(o, kk)
    npanels = -(-o // NB)
    padded = np.zeros((npanels * NB, kk), np.uint64)
    padded[:o] = rows
    return np.ascontiguousarray(padded.reshape(npanels, NB, kk).transpose(0, 2, 1))


def _pad(v: np.ndarray) -> np.ndarray:
    out = np.zeros(-(-len(v) // NB) * NB, np.float32)
    out[:len(v)] = v
    return out


def nine_patterns(addmap: np.ndarray) -> np.ndarray | None:
    """The (H, W, C) stem addmap as (3, 3, C) by border class (first / middle / last row and column), or None
    when that does not reproduce every value bit for bit (then the full map is written)."""
    h, w, _ = addmap.shape
    if h < 3 or w < 3:
        return None
    ry = np.clip(np.arange(h), 0, 1) + (np.arange(h) == h - 1)
    rx = np.clip(np.arange(w), 0, 1) + (np.arange(w) == w - 1)
    nine = addmap[[0, 1, h - 1]][:, [0, 1, w - 1]]
    rebuilt = nine[ry][:, rx]
    return np.ascontiguousarray(nine) if np.array_equal(rebuilt.view(np.uint32), addmap.view(np.uint32)) else None


def state_payload(classes: int, features: int, version: int = 2) -> int:
    """Bytes of a saved state's payload: counts int64, means float32, packed covariance float32 and (version 2) the
    leave-one-out counts int64 (one per :data:`~bnncl.cl.slda.SHRINKAGE_GRID` value)."""
    loo = 8 * len(SHRINKAGE_GRID) if version >= 2 else 0
    return 8 * classes + 4 * classes * features + 4 * (features * (features + 1) // 2) + loo


def state_bytes(classes: int, features: int) -> int:
    """Bytes ``bnncl_state_save`` writes (header, payload, CRC32 trailer)."""
    return STATE_HEADER + state_payload(classes, features) + 4


def float_plan(geo: list[dict[str, int]]) -> list[int]:
    """Floats of libbnncl's two real-valued map buffers (``float_plan`` in src/bnncl.c): a block's output is kept
    2x2-pooled when the next block has stride 2, else in full; the stem's output is recomputed, not kept; a
    stride-1 block with as many outputs as inputs writes over its input, any other block the other buffer."""
    fl, cur = [0, 0], -1
    for i, g in enumerate(geo):
        ho, wo = (g["in_h"] - 1) // g["stride"] + 1, (g["in_w"] - 1) // g["stride"] + 1
        pooled = i + 1 < len(geo) and geo[i + 1]["stride"] == 2
        n = (ho // 2) * (wo // 2) * g["out_channels"] if pooled else ho * wo * g["out_channels"]
        in_place = cur >= 0 and g["stride"] == 1 and g["out_channels"] == g["in_channels"]
        cur = cur if in_place else (1 if cur == 0 else 0)
        fl[cur] = max(fl[cur], n)
    return fl


MIN_CHUNK = 16  # feature vectors bnncl_learn keeps at least (src/bnncl.c)


def arena_plan(model: DeviceModel, capacity: int | None = None) -> dict[str, int]:
    """libbnncl's memory plan for predict and streaming-LDA learning over ``capacity`` classes (default: the
    model's class names; 0: predict only), as ``plan`` in src/bnncl.c: ``arena_bytes`` (``bnncl_arena_size``),
    ``learn_chunk`` (``bnncl_learn_chunk``: images merged at a time), ``loo_rows`` (feature vectors the
    leave-one-out pass holds beside the reduced covariance and its vectors), ``work`` (the work area: the
    forward's buffers, or in turn the fold's, the Cholesky factor, a state being loaded) and ``forward`` (its
    buffers)."""
    arch = model.architecture
    h, w, c = arch["input_shape"]
    sc = arch["stem_channels"]
    geo = block_geometry(arch)
    bits, kk, cin, o = [0, 0], 0, 0, 0
    for i, g in enumerate(geo):
        bits[i % 2] = max(bits[i % 2], g["in_h"] * g["in_w"] * words_for(g["in_channels"]))
        kk = max(kk, words_for(9 * g["in_channels"]))
        cin = max(cin, g["in_channels"])
        o = max(o, g["out_channels"])
    int8_stem = resolve_stem(arch) == "int8"

    def up(n: int) -> int:
        return (n + 15) // 16 * 16

    ncls = len(model.pretrained_classes)
    d = geo[-1]["out_channels"]
    fl = float_plan(geo)
    stem_w = up(9 * c * sc * 4) if int8_stem else 0
    # padded image, the two real-valued map buffers, the stem rows block 0 recomputes, the conv rows before the
    # epilogue, the 2x2-pool pair sum, packed bits of even / odd blocks' inputs, im2col rows, shortcut, stem
    # accumulator, features, logits
    fwd = sum([up((h + 2) * (w + 2) * c * 4), up(fl[0] * 4), up(fl[1] * 4), up(geo[0]["stride"] * w * sc * 4),
               up(ROWS * o * 4), up(o * 4), up(bits[0] * 8), up(bits[1] * 8), up(ROWS * kk * 8), up(cin * 4),
               up(sc * 4), up(d * 4), up(ncls * 4)])
    k = len(model.class_names) if capacity is None else capacity
    if not k:
        return {"arena_bytes": CTX_RESERVE + stem_w + fwd, "learn_chunk": 0, "loo_rows": 0, "work": fwd,
                "forward": fwd}
    p = d * (d + 1) // 2
    fold = up(k * d * 8) + up(k * 8) + up(d * 8)  # per-class chunk sums and counts, one scatter row
    wbytes = up(k * d * 8)  # the classifier's W, which the chunk's features run into
    factor = up(p * 8) + up(d * 8)  # Cholesky factor and a vector
    work = max(factor, up(state_payload(k, d)))  # or a loaded state
    chunk_off = max(fwd, fold)
    work = max(work, chunk_off)
    if work - chunk_off + wbytes < MIN_CHUNK * d * 4:
        work = up(chunk_off + MIN_CHUNK * d * 4 - wbytes)
    # the leave-one-out pass: Sigma reduced to tridiagonal form in the factor's place, tmp, 3 vectors, q per grid
    # value and class, the class means in the reduced basis; it holds features past them, on into W
    loo_scratch = factor + up(3 * d * 8) + up(len(SHRINKAGE_GRID) * k * 8) + up(k * d * 8)
    loo_off = max(chunk_off, loo_scratch)
    if work - loo_off + wbytes < MIN_CHUNK * d * 4:
        work = up(loo_off + MIN_CHUNK * d * 4 - wbytes)
    # W, b, the state (means, counts, cov), the SLDA logits
    rest = wbytes + up(k * 8) + up(k * d * 4) + up(k * 8) + up(p * 4) + up(k * 4)
    return {"arena_bytes": CTX_RESERVE + stem_w + work + rest, "learn_chunk": (work - chunk_off + wbytes) // (d * 4),
            "loo_rows": (work - loo_off + wbytes) // (d * 4), "work": work, "forward": fwd}


def arena_bytes(model: DeviceModel, capacity: int | None = None) -> int:
    """The arena libbnncl needs for predict and streaming-LDA learning over ``capacity`` classes (default:
    the model's class names; 0: predict only) on this model (``bnncl_arena_size``: the same layout)."""
    return arena_plan(model, capacity)["arena_bytes"]


@dataclass
class _Writer:
    """Collects const arrays as C source and counts their bytes."""

    prefix: str
    lines: list[str] = field(default_factory=list)
    nbytes: int = 0
    crc: int = 0  # zlib.crc32 of every array's bytes, in order: the model's fingerprint

    def array(self, name: str, a: np.ndarray, attr: str = "") -> str:
        a = np.ascontiguousarray(a).reshape(-1)
        ctype = _C_TYPES[a.dtype]
        sym = f"{self.prefix}_{name}"
        self.nbytes += a.nbytes
        self.crc = zlib.crc32(a.tobytes(), self.crc)
        vals = [_literal(v, a.dtype) for v in a.tolist()]
        body = ",\n".join("    " + ", ".join(vals[i:i + 8]) for i in range(0, len(vals), 8))
        self.lines.append(f"static const {ctype} {sym}[{len(vals)}]{attr} = {{\n{body}\n}};\n")
        return sym


def _literal(v: float | int, dtype: np.dtype) -> str:
    if dtype == np.uint64:
        return f"0x{v:016x}u"
    if dtype != np.float32:
        return str(v)
    if math.isnan(v):
        return "NAN"
    if math.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    return f"{float(v).hex()}f"


def export_c(model: DeviceModel, out: str | Path, symbol: str = "bnncl_exported_model", *,
             slda: StreamingLDA | None = None, capacity: int | None = None,
             shrinkage: float = DEFAULT_SHRINKAGE) -> dict[str, int]:
    """Write model.c, model.h and model_config.h for ``model`` into ``out``; returns the figures
    (``arena_bytes``, ``learn_chunk``, ``array_bytes`` (the model's), ``state_array_bytes`` (the embedded
    initial state), ``state_bytes`` (a saved state), ``fingerprint``). ``slda``: the initial learning state (module
    docstring); it fixes ``capacity`` and ``shrinkage``."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", symbol):
        raise BnnclError(f"--symbol: expected a C identifier, got {symbol!r}")
    eng = FrozenEngine(model, tune_heap=False)
    arch = model.architecture
    h, w, c = arch["input_shape"]
    wr = _Writer(symbol)
    stem_w = eng._stem_w
    if eng.stem_precision == "int8":
        q = stem_w.astype(np.int8)
        if not np.array_equal(q.astype(np.float32), stem_w):
            raise BnnclError(f"{model.path}: int8 stem weights are not integers in [-128, 127]")
        stem = f"{wr.array('stem_w_i8', q)}, NULL"
    else:
        stem = f"NULL, {wr.array('stem_w_f32', stem_w)}"
    addmap = np.ascontiguousarray(eng._stem_bias, dtype=np.float32)
    nine = nine_patterns(addmap)
    kind = ADDMAP_FULL if nine is None else ADDMAP_NINE
    addmap_sym = wr.array("stem_addmap", addmap if nine is None else nine)
    s_in, s_sl, s_out = (wr.array(f"stem_{n}", a) for n, a in zip(("shift_in", "slope", "shift_out"), eng._stem_act))
    stem_mul = wr.array("stem_mul", eng._stem_scale)
    blocks = []
    for i, (b, g) in enumerate(zip(eng.blocks, eng._geometry)):
        n = f"b{i}_"
        syms = [wr.array(n + "panels", conv_panels(b.weight, b.in_channels), " BNNCL_PANEL_ALIGN"),
                wr.array(n + "scale", _pad(b.scale)),
                wr.array(n + "bias", _pad(b.bias)), wr.array(n + "input_bias", b.input_bias),
                *(wr.array(n + k, a) for k, a in zip(("shift_in", "slope", "shift_out"), b.act))]
        blocks.append(f"    {{{g['in_channels']}, {g['out_channels']}, {g['stride']}, {g['in_h']}, {g['in_w']}, "
                      f"{int(b.binary_input)}, {', '.join(syms)}}},")
    head = wr.array("head", eng._head_t.astype(np.float32))
    classes = wr.array("class_ids", np.asarray(model.pretrained_classes, np.int32))
    features, ncls = eng._head_t.shape
    fingerprint, model_bytes = wr.crc, wr.nbytes
    if slda is not None:
        if slda.dim != features or slda.cov_bits != 32:
            raise BnnclError(f"export-c: the SLDA state has {slda.dim} features at {slda.cov_bits} bits; the model "
                             f"has {features} and libbnncl stores the covariance at 32 bits")
        capacity, shrinkage = slda.num_classes, slda.shrinkage
        init = (f"{wr.array('slda_means', slda.means.astype(np.float32))}, "
                f"{wr.array('slda_counts', slda.counts.astype(np.int64))}, "
                f"{wr.array('slda_cov', slda.cov_packed.astype(np.float32))}, "
                f"{wr.array('slda_loo', np.asarray(slda.loo_correct, np.int64))}")
    else:
        init = "NULL, NULL, NULL, NULL"
    capacity = len(model.class_names) if capacity is None else int(capacity)
    if capacity < 0:
        raise BnnclError(f"export-c: capacity must be >= 0, got {capacity}")
    mem = arena_plan(model, capacity)
    arena = mem["arena_bytes"]
    saved = state_bytes(capacity, features) if capacity else 0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = arch.get("name", "?")
    (out / "model.c").write_text(
        f"/* {name}: written by `bnncl export-c` from {Path(model.path).name}; do not edit. */\n"
        "#include <math.h>\n#include <stddef.h>\n\n#include \"model.h\"\n\n" + "\n".join(wr.lines)
        + f"\nstatic const bnncl_block_desc {symbol}_blocks[{len(blocks)}] = {{\n" + "\n".join(blocks) + "\n};\n\n"
        + f"const bnncl_model {symbol} = {{\n    BNNCL_MODEL_MAGIC, {MODEL_VERSION}, {h}, {w}, {c}, "
        f"{arch['stem_channels']},\n    {stem}, {stem_mul}, {kind}, {addmap_sym}, {s_in}, {s_sl}, {s_out},\n"
        f"    {len(blocks)}, {symbol}_blocks, {features}, {ncls}, {head}, {classes},\n"
        f"    0x{fingerprint:08x}u, {capacity}, {float(shrinkage).hex()}, {init}}};\n")
    guard = f"{symbol.upper()}_H"
    (out / "model.h").write_text(
        f"/* {name}: written by `bnncl export-c`; do not edit. */\n#ifndef {guard}\n#define {guard}\n\n"
        f"#include \"bnncl.h\"\n#include \"model_config.h\"\n\nextern const bnncl_model {symbol};\n\n#endif\n")
    (out / "model_config.h").write_text(
        f"/* {name}: written by `bnncl export-c`; do not edit. */\n#ifndef {guard[:-2]}_CONFIG_H\n"
        f"#define {guard[:-2]}_CONFIG_H\n\n"
        f"#define BNNCL_ARENA_BYTES {arena} /* bnncl_arena_size(&{symbol}): RAM for predict and learn */\n"
        f"#define BNNCL_LEARN_CHUNK {mem['learn_chunk']} /* bnncl_learn_chunk: images merged at a time */\n"
        f"#define BNNCL_MODEL_ARRAY_BYTES {model_bytes} /* const arrays of the model (flash) */\n"
        f"#define BNNCL_STATE_ARRAY_BYTES {wr.nbytes - model_bytes} /* const initial SLDA state (flash) */\n"
        f"#define BNNCL_STATE_BYTES {saved} /* bnncl_state_size: a saved state */\n"
        f"#define BNNCL_MODEL_FINGERPRINT 0x{fingerprint:08x}u\n"
        f"#define BNNCL_INPUT_H {h}\n#define BNNCL_INPUT_W {w}\n#define BNNCL_INPUT_C {c}\n"
        f"#define BNNCL_NUM_CLASSES {ncls} /* scores of the pretrained head */\n"
        f"#define BNNCL_SLDA_CLASSES {capacity} /* rows of the learner: dataset classes 0 .. {capacity - 1} */\n"
        f"#define BNNCL_MAX_SCORES {max(ncls, capacity)}\n\n#endif\n")
    return {"arena_bytes": arena, "learn_chunk": mem["learn_chunk"], "array_bytes": model_bytes,
            "state_array_bytes": wr.nbytes - model_bytes,
            "state_bytes": saved, "fingerprint": fingerprint}

