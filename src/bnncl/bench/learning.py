"""Time to learn on the device vs the torch fp32 reference (issue 4 target: >= 5x faster per experience).

For K = tail blocks, both engines are built from the shipped fmnist-b5 model (device: the ``.bnn`` file
at q_f/q_b/q_w = 8/16/8; reference: ``TorchEngine`` on the ``.safetensors`` checkpoint, fp32,
``torch.set_num_threads(1)``), and ``train_batch`` on a minibatch of 128 latents (each engine's own
``extract`` of the embedded training images) is timed, the two engines interleaved step by step in
one process (median of ``--steps``). One experience of fmnist-b5 = 600 new + 1500 replayed latents,
the default epochs at batch 128 (8 * ceil(2100 / 128) = 136 steps); ``--experience`` also times one
such experience end to end, otherwise the per-experience time is steps x the median step. Memory: the stored
learning state (``memory_bytes()`` tail + head) and, for the device, the peak of Python-tracked
(NumPy) allocations during one step (tracemalloc).

``python -m bnncl.bench.learning [--ks 0,1,2,3] [--steps 7] [--experience] [--threads 1] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
import tracemalloc
from importlib import resources

import numpy as np

from bnncl.settings import LearningSettings

BATCH = 128
NEW, REPLAY, EPOCHS = 600, 1500, LearningSettings.epochs
STEPS_PER_EXPERIENCE = EPOCHS * math.ceil((NEW + REPLAY) / BATCH)


def _model_paths() -> tuple[str, str]:
    base = resources.files("bnncl.assets") / "models"
    return str(base / "fmnist-b5.bnn"), str(base / "fmnist-b5.safetensors")


def _engines(k: int, threads: int):
    from bnncl.device.engine import DeviceEngine
    from bnncl.device.modelfile import DeviceModel
    from bnncl.nn.reference_engine import TorchEngine

    bnn, st = _model_paths()
    dev = DeviceEngine.from_model_file(bnn, k, qf=8, qb=16, qw=8, num_classes=10, threads=threads)
    classes = DeviceModel.load(bnn).pretrained_classes
    ref = TorchEngine.from_checkpoint(st, k, qf=32, qb=32, qw=32, num_classes=10, head_classes=classes)
    return dev, ref


def _kernel_path() -> str:
    from bnncl.device.kernels import active_path

    return active_path()


def _time_step(engine, lat: np.ndarray, y: np.ndarray, lr: float) -> float:
    t = time.perf_counter()
    engine.train_batch(lat, y, lr)
    return time.perf_counter() - t


def _experience(engine, lat: np.ndarray, y: np.ndarray, lr: float, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    for _ in range(EPOCHS):
        order = rng.permutation(len(lat))
        for i in range(0, len(lat), BATCH):
            idx = order[i : i + BATCH]
            engine.train_batch(lat[idx], y[idx], lr)
    return time.perf_counter() - t


def run(ks: list[int], steps: int, experience: bool, threads: int, lr: float = 0.05) -> dict:
    import torch

    from bnncl.data.embedded import load_embedded

    torch.set_num_threads(1)
    data = load_embedded("train")
    rows = []
    for k in ks:
        dev, ref = _engines(k, threads)
        n = NEW + REPLAY if experience else BATCH
        imgs, labels = data.images[:n], np.asarray(data.labels[:n], dtype=np.int64)
        lat_d, lat_r = dev.extract(imgs), ref.extract(imgs)
        yb = labels[:BATCH]
        _time_step(dev, lat_d[:BATCH], yb, lr), _time_step(ref, lat_r[:BATCH], yb, lr)  # warm-up
        td, tr = [], []
        for _ in range(steps):  # interleaved
            td.append(_time_step(dev, lat_d[:BATCH], yb, lr))
            tr.append(_time_step(ref, lat_r[:BATCH], yb, lr))
        tracemalloc.start()
        dev.train_batch(lat_d[:BATCH], yb, lr)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        md, mr = dev.memory_bytes(), ref.memory_bytes()
        row = {
            "K": k,
            "device_step_ms": 1e3 * statistics.median(td),
            "torch_step_ms": 1e3 * statistics.median(tr),
            "device_state_bytes": md["tail"] + md["head"],
            "torch_state_bytes": mr["tail"] + mr["head"],
            "device_step_peak_bytes": peak,
        }
        row["step_ratio"] = row["torch_step_ms"] / row["device_step_ms"]
        if experience:
            row["device_experience_s"] = _experience(dev, lat_d, labels, lr)
            row["torch_experience_s"] = _experience(ref, lat_r, labels, lr)
        else:
            row["device_experience_s"] = STEPS_PER_EXPERIENCE * row["device_step_ms"] / 1e3
            row["torch_experience_s"] = STEPS_PER_EXPERIENCE * row["torch_step_ms"] / 1e3
        row["experience_ratio"] = row["torch_experience_s"] / row["device_experience_s"]
        rows.append(row)
        print(f"K={k}: device {row['device_step_ms']:.1f} ms/step, torch {row['torch_step_ms']:.1f} ms/step "
              f"({row['step_ratio']:.2f}x); experience {row['device_experience_s']:.2f} s vs "
              f"{row['torch_experience_s']:.2f} s ({row['experience_ratio']:.2f}x)", flush=True)
    return {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_avg": os.getloadavg()},
        "protocol": {"batch": BATCH, "new": NEW, "replay": REPLAY, "epochs": EPOCHS,
                     "steps_per_experience": STEPS_PER_EXPERIENCE, "experience_measured": experience},
        "config": {"device": "8/16/8", "torch": "fp32", "threads": threads, "steps": steps,
                   "kernel_path": _kernel_path()},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bnncl.bench.learning", description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="0,1,2,3", help="tail blocks to measure (comma list)")
    ap.add_argument("--steps", type=int, default=7, help="timed train_batch calls per engine and K")
    ap.add_argument("--experience", action="store_true", help="also time one full experience end to end")
    ap.add_argument("--threads", type=int, default=1, help="C core threads of the device engine")
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args(argv)
    res = run([int(k) for k in a.ks.split(",")], a.steps, a.experience, a.threads)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
