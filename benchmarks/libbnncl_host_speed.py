"""libbnncl on the host: one experience learned in C (each kernel path) against the Python device engine.

    python benchmarks/libbnncl_host_speed.py [--repeat 5]

fmnist-b5 with the streaming-LDA state deployed on the embedded base images; one experience of 100 embedded
training images (50 each of classes 5 and 7): ``bnncl_learn`` in ``libbnncl/tests/split_main.c`` (gcc -O3,
the Makefile default, one thread; CPU seconds of the learn call, best of ``--repeat`` runs) with the kernel
path forced by $BNNCL_KERNEL, and ``bnncl.api.Learner.learn`` of the same images on the default path and on
the scalar path (wall seconds, best of ``--repeat``; one thread: OMP_NUM_THREADS=1 is set before NumPy loads).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bnncl import assets  # noqa: E402
from bnncl.api import Learner  # noqa: E402
from bnncl.data.embedded import load_embedded  # noqa: E402
from bnncl.device.export_c import export_c  # noqa: E402
from bnncl.device.kernels import kernel_path  # noqa: E402
from bnncl.device.kernels.dispatch import available_paths  # noqa: E402
from bnncl.device.modelfile import DeviceModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {"scalar": 0, "avx2": 1, "avx512": 2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    model = DeviceModel.load(assets.model_path("fmnist-b5", ".bnn"))
    train = load_embedded("train")
    base = np.isin(train.labels, model.pretrained_classes)
    new = np.concatenate([np.flatnonzero(train.labels == c)[:50] for c in (5, 7)])
    images, labels = train.images[new], train.labels[new]
    learner = Learner(model)
    learner.deploy(train.images[base], train.labels[base])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        export_c(model, t / "model", slda=learner.learner.feature_head)
        images[:1].tofile(t / "test.u8")
        images.tofile(t / "train.u8")
        labels.astype("<i4").tofile(t / "labels.i32")
        np.array([len(images)], "<i4").tofile(t / "sizes.i32")
        subprocess.run(["make", "-s", "-C", str(ROOT / "libbnncl"), f"BUILD={t / 'build'}", f"MODEL={t / 'model'}",
                        f"PROG={t / 'split_main'}", "split"], check=True)
        for name, k in KERNELS.items():
            if name not in available_paths():
                continue
            best = min(float(subprocess.run([str(t / "split_main"), *(str(t / f) for f in (
                "test.u8", "train.u8", "labels.i32", "sizes.i32"))], env={**os.environ, "BNNCL_KERNEL": str(k)},
                capture_output=True, text=True, check=True).stdout.split("seconds ")[1].split()[0])
                for _ in range(a.repeat))
            rows.append((f"C libbnncl, {name} kernels", best))
    for name in ("default", "scalar"):
        best = float("inf")
        for _ in range(a.repeat):
            lr = copy.deepcopy(learner)
            with kernel_path(None if name == "default" else name):
                t0 = time.perf_counter()
                lr.learn(images, labels)
                best = min(best, time.perf_counter() - t0)
        rows.append((f"Python Learner.learn, {name} path", best))
    print(f"one experience of {len(images)} fmnist-b5 images (forward, merge, leave-one-out tally, classifier "
          f"refresh), 1 thread, best of {a.repeat}:\n\n| learner | seconds |\n|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
