"""``bnncl learn`` / ``predict`` / ``state show`` end to end on the shipped model and real images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bnncl.cl.state import StateStore
from bnncl.service import learn, predict, show
from bnncl.service.session import LearnerSession


def _learn(model, state, inc, *extra) -> int:
    return learn.main(["--model", str(model), "--state", str(state), "--incoming", str(inc), "--once", *extra])


def test_learn_predict_show(tmp_path, model, state, kit, capsys):
    inc = tmp_path / "inc"
    ids = kit.write_stream(inc, 20, seed=1)
    assert _learn(model, state, inc, "--max-images", "8") == 0
    out = capsys.readouterr().out
    assert out.count("experience ") == 3 and "learned 20 image(s)" in out
    assert sorted(f"{p.parent.name}/{p.name}" for p in (inc / "processed").glob("*/*")) == sorted(ids)
    loaded = StateStore(state).load()
    assert loaded.position["experience"] == 3 and loaded.position["images_learned"] == 20
    assert len(loaded.position["last_files"]) == 4  # 8 + 8 + 4

    # nothing new: exits 0, commits nothing
    before = kit.snapshot(state)
    assert _learn(model, state, inc) == 0
    assert "nothing new to learn" in capsys.readouterr().out
    assert kit.snapshot(state) == before

    first = sorted((inc / "processed").glob("*/*"))[:3]
    assert predict.main(["--model", str(model), "--state", str(state), *map(str, first)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        name, label, score = line.split("\t")
        assert label in loaded.position["classes"] and 0.0 < float(score) <= 1.0

    assert show.main(["show", str(state)]) == 0
    text = capsys.readouterr().out
    assert "generation 4" in text and "replay buffer: 200 / 200 patterns at 8 bit(s)" in text
    assert show.main(["show", str(state), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert sum(r["learned"] for r in info["classes"]) == 20
    assert info["buffer"]["patterns"] == 200 and info["memory_bytes"]["replay"] > 0


def test_deploy_with_defaults_k2(tmp_path, model, kit):
    """CWR*'s default settings (K=2, 1-bit replay) deploy and learn; a resumed session continues exactly."""
    settings = {"strategy": "cwr_star", "buffer": 60, "epochs": 1}
    a = LearnerSession.open(model, tmp_path / "a", settings)
    assert a.settings.tail_blocks == 2 and a.settings.lr_bits == 1 and len(a.buffer) == 60
    inc = tmp_path / "inc"
    kit.write_stream(inc, 12, seed=2)
    loop = learn.LearnLoop(a, inc, inc / "processed", inc / "rejected", max_images=6, say=lambda m: None)
    assert loop.step() == 6
    # a second session resumes from disk, a third carries on in memory: both learn the next batch
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = LearnerSession.open(model, tmp_path / "b")
    probe = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
    assert a.predict(probe) == b.predict(probe)  # the resumed head is exactly the one in memory
    np.testing.assert_array_equal(a.engine.get_head(), b.engine.get_head())
    images, labels = [], []
    for item in sorted((inc).glob("[!pr]*/*")):
        arr, _ = learn.read_item(learn.inbox.Item(item.parent.name, item.name, item), a.image_shape)
        images.append(arr)
        labels.append(item.parent.name)
    a.learn(np.stack(images), labels)
    b.learn(np.stack(images), labels)
    sa, sb = a.store.load(), b.store.load()
    for key in sa.arrays:
        np.testing.assert_array_equal(sa.arrays[key], sb.arrays[key], err_msg=key)
    assert sa.meta == sb.meta and sa.position == sb.position
    assert any(k.startswith("engine/tail/") for k in sa.arrays)  # K = 2: the tail is in the state


def test_new_class_name_takes_a_free_row(tmp_path, model, kit, capsys):
    inc = tmp_path / "inc"
    kit.write_stream(inc, 4, seed=4, classes=(8,))
    (inc / "Bag").rename(inc / "Handbag")
    assert _learn(model, tmp_path / "st", inc, *kit.fast_flags(), "--capacity", "11") == 0
    pos = StateStore(tmp_path / "st").load().position
    assert pos["classes"][10] == "Handbag" and pos["learned_per_class"][10] == 4
    assert "Handbag x4" in capsys.readouterr().out


def test_committed_files_are_moved_not_relearned(tmp_path, model, state, kit, capsys):
    """A kill after the commit, before the moves: the next start moves them without learning."""
    inc = tmp_path / "inc"
    kit.write_stream(inc, 6, seed=5)
    assert _learn(model, state, inc) == 0
    before = kit.snapshot(state)
    for p in (inc / "processed").glob("*/*"):  # put them back as if the moves never happened
        p.rename(inc / p.parent.name / p.name)
    assert _learn(model, state, inc) == 0
    assert "moved 6 file(s) learned before a restart" in capsys.readouterr().out
    assert kit.snapshot(state) == before
    assert len(list((inc / "processed").glob("*/*"))) == 6

    # same name, new content: a new image, learned
    kit.write_stream(inc, 1, seed=6)  # 000000.png again, another picture
    again = next(inc.glob("[!pr]*/000000.png"))
    assert _learn(model, state, inc) == 0
    assert StateStore(state).load().position["images_learned"] == 7
    assert not again.exists()


def test_second_learner_on_one_state_is_refused(tmp_path, model, state, capsys):
    (tmp_path / "inc").mkdir()
    with learn.learner_lock(state):
        assert _learn(model, state, tmp_path / "inc") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "another bnncl learn is running" in err


def test_watch_mode_learns_what_arrives(tmp_path, model, state, kit, monkeypatch):
    """Without --once the loop keeps polling; files written later are learned."""
    inc = tmp_path / "inc"
    inc.mkdir()
    session = LearnerSession.open(model, state)
    loop = learn.LearnLoop(session, inc, inc / "processed", inc / "rejected", say=lambda m: None)
    calls = []

    def fake_sleep(_):
        calls.append(1)
        if len(calls) == 1:
            kit.write_stream(inc, 3, seed=7)
        elif len(calls) > 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(learn.time, "sleep", fake_sleep)
    with pytest.raises(KeyboardInterrupt):
        loop.run(once=False, poll=0.01)
    assert session.position["images_learned"] == 3


def test_watch_mode_retries_a_commit_after_the_disk_was_full(tmp_path, model, state, kit, monkeypatch):
    """Watching (no --once), a full disk at the commit is a warning: the files stay in INCOMING and the
    next poll learns them once space is back (with --once it is an error: test_bad_input)."""
    import errno

    from bnncl import atomic

    inc = tmp_path / "inc"
    kit.write_stream(inc, 3, seed=12)
    session = LearnerSession.open(model, state)
    warned: list[str] = []
    loop = learn.LearnLoop(session, inc, inc / "processed", inc / "rejected", say=lambda m: None, warn=warned.append)
    real = atomic.write_all
    monkeypatch.setattr(atomic, "write_all", lambda fd, d: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    sleeps = []

    def fake_sleep(_):
        sleeps.append(1)
        monkeypatch.setattr(atomic, "write_all", real)  # space freed
        if session.position["images_learned"]:
            raise KeyboardInterrupt

    monkeypatch.setattr(learn.time, "sleep", fake_sleep)
    with pytest.raises(KeyboardInterrupt):
        loop.run(once=False, poll=0.01)
    assert len(warned) == 1 and "could not write the state (disk full)" in warned[0] and "retrying" in warned[0]
    assert session.position["images_learned"] == 3 and StateStore(state).load().position["images_learned"] == 3


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_stops_at_a_safe_point_with_a_message(tmp_path, model, state, kit, sig):
    """SIGTERM or SIGINT to a watching ``bnncl learn``: it finishes the experience in hand (commit and
    moves), says so, and exits 0; every file is in INCOMING or processed/, and processed/ holds exactly
    what the state learned."""
    import signal
    import subprocess
    import sys

    inc = tmp_path / "inc"
    ids = kit.write_stream(inc, 200, seed=14)
    cmd = [sys.executable, "-m", "bnncl.service.learn", "--model", str(model), "--state", str(state),
           "--incoming", str(inc), "--max-images", "2", "--poll", "0.2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first.startswith("experience 1"), first + proc.stderr.read()
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (proc.returncode, err)
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {sig} at a safe point: state generation") and err == "", (out, err)
    done = sorted(f"{p.parent.name}/{p.name}" for p in (inc / "processed").glob("*/*"))
    waiting = sorted(f"{p.parent.name}/{p.name}" for p in inc.glob("*/*") if p.is_file())
    assert sorted(done + waiting) == sorted(ids)
    assert len(done) == StateStore(state).load().position["images_learned"] > 0
    print(f"\n{sig}: stopped after {len(done)} of {len(ids)} images")


def test_closed_pipe_ends_show_and_predict_quietly(tmp_path, model, state, kit):
    """``bnncl state show DIR | head -1`` (run as ``python -m``, without the bnncl entry point): no
    BrokenPipeError traceback, exit code 1."""
    import os
    import subprocess
    import sys

    image = tmp_path / "imgs" / kit.write_stream(tmp_path / "imgs", 1, seed=15)[0]
    for cmd in (["bnncl.service.show", "show", str(state)],
                ["bnncl.service.predict", "--model", str(model), "--state", str(state), str(image)]):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first line is written
        proc = subprocess.run([sys.executable, "-m", *cmd], stdout=write, stderr=subprocess.PIPE, text=True)
        os.close(write)
        assert proc.returncode == 1 and proc.stderr == "", (cmd, proc.returncode, proc.stderr)


def test_settings_of_a_state_from_before_qw_rounding_keep_round_to_nearest():
    """A state deployed before ``--qw-rounding`` existed trained with round-to-nearest: reading its
    settings says so (and resuming it keeps it); new states record their choice."""
    from dataclasses import asdict

    from bnncl.service.session import Settings

    old = {k: v for k, v in asdict(Settings()).items() if k != "qw_rounding"}
    assert Settings.from_dict(old).qw_rounding == "nearest"
    assert Settings.from_dict(asdict(Settings())).qw_rounding == "stochastic"
    assert Settings.from_dict(asdict(Settings(qw_rounding="nearest"))).qw_rounding == "nearest"
