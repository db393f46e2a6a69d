"""Simulated power cuts at every point of a recorded series of state saves (tests/crashsim.py).

A :class:`StateStore` saves fourteen states (arrays of 200 B to 40 KB, so torn writes land inside and
across 512 B / 4 KiB blocks), two of them finding the disk full (one fails, one succeeds after
making room); every
durable operation is recorded. At every point of the log, the crash images (lost directory
operations, dropped, torn, zeroed or garbage writes) are built and each one is loaded: the result
must be the last acknowledged save or the one in flight, with exactly the content saved, never a
partial state, a wrong one or an unexpected exception; and a next save must succeed on it and
leave no leftovers. ``BNNCL_CRASH_IMAGES`` raises the number of images per crash point.
"""

from __future__ import annotations

import errno
import os
import random
import time
import warnings
from pathlib import Path

import numpy as np

from bnncl import atomic
from bnncl.cl.state import NoStateError, StateError, StateStore, StateWriteError
from crashsim import CrashPoint, Recorder, explore

PER_POINT = int(os.environ.get("BNNCL_CRASH_IMAGES", "120"))
SAVES = 14


def content(i: int) -> tuple[dict[str, np.ndarray], dict, dict]:
    """The state of save ``i``: arrays of 200 B .. 20 KB, a meta and a position that name ``i``."""
    rng = np.random.default_rng(i)
    n = [50, 1200, 300, 5000, 700, 2100, 64, 9000, 150, 3300, 10000, 400][i % 12]
    arrays = {"w": rng.standard_normal(n).astype(np.float32), "n": np.arange(i + 1, dtype=np.int64)}
    return arrays, {"i": i, "rng": rng.bit_generator.state}, {"experience": i}


def same(loaded, i: int) -> bool:
    arrays, meta, position = content(i)
    return (loaded.meta == meta and loaded.position == position and sorted(loaded.arrays) == sorted(arrays)
            and all(np.array_equal(loaded.arrays[k], v) and loaded.arrays[k].dtype == v.dtype
                    for k, v in arrays.items()))


def _full_disk(real, fail: set[int]):
    """A write_all that raises ENOSPC at the writes numbered in ``fail`` (1-based)."""
    calls = []

    def write(fd, data):
        calls.append(1)
        if len(calls) in fail:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    return write


def record_saves(root: Path) -> tuple[Recorder, dict[int, int]]:
    """Fourteen saves into ``root/state`` while recording. Save 3 finds the disk full from its second
    write on (it prunes the generation it would prune anyway, retries and fails); save 8 finds it
    full once (its retry succeeds). Marks: ('begin', i) before save i, ('ack', i) after it returned,
    ('failed', i) after it failed; returns save -> generation."""
    root.mkdir()
    recorder = Recorder(root)
    store = StateStore(root / "state")
    gens: dict[int, int] = {}
    real = atomic.write_all
    full = {3: set(range(2, 100)), 8: {2}}
    with recorder.recording():
        for i in range(1, SAVES + 1):
            recorder.mark("begin", i)
            atomic.write_all = _full_disk(real, full.get(i, set()))
            try:
                gens[i] = store.save(*content(i)[:2], position=content(i)[2])
            except StateWriteError:
                assert i == 3
                recorder.mark("failed", i)
                continue
            finally:
                atomic.write_all = real
            recorder.mark("ack", i)
    assert sorted(gens) == [i for i in range(1, SAVES + 1) if i != 3]
    return recorder, gens


def expected(point: CrashPoint, recorder: Recorder) -> tuple[int, int | None]:
    """(last acknowledged save or 0, save in flight or None) at a crash point."""
    acked, inflight = 0, None
    for label, value in point.marks(recorder):
        if label == "begin":
            inflight = value
        elif label == "ack":
            acked, inflight = value, None
        elif label == "failed":
            inflight = None
    return acked, inflight


def check_store(recorder: Recorder, gens: dict[int, int], resave_every: int = 1):
    counter = iter(range(1 << 30))

    def check(folder: Path, point: CrashPoint) -> tuple:
        acked, inflight = expected(point, recorder)
        store = StateStore(folder / "state")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = store.load()
        except NoStateError:
            assert acked == 0, f"save {acked} was acknowledged, but the state is gone"
            return ("no state", acked, inflight)
        except StateError as exc:
            raise AssertionError(f"save {acked} was acknowledged, but the load failed: {exc}") from None
        which = next((i for i in (acked, inflight) if i and gens.get(i) == loaded.generation), None)
        assert which is not None, f"loaded generation {loaded.generation}; acked save {acked}, in flight {inflight}"
        assert same(loaded, which), f"generation {loaded.generation} does not hold save {which}'s content"
        assert not loaded.fell_back or acked == 0, f"fell back after save {acked} was acknowledged"
        outcome = ("acked" if which == acked else "in flight", loaded.fell_back,
                   tuple(sorted({p.name.split("-")[0] for p in (folder / "state").iterdir()})))
        if next(counter) % resave_every == 0:
            gen = store.save(*content(SAVES + 1)[:2], position=content(SAVES + 1)[2])
            again = StateStore(folder / "state").load()
            assert again.generation == gen and same(again, SAVES + 1) and not again.fell_back
            left = sorted(p.name for p in (folder / "state").iterdir() if p.name.startswith("."))
            assert not left, f"leftovers after the next save: {left}"
        return outcome

    return check


def test_power_cut_at_every_point_of_fourteen_saves(tmp_path):
    t0 = time.perf_counter()
    recorder, gens = record_saves(tmp_path / "root")
    kinds = {op.kind for op in recorder.ops}
    assert kinds >= {"create", "write", "fsync", "fsync_dir", "mkdir", "rename", "unlink", "rmdir"}, kinds
    result = explore(recorder, check_store(recorder, gens, resave_every=3), seed=0, per_point=PER_POINT)
    elapsed = time.perf_counter() - t0
    print(f"\nstate store: {len(recorder.ops)} operations recorded; {result.summary()}; {elapsed:.1f} s")
    for outcome, n in sorted(result.outcomes.items(), key=str):
        print(f"  {n:5d}  {outcome}")
    assert not result.violations, "\n".join(result.violations[:10])
    assert result.explored >= 1000
    assert len(result.outcomes) >= 5


def lying_check(gens: dict[int, int]):
    """A crash-image check for a storage that lies about fsync: the load returns a complete generation
    with exactly the content of the save that wrote it, or a one-line StateError."""
    by_gen = {g: i for i, g in gens.items()}

    def check(folder: Path, point: CrashPoint) -> tuple:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = StateStore(folder / "state").load()
        except StateError as exc:
            assert "\n" not in str(exc)
            return (type(exc).__name__,)
        assert loaded.generation in by_gen and same(loaded, by_gen[loaded.generation])
        return ("loaded", loaded.fell_back)

    return check


def test_lying_fsync_never_gives_a_partial_state(tmp_path):
    """A write cache that acknowledges the last sync(s) early may lose acknowledged saves; the load
    still returns a complete generation with its exact content, or a one-line StateError."""
    recorder, gens = record_saves(tmp_path / "root")
    rng = random.Random(1)
    result = explore(recorder, lying_check(gens), seed=1, per_point=8, lie=2, points=lambda p: rng.random() < 0.3)
    print(f"\nlying fsync (last 2 syncs lost): {result.summary()}; outcomes {dict(result.outcomes)}")
    assert not result.violations, "\n".join(result.violations[:10])
