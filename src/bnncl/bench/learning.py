"""Time to learn on the device vs the torch fp32 reference (goal: >= 5x faster per experience).

For K = tail blocks, both engines are built from the protocol's shipped model (device: the ``.bnn``
file at q_f/q_b/q_w = 8/16/8; reference: ``TorchEngine`` on the ``.safetensors`` checkpoint, fp32,
``torch.set_num_threads(1)``), and ``train_batch`` on a minibatch of 128 latents (each engine's own
``extract`` of the protocol's training images) is timed, the two engines interleaved step by step in
one process (median of ``--steps``). One experience = the protocol's new patterns per epoch (600 on
fmnist-b5, the 300-per-class cap on cifar10-b5) + 1500 replayed latents, at the protocol's epochs and
batch 128 (fmnist-b5: 8 * ceil(2100 / 128) = 136 steps; cifar10-b5: 16 * ceil(1800 / 128) = 240);
``--experience`` also times one such experience end to end, otherwise the per-experience time is steps
x the median step. Memory: the stored learning state (``memory_bytes()`` tail + head) and, for the
device, the peak of Python-tracked (NumPy) allocations during one step (tracemalloc).

``--slda`` times instead what the default strategy costs against the torch reference (issue 11's target:
>= 20x faster): one experience of the protocol (every training image of its first new class) learned end
to end by ``bnncl.api.Learner`` (device engine: frozen forward of the images, the streaming-LDA merge
and the classifier solve), against the torch fp32 CWR* tail at the protocol's K, which extracts the
same images and trains its experience (new patterns per epoch + 1500 replayed latents, at its
epochs); the two alternate ``--repeats`` times in one process, and the medians are compared.

``python -m bnncl.bench.learning [--protocol fmnist-b5] [--ks 0,1,2,3] [--steps 7] [--experience]
[--slda] [--repeats 3] [--threads 1] [--json PATH]``
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

import numpy as np

BATCH, REPLAY = 128, 1500
#: new patterns of one experience per epoch, where the protocol does not cap them (fmnist-b5's subset)
UNCAPPED_NEW = {"fmnist-b5": 600}


def experience_shape(protocol: str) -> tuple[int, int, float]:
    """``(new patterns per epoch, epochs, lr)`` of one experience of ``protocol`` at its tuned settings."""
    from bnncl.experiment import config_for

    cfg = config_for(protocol)
    new = cfg.new_per_class or UNCAPPED_NEW.get(protocol)
    if new is None:
        raise SystemExit(f"--protocol {protocol}: expected a protocol with a known experience size "
                         f"({', '.join(sorted(UNCAPPED_NEW))} or one that caps new patterns per class)")
    return new, cfg.epochs, cfg.lr


def _model_paths(protocol: str) -> tuple[str, str]:
    from bnncl.assets import model_path
    from bnncl.data.protocols import get_protocol

    name = get_protocol(protocol).model
    return str(model_path(name, ".bnn")), str(model_path(name, ".safetensors"))


def _engines(protocol: str, k: int, threads: int):
    from bnncl.device.engine import DeviceEngine
    from bnncl.device.modelfile import DeviceModel
    from bnncl.nn.reference_engine import TorchEngine

    bnn, st = _model_paths(protocol)
    dev = DeviceEngine.from_model_file(bnn, k, qf=8, qb=16, qw=8, num_classes=10, threads=threads)
    classes = DeviceModel.load(bnn).pretrained_classes
    ref = TorchEngine.from_checkpoint(st, k, qf=32, qb=32, qw=32, num_classes=10, head_classes=classes)
    return dev, ref


def _kernel_path() -> str:
    from bnncl.device.kernels import active_path

    return active_path()


def _machine() -> dict:
    """Where the figures were measured (the load average says how shared the machine was)."""
    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "load_avg": os.getloadavg()}


def _time_step(engine, lat: np.ndarray, y: np.ndarray, lr: float) -> float:
    t = time.perf_counter()
    engine.train_batch(lat, y, lr)
    return time.perf_counter() - t


def _experience(engine, lat: np.ndarray, y: np.ndarray, lr: float, epochs: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(lat))
        for i in range(0, len(lat), BATCH):
            idx = order[i : i + BATCH]
            engine.train_batch(lat[idx], y[idx], lr)
    return time.perf_counter() - t


def run(ks: list[int], steps: int, experience: bool, threads: int, protocol: str = "fmnist-b5") -> dict:
    import torch

    from bnncl.data.protocols import get_protocol

    new, epochs, lr = experience_shape(protocol)
    steps_per_experience = epochs * math.ceil((new + REPLAY) / BATCH)
    torch.set_num_threads(1)
    data, _ = get_protocol(protocol).load()
    rows = []
    for k in ks:
        dev, ref = _engines(protocol, k, threads)
        n = new + REPLAY if experience else BATCH
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
            row["device_experience_s"] = _experience(dev, lat_d, labels, lr, epochs)
            row["torch_experience_s"] = _experience(ref, lat_r, labels, lr, epochs)
        else:
            row["device_experience_s"] = steps_per_experience * row["device_step_ms"] / 1e3
            row["torch_experience_s"] = steps_per_experience * row["torch_step_ms"] / 1e3
        row["experience_ratio"] = row["torch_experience_s"] / row["device_experience_s"]
        rows.append(row)
        print(f"K={k}: device {row['device_step_ms']:.1f} ms/step, torch {row['torch_step_ms']:.1f} ms/step "
              f"({row['step_ratio']:.2f}x); experience {row['device_experience_s']:.2f} s vs "
              f"{row['torch_experience_s']:.2f} s ({row['experience_ratio']:.2f}x)", flush=True)
    return {
        "machine": _machine(),
        "protocol": {"name": protocol, "batch": BATCH, "new": new, "replay": REPLAY, "epochs": epochs, "lr": lr,
                     "steps_per_experience": steps_per_experience, "experience_measured": experience},
        "config": {"device": "8/16/8", "torch": "fp32", "threads": threads, "steps": steps,
                   "kernel_path": _kernel_path()},
        "rows": rows,
    }


def run_slda(protocol: str, repeats: int, threads: int, epochs: int | None = None) -> dict:
    """Default strategy (slda) vs the torch fp32 CWR* tail, one experience end to end (module docstring);
    ``epochs`` replaces the reference's (the protocol's) for a quick check."""
    import torch

    from bnncl.api import Learner
    from bnncl.data.protocols import get_protocol
    from bnncl.experiment import config_for

    cfg = config_for(protocol, strategy="cwr_star")
    new, epochs, lr = cfg.new_per_class or UNCAPPED_NEW.get(protocol, 10**9), epochs or cfg.epochs, cfg.lr
    torch.set_num_threads(1)
    data, _ = get_protocol(protocol).load()
    labels = np.asarray(data.labels, dtype=np.int64)
    bnn, _ = _model_paths(protocol)
    base_idx = np.flatnonzero(labels < 5)
    new_class = 5
    new_idx = np.flatnonzero(labels == new_class)
    imgs, ys = data.images[new_idx], labels[new_idx]
    _, ref = _engines(protocol, cfg.tail_blocks, threads)
    replay_idx = np.random.default_rng(0).choice(base_idx, REPLAY, replace=False)
    replay_lat, replay_y = ref.extract(data.images[replay_idx]), labels[replay_idx]  # the buffer the device holds

    def device_once() -> tuple[float, int]:
        learner = Learner(bnn, strategy="slda", threads=threads)
        learner.deploy(data.images[base_idx], labels[base_idx])
        t = time.perf_counter()
        learner.learn(imgs, ys)
        learner.learner.feature_head.classifier()  # the solve a prediction would trigger
        return time.perf_counter() - t, learner.learner.memory_bytes()["strategy"]

    def torch_once() -> float:
        t = time.perf_counter()
        lat = ref.extract(imgs)
        take = np.random.default_rng(1).choice(len(lat), min(new, len(lat)), replace=False)
        _experience(ref, np.concatenate([lat[take], replay_lat]), np.concatenate([ys[take], replay_y]), lr, epochs)
        return time.perf_counter() - t

    device_once(), torch_once()  # warm-up
    td, tr, mem = [], [], 0
    for _ in range(repeats):
        sec, mem = device_once()
        td.append(sec)
        tr.append(torch_once())
    row = {"device_slda_s": statistics.median(td), "torch_cwr_star_s": statistics.median(tr),
           "device_slda_all_s": td, "torch_cwr_star_all_s": tr, "images": int(len(imgs)),
           "torch_tail_blocks": cfg.tail_blocks, "slda_state_bytes": int(mem)}
    row["ratio"] = row["torch_cwr_star_s"] / row["device_slda_s"]
    print(f"{protocol}: one experience ({len(imgs)} images of class {new_class}): device slda "
          f"{row['device_slda_s']:.2f} s vs torch fp32 CWR* K={cfg.tail_blocks} {row['torch_cwr_star_s']:.2f} s "
          f"({row['ratio']:.1f}x)", flush=True)
    return {
        "machine": _machine(),
        "protocol": {"name": protocol, "new": new, "replay": REPLAY, "epochs": epochs, "lr": lr, "batch": BATCH},
        "config": {"device": "slda", "torch": "fp32 CWR* tail", "threads": threads, "repeats": repeats,
                   "kernel_path": _kernel_path()},
        "rows": [row],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bnncl.bench.learning", description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", default="fmnist-b5", help="fmnist-b5 (embedded data) or cifar10-b5")
    ap.add_argument("--ks", default="0,1,2,3", help="tail blocks to measure (comma list)")
    ap.add_argument("--steps", type=int, default=7, help="timed train_batch calls per engine and K")
    ap.add_argument("--experience", action="store_true", help="also time one full experience end to end")
    ap.add_argument("--slda", action="store_true",
                    help="time the default strategy (slda) on one experience against the torch fp32 CWR* tail")
    ap.add_argument("--repeats", type=int, default=3, help="--slda: alternating timed runs per engine")
    ap.add_argument("--threads", type=int, default=1, help="C core threads of the device engine")
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args(argv)
    if a.slda:
        res = run_slda(a.protocol, a.repeats, a.threads)
    else:
        res = run([int(k) for k in a.ks.split(",")], a.steps, a.experience, a.threads, a.protocol)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
