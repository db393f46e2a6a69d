"""kill -9 ``bnncl learn`` at seeded random moments over a stream of small experiences of real PNG
files; restart after each kill. After every kill: the state loads (checksums hold, no fallback), every
file is in exactly one place (incoming or processed), and what was moved agrees with what the
committed state says it learned. At the end: the final state equals an uninterrupted run's (same
seed), bit for bit, and every image was learned exactly once.

``BNNCL_LEARN_KILLS`` sets the number of kills (default 20; e.g. 200 for a longer run, which also
makes the stream longer).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from bnncl.cl.state import NoStateError, StateStore

KILLS = int(os.environ.get("BNNCL_LEARN_KILLS", "20"))
PER_EXPERIENCE = 5


def _cmd(model: Path, root: Path, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "bnncl.service.learn", "--model", str(model), "--state", str(root / "state"),
            "--incoming", str(root / "inc"), "--once", "--max-images", str(PER_EXPERIENCE), *flags]


def _files(root: Path) -> tuple[list[str], list[str]]:
    inc = root / "inc"
    waiting = sorted(p.name for p in inc.glob("*/*") if p.is_file())
    done = sorted(p.name for p in (inc / "processed").glob("*/*") if p.is_file())
    return waiting, done


def _check_invariants(root: Path, names: list[str]) -> dict | None:
    waiting, done = _files(root)
    assert sorted(waiting + done) == sorted(names), "a file was lost or duplicated"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = StateStore(root / "state").load()
    except NoStateError:
        assert not done
        return None
    # no fallback, except a kill between the first generation's rename and its CURRENT pointer: the
    # store then loads the one complete generation (with a warning)
    assert not state.fell_back or not (root / "state" / "CURRENT").exists()
    learned, last = state.position["images_learned"], len(state.position["last_files"])
    # moved files were learned; learned files not yet moved are only those of the last experience
    assert learned - last <= len(done) <= learned, (learned, last, len(done))
    return state.position


def _progress(log: Path) -> int:
    """Experiences reported in the (line-buffered) log so far."""
    return sum(line.startswith("experience") for line in log.read_text().splitlines()) if log.exists() else 0


def _wait_for_a_moment(proc: subprocess.Popen, log: Path, before: int, rng: random.Random, startup: float,
                       per_exp: float) -> None:
    """Sleep until a random moment of ``proc``'s life: inside its start-up (1 in 4), else a random fraction
    of an experience after its 1st..3rd progress line. Tied to the process's progress rather than to wall
    time (a wait never lasts past one more experience than it aimed at), so a machine whose load changes
    between the timing run and now moves the moment along with the work instead of letting one run
    finish the stream."""
    steps = rng.randint(0, 3)
    if steps:
        while proc.poll() is None and _progress(log) < before + steps:
            time.sleep(0.002)
    deadline = time.monotonic() + rng.uniform(0.0, per_exp if steps else startup)
    while proc.poll() is None and time.monotonic() < deadline and _progress(log) <= before + steps:
        time.sleep(0.002)


def test_kill_learn_at_random_moments(tmp_path, model, kit):
    n_images = max(400, PER_EXPERIENCE * KILLS * 4)
    src = tmp_path / "src"
    ids = kit.write_stream(src / "inc", n_images, seed=3)
    names = sorted(i.split("/")[1] for i in ids)
    flags = kit.fast_flags()

    # the uninterrupted run, timed to place the kills
    ref = tmp_path / "ref"
    shutil.copytree(src, ref)
    t0 = time.monotonic()
    proc = subprocess.Popen(_cmd(model, ref, flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stamps = [time.monotonic() - t0 for line in proc.stdout if line.startswith("experience")]
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    total = time.monotonic() - t0
    n_exp = n_images // PER_EXPERIENCE
    assert len(stamps) == n_exp
    # start-up (imports, model, deploy) and per-experience time (learn, save, moves), as measured
    per_exp = max(0.01, float(np.median(np.diff(stamps))))
    deploy_startup = max(0.2, stamps[0] - per_exp)
    t0 = time.monotonic()  # a start with nothing to learn: the resume start-up
    assert subprocess.run(_cmd(model, ref, flags), capture_output=True, timeout=300).returncode == 0
    startup = time.monotonic() - t0

    run = tmp_path / "run"
    shutil.copytree(src, run)
    rng = random.Random(20240601)
    kills = restarts_moving = deploy_kills = 0
    finished = False
    log = tmp_path / "log.txt"
    while not finished:
        before = _progress(log)
        with open(log, "a") as fh:
            proc = subprocess.Popen(_cmd(model, run, flags), stdout=fh, stderr=subprocess.STDOUT)
        if kills < KILLS:
            # kill in the start-up or within a few experiences: every phase gets hit (imports, load,
            # deploy, learning, the save, the moves)
            first = not (run / "state" / "CURRENT").exists()
            _wait_for_a_moment(proc, log, before, rng, deploy_startup if first else startup, per_exp)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                position = _check_invariants(run, names)
                deploy_kills += position is None
                continue
        assert proc.wait(timeout=300) == 0, log.read_text()[-2000:]
        finished = True
    assert kills >= KILLS, f"the stream ended after {kills} kills"
    restarts_moving = log.read_text().count("learned before a restart")

    # the end: everything learned once, nothing left, same state as the uninterrupted run
    waiting, done = _files(run)
    assert waiting == [] and done == names
    a, b = StateStore(ref / "state").load(), StateStore(run / "state").load()
    # generation numbers may run ahead of the reference (a killed save's uncommitted number is skipped)
    assert a.generation == n_exp + 1 <= b.generation and b.position["experience"] == n_exp
    assert b.position == a.position and b.position["images_learned"] == n_images
    assert b.meta == a.meta
    assert sorted(a.arrays) == sorted(b.arrays)
    for key in a.arrays:
        np.testing.assert_array_equal(a.arrays[key], b.arrays[key], err_msg=key)
    seen = b.arrays["buffer/seen_counts"].sum()
    assert seen == b.position["base_images"] + n_images  # no image offered twice
    print(f"\nstart-up {startup:.2f} s (deploying {deploy_startup:.2f} s), {per_exp:.3f} s per experience; "
          f"{kills} kills ({deploy_kills} before the deployment committed, {restarts_moving} restarts "
          f"finished the moves of a committed experience); {n_exp} experiences; reference run {total:.1f} s")
