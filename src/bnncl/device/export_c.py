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

Or learning is head-only CWR* with latent replay (``cwr``, :func:`cwr_export`): the configuration, the images
one ``bnncl_learn`` call may hold (``max_images``) and the state of a :class:`bnncl.cl.learner.ContinualLearner`
(strategy cwr_star, no tail blocks, ``rng="portable"``), e.g. after its deployment on the base classes: consolidated
rows and counts, the standardizer, the replay buffer (codes or float32 rows, labels, experience indices, seen
counts, value range) and both random streams, so the C loop (``libbnncl/src/cwr_learn.c``) goes on where Python
stopped, bit for bit.

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
MODEL_VERSION = 4
STRATEGY_NONE, STRATEGY_SLDA, STRATEGY_CWR_STAR = 0, 1, 2  # bnncl_model.strategy
CWR_RESERVE = 384  # arena bytes reserved for the CWR* part's context (src/ctx_cwr.c)
STATE_HEADER = 32  # bytes of a saved state's header (include/bnncl.h)
ADDMAP_FULL, ADDMAP_NINE = 0, 1
_C_TYPES = {np.dtype(np.uint64): "uint64_t", np.dtype(np.float32): "float", np.dtype(np.int8): "int8_t",
            np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t", np.dtype(np.uint8): "uint8_t"}


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


@dataclass(frozen=True)
class CwrExport:
    """Head-only CWR* as libbnncl's ``bnncl_cwr_model``: the ``bnncl_cwr_config`` fields, the images one
    ``bnncl_learn`` call may hold, the first experience index, the seed, and the initial state (``state``: the
    arrays and scalars of ``bnncl_cwr_model``, or None: start empty)."""

    classes: int
    features: int
    qf: int
    qb: int
    lr: float
    minibatch: int
    epochs: int  # 0: auto
    new_per_class: int  # 0: all
    mixing: int  # 0 proportional, 1 balanced
    standardize: int
    max_k: float  # < 0: none
    capacity: int
    lr_bits: int
    max_images: int
    next_experience: int = 0
    seed: int = 0
    state: dict | None = None

    def config_bytes(self) -> bytes:
        """The configuration as ``cfg_crc`` in src/ctx_cwr.c serializes it (little-endian)."""
        lr = int(np.float32(self.lr).view(np.uint32))
        head = np.array([self.classes, self.features, self.qf, self.qb, lr, self.minibatch, self.epochs,
                         self.new_per_class, self.mixing, self.standardize], "<u4")
        return head.tobytes() + np.float64(self.max_k).astype("<f8").tobytes() + \
            np.array([self.capacity, self.lr_bits], "<u4").tobytes()


def cwr_export(learner, max_images: int, next_experience: int | None = None) -> CwrExport:
    """The :class:`CwrExport` of a head-only CWR* learner with the portable stream (a :class:`bnncl.api.Learner`
    or its ``ContinualLearner``) as it is now (after its deployment, say): ``max_images`` images per
    ``bnncl_learn`` call; ``next_experience``: the index of the next experience (default: the api Learner's next,
    0 for a ``ContinualLearner``)."""
    if next_experience is None:
        next_experience = getattr(learner, "_next", 0)
    learner = getattr(learner, "learner", learner)  # the api Learner's ContinualLearner
    cfg, buf = learner.config, learner.buffer
    if cfg.strategy != "cwr_star" or learner.engine.split != "gap":
        raise BnnclError("export-c --strategy cwr_star: libbnncl learns head-only CWR* (--tail-blocks 0) only")
    if cfg.rng != "portable":
        raise BnnclError("export-c --strategy cwr_star: the learner must draw from the portable stream (rng portable)")
    if cfg.weight_align != "off":
        raise BnnclError("export-c --strategy cwr_star: --weight-align on is not in libbnncl")
    if buf is None or buf.policy != "class_balanced":
        raise BnnclError("export-c --strategy cwr_star: libbnncl's buffer is class-balanced")
    if buf.bits not in (8, 32):
        raise BnnclError(f"export-c --strategy cwr_star: --lr-bits {buf.bits}: libbnncl stores the real-valued "
                         "pooled features at 8 or 32 bits")
    if not 1 <= int(max_images) <= 1 << 20:
        raise BnnclError(f"export-c: --max-images must be in 1 .. {1 << 20}, got {max_images}")
    arrays, meta = learner.state_dict()
    cw = np.ascontiguousarray(arrays["cwr/cw"], np.float32)
    k, d = cw.shape
    seen = np.zeros(k, np.int64)
    seen[arrays["buffer/seen_classes"]] = arrays["buffer/seen_counts"]
    std = learner.standardizer
    value_range = meta["buffer"].get("value_range")
    state = {
        "cw": cw, "past": np.asarray(arrays["cwr/past"], np.int64),
        "shift": np.asarray(std.shift if std is not None else np.zeros(d), np.float32),
        "scale": np.asarray(std.scale if std is not None else np.ones(d), np.float32),
        "seen": seen, "store": np.ascontiguousarray(arrays["buffer/latents"]),
        "labels": np.asarray(arrays["buffer/labels"], np.int32),
        "experience": np.asarray(arrays["buffer/experience"], np.int32),
        "count": len(buf), "has_range": int(value_range is not None and buf.bits == 8),
        "lo": float(value_range[0]) if value_range is not None else 0.0,
        "hi": float(value_range[1]) if value_range is not None else 0.0,
        "fitted": int(std is not None and std.fitted),
        "rng": meta["rng_state"]["state"], "buffer_rng": meta["buffer"]["rng_state"]["state"],
    }
    return CwrExport(classes=k, features=d, qf=learner.engine.tail.qf, qb=learner.engine.tail.qb, lr=float(cfg.lr),
                     minibatch=cfg.minibatch_size, epochs=cfg.epochs or 0, new_per_class=cfg.new_per_class or 0,
                     mixing=int(cfg.mixing == "balanced"), standardize=int(std is not None),
                     max_k=-1.0 if cfg.cwr_max_k is None else float(cfg.cwr_max_k), capacity=buf.capacity,
                     lr_bits=buf.bits, max_images=int(max_images), next_experience=int(next_experience),
                     seed=cfg.seed, state=state)


def cwr_state_bytes(c: CwrExport, fingerprint: int) -> bytes:
    """The state ``bnncl_state_save`` writes for ``c``'s configuration and state (strategy 2, src/ctx_cwr.c) on a
    model of ``fingerprint``, with ``c.next_experience`` as the next experience index: a state Python prepares
    that a device loads (``bnncl_state_load``), or the one a device should have written."""
    st = c.state
    if st is None:
        raise BnnclError("cwr_state_bytes: the export holds no state")
    k, d, cap = c.classes, c.features, c.capacity
    n = int(st["count"])
    rows = np.zeros((cap, d), np.uint8 if c.lr_bits == 8 else "<f4")
    rows[:n] = np.asarray(st["store"])[:n]
    labels, exps = np.zeros(cap, "<i4"), np.zeros(cap, "<i4")
    labels[:n], exps[:n] = st["labels"][:n], st["experience"][:n]
    r, b = st["rng"], st["buffer_rng"]
    payload = b"".join([
        np.array([zlib.crc32(c.config_bytes()), int(st["has_range"]) | 2 * int(st["fitted"])], "<u4").tobytes(),
        np.array([n, c.next_experience], "<i8").tobytes(), np.array([st["lo"], st["hi"]], "<f8").tobytes(),
        np.array([int(r["state"]), int(r["inc"]), int(b["state"]), int(b["inc"])], "<u8").tobytes(),
        np.asarray(st["past"], "<i8").tobytes(), np.asarray(st["seen"], "<i8").tobytes(),
        np.asarray(st["cw"], "<f4").tobytes(), np.asarray(st["shift"], "<f4").tobytes(),
        np.asarray(st["scale"], "<f4").tobytes(), labels.tobytes(), exps.tobytes(), rows.tobytes()])
    header = np.array([0x54534C42, 2, fingerprint, STRATEGY_CWR_STAR, k, d, len(payload)], "<u4").tobytes()
    return header + np.uint32(zlib.crc32(header)).astype("<u4").tobytes() + payload + \
        np.uint32(zlib.crc32(payload)).astype("<u4").tobytes()


def _carve(sizes: list[int], used: int = 0) -> int:
    """Bytes after taking each size 8-byte aligned in turn from ``used`` (``take`` in src/cwr_learn.c)."""
    for n in sizes:
        used = (used + 7) // 8 * 8 + n
    return used


def cwr_plan(c: CwrExport) -> dict[str, int]:
    """The CWR* part of libbnncl's memory plan (src/ctx_cwr.c, src/cwr_learn.c): ``state_bytes``
    (``bnncl_cwr_state_bytes``), ``learn_scratch`` (``bnncl_cwr_learn_scratch_bytes(cfg, max_images)``),
    ``predict_scratch`` (of one image), ``payload`` (of a saved state), ``saved_bytes`` (``bnncl_state_size``),
    ``work`` (the work area it needs) and ``region`` (after the work area: features, context, state)."""
    k, d, cap, n = c.classes, c.features, c.capacity, c.max_images
    row = d * (1 if c.lr_bits == 8 else 4)
    state = _carve([k * d * 4, k * 8, d * 4, d * 4, k * 8, cap * row, cap * 4, cap * 4])
    m = c.minibatch + 2 * k
    step = max((d * k + 3 * m * k + k * d) * 4, k * d * 4)
    start = _carve([k, k * 8, k * d * 4, m * d * 4, m * 4, step, 2 * d * 8, 256 * 4, n * 4, n, n, n * 4])
    train = _carve([2 * k * 32, (n + cap) * 4, (n + cap + c.minibatch) * 4, max(n, cap) * 4], start)
    insert = _carve([k * 8, k * 8, k * 4, k * 4, cap * 4, cap * 4, cap * 4, n * 4, (k + 1) * 8, (k + 1) * 8, cap, cap,
                     row], start)
    learn = max(train, insert)
    predict = _carve([d * 4, k * d * 4, k * 4, (d + 2 * d * k) * 4])
    payload = 72 + 16 * k + 4 * k * d + 8 * d + 8 * cap + cap * row
    feat = (n * d * 4 + 15) // 16 * 16
    work = max(learn, predict, payload - feat)
    up = lambda v: (v + 15) // 16 * 16  # noqa: E731
    return {"state_bytes": state, "learn_scratch": learn, "predict_scratch": predict, "payload": payload,
            "saved_bytes": STATE_HEADER + payload + 4, "work": up(work), "region": feat + up(CWR_RESERVE) + up(state)}


MIN_CHUNK = 16  # feature vectors bnncl_learn keeps at least (src/bnncl.c)


def arena_plan(model: DeviceModel, capacity: int | None = None, cwr: CwrExport | None = None) -> dict[str, int]:
    """libbnncl's memory plan for predict and streaming-LDA learning over ``capacity`` classes (default: the
    model's class names; 0: predict only), as ``plan`` in src/bnncl.c: ``arena_bytes`` (``bnncl_arena_size``),
    ``learn_chunk`` (``bnncl_learn_chunk``: images merged at a time), ``loo_rows`` (feature vectors the
    leave-one-out pass holds beside the reduced covariance and its vectors), ``work`` (the work area: the
    forward's buffers, or in turn the fold's, the Cholesky factor, a state being loaded) and ``forward`` (its
    buffers). ``cwr``: head-only CWR* instead of SLDA (``capacity`` 0): its scratch shares the work area, its
    region (:func:`cwr_plan`) follows it."""
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
    if cwr is not None:
        cp = cwr_plan(cwr)
        work = max(fwd, cp["work"])
        return {"arena_bytes": CTX_RESERVE + stem_w + work + cp["region"], "learn_chunk": 0, "loo_rows": 0,
                "work": work, "forward": fwd}
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
             shrinkage: float = DEFAULT_SHRINKAGE, cwr: CwrExport | None = None) -> dict[str, int]:
    """Write model.c, model.h and model_config.h for ``model`` into ``out``; returns the figures
    (``arena_bytes``, ``learn_chunk``, ``array_bytes`` (the model's), ``state_array_bytes`` (the embedded
    initial state), ``state_bytes`` (a saved state), ``fingerprint``). ``slda``: the initial learning state (module
    docstring); it fixes ``capacity`` and ``shrinkage``. ``cwr``: learn with head-only CWR* instead
    (:func:`cwr_export`; no SLDA then); the figures add ``cwr_state_bytes``, ``cwr_scratch_bytes``."""
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
    if cwr is not None and slda is not None:
        raise BnnclError("export-c: one learning strategy: an SLDA state or CWR*, not both")
    if cwr is not None:
        if cwr.features != features:
            raise BnnclError(f"export-c: the CWR* learner has {cwr.features} features; the model has {features}")
        fingerprint = zlib.crc32(cwr.config_bytes(), fingerprint)  # a state names its configuration too
        capacity = 0
        init, cwr_init = "NULL, NULL, NULL, NULL", _cwr_struct(wr, cwr)
    elif slda is not None:
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
    mem = arena_plan(model, capacity, cwr)
    arena = mem["arena_bytes"]
    saved = state_bytes(capacity, features) if capacity else 0
    strategy = STRATEGY_CWR_STAR if cwr is not None else (STRATEGY_SLDA if capacity else STRATEGY_NONE)
    cp = cwr_plan(cwr) if cwr is not None else None
    cwr_ref = "NULL"
    if cwr is not None:
        saved, cwr_ref = cp["saved_bytes"], f"&{symbol}_cwr"
        wr.lines.append(f"static const bnncl_cwr_model {symbol}_cwr = {cwr_init};\n")
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
        f"    0x{fingerprint:08x}u, {capacity}, {float(shrinkage).hex()}, {init},\n    {strategy}, {cwr_ref}}};\n")
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
        f"#define BNNCL_STATE_ARRAY_BYTES {wr.nbytes - model_bytes} /* const initial learning state (flash) */\n"
        f"#define BNNCL_STATE_BYTES {saved} /* bnncl_state_size: a saved state */\n"
        f"#define BNNCL_MODEL_FINGERPRINT 0x{fingerprint:08x}u\n"
        f"#define BNNCL_INPUT_H {h}\n#define BNNCL_INPUT_W {w}\n#define BNNCL_INPUT_C {c}\n"
        f"#define BNNCL_NUM_CLASSES {ncls} /* scores of the pretrained head */\n"
        f"#define BNNCL_SLDA_CLASSES {capacity} /* rows of the learner: dataset classes 0 .. {capacity - 1} */\n"
        f"#define BNNCL_STRATEGY {strategy} /* BNNCL_STRATEGY_NONE 0, _SLDA 1, _CWR_STAR 2 */\n"
        + (f"#define BNNCL_CWR_CLASSES {cwr.classes} /* CWR* head rows: dataset classes 0 .. {cwr.classes - 1} */\n"
           f"#define BNNCL_CWR_MAX_IMAGES {cwr.max_images} /* images per bnncl_learn call (one experience) */\n"
           f"#define BNNCL_CWR_STATE_BYTES {cp['state_bytes']} /* bnncl_cwr_state_bytes: the state in the arena */\n"
           f"#define BNNCL_CWR_SCRATCH_BYTES {cp['learn_scratch']} /* bnncl_cwr_learn_scratch_bytes(cfg, "
           f"max_images), in the work area */\n" if cwr is not None else "")
        + f"#define BNNCL_MAX_SCORES {max(ncls, capacity, cwr.classes if cwr is not None else 0)}\n\n#endif\n")
    figures = {"arena_bytes": arena, "learn_chunk": mem["learn_chunk"], "array_bytes": model_bytes,
               "state_array_bytes": wr.nbytes - model_bytes, "state_bytes": saved, "fingerprint": fingerprint}
    if cp is not None:
        figures |= {"cwr_state_bytes": cp["state_bytes"], "cwr_scratch_bytes": cp["learn_scratch"]}
    return figures


def _cwr_struct(wr: _Writer, c: CwrExport) -> str:
    """The initializer of the ``bnncl_cwr_model`` (its state's arrays written by ``wr``)."""
    cfg = (f"{{{c.classes}, {c.features}, {c.qf}, {c.qb}, {float(np.float32(c.lr)).hex()}f, {c.minibatch}, "
           f"{c.epochs}, {c.new_per_class}, {c.mixing}, {c.standardize}, {float(c.max_k).hex()}, {c.capacity}, "
           f"{c.lr_bits}}}")
    st = c.state
    if st is None:
        body = "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0.0, 0.0, 0, 0, 0u, 1u, 0u, 1u"
    else:
        n = int(st["count"])
        rows = (wr.array("cwr_store", np.asarray(st["store"], np.uint8 if c.lr_bits == 8 else np.float32)[:n]),
                wr.array("cwr_labels", st["labels"][:n]), wr.array("cwr_experience", st["experience"][:n])) \
            if n else ("NULL", "NULL", "NULL")
        arrays = [wr.array("cwr_cw", st["cw"]), wr.array("cwr_past", st["past"]), wr.array("cwr_shift", st["shift"]),
                  wr.array("cwr_scale", st["scale"]), wr.array("cwr_seen", st["seen"]), *rows]
        r, b = st["rng"], st["buffer_rng"]
        body = (f"{', '.join(arrays)},\n    {n}, {float(st['lo']).hex()}, {float(st['hi']).hex()}, "
                f"{int(st['has_range'])}, {int(st['fitted'])},\n    "
                + ", ".join(f"0x{int(v):016x}u" for v in (r["state"], r["inc"], b["state"], b["inc"])))
    return (f"{{\n    &bnncl_cwr_star_impl, {cfg},\n    {c.max_images}, {c.next_experience}, {int(c.seed)}u,\n"
            f"    {body}}}")

