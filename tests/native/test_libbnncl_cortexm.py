"""libbnncl on a Cortex-M4F (bare metal, ``qemu-system-arm -M mps2-an386``) agrees with the Python engine.

``make -C libbnncl cortexm`` builds the library with ``arm-none-eabi-gcc`` (hard float, FPv4-SP, ``-O2``,
``-ffp-contract=off``, newlib nano) and ``libbnncl/tests/cortexm/cortexm_main.c`` with its own start-up
(vector table, reset handler, semihosting output and exit) and linker script for the MPS2 AN386 board.
fmnist-b5 is exported with the streaming-LDA state that ``bnncl.api.Learner`` deploys on the embedded base
images; 16 embedded test images and 16 training images of Fashion classes 5 and 7 (8 each) are compiled
into the program (``libbnncl/tests/embed_images.py``).  The program, under qemu with semihosting:

* predicts the test images with the pretrained head (the model started without its state): classes
  identical and float32 logits bit-identical to ``FrozenEngine`` on its scalar path, pooled features
  (the SLDA latents) bit-identical to ``Learner``'s;
* predicts with the deployed state, learns the 16 images in one experience, saves the state to a static
  buffer through the callbacks, starts again (``bnncl_init``), reloads it and predicts again: classes
  identical to the Python ``Learner`` before and after learning and after the reload; SLDA scores and the
  learned state (counts exactly; means and covariance) within rtol 1e-5 (the M4F computes float32 in its
  FPU and float64 in software, both IEEE-754 round-to-nearest; observed: bit-identical); a state with
  a flipped byte is refused (-8).

Flash (``.isr_vector + .text + .rodata + .ARM.exidx + .data`` from ``arm-none-eabi-size -A``; the
embedded images are in ``.testdata``, counted apart) and RAM (``.data + .bss``, which holds the arena, plus
the stack high-water mark the program measures) are printed to the log, with instructions per
prediction and per learned image: qemu runs with ``-icount shift=0`` (one instruction per nanosecond of
virtual time) and the program reads the board's 25 MHz timer, so instructions = 40 x ticks.  Skipped when
``arm-none-eabi-gcc``, newlib or ``qemu-system-arm`` is missing (``apt-get install gcc-arm-none-eabi
libnewlib-arm-none-eabi qemu-system-arm``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnncl.api import Learner
from bnncl.device.export_c import STATE_HEADER, arena_bytes, export_c, state_bytes
from bnncl.device.frozen import FrozenEngine
from bnncl.device.kernels import kernel_path
from libbnncl_inputs import learning_inputs

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


def test_cortex_m4_predict_learn_save_load_agree_with_the_python_engine(tmp_path):
    reason = _tools_missing()
    if reason:
        pytest.skip(reason)
    model, base_images, base_labels, images, labels, test = learning_inputs(NEW_CLASSES, NEW_PER_CLASS, NTEST)
    with kernel_path("scalar"):
        engine = FrozenEngine(model)
        frozen_logits, frozen_classes = engine.logits(test), engine.predict(test)
        learner = Learner(model)
        learner.deploy(base_images, base_labels)
        figures = export_c(model, tmp_path / "model", slda=learner.learner.feature_head)
        latents = learner.learner.extract(test)
        logits0, before = learner.learner.logits(latents), learner.learner.predict(latents)
        learner.learn(images, labels)
        logits1, after = learner.learner.logits(latents), learner.learner.predict(latents)
    slda = learner.learner.feature_head

    for name, a in (("test.u8", test), ("train.u8", images), ("labels.i32", labels.astype("<i4"))):
        np.ascontiguousarray(a).tofile(tmp_path / name)
    data_c = tmp_path / "data.c"
    subprocess.run([sys.executable, str(LIB / "tests" / "embed_images.py"), str(tmp_path / "test.u8"),
                    str(tmp_path / "train.u8"), str(tmp_path / "labels.i32"), "--image-bytes",
                    str(test[0].size), "-o", str(data_c)], check=True)
    elf = tmp_path / "cortexm_main.elf"
    cmd = ["make", "-s", "-j2", "-C", str(LIB), "cortexm", f"MODEL={tmp_path / 'model'}", f"DATA={data_c}",
           f"CM_BUILD={tmp_path / 'build'}", f"CM_PROG={elf}"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}"

    log = tmp_path / "semihosting.txt"
    r = subprocess.run([QEMU, "-M", "mps2-an386", "-cpu", "cortex-m4", "-nographic", "-monitor", "none",
                        "-serial", "none", "-icount", "shift=0", "-chardev", f"file,id=sh,path={log}",
                        "-semihosting-config", "enable=on,target=native,chardev=sh", "-kernel", str(elf)],
                       capture_output=True, text=True, timeout=120, check=False)
    text = log.read_text() if log.exists() else ""
    assert r.returncode == 0, f"qemu exit {r.returncode}:\n{r.stderr[-2000:]}\n{text[-2000:]}"
    out: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        head, *rest = line.split()
        out.setdefault(head, []).append(rest)

    assert int(out["arena"][0][0]) == figures["arena_bytes"] == arena_bytes(model)
    assert int(out["state_size"][0][0]) == figures["state_bytes"] == state_bytes(slda.num_classes, slda.dim)
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
    state = bytes(int(v, 16) for row in out["state"] for v in row)
    assert len(state) == state_bytes(slda.num_classes, slda.dim)
    p = np.frombuffer(state, np.uint8)
    k, d = slda.num_classes, slda.dim
    header = p[:STATE_HEADER].view("<u4")
    assert header[:7].tolist() == [0x54534C42, 1, figures["fingerprint"], 1, k, d, len(state) - STATE_HEADER - 4]
    counts = p[STATE_HEADER:STATE_HEADER + 8 * k].view("<i8")
    means = p[STATE_HEADER + 8 * k:STATE_HEADER + 8 * k + 4 * k * d].view("<f4").reshape(k, d)
    cov = p[STATE_HEADER + 8 * k + 4 * k * d:len(state) - 4].view("<f4")
    assert np.array_equal(counts, slda.counts)
    np.testing.assert_allclose(means, slda.means, rtol=1e-5, atol=1e-6 * float(np.abs(slda.means).max()))
    np.testing.assert_allclose(cov, slda.cov_packed, rtol=1e-5, atol=1e-6 * float(np.abs(slda.cov_packed).max()))
    identical["state"] = bool(np.array_equal(means, slda.means) and np.array_equal(cov, slda.cov_packed))
    assert int(out["check"][0][1]) == -8 and out["check"][0][0] == "corrupt_payload"
    assert set(after.tolist()) & set(NEW_CLASSES), "the learned classes are never predicted"

    sizes = _section_sizes(elf)
    flash = sum(sizes.get(s, 0) for s in FLASH_SECTIONS)
    stack = int(out["stack"][0][0])
    ram = sizes[".data"] + sizes[".bss"] + stack
    print(f"\ncortex-m4 fmnist-b5 (slda, {k} classes): flash {flash} bytes (.text {sizes['.text']}, .rodata "
          f"{sizes['.rodata']}, .data {sizes['.data']}; test images {sizes.get('.testdata', 0)} apart); RAM {ram} "
          f"bytes (arena {figures['arena_bytes']}, .data + .bss {sizes['.data'] + sizes['.bss']}, stack high-water "
          f"{stack}; saved-state buffer {sizes.get('.statebuf', 0)} apart); bit-identical to Python: {identical}")
    ticks = {r[0]: int(r[1]) for r in out["ticks"]}
    print(f"instructions (qemu -icount): {40 * ticks['predict'] / NTEST:,.0f} per frozen prediction, "
          f"{40 * ticks['predict_slda'] / NTEST:,.0f} per SLDA prediction, {40 * ticks['learn'] / len(images):,.0f} "
          f"per learned image ({len(images)} images in one experience, classifier refresh included)")
