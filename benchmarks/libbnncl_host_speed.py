"""libbnncl on the host: one experience learned in C (each kernel path) against the Python device engine.

    python benchmarks/libbnncl_host_speed.py [--repeat 11] [-o benchmarks/libbnncl-host-speed.json]
                                             [--md benchmarks/libbnncl-host-speed.md]

fmnist-b5 with the streaming-LDA state deployed on the embedded base images; one experience of 100 embedded
training images (50 each of classes 5 and 7; all tallied by the leave-one-out pass, their classes end with 50
features): ``bnncl_learn`` in ``libbnncl/tests/split_main.c`` (gcc -O3, the Makefile default, one thread) with the
kernel path forced by $BNNCL_KERNEL, in the minimum arena (``BNNCL_ARENA_BYTES``: chunks of 20 images, so the
tally runs the forwards again) and in an arena of ``bnncl_arena_size_learn(model, 100)`` bytes
($BNNCL_ARENA_IMAGES=100: one merge, the features reused); and ``bnncl.api.Learner.learn`` of the same images on
the default path and on the scalar path (one thread: OMP_NUM_THREADS=1 is set before NumPy loads).  Both sides
are timed in CPU seconds of the learn call alone (C: ``clock()`` in split_main; Python: ``time.process_time``), the
best of ``--repeat`` rounds, every configuration once per round (interleaved: the machine is shared).  Writes the
rows as JSON and as a markdown table with the ratio to the Python default path (also printed).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
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
ARENAS = {"minimum arena": None, "arena of bnncl_arena_size_learn(model, 100)": 100}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("-o", "--out", default=str(ROOT / "benchmarks" / "libbnncl-host-speed.json"))
    ap.add_argument("--md", default=str(ROOT / "benchmarks" / "libbnncl-host-speed.md"))
    a = ap.parse_args()
    model = DeviceModel.load(assets.model_path("fmnist-b5", ".bnn"))
    train = load_embedded("train")
    base = np.isin(train.labels, model.pretrained_classes)
    new = np.concatenate([np.flatnonzero(train.labels == c)[:50] for c in (5, 7)])
    images, labels = train.images[new], train.labels[new]
    learner = Learner(model)
    learner.deploy(train.images[base], train.labels[base])
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        export_c(model, t / "model", slda=learner.learner.feature_head)
        images[:1].tofile(t / "test.u8")
        images.tofile(t / "train.u8")
        labels.astype("<i4").tofile(t / "labels.i32")
        np.array([len(images)], "<i4").tofile(t / "sizes.i32")
        subprocess.run(["make", "-s", "-C", str(ROOT / "libbnncl"), f"BUILD={t / 'build'}", f"MODEL={t / 'model'}",
                        f"PROG={t / 'split_main'}", "split"], check=True)
        runs = []  # (row name, callable returning seconds)
        for name, k in KERNELS.items():
            if name not in available_paths():
                continue
            for arena, n in ARENAS.items():
                env = {**os.environ, "BNNCL_KERNEL": str(k)}
                if n is not None:
                    env["BNNCL_ARENA_IMAGES"] = str(n)

                def c_run(env=env) -> float:
                    out = subprocess.run([str(t / "split_main"), *(str(t / f) for f in (
                        "test.u8", "train.u8", "labels.i32", "sizes.i32"))], env=env, capture_output=True, text=True,
                        check=True).stdout
                    return float(out.split("seconds ")[1].split()[0])
                runs.append((f"C libbnncl, {name} kernels, {arena}", c_run))
        for name in ("default", "scalar"):
            def py_run(name=name) -> float:
                lr = copy.deepcopy(learner)
                with kernel_path(None if name == "default" else name):
                    t0 = time.process_time()
                    lr.learn(images, labels)
                    return time.process_time() - t0
            runs.append((f"Python Learner.learn, {name} path", py_run))
        for _ in range(a.repeat):
            for row, fn in runs:
                best[row] = min(best.get(row, float("inf")), fn())
    ref = best["Python Learner.learn, default path"]
    rows = [{"learner": row, "seconds": sec, "vs_python_default": sec / ref} for row, sec in best.items()]
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    Path(a.out).write_text(json.dumps({"date": date, "images": len(images), "repeat": a.repeat, "rows": rows},
                                      indent=1) + "\n")
    table = (f"One experience of {len(images)} fmnist-b5 images (forward, merge, leave-one-out tally, classifier "
             f"refresh), 1 thread, CPU seconds of the learn call, best of {a.repeat} interleaved rounds ({date}, "
             "`python benchmarks/libbnncl_host_speed.py`, a shared 2-core machine):\n\n"
             "| learner | seconds | / Python default path |\n|---|---|---|\n")
    table += "".join(f"| {r['learner']} | {r['seconds']:.4f} | {r['vs_python_default']:.2f} |\n" for r in rows)
    Path(a.md).write_text("# libbnncl host speed: one streaming-LDA experience, C against Python\n\n" + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
