"""libbnncl's context learns with head-only CWR* (a model exported with ``--strategy cwr_star``) bit-identically to
the Python learner with the portable random stream.

fmnist-b5 with ``bnncl.api.Learner(strategy="cwr_star", tail_blocks=0, lr_bits=8, rng="portable", ...)`` deployed
on 40 embedded base images per class (a buffer of 120, so the deployment evicts), exported with
``export_c(..., cwr=cwr_export(learner))``; ``libbnncl/tests/cwr_main.c`` (host gcc) predicts 24 test images, learns
Fashion class 5 (20 images, experience 1) and class 6 (20, experience 2), saves the state, starts again
(``bnncl_init``), loads it, predicts, then learns class 5's images again (experience 3) and saves again.  The same
Learner does the same, predicting one image at a time (the q_f quantization of the head's input is per batch, and
the device's batch is one image).  Compared bit for bit: the classes and float32 scores of every prediction (before
learning, after each experience, after the reload), and both saved states byte for byte against the state
``cwr_state_bytes`` writes from the Learner (consolidated rows and counts, standardizer, buffer codes, labels,
experience indices, seen counts and value range, both random streams, the experience counter).  Refusals: a call of
``max_images + 1`` images and a wrong image size (-6), a bad label (-11), a flipped payload or header byte (-8), a
short state (-7), a state of another CWR* configuration (fingerprint) or of the same fingerprint with another
configuration (-9), a checksummed state with a label out of range (-8), a state of another strategy (-9); the
predictions are unchanged after them.  The arena the program reports is the one ``export_c`` computes.  The same
program cross-built for AArch64 runs under ``qemu-aarch64`` (a few seconds) with the same checks, when
``gcc-aarch64-linux-gnu`` and ``qemu-user`` are installed.

On a bare-metal Cortex-M4F (``qemu-system-arm -M mps2-an386``, ``libbnncl/tests/cortexm/cwr_cm.c``, the model and
images in flash): the state deployed on the base images predicts 8 test images, learns 4 + 4 images of Fashion
classes 5 and 7 as one experience, saves, reloads, predicts; classes and scores bit for bit, the saved state's
header and checksum equal to the Python learner's state (``cwr_state_bytes``), a flipped byte refused (-8).
:func:`run_cwr_board` also gives the flash, RAM and instruction figures (benchmarks/libbnncl_mcu.py runs it with
the documented head-only setting).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from bnncl.api import Learner
from bnncl.device.export_c import arena_plan, cwr_export, cwr_state_bytes, export_c
from libbnncl_inputs import learning_inputs
from libbnncl_programs import program_lines, run_semihosted
from native.test_libbnncl import CROSS_CC, QEMU, SYSROOT, _make
from native.test_libbnncl_cortexm import BOARDS, FLASH_SECTIONS, LIB, _section_sizes, _tools_missing

SETTINGS = dict(strategy="cwr_star", tail_blocks=0, lr_bits=8, buffer=120, rng="portable", standardize="on",
                mixing="balanced", epochs=None, minibatch=32, cwr_max_k=1.0, lr=0.1)
MAX_IMAGES, NEW, PER_CLASS, NTEST = 30, (5, 6), 20, 24
CHECKS = {"too_many_images": -6, "bad_label": -11, "learn_wrong_size": -6, "corrupt_payload": -8,
          "corrupt_header": -8, "short_state": -7, "refused_0": -9, "refused_1": -9, "refused_2": -8,
          "refused_3": -9, "unchanged_after_refusals": 0}


def _snapshot(learner: Learner, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes and float32 score bits of each test image, predicted alone (the device's batch)."""
    cl = learner.learner
    classes = np.array([cl.predict(latents[i:i + 1])[0] for i in range(len(latents))])
    scores = np.concatenate([cl.logits(latents[i:i + 1]) for i in range(len(latents))])
    return classes, scores.view(np.uint32)


def _with_header(state: bytes, **fields: int) -> bytes:
    """``state`` with header fields replaced (and the header checksum made valid again)."""
    h = np.frombuffer(state[:32], "<u4").copy()
    for name, v in fields.items():
        h[{"fingerprint": 2, "strategy": 3}[name]] = v
    h[7] = zlib.crc32(h[:7].tobytes())
    return h.tobytes() + state[32:]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ctx_cwr")
    inp = learning_inputs(NEW, PER_CLASS, NTEST, base_per_class=40)
    order = np.argsort(inp.labels, kind="stable")  # class 5 (experience 1), then class 6 (experience 2)
    images, labels = inp.images[order], inp.labels[order]
    learner = Learner(inp.model, num_classes=10, **SETTINGS)
    learner.deploy(inp.base_images, inp.base_labels)
    cwr = cwr_export(learner.learner, MAX_IMAGES, learner._next)
    figures = export_c(inp.model, tmp / "model", cwr=cwr)
    fp = figures["fingerprint"]
    latents = learner.learner.extract(inp.test)
    want = {"p0": _snapshot(learner, latents)}
    learner.learn(images[:PER_CLASS], labels[:PER_CLASS])
    want["p1"] = _snapshot(learner, latents)
    learner.learn(images[PER_CLASS:], labels[PER_CLASS:])
    want["p2"] = want["p3"] = _snapshot(learner, latents)
    after2 = cwr_export(learner.learner, MAX_IMAGES, learner._next)
    learner.learn(images[:PER_CLASS], labels[:PER_CLASS])
    want["p4"] = _snapshot(learner, latents)
    after3 = cwr_export(learner.learner, MAX_IMAGES, learner._next)
    # refused states: another configuration's model, the same fingerprint with another configuration, a label out
    # of range (checksums valid), another strategy
    other_fp = export_c(inp.model, tmp / "other", cwr=dataclasses.replace(cwr, lr=0.05))["fingerprint"]
    assert other_fp != fp
    bad = {**after2.state, "labels": after2.state["labels"].copy()}
    bad["labels"][0] = 10
    refused = [cwr_state_bytes(after2, other_fp), cwr_state_bytes(dataclasses.replace(after2, lr=0.05), fp),
               cwr_state_bytes(dataclasses.replace(after2, state=bad), fp),
               _with_header(cwr_state_bytes(after2, fp), strategy=1)]
    files = {"test.u8": inp.test, "train.u8": images, "labels.i32": labels.astype("<i4")}
    for name, a in files.items():
        np.ascontiguousarray(a).tofile(tmp / name)
    for i, state in enumerate(refused):
        (tmp / f"refused{i}.state").write_bytes(state)
    return {"tmp": tmp, "model": inp.model, "cwr": cwr, "figures": figures, "want": want,
            "states": (cwr_state_bytes(after2, fp), cwr_state_bytes(after3, fp)), "nrefused": len(refused)}


def _run(case: dict, prog: Path, runner: list[str], tag: str) -> dict[str, list[list[str]]]:
    tmp = case["tmp"]
    args = [str(tmp / n) for n in ("test.u8", "train.u8", "labels.i32")] + [str(PER_CLASS)] + \
        [str(tmp / f"{tag}-state{i}") for i in (1, 2)] + \
        [str(tmp / f"refused{i}.state") for i in range(case["nrefused"])]
    r = subprocess.run([*runner, str(prog), *args], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    out = program_lines(r.stdout)
    return out


def _check(case: dict, out: dict[str, list[list[str]]], tag: str) -> None:
    figures = case["figures"]
    assert int(out["arena"][0][0]) == figures["arena_bytes"] == arena_plan(case["model"], cwr=case["cwr"])[
        "arena_bytes"]
    assert int(out["state_size"][0][0]) == figures["state_bytes"] == len(case["states"][0])
    assert {k: int(v) for k, v in out["check"]} == CHECKS
    assert [int(out[k][0][0]) for k in ("learn1", "learn2", "load", "learn3")] == [0, 0, 0, 0]
    assert [int(r[0]) for r in out["save"]] == [0, 0]
    for p, (classes, bits) in case["want"].items():
        assert np.array_equal([int(r[0]) for r in out[p]], classes), f"{tag} {p}: predictions differ"
        got = np.array([[int(v, 16) for v in r[1:]] for r in out[p]], np.uint32)
        assert np.array_equal(got, bits), f"{tag} {p}: scores differ"
    for i, want in enumerate(case["states"], start=1):
        got = (case["tmp"] / f"{tag}-state{i}").read_bytes()
        assert got == want, f"{tag}: the state saved after experience {i + 1} differs from the Python learner's"


def test_host_cwr_star_learns_bit_identically_to_the_python_learner(case):
    prog = _make(case["tmp"], case["tmp"] / "model", "gcc", "cwr")
    out = _run(case, prog, [], "host")
    _check(case, out, "host")
    assert set(case["want"]["p2"][0].tolist()) >= set(NEW), "the learned classes are never predicted"


def test_aarch64_cwr_star_under_qemu_learns_bit_identically(case):
    missing = [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]
    if missing or not SYSROOT.is_dir():
        pytest.skip(f"{', '.join(missing) or SYSROOT} not found (apt-get install gcc-aarch64-linux-gnu qemu-user)")
    prog = _make(case["tmp"], case["tmp"] / "model", CROSS_CC, "cwr")
    _check(case, _run(case, prog, [QEMU, "-L", str(SYSROOT)], "aarch64"), "aarch64")


#: the documented head-only setting (docs/deploy-to-a-microcontroller.md) but the buffer and the images per call
DOCUMENTED = dict(strategy="cwr_star", tail_blocks=0, lr_bits=8, rng="portable", standardize="on", mixing="balanced",
                  cwr_max_k=1.0, epochs=None, lr=0.1, minibatch=128, seed=0)


def run_cwr_board(tmp: Path, board: str, *, buffer: int, max_images: int, per_class: int, ntest: int,
                  base_per_class: int | None = None, settings: dict | None = None, timeout: float = 600) -> dict:
    """fmnist-b5 exported with ``--strategy cwr_star`` (the state deployed on the base images: all the embedded
    ones, or ``base_per_class`` of each), on ``board`` under qemu: ``ntest`` predictions, one experience of
    ``per_class`` images of classes 5 and 7, save, reload, predict; checked against the Python learner (module
    docstring); returns the flash, RAM and instruction figures."""
    inp = learning_inputs((5, 7), per_class, ntest, base_per_class=base_per_class)
    learner = Learner(inp.model, num_classes=10, **{**DOCUMENTED, **(settings or {}), "buffer": buffer})
    learner.deploy(inp.base_images, inp.base_labels)
    cwr = cwr_export(learner.learner, max_images, learner._next)
    figures = export_c(inp.model, tmp / "model", cwr=cwr)
    latents = learner.learner.extract(inp.test)
    want = {"p0": _snapshot(learner, latents)}
    learner.learn(inp.images, inp.labels)
    want["p1"] = want["p2"] = _snapshot(learner, latents)
    state = cwr_state_bytes(cwr_export(learner.learner, max_images, learner._next), figures["fingerprint"])
    for name, a in (("test.u8", inp.test), ("train.u8", inp.images), ("labels.i32", inp.labels.astype("<i4"))):
        np.ascontiguousarray(a).tofile(tmp / name)
    data_c = tmp / "data.c"
    subprocess.run([sys.executable, str(LIB / "tests" / "embed_images.py"), str(tmp / "test.u8"), str(tmp / "train.u8"),
                    str(tmp / "labels.i32"), "--image-bytes", str(inp.test[0].size), "-o", str(data_c)], check=True)
    b = BOARDS[board]
    elf = tmp / "cwr_cm.elf"
    cmd = ["make", "-s", "-j2", "-C", str(LIB), "cortexm", f"MODEL={tmp / 'model'}", f"DATA={data_c}", "CM_MAIN=cwr_cm",
           f"CM_BUILD={tmp / 'build'}", f"CM_PROG={elf}", f"CM_CPU={b.flags}"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}"
    log = tmp / "semihosting.txt"
    text, qemu_s = run_semihosted(elf, b.machine, b.cpu, log, timeout)
    out = program_lines(text)
    assert int(out["arena"][0][0]) == figures["arena_bytes"]
    assert int(out["state_size"][0][0]) == figures["state_bytes"] == len(state)
    assert [int(out[k][0][0]) for k in ("learn", "save", "load")] == [0, 0, 0]
    assert out["check"] == [["corrupt_payload", "-8"]]
    for p, (classes, bits) in want.items():
        assert np.array_equal([int(row[0]) for row in out[p]], classes), f"{board} {p}: predictions differ"
        assert np.array_equal(np.array([[int(v, 16) for v in row[1:]] for row in out[p]], np.uint32), bits), \
            f"{board} {p}: scores differ"
    assert bytes(int(v, 16) for v in out["head"][0]) == state[:32]
    assert bytes(int(v, 16) for v in out["crc"][0]) == state[-4:], "the saved state differs from the Python learner's"
    sizes = _section_sizes(elf)
    ticks = {row[0]: int(row[1]) for row in out["ticks"]}
    per_tick = int(out["calib_insns"][0][0]) / ticks["calib"]
    assert 39.0 < per_tick < 41.0, f"qemu -icount shift=0: expected 40 instructions per 25 MHz tick, got {per_tick}"
    stack = int(out["stack"][0][0])
    return {"flash": sum(sizes.get(sec, 0) for sec in FLASH_SECTIONS), "sizes": sizes, "stack": stack,
            "ram": sizes[".data"] + sizes[".bss"] + stack, "arena": figures["arena_bytes"],
            "model_arrays": figures["array_bytes"], "state_arrays": figures["state_array_bytes"],
            "cwr_state": figures["cwr_state_bytes"], "cwr_scratch": figures["cwr_scratch_bytes"],
            "saved_state": figures["state_bytes"], "buffer": buffer, "max_images": max_images,
            "insn_predict": 40 * ticks["predict"] / ntest, "insn_learn": 40 * ticks["learn"],
            "learned": len(inp.images), "qemu_s": qemu_s}


def cwr_report(board: str, r: dict) -> str:
    s = r["sizes"]
    return (f"{board} fmnist-b5 (head-only CWR*, buffer {r['buffer']} at 8 bits, {r['max_images']} images per call): "
            f"flash {r['flash']} bytes (.text {s['.text']}, .rodata {s['.rodata']}: model arrays {r['model_arrays']}, "
            f"initial state {r['state_arrays']}); RAM {r['ram']} bytes (arena {r['arena']}: CWR* state "
            f"{r['cwr_state']}, learn scratch {r['cwr_scratch']}; stack {r['stack']}; saved state {r['saved_state']} "
            "apart); "
            f"instructions (qemu -icount): {r['insn_predict']:,.0f} per prediction, {r['insn_learn']:,.0f} for an "
            f"experience of {r['learned']} images; qemu {r['qemu_s']:.1f} s")


def test_cortex_m4f_cwr_star_predict_learn_save_load_bit_identical(tmp_path):
    reason = _tools_missing()
    if reason:
        pytest.skip(reason)
    r = run_cwr_board(tmp_path, "m4f", buffer=60, max_images=8, per_class=4, ntest=8, base_per_class=20,
                      settings={"minibatch": 32})
    print("\n" + cwr_report("m4f", r))
