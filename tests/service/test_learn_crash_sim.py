"""Simulated power cuts during ``bnncl learn`` (tests/crashsim.py): the loop learns a stream of real PNG
files (three per experience, one unreadable file rejected on the way) while every durable operation
is recorded: the state commits, the journal, the moves to processed/ and rejected/, the folders they
create. Crash images are built at every point of that log (lost directory operations, torn and
dropped writes) and the loop is resumed on each: it must end with exactly the uninterrupted run's
state (array for array), every image learned once and moved to processed/ once, nothing left in
INCOMING.

A second test damages the newest committed generation of every crash image as well (bit rot, or a
storage that lied about an fsync): the state falls back to the generation before it, the files the
lost generation had learned go back to INCOMING, and still every image ends learned exactly once.
Each test resumes a sample of the distinct images spread evenly over the log (150 / 60 / 60);
``BNNCL_LEARN_CRASH_IMAGES`` sets another number for all three (0: every distinct image).
benchmarks/crash_soak.py runs the same checks on a longer stream.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bnncl import atomic
from bnncl.cl.state import StateStore
from bnncl.service import inbox
from bnncl.service.learn import LearnLoop
from bnncl.service.session import LearnerSession
from crashsim import CrashPoint, Recorder, explore

RESUMED = os.environ.get("BNNCL_LEARN_CRASH_IMAGES")


def sample(default: int) -> int | None:
    """How many distinct crash images a test resumes (None: all)."""
    n = default if RESUMED is None else int(RESUMED)
    return n or None
PER_EXPERIENCE = 3


def setup(root: Path, template: Path, write_stream: Callable, n: int = 9) -> None:
    """A deployed state (copied from ``template``) and ``n`` images plus one unreadable file in INCOMING."""
    shutil.copytree(template, root / "state")
    write_stream(root / "inc", n, seed=11)
    bad = root / "inc" / "Bag" / "000003b.png"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("not an image\n")


def run(root: Path, model: Path, notes: list[str] | None = None, per_experience: int = PER_EXPERIENCE) -> None:
    """Open (or resume) the session in ``root`` and learn until INCOMING is empty."""
    say = (lambda m: notes.append(m)) if notes is not None else (lambda m: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session = LearnerSession.open(model, root / "state")
    inc = root / "inc"
    loop = LearnLoop(session, inc, inc / "processed", inc / "rejected", per_experience, say=say, warn=say)
    loop.start()
    loop.run(once=True)


def files(root: Path, where: str) -> list[tuple[str, str]]:
    """(label/name, sha256) of the image files in INCOMING ('waiting'), processed/ or rejected/."""
    inc = root / "inc"
    if where == "waiting":
        return sorted((it.id, inbox.digest(it.path.read_bytes()))
                      for it in inbox.scan(inc, exclude=(inc / "processed", inc / "rejected")))
    folder = inc / where
    return sorted((f"{p.parent.name}/{p.name}", inbox.digest(p.read_bytes()))
                  for p in folder.glob("*/*") if p.is_file() and not p.name.endswith(".reason.txt"))


def record(src: Path, root: Path, model: Path, per_experience: int = PER_EXPERIENCE) -> Recorder:
    """Copy ``src`` to ``root`` and run the loop there, recording every durable operation."""
    shutil.copytree(src, root)
    recorder = Recorder(root)
    with recorder.recording():
        run(root, model, per_experience=per_experience)
    return recorder


def resume_check(model: Path, ref: Path, per_experience: int = PER_EXPERIENCE) -> Callable:
    """A crash-image check: the resumed loop ends exactly as the uninterrupted run in ``ref`` did."""
    want = StateStore(ref / "state").load()
    want_done, want_rejected = files(ref, "processed"), files(ref, "rejected")

    def check(folder: Path, point: CrashPoint) -> tuple:
        notes: list[str] = []
        run(folder, model, notes, per_experience)
        got = StateStore(folder / "state").load()
        assert got.position == want.position, f"position {got.position['images_learned']} images learned"
        assert got.meta == want.meta and sorted(got.arrays) == sorted(want.arrays)
        for key, value in want.arrays.items():
            assert np.array_equal(got.arrays[key], value), f"array {key} differs from the uninterrupted run"
        assert files(folder, "waiting") == [], "files left in INCOMING"
        assert files(folder, "processed") == want_done, "processed/ is not the uninterrupted run's"
        assert files(folder, "rejected") == want_rejected, "rejected/ is not the uninterrupted run's"
        moved = any("learned before a restart" in n for n in notes)
        learned = sum(n.startswith("experience") for n in notes)
        rejected = sum("rejected, moved" in n for n in notes)
        return ("moved committed files" if moved else "-", f"{learned} experience(s) learned again",
                f"{rejected} rejected again")

    return check


def damaged_check(model: Path, names: list[str], per_experience: int = PER_EXPERIENCE) -> Callable:
    """A crash-image check that first damages the newest committed generation (when an older one
    exists): the resumed loop still learns each of ``names`` exactly once."""

    def check(folder: Path, point: CrashPoint) -> tuple:
        store = StateStore(folder / "state")
        newest = store.current_generation()
        damaged = newest is not None and any(g < newest for g in store.generations())
        if damaged:
            path = folder / "state" / f"gen-{newest:08d}" / "arrays.safetensors"
            path.write_bytes(path.read_bytes()[:-1])
        notes: list[str] = []
        run(folder, model, notes, per_experience)
        got = StateStore(folder / "state").load()
        assert got.position["images_learned"] == len(names), f"{got.position['images_learned']} images learned"
        assert got.arrays["buffer/seen_counts"].sum() == got.position["base_images"] + len(names), "learned twice"
        assert files(folder, "waiting") == [], "files left in INCOMING"
        assert [n for n, _ in files(folder, "processed")] == names, "processed/ lost or doubled a file"
        back = any("back to" in n for n in notes)
        return ("damaged" if damaged else "intact", "relearned lost files" if back else "-")

    return check


def cross_device(real: Callable) -> Callable:
    """An ``atomic.rename`` for which a move between folders of INCOMING crosses file systems (EXDEV)."""
    def rename(src, dst) -> None:
        if os.path.dirname(os.fspath(src)) != os.path.dirname(os.fspath(dst)) and "/inc/" in os.fspath(dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real(src, dst)

    return rename


def report(title: str, result) -> None:
    print(f"\n{title}: {result.summary()}")
    for outcome, n in sorted(result.outcomes.items(), key=str):
        print(f"  {n:5d}  {outcome}")


def test_power_cut_at_every_point_of_the_learn_loop(tmp_path, model, deployed_template, kit):
    t0 = time.perf_counter()
    src = tmp_path / "src"
    setup(src, deployed_template, kit.write_stream)
    ref = tmp_path / "ref"
    shutil.copytree(src, ref)
    run(ref, model)
    assert len(files(ref, "processed")) == 9 and len(files(ref, "rejected")) == 1
    recorder = record(src, tmp_path / "root", model)
    assert {"rename", "fsync_dir", "mkdir", "write"} <= {op.kind for op in recorder.ops}
    result = explore(recorder, resume_check(model, ref), seed=3, per_point=30, max_images=sample(150))
    report(f"bnncl learn: {len(recorder.ops)} operations recorded, {time.perf_counter() - t0:.1f} s", result)
    assert not result.violations, "\n".join(result.violations[:10])
    assert result.explored >= min(sample(150) or 150, 150) and len(result.outcomes) >= 4


def test_power_cut_during_cross_device_moves(tmp_path, model, deployed_template, kit, monkeypatch):
    """processed/ and rejected/ on another file system: a move is a copy, fsync, rename and unlink, so a
    cut can leave a file in both places; the resumed loop removes the INCOMING copy of a file already
    in place instead of moving it again, and ends exactly as the uninterrupted run."""
    monkeypatch.setattr(atomic, "rename", cross_device(atomic.rename))
    src = tmp_path / "src"
    setup(src, deployed_template, kit.write_stream)
    ref = tmp_path / "ref"
    shutil.copytree(src, ref)
    run(ref, model)
    recorder = record(src, tmp_path / "root", model)
    assert any(op.path.endswith(".bnncl-move.part") for op in recorder.ops)
    points = {i + 1 for i, op in enumerate(recorder.ops) if "processed" in op.path or "/Bag" in op.path}
    result = explore(recorder, resume_check(model, ref), seed=5, per_point=20, max_images=sample(60),
                     points=lambda p: p.k in points)
    report("bnncl learn, cross-device moves", result)
    assert not result.violations, "\n".join(result.violations[:10])


def test_power_cut_then_the_newest_generation_damaged_loses_nothing(tmp_path, model, deployed_template, kit):
    src = tmp_path / "src"
    setup(src, deployed_template, kit.write_stream)
    names = sorted(n for n, _ in files(src, "waiting") if not n.endswith("b.png"))
    recorder = record(src, tmp_path / "root", model)
    result = explore(recorder, damaged_check(model, names), seed=4, per_point=30, max_images=sample(60))
    report("bnncl learn, newest generation damaged after the cut", result)
    assert not result.violations, "\n".join(result.violations[:10])
    assert result.outcomes[("damaged", "relearned lost files")] > 0
