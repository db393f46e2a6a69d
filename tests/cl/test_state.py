"""StateStore: learner round trip, layout, pruning, and every error leaving the disk as it was."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bnncl import atomic
from bnncl.cl.learner import ContinualLearner, LearnerConfig
from bnncl.cl.linear_engine import NumpyLinearEngine
from bnncl.cl.replay import LatentReplayBuffer
from bnncl.cl.state import (
    FORMAT_VERSION,
    LoadedState,
    NoStateError,
    StateCorruptError,
    StateError,
    StateMismatchError,
    StateStore,
    StateVersionError,
    StateWriteError,
    pointer_line,
    sha256_file,
)
from bnncl.errors import BnnclError
from synthetic_images import SHAPE, class_images

MODEL = "ab" * 32


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes): 'the state on disk'."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def small_state(i: int) -> tuple[dict[str, np.ndarray], dict]:
    rng = np.random.default_rng(i)
    arrays = {"w": rng.standard_normal((3, 5)).astype(np.float32), "n": np.arange(i + 1, dtype=np.int64)}
    return arrays, {"kind": "toy", "i": i, "rng": np.random.default_rng(i).bit_generator.state}


def saved(tmp_path: Path, n: int = 2) -> StateStore:
    store = StateStore(tmp_path / "state")
    for i in range(1, n + 1):
        arrays, meta = small_state(i)
        store.save(arrays, meta, position={"experience": i}, model_sha256=MODEL)
    return store


# -- a realistic learner state ----------------------------------------------------------------
def images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return class_images(10, n_per_class, seed, means_seed=123)


TRAIN = images(60, 1)
TEST = images(20, 2)


def fresh_learner() -> ContinualLearner:
    """A host-pretrained binary-LR engine (head trained on classes 0-4) + a 1-bit replay buffer."""
    engine = NumpyLinearEngine(SHAPE, 10, proj_dim=64, binary=True, seed=0)
    base = TRAIN[1] < 5
    x, y = engine.extract(TRAIN[0][base]), TRAIN[1][base]
    for i in range(0, len(y), 32):
        engine.train_batch(x[i : i + 32], y[i : i + 32], 0.1)
    engine.mark_deployed()
    buffer = LatentReplayBuffer(engine.latent_shape, capacity=80, bits=1, seed=0)
    learner = ContinualLearner(engine, LearnerConfig("cwr_star", epochs=2, lr=0.3, minibatch_size=32, seed=0), buffer)
    learner.deploy(x, y, 0)
    return learner


def learn(learner: ContinualLearner, experience: int) -> None:
    mask = TRAIN[1] == 4 + experience
    learner.train_experience(learner.extract(TRAIN[0][mask]), TRAIN[1][mask], experience)


def test_learner_round_trip_then_continue_equals_uninterrupted_run(tmp_path):
    full = fresh_learner()
    for e in range(1, 6):
        learn(full, e)

    first = fresh_learner()
    for e in range(1, 3):
        learn(first, e)
    arrays, meta = first.state_dict()
    packed = arrays["buffer/latents"]  # 1 bit per element: 64 latent elements in one uint64 word
    assert first.buffer is not None and first.buffer.bits == 1 and packed.nbytes == len(packed) * 64 // 8
    processed = [f"img-{i}" for i in range(10)]
    StateStore(tmp_path / "s").save(
        arrays, meta, position={"experience": 2, "processed": processed}, model_sha256=MODEL
    )

    loaded = StateStore(tmp_path / "s").load(model_sha256=MODEL)
    assert loaded.position == {"experience": 2, "processed": processed} and not loaded.fell_back
    assert loaded.arrays.keys() == arrays.keys()
    for k, v in arrays.items():
        assert loaded.arrays[k].dtype == v.dtype and np.array_equal(loaded.arrays[k], v)
    second = fresh_learner()
    second.load_state_dict(loaded.arrays, loaded.meta)
    for e in range(3, 6):
        learn(second, e)

    assert np.array_equal(second.engine.get_head(), full.engine.get_head())
    assert np.array_equal(second.predict(second.extract(TEST[0])), full.predict(full.extract(TEST[0])))
    got, want = second.state_dict(), full.state_dict()
    assert got[1] == want[1]
    assert got[0].keys() == want[0].keys() and all(np.array_equal(got[0][k], want[0][k]) for k in want[0])


# -- layout, generations, pruning -------------------------------------------------------------
def test_layout_and_pruning_keep_new_and_previous(tmp_path):
    store = saved(tmp_path, 4)
    d = store.directory
    assert sorted(p.name for p in d.iterdir()) == ["CURRENT", "LOCK", "gen-00000003", "gen-00000004"]
    manifest = json.loads((d / "gen-00000004" / "MANIFEST.json").read_bytes())
    assert (d / "CURRENT").read_bytes() == pointer_line(4, manifest["self_sha256"])
    assert (d / "CURRENT").read_text().startswith(f"gen-00000004 {manifest['self_sha256']} ")
    assert sorted(p.name for p in (d / "gen-00000004").iterdir()) == [
        "MANIFEST.json", "arrays.safetensors", "meta.json"
    ]
    assert manifest["format"] == "bnncl-cl-state" and manifest["format_version"] == FORMAT_VERSION
    for name in ("arrays.safetensors", "meta.json"):
        data = (d / "gen-00000004" / name).read_bytes()
        assert manifest["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert b"pickle" not in (d / "gen-00000004" / "arrays.safetensors").read_bytes()
    loaded = StateStore(d).load()
    assert isinstance(loaded, LoadedState) and loaded.generation == 4 and loaded.meta["i"] == 4
    assert loaded.meta["rng"] == small_state(4)[1]["rng"]  # 128-bit ints survive JSON

    wide = StateStore(d, keep=3)
    wide.save(*small_state(5))
    assert wide.generations() == [3, 4, 5]
    with pytest.raises(ValueError, match="keep"):
        StateStore(d, keep=1)


def test_uncommitted_and_temp_generations_are_ignored_then_pruned(tmp_path):
    store = saved(tmp_path, 2)
    d = store.directory
    # a crash after the rename of gen 3 but before CURRENT moved, and one in the middle of gen 4
    (d / "gen-00000003").mkdir()
    (d / "gen-00000003" / "meta.json").write_text("{}")
    (d / ".tmp-gen-00000004").mkdir()
    assert StateStore(d).load().generation == 2
    assert StateStore(d).save(*small_state(9)) == 5
    assert StateStore(d).generations() == [2, 5]
    assert not (d / ".tmp-gen-00000004").exists()


def test_fallback_to_previous_generation_warns(tmp_path):
    store = saved(tmp_path, 2)
    path = store.directory / "gen-00000002" / "arrays.safetensors"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.warns(UserWarning, match="gen-00000002: arrays.safetensors checksum mismatch"):
        loaded = StateStore(store.directory).load()
    assert loaded.generation == 1 and loaded.fell_back and loaded.position == {"experience": 1}


def test_fallback_then_save_keeps_the_good_generation(tmp_path):
    store = saved(tmp_path, 2)
    (store.directory / "gen-00000002" / "meta.json").write_text("garbage")
    with pytest.warns(UserWarning):
        assert store.load().generation == 1
    store.save(*small_state(3))  # prune keeps gen 3 and the known-good gen 1, drops damaged gen 2
    assert store.generations() == [1, 3]


@pytest.mark.parametrize("content", [b"\xff\x00garbage", b"gen-00000001\n", b""])
def test_damaged_current_pointer_falls_back_to_newest_intact(tmp_path, content):
    store = saved(tmp_path, 2)
    (store.directory / "CURRENT").write_bytes(content)
    with pytest.warns(UserWarning, match="CURRENT"):
        assert StateStore(store.directory).load().generation == 2


def test_current_bound_to_its_manifest(tmp_path):
    store = saved(tmp_path, 2)
    d = store.directory
    # gen 2's folder replaced by a self-consistent copy of gen 1 renamed: CURRENT's sha catches it
    (d / "gen-00000002" / "MANIFEST.json").write_bytes((d / "gen-00000001" / "MANIFEST.json").read_bytes())
    with pytest.warns(UserWarning, match="not the one CURRENT committed|manifest names generation"):
        assert StateStore(d).load().generation == 1


# -- errors -------------------------------------------------------------------------------------
def test_no_state_yet_is_distinguishable(tmp_path):
    with pytest.raises(NoStateError, match="no such directory"):
        StateStore(tmp_path / "missing").load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoStateError, match="empty"):
        StateStore(tmp_path / "empty").load()
    assert not StateStore(tmp_path / "empty").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateError, match="not a directory"):
        StateStore(tmp_path / "file").load()
    assert not issubclass(NoStateError, StateCorruptError) and issubclass(NoStateError, StateError)
    assert issubclass(StateError, BnnclError)


def test_every_generation_damaged_is_corrupt(tmp_path):
    store = saved(tmp_path, 2)
    for g in (1, 2):
        p = store.directory / f"gen-{g:08d}" / "arrays.safetensors"
        p.write_bytes(b"\x00" + p.read_bytes()[1:])
    before = tree(store.directory)
    with pytest.raises(StateCorruptError) as info:
        StateStore(store.directory).load()
    msg = str(info.value)
    assert "\n" not in msg and "gen-00000002" in msg and "gen-00000001" in msg and "checksum" in msg
    assert tree(store.directory) == before


def forge_newer_version(gdir: Path) -> None:
    """What a future bnncl would write: a newer format_version, self checksum and CURRENT consistent."""
    body = json.loads((gdir / "MANIFEST.json").read_bytes())
    body.pop("self_sha256")
    body["format_version"] = FORMAT_VERSION + 1
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    body["self_sha256"] = hashlib.sha256(canon).hexdigest()
    (gdir / "MANIFEST.json").write_text(json.dumps(body))
    (gdir.parent / "CURRENT").write_bytes(pointer_line(int(gdir.name[4:]), body["self_sha256"]))


def test_newer_version_is_refused_by_load_and_save(tmp_path):
    store = saved(tmp_path, 2)
    forge_newer_version(store.directory / "gen-00000002")
    before = tree(store.directory)
    with pytest.raises(StateVersionError, match=f"version {FORMAT_VERSION + 1} is newer"):
        StateStore(store.directory).load()
    with pytest.raises(StateVersionError):
        StateStore(store.directory).save(*small_state(3))
    assert tree(store.directory) == before


def test_other_model_is_refused(tmp_path):
    store = saved(tmp_path, 1)
    before = tree(store.directory)
    with pytest.raises(StateMismatchError, match="belongs to model sha256 abab"):
        store.load(model_sha256="cd" * 32)
    assert store.load(model_sha256=MODEL).generation == 1
    assert store.load().generation == 1  # no identity asked for: not checked
    assert tree(store.directory) == before
    model = tmp_path / "m.bnn"
    model.write_bytes(b"model bytes")
    assert sha256_file(model) == hashlib.sha256(b"model bytes").hexdigest()


def count_writes(tmp_path: Path, monkeypatch) -> int:
    calls = []
    real = atomic.write_all
    monkeypatch.setattr(atomic, "write_all", lambda fd, data: (calls.append(1), real(fd, data))[1])
    saved(tmp_path / "probe", 1)
    monkeypatch.setattr(atomic, "write_all", real)
    return len(calls)


def test_disk_full_at_every_write_keeps_previous_state(tmp_path, monkeypatch):
    n_writes = count_writes(tmp_path, monkeypatch)
    assert n_writes == 4  # arrays, meta, manifest, CURRENT
    real = atomic.write_all
    for fail_at in range(n_writes):
        store = saved(tmp_path / f"k{fail_at}", 2)
        before = tree(store.directory)
        calls = []

        def full_disk(fd, data, fail_at=fail_at, calls=calls):
            calls.append(1)
            if len(calls) > fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(fd, data)

        monkeypatch.setattr(atomic, "write_all", full_disk)
        with pytest.raises(StateWriteError) as info:
            store.save(*small_state(3), position={"experience": 3})
        monkeypatch.setattr(atomic, "write_all", real)
        assert "disk full" in str(info.value) and "\n" not in str(info.value)
        # to make room it removed generation 1, which the save would have pruned anyway; nothing else changed
        kept = {k: v for k, v in before.items() if not k.startswith("gen-00000001/")}
        assert tree(store.directory) == kept, f"write {fail_at} changed the disk"
        assert StateStore(store.directory).load().generation == 2
        assert store.save(*small_state(3)) == 3  # space is back: the next save works


def small_disk(monkeypatch, directory: Path, quota: list[int]) -> None:
    """Writes fail with ENOSPC once the files under ``directory`` would hold more than ``quota[0]`` bytes."""
    real = atomic.write_all

    def write(fd, data):
        used = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        if used + len(data) > quota[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(atomic, "write_all", write)


def test_small_disk_needs_room_for_two_generations_and_recovers(tmp_path, monkeypatch):
    """With two generations on disk, a save needs room for one more generation only after the one it
    would prune anyway is gone: it prunes first when the disk is full, then writes. A disk too small
    even then keeps the committed state, and the next save works once space is freed."""
    store = StateStore(tmp_path / "state")
    big = {"w": np.arange(20000, dtype=np.float32)}  # 80 KB: the generations dominate the disk
    for i in (1, 2):
        store.save(big, {"i": i})
    gen = sum(p.stat().st_size for p in (store.directory / "gen-00000002").iterdir())
    used = sum(p.stat().st_size for p in store.directory.rglob("*") if p.is_file())
    quota = [used + gen // 2]  # room for half a generation more
    small_disk(monkeypatch, store.directory, quota)
    assert store.save(big, {"i": 3}) == 3 and store.generations() == [2, 3]
    assert StateStore(store.directory).load().meta == {"i": 3}
    quota[0] = gen + gen // 2  # too small for two generations: the save fails, the state is kept
    with pytest.raises(StateWriteError, match="disk full"):
        store.save(big, {"i": 4})
    loaded = StateStore(store.directory).load()
    assert loaded.meta == {"i": 3} and not loaded.fell_back
    assert not [p for p in store.directory.iterdir() if p.name.startswith(".")]
    quota[0] = 2 * gen + gen // 2  # space freed: room for two generations and a half
    assert store.save(big, {"i": 5}) == 4  # the failed save used no number
    assert StateStore(store.directory).load().meta == {"i": 5}


def test_full_disk_prunes_nothing_before_writing_unless_the_state_is_intact(tmp_path, monkeypatch):
    """A store that has not loaded the state, whose committed generation is damaged: a save on a full
    disk must not make room by removing the older intact generation (the only good one left)."""
    store = saved(tmp_path, 2)
    damaged = store.directory / "gen-00000002" / "arrays.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-1])
    small_disk(monkeypatch, store.directory, [0])
    with pytest.raises(StateWriteError, match="disk full"):
        StateStore(store.directory).save(*small_state(3))
    assert StateStore(store.directory).generations() == [1, 2]
    with pytest.warns(UserWarning, match="gen-00000002: arrays.safetensors checksum mismatch"):
        assert StateStore(store.directory).load().generation == 1


def test_fsync_failure_keeps_previous_state(tmp_path, monkeypatch):
    store = saved(tmp_path, 1)
    before = tree(store.directory)
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(StateWriteError, match="I/O error"):
        store.save(*small_state(2))
    monkeypatch.undo()
    assert tree(store.directory) == before


@pytest.mark.parametrize(
    "arrays, meta, match",
    [
        ({"a": np.zeros(2)}, {"x": float("nan")}, "not JSON-able"),
        ({"a": np.zeros(2)}, {"x": object()}, "not JSON-able"),
        ({"a": [1, 2]}, {}, "NumPy arrays"),
        ({"a": np.array(["s"])}, {}, "safetensors"),
        ({"a": np.zeros(2)}, [], "must be a dict"),
    ],
)
def test_unstorable_input_is_refused_before_touching_disk(tmp_path, arrays, meta, match):
    store = saved(tmp_path, 1)
    before = tree(store.directory)
    with pytest.raises(StateError, match=match):
        store.save(arrays, meta)
    assert tree(store.directory) == before
