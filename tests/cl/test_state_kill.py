"""kill -9 a process that saves learner states in a loop, at seeded random moments; after every kill
the store must load, its checksums must hold, and the loaded generation must be one that was
completely written: the last one the writer logged as committed, or the one it was saving when it
died (whose commit, the rename of CURRENT, may have happened before the log line).

Each writer run resumes from what it loads, as a device does after a power cut. Set
``BNNCL_KILL_TEST_KILLS`` for a longer run (default 24 kills).
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType

import numpy as np

import bnncl
from bnncl.cl.state import NoStateError, StateStore

KILLS = int(os.environ.get("BNNCL_KILL_TEST_KILLS", "24"))

WRITER = textwrap.dedent(
    '''
    """Saves state after state into a StateStore, logging 'resume STEP', 'begin STEP', 'commit STEP GEN'."""
    import sys

    import numpy as np


    def content(step):
        """The state saved at ``step``: about 1-2 MB, size varying with the step."""
        rng = np.random.default_rng(step)
        arrays = {
            "engine/head": rng.standard_normal((10, 4096)).astype(np.float32),
            "buffer/latents": rng.integers(0, 2**63, (1000 + 97 * (step % 11), 64), dtype=np.uint64),
            "cwr/past": np.full(10, step, dtype=np.int64),
        }
        meta = {"kind": "continual_learner", "step": step, "rng_state": rng.bit_generator.state}
        return arrays, meta


    def main(directory, log_path):
        from bnncl.cl.state import NoStateError, StateStore

        store = StateStore(directory)
        try:
            step = store.load().position["step"]
        except NoStateError:
            step = 0
        with open(log_path, "a") as log:
            log.write(f"resume {step}\\n")  # what it loaded is committed, logged or not
            log.flush()
            print("ready", flush=True)
            while True:
                step += 1
                arrays, meta = content(step)
                log.write(f"begin {step}\\n")
                log.flush()
                generation = store.save(arrays, meta, position={"step": step})
                log.write(f"commit {step} {generation}\\n")
                log.flush()


    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2])
    '''
)


def load_writer(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("state_writer", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def logged(log: Path) -> tuple[int, int | None]:
    """(last committed step or 0, the step in flight when the writer died or None)."""
    committed, begun = 0, None
    for line in log.read_text().splitlines():
        word, step = line.split()[:2]
        if word == "begin":
            begun = int(step)
        elif word in ("commit", "resume"):
            committed = int(step)
    return committed, begun if begun is not None and begun > committed else None


def test_state_survives_kill_9_at_random_moments(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writer = load_writer(script)
    directory, log = tmp_path / "state", tmp_path / "log.txt"
    log.touch()
    src = str(Path(bnncl.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    rng = random.Random(20240501)
    facts = {"kills": 0, "mid_save": 0, "in_temp_folder": 0, "renamed_not_committed": 0, "loaded_in_flight": 0,
             "no_state_yet": 0}
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(directory), str(log)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.strip() == "ready", proc.stderr.read() if proc.stderr else ""
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, err
        facts["kills"] += 1

        committed, in_flight = logged(log)
        facts["mid_save"] += in_flight is not None
        facts["in_temp_folder"] += any(p.name.startswith(".tmp-gen-") for p in directory.iterdir())
        store = StateStore(directory)
        current = store.current_generation()
        facts["renamed_not_committed"] += any(g > (current or 0) for g in store.generations())
        try:
            state = store.load()
        except NoStateError:
            assert committed == 0, f"committed step {committed} but the store says no state"
            facts["no_state_yet"] += 1
            continue
        step = state.position["step"]
        assert step == committed or step == in_flight, (step, committed, in_flight)
        # a kill never damages the committed generation; the only "fallback" is a first save killed
        # after its folder rename but before CURRENT existed (then the newest intact one loads)
        assert not state.fell_back or current is None, "a kill damaged the committed generation"
        store.verify(state.generation)
        facts["loaded_in_flight"] += step == in_flight
        arrays, meta = writer.content(step)
        assert state.arrays.keys() == arrays.keys()
        assert all(np.array_equal(state.arrays[k], v) and state.arrays[k].dtype == v.dtype for k, v in arrays.items())
        assert state.meta == meta
        # committed + previous, plus leftovers of kills (an uncommitted gen, one not yet pruned)
        assert len(store.generations()) <= 4, store.generations()

    print(f"kill test: {facts}, final step {logged(log)[0]}")
    store = StateStore(directory)
    step = store.load().position["step"]
    store.save(*writer.content(step + 1), position={"step": step + 1})  # one clean save tidies up
    assert len(store.generations()) == 2
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".")]
    assert facts["kills"] >= min(KILLS, 20)
    assert facts["mid_save"] >= 1  # the kills did land inside saves
