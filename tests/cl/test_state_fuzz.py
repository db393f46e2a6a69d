"""Property-based tests of the state parser: mutated bytes never give a wrong state or a stray exception.

A template state directory holds generation 1 (state A) and generation 2 (state B, committed). Each
example copies it, damages some of its files (bit flips, truncation, appended bytes, deleted files,
garbage content) and loads it. Allowed outcomes: state B from generation 2, state A from generation
1 (with ``fell_back``), or a :class:`StateError`. Anything else — another exception type, or a
generation whose content differs from what was saved — fails.

A second property forges damage the checksums cannot catch (the manifest and ``CURRENT`` are
rewritten to match the mutated file), to exercise the safetensors and JSON parsers themselves: the
allowed outcomes are generation 2 as the parsers read it (with the right types), state A from
generation 1 when a parser rejects generation 2, or a :class:`StateError`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bnncl.cl.state import LoadedState, StateError, StateStore, pointer_line

FILES = ["arrays.safetensors", "meta.json", "MANIFEST.json"]
TARGETS = [f"gen-0000000{g}/{name}" for g in (1, 2) for name in FILES] + ["CURRENT"]
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def state(i: int) -> tuple[dict[str, np.ndarray], dict, dict]:
    rng = np.random.default_rng(i)
    arrays = {
        "engine/head": rng.standard_normal((10, 16)).astype(np.float32),
        "cwr/past": rng.integers(0, 100, 10),
        "buffer/latents": rng.integers(0, 2**63, (12, 1), dtype=np.uint64),
        "buffer/labels": np.arange(12, dtype=np.int64) % 3,
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    meta = {"kind": "continual_learner", "i": i, "rng_state": rng.bit_generator.state}
    return arrays, meta, {"experience": i, "processed": [f"img-{i}-{j}" for j in range(5)]}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("fuzz") / "state"
    store = StateStore(directory)
    for i in (1, 2):
        arrays, meta, position = state(i)
        store.save(arrays, meta, position=position, model_sha256="ab" * 32)
    return directory


def same(loaded: LoadedState, i: int) -> bool:
    arrays, meta, position = state(i)
    return (
        loaded.arrays.keys() == arrays.keys()
        and all(loaded.arrays[k].dtype == v.dtype and np.array_equal(loaded.arrays[k], v) for k, v in arrays.items())
        and loaded.meta == json.loads(json.dumps(meta))
        and loaded.position == position
        and loaded.model_sha256 == "ab" * 32
    )


def mutate(data: bytes, op: str, a: int, b: int, extra: bytes) -> bytes | None:
    """One damage to a file's bytes; None deletes the file."""
    n = len(data)
    if op == "flip":
        if n == 0:
            return b"\x01"
        i = a % n
        return data[:i] + bytes([data[i] ^ (1 + b % 255)]) + data[i + 1 :]
    if op == "truncate":
        return data[: a % max(n, 1)]
    if op == "append":
        return data + extra
    if op == "overwrite":  # a zeroed or garbage block, as after a torn write
        i = a % max(n, 1)
        return data[:i] + extra + data[i + len(extra) :]
    if op == "garbage":
        return extra
    return None  # delete


mutations = st.lists(
    st.tuples(
        st.sampled_from(TARGETS),
        st.sampled_from(["flip", "truncate", "append", "overwrite", "garbage", "delete"]),
        st.integers(0, 1 << 20),
        st.integers(0, 1 << 20),
        st.binary(min_size=1, max_size=64) | st.just(b"\x00" * 512),
    ),
    min_size=1,
    max_size=3,
)


def load(directory: Path) -> LoadedState | StateError:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            result = StateStore(directory).load(model_sha256="ab" * 32)
            event(f"loaded generation {result.generation}")
            return result
        except StateError as exc:
            assert "\n" not in str(exc)
            event(f"raised {type(exc).__name__}")
            return exc


@SETTINGS
@given(mutations)
def test_damaged_files_give_previous_good_state_or_state_error(template, muts):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "state"
        shutil.copytree(template, directory)
        for target, op, a, b, extra in muts:
            path = directory / target
            if not path.exists():
                continue
            new = mutate(path.read_bytes(), op, a, b, extra)
            if new is None:
                path.unlink()
            else:
                path.write_bytes(new)
        touched = {  # compared at the end: two flips of one bit are no damage
            t.split("/")[0]
            for t in TARGETS
            if not (directory / t).exists() or (directory / t).read_bytes() != (template / t).read_bytes()
        }
        result = load(directory)
        if isinstance(result, LoadedState):
            assert result.generation in (1, 2)
            assert same(result, result.generation), f"wrong content for generation {result.generation}"
            assert result.fell_back == (result.generation == 1 or "CURRENT" in touched) or not touched
        if "gen-00000002" not in touched:  # the committed generation is intact: it must load
            assert isinstance(result, LoadedState) and result.generation == 2
        elif "gen-00000001" not in touched:  # the previous one is intact: never an error
            assert isinstance(result, LoadedState)


def forge(gdir: Path, name: str, data: bytes) -> None:
    """Replace ``name`` and rewrite the manifest and CURRENT so that every checksum matches."""
    (gdir / name).write_bytes(data)
    body = json.loads((gdir / "MANIFEST.json").read_bytes())
    body.pop("self_sha256")
    body["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    body["self_sha256"] = hashlib.sha256(canon).hexdigest()
    (gdir / "MANIFEST.json").write_text(json.dumps(body))
    (gdir.parent / "CURRENT").write_bytes(pointer_line(int(gdir.name[4:]), body["self_sha256"]))


@SETTINGS
@given(
    st.sampled_from(["arrays.safetensors", "meta.json"]),
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "truncate", "append", "overwrite", "garbage"]),
            st.integers(0, 1 << 20),
            st.integers(0, 1 << 20),
            st.binary(min_size=1, max_size=64),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_forged_checksums_reach_the_parsers_and_still_give_state_error(template, name, muts):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "state"
        shutil.copytree(template, directory)
        gdir = directory / "gen-00000002"
        data = (gdir / name).read_bytes()
        for op, a, b, extra in muts:
            data = mutate(data, op, a, b, extra) or b""
        forge(gdir, name, data)
        result = load(directory)
        if isinstance(result, LoadedState) and result.generation == 1:  # gen 2 rejected by a parser
            assert result.fell_back and same(result, 1)
        elif isinstance(result, LoadedState):
            assert result.generation == 2 and not result.fell_back
            assert all(isinstance(v, np.ndarray) for v in result.arrays.values())
            assert isinstance(result.meta, dict) and isinstance(result.position, dict)
