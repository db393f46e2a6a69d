"""Simulated power cuts during ``bnncl learn`` (tests/crashsim.py): the loop learns a stream of real PNG
files (three per experience, one unreadable file rejected on the way) while every durable operation
is recorded: the state commits, the moves to processed/ and rejected/, the folders they create.
Crash images are built at every point of that log (lost directory operations, torn and dropped
writes) and the loop is resumed on each: it must end with exactly the uninterrupted run's state
(array for array), every image learned once and moved to processed/ once, nothing left in INCOMING.
A second test damages the newest committed generation of every crash image as well (bit rot, or a
storage that lied about an fsync): the state falls back to the generation before it, the files the
lost generation had learned go back to INCOMING, and still every image ends learned exactly once.
``BNNCL_LEARN_CRASH_IMAGES`` caps how many distinct images are resumed (default 0: all of them).
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from bnncl.cl.state import StateStore
from bnncl.service import inbox
from bnncl.service.learn import LearnLoop
from bnncl.service.session import LearnerSession
from crashsim import CrashPoint, Recorder, explore

RESUMED = int(os.environ.get("BNNCL_LEARN_CRASH_IMAGES", "0"))
PER_EXPERIENCE = 3


def _setup(root: Path, template: Path, kit) -> None:
    shutil.copytree(template, root / "state")
    kit.write_stream(root / "inc", 9, seed=11)
    bad = root / "inc" / "Bag" / "000003b.png"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("not an image\n")


def _run(root: Path, model: Path, notes: list[str] | None = None) -> LearnLoop:
    """Open (or resume) the session in ``root`` and learn until INCOMING is empty."""
    say = (lambda m: notes.append(m)) if notes is not None else (lambda m: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session = LearnerSession.open(model, root / "state")
    inc = root / "inc"
    loop = LearnLoop(session, inc, inc / "processed", inc / "rejected", PER_EXPERIENCE, say=say, warn=say)
    loop.start()
    loop.run(once=True)
    return loop


def _files(root: Path, where: str) -> list[tuple[str, str]]:
    """(label/name, sha256) of the image files in INCOMING ('waiting'), processed/ or rejected/."""
    inc = root / "inc"
    if where == "waiting":
        return sorted((it.id, inbox.digest(it.path.read_bytes()))
                      for it in inbox.scan(inc, exclude=(inc / "processed", inc / "rejected")))
    folder = inc / where
    return sorted((f"{p.parent.name}/{p.name}", inbox.digest(p.read_bytes()))
                  for p in folder.glob("*/*") if p.is_file() and not p.name.endswith(".reason.txt"))


def test_power_cut_at_every_point_of_the_learn_loop(tmp_path, model, deployed_template, kit):
    t0 = time.perf_counter()
    src = tmp_path / "src"
    _setup(src, deployed_template, kit)
    ref = tmp_path / "ref"
    shutil.copytree(src, ref)
    _run(ref, model)
    want = StateStore(ref / "state").load()
    want_done, want_rejected = _files(ref, "processed"), _files(ref, "rejected")
    assert len(want_done) == 9 and len(want_rejected) == 1 and want.position["experience"] == 3

    root = tmp_path / "root"
    shutil.copytree(src, root)
    recorder = Recorder(root)
    with recorder.recording():
        notes: list[str] = []
        _run(root, model, notes)
    kinds = {op.kind for op in recorder.ops}
    assert {"rename", "fsync_dir", "mkdir", "write"} <= kinds

    def check(folder: Path, point: CrashPoint) -> tuple:
        notes: list[str] = []
        _run(folder, model, notes)
        got = StateStore(folder / "state").load()
        assert got.position == want.position, f"position {got.position['images_learned']} images learned"
        assert got.meta == want.meta and sorted(got.arrays) == sorted(want.arrays)
        for key, value in want.arrays.items():
            assert np.array_equal(got.arrays[key], value), f"array {key} differs from the uninterrupted run"
        assert _files(folder, "waiting") == [], "files left in INCOMING"
        assert _files(folder, "processed") == want_done, "processed/ is not the uninterrupted run's"
        assert _files(folder, "rejected") == want_rejected, "rejected/ is not the uninterrupted run's"
        moved = any("learned before a restart" in n for n in notes)
        learned = sum(n.startswith("experience") for n in notes)
        rejected = sum("rejected, moved" in n for n in notes)
        return ("moved committed files" if moved else "-", f"{learned} experience(s) learned again",
                f"{rejected} rejected again")

    result = explore(recorder, check, seed=3, per_point=30, max_images=RESUMED or None)
    print(f"\nbnncl learn: {len(recorder.ops)} operations recorded; {result.summary()}; "
          f"{time.perf_counter() - t0:.1f} s")
    for outcome, n in sorted(result.outcomes.items(), key=str):
        print(f"  {n:5d}  {outcome}")
    assert not result.violations, "\n".join(result.violations[:10])
    assert result.explored >= min(RESUMED or 200, 200) and len(result.outcomes) >= 4


def test_power_cut_then_the_newest_generation_damaged_loses_nothing(tmp_path, model, deployed_template, kit):
    src = tmp_path / "src"
    _setup(src, deployed_template, kit)
    names = sorted(n for n, _ in _files(src, "waiting") if not n.endswith("b.png"))
    root = tmp_path / "root"
    shutil.copytree(src, root)
    recorder = Recorder(root)
    with recorder.recording():
        _run(root, model)

    def check(folder: Path, point: CrashPoint) -> tuple:
        store = StateStore(folder / "state")
        newest = store.current_generation()
        damaged = newest is not None and any(g < newest for g in store.generations())
        if damaged:
            path = folder / "state" / f"gen-{newest:08d}" / "arrays.safetensors"
            path.write_bytes(path.read_bytes()[:-1])
        notes: list[str] = []
        _run(folder, model, notes)
        got = StateStore(folder / "state").load()
        assert got.position["images_learned"] == len(names), f"{got.position['images_learned']} images learned"
        assert got.arrays["buffer/seen_counts"].sum() == got.position["base_images"] + len(names), "learned twice"
        assert _files(folder, "waiting") == [], "files left in INCOMING"
        assert [n for n, _ in _files(folder, "processed")] == names, "processed/ lost or doubled a file"
        back = next((n for n in notes if "back to" in n), "")
        return ("damaged" if damaged else "intact", "relearned lost files" if back else "-")

    result = explore(recorder, check, seed=4, per_point=30, max_images=RESUMED or 120)
    print(f"\nbnncl learn, newest generation damaged after the cut: {result.summary()}")
    for outcome, n in sorted(result.outcomes.items(), key=str):
        print(f"  {n:5d}  {outcome}")
    assert not result.violations, "\n".join(result.violations[:10])
    assert result.outcomes[("damaged", "relearned lost files")] > 0
