"""libbnncl's head-only CWR* loop on a bare-metal Cortex-M4F (``qemu-system-arm -M mps2-an386``: float32 in the
FPv4-SP unit, float64 in software) is bit-identical to the Python learner with ``rng="portable"``.

``tests/native/cortexm/cwr_loop_cm.c`` is built with ``arm-none-eabi-gcc`` (hard float, ``-O2``, ``-ffp-contract=off``,
newlib nano) with the C core and the CWR* glue, on the start-up and linker script of ``libbnncl/tests/cortexm``; it
reads the fmnist-b5 pooled features through semihosting (the inputs of tests/native/test_libbnncl_cwr_loop.py:
base classes 0-4 deployed, then class 5, class 6, classes 7 and 8, classes 5 and 7 again), and after each stage
writes its whole state and its test predictions back.  Compared with the Python learner after the same stage: cw,
past, the standardizer, the buffer (codes, labels, experiences, value range, seen counts), both streams' states,
the scores and the predictions, all bit for bit.  Opt-in (``BNNCL_CORTEXM_CWR_FULL=1``, about 1 minute): the whole
fmnist-b5 protocol with the documented head-only setting, the same comparisons.  The log gives the state and scratch
bytes and the instructions of each stage (qemu ``-icount shift=0``: 40 per timer tick).  Skipped when the tools are
missing.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bnncl.cl.learner import ContinualLearner, LearnerConfig
from bnncl.cl.replay import LatentReplayBuffer
from bnncl.device.engine import DeviceEngine
from bnncl.device.frozen import FrozenEngine
from libbnncl_cwr_lib import CORE, CSRC, LIB
from libbnncl_inputs import learning_inputs
from libbnncl_programs import run_semihosted

CC, QEMU = "arm-none-eabi-gcc", "qemu-system-arm"
NEWLIB = Path("/usr/lib/arm-none-eabi/newlib")
CM = LIB / "tests" / "cortexm"
CPU = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
K, EXPERIENCES = 10, ((5,), (6,), (7, 8), (5, 7))

pytestmark = pytest.mark.skipif(
    shutil.which(CC) is None or shutil.which(QEMU) is None or not NEWLIB.is_dir(),
    reason="arm-none-eabi-gcc, newlib or qemu-system-arm not found")


def _build(tmp: Path) -> Path:
    flags = ["-O2", *CPU, "-ffunction-sections", "-fdata-sections", "-ffp-contract=off", "-fno-strict-aliasing",
             "-DBNNCL_NO_PYTHON", f"-I{LIB / 'include'}", f"-I{CSRC}", f"-I{CM}", "-Wall", "-Wno-unknown-pragmas",
             "-Wno-unused-parameter"]
    objs = []
    for src, std in [(CSRC / f"{n}.c", "c11") for n in CORE] + [
            (LIB / "src" / f"{n}.c", "c99") for n in ("cwr", "cwr_learn", "cwr_rng")] + [
            (CM / "startup.c", "c99"), (Path(__file__).parent / "cortexm" / "cwr_loop_cm.c", "c99")]:
        obj = tmp / (src.stem + ".o")
        subprocess.run([CC, f"-std={std}", *flags, "-c", str(src), "-o", str(obj)], check=True)
        objs.append(str(obj))
    elf = tmp / "cwr_loop_cm.elf"
    subprocess.run([CC, *CPU, *objs, "-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs", "-T",
                    str(CM / "mps2.ld"), "-Wl,--gc-sections", "-lm", "-o", str(elf)], check=True)
    return elf


def _snapshot(learner: ContinualLearner, test: np.ndarray) -> dict:
    arrays, meta = learner.buffer.state_dict()
    seen = np.zeros(K, np.int64)
    seen[arrays["seen_classes"]] = arrays["seen_counts"]
    std = learner.standardizer
    vr = meta["value_range"]
    return {
        "count": len(learner.buffer), "lo": vr[0] if vr else 0.0, "hi": vr[1] if vr else 0.0,
        "has_range": int(vr is not None), "fitted": int(std is not None and std.fitted),
        "rng": [learner._rng._state, learner._rng._inc, learner.buffer._rng._state, learner.buffer._rng._inc],
        "cw": learner.consolidator.cw.copy(), "past": learner.consolidator.past.copy(),
        "shift": std.shift.copy() if std else np.zeros(learner.consolidator.dim, np.float32),
        "scale": std.scale.copy() if std else np.ones(learner.consolidator.dim, np.float32),
        "seen": seen, "store": arrays["latents"], "labels": arrays["labels"].astype(np.int32),
        "experience": arrays["experience"], "cls": learner.predict(test).astype(np.int32),
        "scores": learner.logits(test),
    }


def _read_state(path: Path, d: int, lr_bits: int) -> dict:
    b = path.read_bytes()
    count, lo, hi, has_range, fitted = struct.unpack_from("<qddii", b, 0)
    rng = list(struct.unpack_from("<4Q", b, 32))
    off = 64

    def take(dtype, n):
        nonlocal off
        a = np.frombuffer(b, dtype=dtype, count=n, offset=off)
        off += a.nbytes
        return a

    out = {"count": count, "lo": lo, "hi": hi, "has_range": has_range, "fitted": fitted, "rng": rng,
           "cw": take(np.float32, K * d).reshape(K, d), "past": take(np.int64, K), "shift": take(np.float32, d),
           "scale": take(np.float32, d), "seen": take(np.int64, K)}
    out["store"] = take(np.uint8 if lr_bits == 8 else np.float32, count * d).reshape(count, d)
    out["labels"], out["experience"] = take(np.int32, count), take(np.int32, count)
    assert off == len(b)
    return out


def _run(tmp_path: Path, bx, by, stages, test, *, mixing, standardize, epochs, lr_bits, capacity, mb, seed,
         lr=0.1, max_k=1.0, timeout=600) -> str:
    """Deploy on (bx, by), learn ``stages`` ((features, labels) per experience) in Python and on the M4F; every
    stage compared bit for bit (module docstring); returns the summary line."""
    d = bx.shape[1]
    engine = DeviceEngine.from_device_model(_model(), 0, num_classes=K)
    config = LearnerConfig(strategy="cwr_star", epochs=epochs, lr=lr, minibatch_size=mb, seed=seed, mixing=mixing,
                           standardize=standardize, cwr_max_k=max_k, rng="portable")
    learner = ContinualLearner(engine, config, LatentReplayBuffer((d,), capacity, lr_bits, seed=seed))
    head = engine.get_head()
    header = struct.pack("<16i", K, d, engine.tail.qf, engine.tail.qb, mb, epochs or 0, 0, int(mixing == "balanced"),
                         int(standardize == "on"), capacity, lr_bits, len(by), len(stages), len(test), 1, 0)
    parts = [header, struct.pack("<ffdQ", lr, 0.0, max_k, seed), np.array([len(y) for _, y in stages], "<i4").tobytes(),
             bx.astype("<f4").tobytes(), by.astype("<i4").tobytes(), head.astype("<f4").tobytes()]
    for x, y in stages:
        parts += [x.astype("<f4").tobytes(), y.astype("<i4").tobytes()]
    parts.append(test.astype("<f4").tobytes())
    (tmp_path / "cwr_in.bin").write_bytes(b"".join(parts))

    snaps = []
    learner.deploy(bx, by, 0)
    snaps.append(_snapshot(learner, test))
    for i, (x, y) in enumerate(stages, start=1):
        learner.train_experience(x, y, i)
        snaps.append(_snapshot(learner, test))

    elf = _build(tmp_path)
    log = tmp_path / "semihosting.txt"
    text, qemu_s = run_semihosted(elf, "mps2-an386", "cortex-m4", log, timeout, cwd=tmp_path)
    assert "done" in text, f"the program did not finish:\n{text[-2000:]}"
    for i, want in enumerate(snaps):
        got = _read_state(tmp_path / f"state{i:02d}.bin", d, lr_bits)
        pred = (tmp_path / f"pred{i:02d}.bin").read_bytes()
        got["cls"] = np.frombuffer(pred, np.int32, len(test))
        got["scores"] = np.frombuffer(pred, np.float32, offset=4 * len(test)).reshape(len(test), K)
        for key, w in want.items():
            g = got[key]
            if isinstance(w, np.ndarray):
                same = g.shape == w.shape and np.array_equal(g.view(np.uint8), np.ascontiguousarray(w).view(np.uint8))
                assert same, f"stage {i}: {key}"
            else:
                assert g == w, f"stage {i}: {key}: {g} != {w}"
    ticks = {line.split()[0]: int(line.split()[1]) for line in text.splitlines() if line.startswith("T")}
    return (f"Cortex-M4F ({mixing}, standardize {standardize}, {lr_bits}-bit buffer of {capacity}, minibatch {mb}): "
            f"all {len(snaps)} stages bit-identical; "
            + ", ".join(f"{k} {40 * v / 1e6:.1f} M instructions" for k, v in ticks.items())
            + f"; {[line for line in text.splitlines() if 'bytes' in line]}; qemu {qemu_s:.1f} s")


def _model():
    from bnncl import assets
    from bnncl.device.modelfile import DeviceModel

    return DeviceModel.load(assets.model_path("fmnist-b5", ".bnn"))


@pytest.mark.slow
@pytest.mark.parametrize("mixing,standardize,epochs,lr_bits", [("balanced", "on", None, 8),
                                                               ("proportional", "off", 3, 32)])
def test_loop_on_cortex_m4f(tmp_path, mixing, standardize, epochs, lr_bits):
    inp = learning_inputs((5, 6, 7, 8), 40, 300, base_per_class=40)
    fe = FrozenEngine(inp.model)
    bx, by = fe.latents(inp.base_images, "gap"), inp.base_labels.astype(np.int64)
    nx, ny, test = fe.latents(inp.images, "gap"), inp.labels.astype(np.int64), fe.latents(inp.test, "gap")
    stages = [(nx[np.isin(ny, c)], ny[np.isin(ny, c)]) for c in EXPERIENCES]
    print("\n" + _run(tmp_path, bx, by, stages, test, mixing=mixing, standardize=standardize, epochs=epochs,
                      lr_bits=lr_bits, capacity=120, mb=32, seed=7))


@pytest.mark.skipif(not os.environ.get("BNNCL_CORTEXM_CWR_FULL"),
                    reason="the whole fmnist-b5 protocol runs about 1 minute under qemu: set BNNCL_CORTEXM_CWR_FULL=1")
def test_fmnist_b5_protocol_on_cortex_m4f(tmp_path):
    """The whole fmnist-b5 protocol with the documented head-only setting (1,500 base images deployed into a buffer
    of 1,500 at 8 bits, five experiences of 600, minibatch 128, balanced, standardize on, auto epochs, seed 0)."""
    from bnncl.data.protocols import get_protocol

    spec = get_protocol("fmnist-b5")
    train, test = spec.load()
    stream = spec.stream(train.labels, 0)
    fe = FrozenEngine(_model())
    lat, tl = fe.latents(train.images, "gap"), fe.latents(test.images[:64], "gap")
    base, *exps = list(stream)
    stages = [(lat[e.indices], np.asarray(e.labels, np.int64)) for e in exps]
    print("\n" + _run(tmp_path, lat[base.indices], np.asarray(base.labels, np.int64), stages, tl, mixing="balanced",
                      standardize="on", epochs=None, lr_bits=8, capacity=1500, mb=128, seed=0, timeout=1800))
