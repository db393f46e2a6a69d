"""Property-based tests of the device model parser: a damaged ``.bnn`` never loads as another model.

A small toy model (torch-free, random but finite parameters) is written once per module. Each
example damages it and calls :meth:`DeviceModel.load`. Allowed outcomes: a one-line
:class:`ModelFileError`, or a model equal to the original (tensors byte-identical, same manifest)
that :class:`FrozenEngine` runs. Another exception type, a crash or a silently different model fail.

* raw bytes: bit/byte flips anywhere, in the 8-byte header length, in the JSON header, in the tensor
  data; truncation; appended garbage; overwritten blocks;
* the metadata rewritten through safetensors (the container stays valid): manifest values replaced by
  wrong types, wrong numbers, NaN, deleted keys, another format or a future format version; with the
  checksums left as they are (must be refused unless nothing changed) and recomputed (reaches every
  validator: an accepted model must be well typed and run);
* the tensors rewritten with recomputed checksums: wrong shape, wrong dtype, missing or extra tensor,
  NaN / infinity: always refused.
"""

from __future__ import annotations

import copy
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from safetensors import safe_open
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from bnncl.device.frozen import FrozenEngine
from bnncl.device.modelfile import (
    FORMAT,
    FORMAT_VERSION,
    DeviceModel,
    block_geometry,
    checksum,
    expected_tensors,
    manifest_checksum,
)
from bnncl.errors import ModelFileError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])

ARCH = {"name": "toy", "input_shape": [6, 6, 2], "stem_channels": 8, "blocks": [[8, 1], [16, 2], [16, 1]],
        "num_classes": 3, "binary": True, "binary_latents": ["block1"], "sign_gradient": "ste",
        "mean": [0.5, 0.4], "std": [0.25, 0.2]}
TAIL = 2
IMAGES = np.random.default_rng(1).integers(0, 256, (4, 6, 6, 2), dtype=np.uint8)


def toy_model() -> DeviceModel:
    rng = np.random.default_rng(0)
    tensors = {}
    for name, (shape, dtype) in expected_tensors(ARCH, TAIL).items():
        if dtype == np.float32:
            t = rng.uniform(0.1, 1.0, shape) if name.endswith(("scale", "slope", "running_var", "bn.weight")) \
                else rng.uniform(-0.5, 0.5, shape)
            if name.endswith("conv.weight.range"):
                t = np.array([-0.7, 0.6])
            tensors[name] = t.astype(np.float32)
        else:
            info = np.iinfo(dtype)
            tensors[name] = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    layers = [{"name": "stem", "kind": "conv", "weight_bits": 8, "input_bits": 8}]
    layers += [{"name": f"blocks.{i}", "kind": "binary conv", "weight_bits": 1, "input_bits": 1,
                "stride": g["stride"]} for i, g in enumerate(block_geometry(ARCH))]
    layers.append({"name": "head", "kind": "linear", "weight_bits": 32, "input_bits": 32})
    manifest = {
        "architecture": copy.deepcopy(ARCH), "layers": layers, "class_names": ["a", "b", "c", "d"],
        "pretrained_classes": [3, 0, 1], "lr_split": "block1",
        "input": {"layout": "NHWC uint8", "pixel_scale": 255.0, "mean": ARCH["mean"], "std": ARCH["std"]},
        "tail_blocks": TAIL, "latent_weight_bits": 8, "checksum": {"algorithm": "sha256", "value": ""},
        "source": {"dataset": "toy"},
    }
    return DeviceModel(manifest, tensors)


MODEL = toy_model()


def _paths(obj, prefix=()):
    """Every key path into a JSON value (dict keys and list indices), leaves and inner nodes."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


MANIFEST_PATHS = _paths(toy_model().manifest)


class Original(dict):
    """The saved toy model: its bytes, metadata, loaded model and reference logits (short repr)."""

    def __repr__(self) -> str:
        return "<toy model>"


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    directory = tmp_path_factory.mktemp("modelfuzz")
    model = toy_model()
    model.save(directory / "toy.bnn")
    data = (directory / "toy.bnn").read_bytes()
    loaded = DeviceModel.load(directory / "toy.bnn")
    with safe_open(str(directory / "toy.bnn"), framework="np") as fh:
        meta = dict(fh.metadata())
    reference = FrozenEngine(loaded).logits(IMAGES)
    return Original(dir=directory, bytes=data, model=loaded, meta=meta, logits=reference,
                    header_len=struct.unpack("<Q", data[:8])[0])


def load(path: Path) -> DeviceModel | ModelFileError:
    try:
        model = DeviceModel.load(path)
    except ModelFileError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
        note_event("refused")
        return exc
    note_event("accepted")
    return model


def note_event(name: str) -> None:
    if currently_in_test_context():
        event(name)


def same_tensors(a: DeviceModel, b: DeviceModel) -> bool:
    return a.tensors.keys() == b.tensors.keys() and all(
        a.tensors[k].dtype == b.tensors[k].dtype and a.tensors[k].shape == b.tensors[k].shape
        and a.tensors[k].tobytes() == b.tensors[k].tobytes() for k in a.tensors)


def runs(model: DeviceModel) -> np.ndarray:
    """The accepted model is well typed and the frozen engine runs it."""
    man = model.manifest
    assert isinstance(model.lr_split, str) and model.lr_split in (
        [f"block{i}" for i in range(model.num_blocks)] + ["gap"]
    )
    assert all(isinstance(s, str) for s in model.class_names)
    assert all(type(c) is int for c in model.pretrained_classes)
    assert type(man["tail_blocks"]) is int
    model.tail_parameters(man["tail_blocks"])
    for cout, stride in model.architecture["blocks"]:
        assert type(cout) is int and type(stride) is int
    h, w, c = model.architecture["input_shape"]  # a forged manifest may declare another valid input size
    images = IMAGES if IMAGES.shape[1:] == (h, w, c) else np.random.default_rng(0).integers(
        0, 256, size=(2, h, w, c), dtype=np.uint8) if h * w * c <= 1 << 20 else None
    if images is not None:
        logits = FrozenEngine(model).logits(images)
        assert logits.shape == (len(images), model.architecture["num_classes"]) and logits.dtype == np.float32
    model.split_for_tail(man["tail_blocks"])
    model.is_binary_split(model.lr_split)
    return logits


def assert_same_or_refused(result, original) -> None:
    if isinstance(result, ModelFileError):
        return
    assert same_tensors(result, original["model"]), "accepted a file with different tensors"
    assert result.manifest == original["model"].manifest, "accepted a file with a different manifest"
    np.testing.assert_array_equal(runs(result), original["logits"])


# ---------------------------------------------------------------------------------------------
# raw bytes


REGIONS = ["anywhere", "length", "header", "data"]


def mutate(data: bytes, header_len: int, op: str, region: str, a: int, b: int, extra: bytes) -> bytes:
    n = len(data)
    lo, hi = {"anywhere": (0, n), "length": (0, 8), "header": (8, 8 + header_len),
              "data": (8 + header_len, n)}[region]
    lo, hi = min(lo, n), min(hi, n)
    i = lo + a % max(hi - lo, 1) if hi > lo else min(lo, max(n - 1, 0))
    if op in ("flip", "bit") and n == 0:
        return b"\x01"
    if op == "flip":
        return data[:i] + bytes([data[i] ^ (1 + b % 255)]) + data[i + 1:]
    if op == "bit":
        return data[:i] + bytes([data[i] ^ (1 << (b % 8))]) + data[i + 1:]
    if op == "truncate":
        return data[:i]
    if op == "append":
        return data + extra
    if op == "insert":
        return data[:i] + extra + data[i:]
    if op == "overwrite":
        return data[:i] + extra + data[i + len(extra):]
    if op == "length":  # a forged header length
        value = [0, 1, 2, header_len - 1, header_len + 1, n - 8, n, 2**31, 2**63, 2**64 - 1, b][a % 11]
        return struct.pack("<Q", value % 2**64) + data[8:]
    raise AssertionError(op)


byte_mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "bit", "bit", "truncate", "append", "insert", "overwrite", "length"]),
        st.sampled_from(REGIONS),
        st.integers(0, 1 << 24),
        st.integers(0, 1 << 24),
        st.binary(min_size=1, max_size=32) | st.sampled_from([b"\x00" * 64, b"\xff" * 8, b'"}', b"{", b" "]),
    ),
    min_size=1,
    max_size=3,
)


@settings(SETTINGS, max_examples=400)
@given(byte_mutations)
@example([("bit", "header", 0, 0, b"x")])
@example([("truncate", "anywhere", 0, 0, b"x")])
@example([("length", "length", 8, 0, b"x")])
def test_mutated_bytes_are_refused_or_change_nothing(original, muts):
    data = original["bytes"]
    for op, region, a, b, extra in muts:
        data = mutate(data, original["header_len"], op, region, a, b, extra)
    path = original["dir"] / "bytes.bnn"
    path.write_bytes(data)
    event("unchanged" if data == original["bytes"] else "changed")
    assert_same_or_refused(load(path), original)


def test_every_digit_of_the_header_changed_is_refused(original):
    """Deterministic companion of the above: each ASCII digit of the JSON header (sizes, strides, offsets,
    class indices, ``block1``, checksums) turned into its neighbour by one bit flip. The container may
    still parse and the manifest stay valid JSON (``block1`` -> ``block0``): it must still be refused."""
    data, end = original["bytes"], 8 + original["header_len"]
    positions = [i for i in range(8, end) if 0x30 <= data[i] <= 0x39]
    assert len(positions) > 100
    path = original["dir"] / "digit.bnn"
    for i in positions:
        path.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:])
        result = load(path)
        assert isinstance(result, ModelFileError), f"accepted a flip of byte {i} ({data[i - 20:i + 5]!r})"


# ---------------------------------------------------------------------------------------------
# metadata rewritten through safetensors


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1.0, 2.0, 8.0, 0.5, -0.0, 1e308]),
    st.text(max_size=6), st.sampled_from(["block0", "block1", "block2", "block3", "gap", "sha256", "", "1", "toy"]),
)
json_value = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
    max_leaves=8,
)


def tweak(old, kind: str, new):
    """A value near ``old`` (same shape, wrong content) or a replacement of another type."""
    if kind == "replace":
        return new
    if isinstance(old, bool) or old is None:
        return new
    if isinstance(old, (int, float)):
        return {"plus": old + 1, "minus": -old - 1, "float": float(old), "nan": math.nan, "inf": math.inf,
                "huge": old * 10**20, "bool": bool(old), "str": str(old)}.get(kind, new)
    if isinstance(old, list):
        return {"plus": old + [new], "minus": old[:-1], "float": old * 2, "str": [json.dumps(old)],
                "nan": [math.nan] * len(old), "bool": [True] * len(old)}.get(kind, new)
    if isinstance(old, str):
        return {"plus": old + "0", "minus": old[:-1], "str": old.upper(), "bool": True, "nan": "NaN"}.get(kind, new)
    if isinstance(old, dict):
        return {"minus": dict(list(old.items())[:-1]), "plus": {**old, "extra": new}, "str": json.dumps(old),
                "bool": list(old)}.get(kind, new)
    return new


def set_path(obj, path, value, delete=False):
    for key in path[:-1]:
        obj = obj[key]
    if delete:
        if isinstance(obj, list):
            obj.pop(path[-1])
        else:
            del obj[path[-1]]
    else:
        obj[path[-1]] = value


def rewrite(original, name: str, tensors: dict, meta: dict, manifest, fix: str) -> Path:
    """Write a valid safetensors container; ``fix`` recomputes no/one/both checksums."""
    meta = dict(meta)
    if isinstance(manifest, dict) and isinstance(manifest.get("checksum"), dict):
        manifest = copy.deepcopy(manifest)
        if fix in ("tensors", "both"):
            manifest["checksum"]["value"] = checksum(tensors)
        if fix in ("manifest", "both"):
            manifest["checksum"]["manifest"] = manifest_checksum(manifest)
    if manifest is not None:
        meta["manifest"] = manifest if isinstance(manifest, str) else json.dumps(manifest)
    path = original["dir"] / name
    path.write_bytes(st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=meta))
    return path


@SETTINGS
@given(
    st.lists(st.tuples(st.sampled_from(MANIFEST_PATHS),
                       st.sampled_from(["replace", "plus", "minus", "float", "nan", "inf", "huge", "bool", "str",
                                        "delete"]),
                       json_value), min_size=1, max_size=2),
    st.sampled_from(["none", "both", "both", "tensors"]),
)
@example([(("checksum", "value"), "replace", None)], "tensors")  # the fix undoes the change: loads
@example([(("architecture", "input_shape", 0), "huge", None)], "both")  # refused, not a NumPy error
@example([(("architecture", "input_shape", 0), "replace", 2)], "both")  # another valid input size: runs
@example([(("layers",), "replace", "00"), (("layers", 1), "delete", None)], "none")  # parent retyped to a string
def test_rewritten_manifest_values_are_refused_or_valid(original, changes, fix):
    manifest = copy.deepcopy(original["model"].manifest)
    for path, kind, new in changes:
        try:
            parent = manifest
            for key in path[:-1]:
                parent = parent[key]
            old = parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed or retyped this path
        if not isinstance(parent, (dict, list)):
            continue  # an earlier change made the parent a string (indexable, but not a container)
        set_path(manifest, path, tweak(old, kind, new), delete=kind == "delete")
    path = rewrite(original, "meta.bnn", original["model"].tensors, original["meta"], manifest, fix)
    # compare what was written: a recomputed checksum may undo a change made to the checksum itself
    with safe_open(str(path), framework="numpy") as f:
        written = f.metadata().get("manifest")
    try:
        written = json.loads(written) if written is not None else None
    except ValueError:
        pass
    changed = json.dumps(written, sort_keys=True) != json.dumps(original["model"].manifest, sort_keys=True)
    event(f"changed={changed} fix={fix}")
    result = load(path)
    if isinstance(result, ModelFileError):
        return
    assert same_tensors(result, original["model"])
    if fix == "both":  # forged checksums: the validators alone decide; what passes must be a usable model
        runs(result)
    else:  # a checksum was left stale: only an unchanged manifest may load
        assert not changed, f"accepted a changed manifest with stale checksums: {changes}"
        assert_same_or_refused(result, original)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(["format", "format_version", "manifest", "drop", "extra"]),
    st.sampled_from(["2", "0", "1.0", " 1", "1 ", "01", "", "bnncl-device-model-v2", FORMAT.upper(), "null",
                     "[]", "{}", "{not json", '"text"', "NaN", "1e999", "9" * 5000, "[" * 1500 + "]" * 1500,
                     '{"a": ' * 1500 + "1" + "}" * 1500]),
)
def test_rewritten_metadata_keys_are_refused(original, key, value):
    meta = dict(original["meta"])
    if key == "drop":
        meta.pop(["format", "format_version", "manifest"][len(value) % 3])
    elif key == "extra":
        meta[value or "x"] = value
    else:
        meta[key] = value
    path = rewrite(original, "keys.bnn", original["model"].tensors, meta, None, "none")
    result = load(path)
    if key == "extra":
        assert_same_or_refused(result, original)
    else:
        assert isinstance(result, ModelFileError)
        if key == "format_version":
            assert "version" in str(result)


# ---------------------------------------------------------------------------------------------
# tensors rewritten, checksums recomputed: structural damage is always refused


TENSOR_NAMES = sorted(MODEL.tensors)
DTYPES = [np.float32, np.float64, np.float16, np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64, np.bool_]


@SETTINGS
@given(
    st.sampled_from(TENSOR_NAMES),
    st.sampled_from(["shape", "flatten", "transpose", "dtype", "missing", "extra", "nan", "inf", "empty", "scalar"]),
    st.integers(0, 1 << 20),
    st.sampled_from(DTYPES),
    st.sampled_from(["none", "tensors", "both"]),
)
def test_structurally_wrong_tensors_are_refused(original, name, op, a, dtype, fix):
    tensors = {k: v.copy() for k, v in original["model"].tensors.items()}
    t = tensors[name]
    if op == "shape":
        tensors[name] = (
            t.reshape(-1)[: max(t.size - 1 - a % t.size, 0)]
            if a % 2
            else np.concatenate([t.reshape(-1), t.reshape(-1)[:1]])
        )
        tensors[name] = tensors[name].reshape(-1)
        if t.ndim == 1 and tensors[name].size == t.size:
            return
    elif op == "flatten":
        if t.ndim == 1:
            tensors[name] = t[None]
        else:
            tensors[name] = t.reshape(-1)
    elif op == "transpose":
        if t.ndim < 2 or t.T.shape == t.shape:
            tensors[name] = t[:, None] if t.ndim == 1 else t[..., None]
        else:
            tensors[name] = np.ascontiguousarray(t.T)
    elif op == "dtype":
        if np.dtype(dtype) == t.dtype:
            dtype = np.float64 if t.dtype != np.float64 else np.float32
        with np.errstate(all="ignore"):
            tensors[name] = t.astype(dtype)
    elif op == "missing":
        del tensors[name]
    elif op == "extra":
        tensors[name.replace(".", "_") + f".extra{a % 3}"] = t
    elif op in ("nan", "inf"):
        if t.dtype.kind != "f":
            return
        flat = t.reshape(-1).copy()
        flat[a % flat.size] = np.nan if op == "nan" else (np.inf if a % 2 else -np.inf)
        tensors[name] = flat.reshape(t.shape)
    elif op == "empty":
        tensors[name] = np.zeros((0,) + t.shape[1:], t.dtype)
    elif op == "scalar":
        tensors[name] = np.asarray(t.reshape(-1)[0])
    event(f"{op} fix={fix}")
    result = load(rewrite(original, "tensors.bnn", tensors, original["meta"],
                          copy.deepcopy(original["model"].manifest), fix))
    assert isinstance(result, ModelFileError), f"accepted {op} of {name} (checksums recomputed: {fix})"


def test_untouched_rewrite_loads_the_same_model(original):
    """The mutators themselves: a rewrite with no change, checksums recomputed or not, loads as the original."""
    for fix in ("none", "tensors", "both"):
        path = rewrite(original, "same.bnn", st_load(original["bytes"]), original["meta"],
                       copy.deepcopy(original["model"].manifest), fix)
        assert_same_or_refused(load(path), original)
        assert isinstance(load(path), DeviceModel)
    assert original["meta"]["format"] == FORMAT and original["meta"]["format_version"] == str(FORMAT_VERSION)
