"""libbnncl on a Cortex-M4F and a Cortex-M7 (bare metal, ``qemu-system-arm -M mps2-an386`` / ``mps2-an500``)
agrees with the Python engine.

``make -C libbnncl cortexm`` builds the library with ``arm-none-eabi-gcc`` (hard float, ``-O2``,
``-ffp-contract=off``, newlib nano; FPv4-SP for the M4F, the double-precision FPv5 for the M7) and
``libbnncl/tests/cortexm/cortexm_main.c`` with its own start-up (vector table, reset handler, semihosting output
and exit) and linker script for the MPS2 boards (``mps2.ld``: AN386 and AN500 have the same map for it).
fmnist-b5 is exported with the streaming-LDA state that ``bnncl.api.Learner`` deploys on the embedded base
images; 16 embedded test images and 16 training images of Fashion classes 5 and 7 (8 each) are compiled
into the program (``libbnncl/tests/embed_images.py``); on both boards.  cifar10-b5 runs on the M7 with 4 test
images and 4 + 4 training images of classes 5 and 7 (CIFAR-10 from ``shared/data``; skipped without it).
The program, under qemu with semihosting:

* predicts the test images with the pretrained head (the model started without its state): classes
  identical and float32 logits bit-identical to ``FrozenEngine`` on its scalar path, pooled features
  (the SLDA latents) bit-identical to ``Learner``'s;
* predicts with the deployed state, learns the training images in one experience (one merge: fewer than
  ``BNNCL_LEARN_CHUNK``), saves the state to a static buffer through the callbacks, starts again
  (``bnncl_init``), reloads it and predicts again: classes identical to the Python ``Learner`` before and after
  learning and after the reload; SLDA scores and the learned state (counts exactly; means and covariance)
  within rtol 1e-5 (float32 in the FPU, float64 in software on the M4F and in the FPU on the M7, all IEEE-754
  round-to-nearest; observed: bit-identical); a state with a flipped byte is refused (-8);
* the leave-one-out tally of the shrinkage grid (the learned classes hold 8 or 4 features; cifar10-b5's deployed
  state holds 100 per base class, tallied in Python and embedded) and the shrinkage it selects
  (``bnncl_slda_selection``) equal to Python's, before and after learning.

Flash (``.isr_vector + .text + .rodata + .ARM.exidx + .data`` from ``arm-none-eabi-size -A``; the
embedded images are in ``.testdata``, counted apart) and RAM (``.data + .bss``, which holds the arena, plus
the stack high-water mark the program measures) are printed to the log, with instructions per
prediction and per learned image: qemu runs with ``-icount shift=0`` (one instruction per nanosecond of
virtual time) and the program reads the board's 25 MHz timer, so instructions = 40 x ticks (checked on
each run by a 2,000,000-instruction loop).  Skipped when ``arm-none-eabi-gcc``, newlib or ``qemu-system-arm``
is missing (``apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm``).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from bnncl.api import Learner
from bnncl.cl.slda import SHRINKAGE_GRID
from bnncl.device.export_c import STATE_HEADER, arena_bytes, export_c, state_bytes
from bnncl.device.frozen import FrozenEngine
from bnncl.device.kernels import kernel_path
from libbnncl_inputs import learning_inputs
from libbnncl_programs import program_lines, run_semihosted

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "libbnncl"
CC, SIZE, QEMU = "arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm"
NEWLIB = Path("/usr/lib/arm-none-eabi/newlib")
NEW_CLASSES, NEW_PER_CLASS, NTEST = (5, 7), 8, 16
FLASH_SECTIONS = (".isr_vector", ".text", ".rodata", ".ARM.exidx", ".data")


def _tools_missing() -> str | None:
    missing = [t for t in (CC, SIZE, QEMU, "make") if shutil.which(t) is None]
    if not missing and not NEWLIB.is_dir():
        missing.append(str(NEWLIB))
    if missing:
        return (f"{', '.join(missing)} not found (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi "
                "qemu-system-arm)")
    return None


def _section_sizes(elf: Path) -> dict[str, int]:
    r = subprocess.run([SIZE, "-A", str(elf)], capture_output=True, text=True, check=True)
    sizes = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def _hex_floats(rows: list[list[str]]) -> np.ndarray:
    return np.array([[int(v, 16) for v in r] for r in rows], np.uint32)


class Board(NamedTuple):
    machine: str  # qemu-system-arm -M
    cpu: str  # qemu -cpu
    flags: str  # CM_CPU: the compiler's target flags


BOARDS = {
    "m4f": Board("mps2-an386", "cortex-m4", "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16"),
    # the AN500's Cortex-M7 as qemu models it has the double-precision FPv5 (MVFR0 0x10110221): float64 in hardware
    "m7": Board("mps2-an500", "cortex-m7", "-mcpu=cortex-m7 -mthumb -mfloat-abi=hard -mfpu=fpv5-d16"),
}


def run_board(tmp_path: Path, board: Board, model_name: str, new_classes: tuple[int, ...], per_class: int,
              ntest: int, base_per_class: int | None = None, timeout: float = 120) -> dict:
    """Export ``model_name`` with the state ``Learner`` deploys, build the test program for ``board``, run it
    under qemu and check it against the Python engine (module docstring); returns the figures."""
    model, base_images, base_labels, images, labels, test = learning_inputs(
        new_classes, per_class, ntest, model_name=model_name, base_per_class=base_per_class)
    with kernel_path("scalar"):
        engine = FrozenEngine(model)
        frozen_logits, frozen_classes = engine.logits(test), engine.predict(test)
        learner = Learner(model)
        learner.deploy(base_images, base_labels)
        figures = export_c(model, tmp_path / "model", slda=learner.learner.feature_head)
        latents = learner.learner.extract(test)
        logits0, before = learner.learner.logits(latents), learner.learner.predict(latents)
        selection0 = learner.learner.feature_head.effective_shrinkage, learner.learner.feature_head.loo_correct.copy()
        learner.learn(images, labels)
        logits1, after = learner.learner.logits(latents), learner.learner.predict(latents)
    slda = learner.learner.feature_head
    assert len(images) <= figures["learn_chunk"], "one merge: the state is compared bit for bit below"

    for name, a in (("test.u8", test), ("train.u8", images), ("labels.i32", labels.astype("<i4"))):
        np.ascontiguousarray(a).tofile(tmp_path / name)
    data_c = tmp_path / "data.c"
    subprocess.run([sys.executable, str(LIB / "tests" / "embed_images.py"), str(tmp_path / "test.u8"),
                    str(tmp_path / "train.u8"), str(tmp_path / "labels.i32"), "--image-bytes",
                    str(test[0].size), "-o", str(data_c)], check=True)
    elf = tmp_path / "cortexm_main.elf"
    cmd = ["make", "-s", "-j2", "-C", str(LIB), "cortexm", f"MODEL={tmp_path / 'model'}", f"DATA={data_c}",
           f"CM_BUILD={tmp_path / 'build'}", f"CM_PROG={elf}", f"CM_CPU={board.flags}"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}"

    log = tmp_path / "semihosting.txt"
    text, qemu_s = run_semihosted(elf, board.machine, board.cpu, log, timeout)
    out = program_lines(text)

    assert int(out["arena"][0][0]) == figures["arena_bytes"] == arena_bytes(model)
    assert int(out["state_size"][0][0]) == figures["state_bytes"] == state_bytes(slda.num_classes, slda.dim)
    assert int(out["chunk"][0][0]) == figures["learn_chunk"]
    # frozen forward: bit for bit
    f = out["f"]
    assert np.array_equal([int(r[0]) for r in f], frozen_classes)
    assert np.array_equal(_hex_floats([r[1:] for r in f]), frozen_logits.view(np.uint32)), \
        "Cortex-M frozen logits differ from FrozenEngine (scalar path)"
    assert np.array_equal(_hex_floats(out["feat"]), latents.view(np.uint32)), "pooled features differ"
    # learning: predictions identical, scores and state within rtol 1e-5
    assert [int(out[k][0][0]) for k in ("learn", "save", "load")] == [0, 0, 0]
    identical = {}
    for tag, logits, classes in (("p0", logits0, before), ("p1", logits1, after), ("p2", logits1, after)):
        assert np.array_equal([int(r[0]) for r in out[tag]], classes), f"{tag}: predictions differ"
        scores = _hex_floats([r[1:] for r in out[tag]]).view(np.float32)
        np.testing.assert_allclose(scores, logits, rtol=1e-5, atol=1e-5 * float(np.abs(logits).max()))
        identical[tag] = bool(np.array_equal(scores.view(np.uint32), logits.view(np.uint32)))
    for tag, (eps, loo) in (("sel0", selection0), ("sel1", (slda.effective_shrinkage, slda.loo_correct))):
        (hi, lo, *counts_c), = out[tag]
        got = struct.unpack("<d", (int(hi, 16) << 32 | int(lo, 16)).to_bytes(8, "little"))[0]
        assert got == eps, f"{tag}: shrinkage {got} differs from Python's {eps}"
        assert [int(v) for v in counts_c] == loo.tolist(), f"{tag}: leave-one-out tally differs from Python"
    state = bytes(int(v, 16) for row in out["state"] for v in row)
    assert len(state) == state_bytes(slda.num_classes, slda.dim)
    p = np.frombuffer(state, np.uint8)
    k, d = slda.num_classes, slda.dim
    header = p[:STATE_HEADER].view("<u4")
    assert header[:7].tolist() == [0x54534C42, 2, figures["fingerprint"], 1, k, d, len(state) - STATE_HEADER - 4]
    counts = p[STATE_HEADER:STATE_HEADER + 8 * k].view("<i8")
    means = p[STATE_HEADER + 8 * k:STATE_HEADER + 8 * k + 4 * k * d].view("<f4").reshape(k, d)
    loo_at = len(state) - 4 - 8 * len(SHRINKAGE_GRID)
    cov = p[STATE_HEADER + 8 * k + 4 * k * d:loo_at].view("<f4")
    assert p[loo_at:len(state) - 4].view("<i8").tolist() == slda.loo_correct.tolist()
    assert np.array_equal(counts, slda.counts)
    np.testing.assert_allclose(means, slda.means, rtol=1e-5, atol=1e-6 * float(np.abs(slda.means).max()))
    np.testing.assert_allclose(cov, slda.cov_packed, rtol=1e-5, atol=1e-6 * float(np.abs(slda.cov_packed).max()))
    identical["state"] = bool(np.array_equal(means, slda.means) and np.array_equal(cov, slda.cov_packed))
    assert int(out["check"][0][1]) == -8 and out["check"][0][0] == "corrupt_payload"
    if ntest >= 16:  # a handful of random test images may hold none of the new classes
        assert set(after.tolist()) & set(new_classes), "the learned classes are never predicted"

    sizes = _section_sizes(elf)
    ticks = {r[0]: int(r[1]) for r in out["ticks"]}
    per_tick = int(out["calib_insns"][0][0]) / ticks["calib"]
    assert 39.0 < per_tick < 41.0, f"qemu -icount shift=0: expected 40 instructions per 25 MHz tick, got {per_tick}"
    return {"flash": sum(sizes.get(s, 0) for s in FLASH_SECTIONS), "sizes": sizes, "stack": int(out["stack"][0][0]),
            "ram": sizes[".data"] + sizes[".bss"] + int(out["stack"][0][0]), "arena": figures["arena_bytes"],
            "chunk": figures["learn_chunk"], "classes": k, "identical": identical, "qemu_s": qemu_s,
            "insn_predict": 40 * ticks["predict"] / ntest, "insn_slda": 40 * ticks["predict_slda"] / ntest,
            "insn_learn": 40 * ticks["learn"] / len(images), "learned": len(images),
            "shrinkage": [selection0[0], slda.effective_shrinkage]}


def report(board: str, model_name: str, r: dict) -> str:
    s = r["sizes"]
    return (f"{board} {model_name} (slda, {r['classes']} classes): flash {r['flash']} bytes (.text {s['.text']}, "
            f".rodata {s['.rodata']}, .data {s['.data']}; test images {s.get('.testdata', 0)} apart); RAM {r['ram']} "
            f"bytes (arena {r['arena']}, .data + .bss {s['.data'] + s['.bss']}, stack high-water {r['stack']}; "
            f"saved-state buffer {s.get('.statebuf', 0)} apart); learn chunk {r['chunk']}; bit-identical to Python: "
            f"{r['identical']}\ninstructions (qemu -icount): {r['insn_predict']:,.0f} per frozen prediction, "
            f"{r['insn_slda']:,.0f} per SLDA prediction, {r['insn_learn']:,.0f} per learned image ({r['learned']} "
            f"images in one experience, classifier refresh included); qemu {r['qemu_s']:.1f} s")


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_cortex_m_fmnist_b5_predict_learn_save_load_agree_with_the_python_engine(tmp_path, board):
    reason = _tools_missing()
    if reason:
        pytest.skip(reason)
    r = run_board(tmp_path, BOARDS[board], "fmnist-b5", NEW_CLASSES, NEW_PER_CLASS, NTEST)
    print("\n" + report(board, "fmnist-b5", r))


def test_cortex_m7_cifar10_b5_predict_learn_save_load_agree_with_the_python_engine(tmp_path):
    """cifar10-b5 (flash and RAM within 512 KB) on the M7 board, kept small for CI (about 15 s): 4 test
    images, 4 training images each of CIFAR-10 classes 5 and 7, the state deployed on the first 100 training
    images of each base class.  benchmarks/libbnncl_mcu.py runs it on the M4F as well."""
    reason = _tools_missing()
    if reason:
        pytest.skip(reason)
    r = run_board(tmp_path, BOARDS["m7"], "cifar10-b5", NEW_CLASSES, 4, 4, base_per_class=100)
    assert r["flash"] <= 512 * 1024 and r["ram"] <= 512 * 1024, "issue 13: cifar10-b5 flash and RAM <= 512 KB"
    print("\n" + report("m7", "cifar10-b5", r))
