"""libbnncl predicts the whole embedded test split as the Python engine does after the same learning.

fmnist-b5 exported with the streaming-LDA state ``bnncl.api.Learner`` deploys on the 1,500 embedded base
images; then the fmnist-b5 protocol: five experiences of one new class each (Fashion classes 5 .. 9, the 600
embedded training images of each), in C (one ``bnncl_learn`` call per experience) and in Python
(``Learner.learn`` per experience), then the 5,000 images of the embedded test split.  The library merges
``BNNCL_LEARN_CHUNK`` = 20 images at a time, so each experience is 30 merges (the float32 state rounded between
them) where ``StreamingLDA.update`` merges 600 at once.  Checked: the 5,000 predicted classes are identical; and
against ``StreamingLDA.update`` fed the same chunks, the same.  Each experience ends with its class at 600
features, so the leave-one-out tally (classes of 2 .. 100 features) counts nothing and every class stays above
100: the shrinkage is the fallback rule on both sides (the chunk-fed ``StreamingLDA`` tallies its first chunks,
which does not change its final rule).

Targets: the host (``libbnncl/tests/split_main.c``, gcc), AArch64 Linux (the same program cross-built, under
qemu-aarch64: about 3 minutes), and a bare-metal Cortex-M4F (``libbnncl/tests/cortexm/split_cm.c`` under
``qemu-system-arm -M mps2-an386``, the inputs read through semihosting file calls).  The Cortex-M run executes
about 4e11 instructions, some 10 minutes under qemu, so it is opt-in: ``BNNCL_CORTEXM_SPLIT=1``.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bnncl import assets
from bnncl.api import Learner
from bnncl.data.embedded import load_embedded
from bnncl.device.export_c import export_c
from bnncl.device.modelfile import DeviceModel
from libbnncl_programs import program_lines, run_semihosted

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "libbnncl"
NEW_CLASSES = (5, 6, 7, 8, 9)


CROSS_CC, QEMU, SYSROOT = "aarch64-linux-gnu-gcc", "qemu-aarch64", Path("/usr/aarch64-linux-gnu")
CM_CC, CM_QEMU = "arm-none-eabi-gcc", "qemu-system-arm"
# the Cortex-M4F run executes about 4e11 instructions (some 10 minutes under qemu): opt-in
CM_SLOW = "BNNCL_CORTEXM_SPLIT"


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    """The Python side once: the exported model, the C program's input files, and the Python predictions."""
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("libbnncl is built with gcc and make; not found")
    tmp_path = tmp_path_factory.mktemp("libbnncl_split")
    model = DeviceModel.load(assets.model_path("fmnist-b5", ".bnn"))
    train, test = load_embedded("train"), load_embedded("test")
    base = np.isin(train.labels, model.pretrained_classes)
    base_images, base_labels = train.images[base], train.labels[base]
    experiences = [np.flatnonzero(train.labels == c) for c in NEW_CLASSES]
    learner = Learner(model)  # default kernel path: its features are bit-identical to the scalar path's
    learner.deploy(base_images, base_labels)
    figures = export_c(model, tmp_path / "model", slda=learner.learner.feature_head)
    chunk = figures["learn_chunk"]
    chunked = copy.deepcopy(learner.learner.feature_head)
    for idx in experiences:
        learner.learn(train.images[idx], train.labels[idx])
        latents = learner.learner.extract(train.images[idx])
        for at in range(0, len(idx), chunk):
            chunked.update(latents[at:at + chunk], train.labels[idx][at:at + chunk])
    test_latents = learner.learner.extract(test.images)
    python_classes = learner.learner.predict(test_latents)
    seen = chunked.counts > 0
    chunked_scores = np.where(seen, chunked.logits(test_latents), -np.inf)
    chunked_classes = np.argmax(chunked_scores, axis=1)

    order = np.concatenate(experiences)
    np.ascontiguousarray(test.images).tofile(tmp_path / "test.u8")
    np.ascontiguousarray(train.images[order]).tofile(tmp_path / "train.u8")
    train.labels[order].astype("<i4").tofile(tmp_path / "labels.i32")
    np.array([len(i) for i in experiences], "<i4").tofile(tmp_path / "sizes.i32")
    return {"dir": tmp_path, "chunk": chunk, "python": python_classes, "chunked": chunked_classes,
            "labels": test.labels, "n": len(test.images)}


def _run_cortexm(tmp_path: Path) -> str:
    """split_cm.c built for the Cortex-M4F and run under qemu-system-arm -M mps2-an386 in tmp_path: its output,
    with a last line ``seconds QEMU`` (the wall time of the whole run under qemu)."""
    missing = [t for t in (CM_CC, CM_QEMU) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi "
                    "qemu-system-arm)")
    if not os.environ.get(CM_SLOW):
        pytest.skip(f"the Cortex-M whole split runs about 10 minutes under qemu: set {CM_SLOW}=1 to run it")
    elf = tmp_path / "split_cm.elf"
    cmd = ["make", "-s", "-j2", "-C", str(LIB), "cortexm", "CM_MAIN=split_cm", f"MODEL={tmp_path / 'model'}",
           f"CM_BUILD={tmp_path / 'build-cortexm'}", f"CM_PROG={elf}"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}"
    log = tmp_path / "semihosting.txt"
    text, seconds = run_semihosted(elf, "mps2-an386", "cortex-m4", log, 3600, icount=False, cwd=tmp_path)
    return text + f"seconds {seconds:.1f}\n"


@pytest.mark.parametrize("target", ["host", "aarch64", "cortex-m4f"])
def test_whole_test_split_predictions_identical_after_the_protocol(protocol, target):
    tmp_path = protocol["dir"]
    if target == "cortex-m4f":
        text = _run_cortexm(tmp_path)
    else:
        cc, runner = "gcc", []
        if target == "aarch64":
            missing = [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]
            if missing or not SYSROOT.is_dir():
                pytest.skip(f"{', '.join(missing) or SYSROOT} not found (apt-get install gcc-aarch64-linux-gnu "
                            "qemu-user)")
            cc, runner = CROSS_CC, [QEMU, "-L", str(SYSROOT)]
        prog = tmp_path / f"split_main-{target}"
        cmd = ["make", "-s", "-j2", "-C", str(LIB), f"BUILD={tmp_path / ('build-' + target)}", f"CC={cc}",
               f"MODEL={tmp_path / 'model'}", f"PROG={prog}", "split"]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}"
        files = [str(tmp_path / n) for n in ("test.u8", "train.u8", "labels.i32", "sizes.i32")]
        r = subprocess.run([*runner, str(prog), *files], capture_output=True, text=True, timeout=600, check=False)
        assert r.returncode == 0, r.stderr[-2000:]
        text = r.stdout
    out = program_lines(text)
    assert int(out["chunk"][0][0]) == protocol["chunk"]
    assert [int(rc) for _, rc in out["learn"]] == [0] * len(NEW_CLASSES)
    c_classes = np.array([int(v[0]) for v in out["p"]])
    assert len(c_classes) == protocol["n"] == 5000
    assert np.array_equal(c_classes, protocol["chunked"]), "C differs from StreamingLDA fed the same chunks"
    differ = int(np.count_nonzero(c_classes != protocol["python"]))
    accuracy = float(np.mean(c_classes == protocol["labels"]))
    timed = "qemu, whole run" if target == "cortex-m4f" else "learn, predict"
    print(f"\n{target}: whole embedded test split: {len(c_classes)} images, {differ} predictions differ from the "
          f"Python Learner, C accuracy {accuracy:.4f}; C seconds ({timed}): {out['seconds'][0]}")
    assert differ == 0, f"{differ} of {len(c_classes)} predictions differ from the Python Learner"
