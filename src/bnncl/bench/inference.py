"""Whole-backbone inference benchmark: bnncl frozen engine vs torch float32 twin vs torch BNN.

``bnncl bench inference [--json PATH] [--threads 1,2] [--quick]``.

For each shipped architecture (the pretrained host model (``pip install ./bnncl-models``) when present, else a
randomly initialised one: timing does not depend on the weights):

* bnncl: :class:`bnncl.device.frozen.FrozenEngine` on uint8 images (normalisation folded; the stem and
  all binary blocks in one C call, ``fused=True``), timed in a subprocess that cannot import torch
  (C kernels at ``threads``; NumPy's BLAS, used only by the tiny head, single-threaded:
  ``OPENBLAS_NUM_THREADS=1``), which also times the per-layer path (``fused=False``) interleaved with
  it, and reports its peak RSS (``VmHWM``; see :func:`peak_rss_bytes`) and a per-stage breakdown;
* torch float32 twin (``cfg.float_twin()``, random init) and torch BNN (the fake-quantized
  ``Backbone``), eval mode, ``inference_mode``, channels_last, on normalised float input,
  ``torch.set_num_threads(threads)``, measured in the same run.

Latency is per image: best over rounds of (time of one batch) / batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bnncl.bench.timing import best_time
from bnncl.machine import cpu_model

ARCHS = ("fmnist", "cifar")
ASSET_NAMES = {"fmnist": "fmnist-b5", "cifar": "cifar10-b5"}


# ---------------------------------------------------------------------------------------------
# Worker: the device side, torch-free (runs in a subprocess)

_NO_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in the device benchmark process")
        return None
sys.meta_path.insert(0, _NoTorch())
from bnncl.bench.timing import best_time
from bnncl.machine import cpu_model
from bnncl.bench.inference import worker_main
raise SystemExit(worker_main(sys.argv[1:]))
"""


def _engine_breakdown(engine: Any, images: np.ndarray, rounds: int, min_time: float) -> dict[str, float]:
    """Seconds per image of each stage of the one-call forward: ``stem`` (C stem conv + its epilogue
    + sign-pack), ``block{i}`` (binary conv with the fused block epilogue; the increment of the one C call
    when it stops one block later), ``gap+head`` (NumPy), and ``python`` (the rest of ``logits``: input
    checks, chunking, output arrays, ctypes).  Without the one-call path (``numpy`` kernels): the
    per-layer stages ``stem`` and ``block{i}``."""
    from bnncl.device import kernels

    b = len(images)
    plan, path = engine.plan(), kernels.active_path()
    out: dict[str, float] = {}
    if plan is None:
        out["stem"] = best_time(lambda: engine.run_stem(images), rounds, min_time) / b
        x, bits = engine.run_stem(images)
        for i in range(len(engine.blocks)):
            out[f"block{i}"] = best_time(lambda i=i, x=x, bits=bits: engine.run_block(i, x, bits), rounds,
                                         min_time) / b
            x, bits = engine.run_block(i, x, bits)
    else:
        cumulative = [float("inf")] * (len(engine.blocks) + 1)
        for _ in range(3):  # sweeps over the stops, best of each: differences of noisy times
            for stop in range(len(engine.blocks) + 1):
                t = best_time(lambda stop=stop: plan.run(images, stop, False, engine.threads, path), rounds,
                              min_time) / b
                cumulative[stop] = min(cumulative[stop], t)
        out["stem"] = cumulative[0]
        for i in range(len(engine.blocks)):
            out[f"block{i}"] = max(cumulative[i + 1] - cumulative[i], 0.0)
        x = plan.run(images, len(engine.blocks), False, engine.threads, path)[0]
    out["gap+head"] = best_time(lambda: engine.head(x), rounds, min_time) / b
    total = best_time(lambda: engine.logits(images), rounds, min_time) / b
    out["python"] = max(total - sum(out.values()), 0.0)
    return out


def peak_rss_bytes() -> int:
    """Peak resident set size of this process: ``VmHWM`` from /proc (Linux), else getrusage max RSS.

    (On Linux ``ru_maxrss`` survives ``execve``, so a child spawned by a process that has torch
    loaded reports the parent's peak; ``VmHWM`` belongs to the new address space.)
    """
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_main(argv: list[str]) -> int:
    """Time the frozen engine on one model file; print one JSON line (no torch in this process)."""
    import resource

    from bnncl.device import kernels
    from bnncl.device.frozen import FrozenEngine
    from bnncl.device.modelfile import DeviceModel

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.2)
    args = ap.parse_args(argv)
    dm = DeviceModel.load(args.model)
    engine = FrozenEngine(dm, threads=args.threads)
    rng = np.random.default_rng(0)
    res: dict[str, Any] = {"kernel_path": kernels.active_path(), "threads": args.threads, "latency": {},
                           "latency_per_layer": {}, "breakdown": {}}
    batches = {int(b): rng.integers(0, 256, (int(b), *dm.architecture["input_shape"]), dtype=np.uint8)
               for b in args.batches.split(",")}
    for batch, images in batches.items():
        res["latency"][str(batch)] = best_time(lambda images=images: engine.logits(images), args.rounds,
                                               args.min_time) / batch
        res["breakdown"][str(batch)] = _engine_breakdown(engine, images, args.rounds, args.min_time / 4)
    res["peak_rss_bytes"] = peak_rss_bytes()  # the engine alone (before the per-layer engine below)
    layers = FrozenEngine(dm, threads=args.threads, fused=False)  # the per-layer path (its oracle)
    for batch, images in batches.items():  # per-layer, then the one-call path again: best of both rounds
        res["latency_per_layer"][str(batch)] = best_time(lambda images=images: layers.logits(images), args.rounds,
                                                         args.min_time) / batch
        again = best_time(lambda images=images: engine.logits(images), args.rounds, args.min_time) / batch
        res["latency"][str(batch)] = min(res["latency"][str(batch)], again)
    res["torch_imported"] = "torch" in sys.modules
    res["getrusage_maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(res))
    return 0


def run_worker(model_file: str, threads: int, batches: list[int], rounds: int, min_time: float,
               src: str | None = None) -> dict[str, Any]:
    """Run :func:`worker_main` in a fresh interpreter without torch; returns its JSON.  ``src``: the
    ``src`` folder of another bnncl checkout (with its C core built) to time instead, e.g. a baseline.

    OpenBLAS stays single-threaded: the matrices are small, and a second BLAS thread pool next to
    the OpenMP one stalled for milliseconds on the shared 2-core machine."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS=str(threads),
               OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    if src is not None:
        env["PYTHONPATH"] = str(Path(src).resolve())
    cmd = [sys.executable, "-c", _NO_TORCH, model_file, "--threads", str(threads),
           "--batches", ",".join(map(str, batches)), "--rounds", str(rounds), "--min-time", str(min_time)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"device benchmark worker failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Host side (torch)


def _models(arch: str, workdir: Path) -> tuple[Any, Any, Any, str, str]:
    """(config, torch BNN, torch fp32 twin, path of the exported .bnn, source description)."""
    import torch

    from bnncl.assets import find_model
    from bnncl.nn.backbones import CONFIGS, Backbone
    from bnncl.nn.checkpoint import load_model
    from bnncl.nn.export import export_model

    asset = find_model(ASSET_NAMES[arch], ".safetensors")
    if asset is not None:
        bnn, info = load_model(asset)
        source = f"pretrained {asset.name}"
    else:
        torch.manual_seed(0)
        cfg = CONFIGS[arch](num_classes=5)
        c = cfg.input_shape[2]
        from dataclasses import replace

        cfg = replace(cfg, mean=(0.5,) * c, std=(0.25,) * c)
        bnn, info = Backbone(cfg).eval(), {"classes": list(range(5))}
        source = "random init (shipped model not present)"
    torch.manual_seed(0)
    twin = Backbone(bnn.config.float_twin()).eval()
    path = workdir / f"{arch}.bnn"
    export_model(bnn, info, path)
    return bnn.config, bnn, twin, str(path), source


def _torch_latency(model: Any, cfg: Any, batch: int, threads: int, rounds: int, min_time: float) -> float:
    import torch

    torch.set_num_threads(threads)
    h, w, c = cfg.input_shape
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, c, h, w).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return best_time(lambda: model(x), rounds, min_time) / batch


def run(threads_list: list[int], batches: list[int], rounds: int, min_time: float,
        baseline: str | None = None) -> dict[str, Any]:
    """The full report (JSON-able).  The bnncl worker runs before and after the torch timings (best of
    both: the machine may be shared); ``baseline``: ``src`` folder of another checkout, timed in the
    same run (``baseline_us``)."""
    import torch

    report: dict[str, Any] = {"machine": {"platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count(),
                                          "load_average_at_start": os.getloadavg(), "torch": torch.__version__,
                                          "numpy": np.__version__},
                              "rows": [], "breakdown": {}, "peak_rss": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            cfg, bnn, twin, path, source = _models(arch, Path(tmp))
            report.setdefault("models", {})[arch] = {"name": cfg.name, "source": source,
                                                     "file_bytes": Path(path).stat().st_size}
            for threads in threads_list:
                dev = run_worker(path, threads, batches, rounds, min_time)
                base = run_worker(path, threads, batches, rounds, min_time, src=baseline) if baseline else None
                report["breakdown"][f"{arch}/t{threads}"] = dev["breakdown"]
                report["peak_rss"][f"{arch}/t{threads}"] = dev["peak_rss_bytes"]
                report["machine"]["kernel_path"] = dev["kernel_path"]
                assert not dev["torch_imported"]
                fp32s = {batch: _torch_latency(twin, cfg, batch, threads, rounds, min_time) for batch in batches}
                tbnns = {batch: _torch_latency(bnn, cfg, batch, threads, rounds, min_time) for batch in batches}
                again = run_worker(path, threads, batches, rounds, min_time)
                for key in ("latency", "latency_per_layer"):
                    dev[key] = {b: min(v, again[key][b]) for b, v in dev[key].items()}
                for batch in batches:
                    fp32, tbnn = fp32s[batch], tbnns[batch]
                    ours = dev["latency"][str(batch)]
                    report["rows"].append({
                        "model": cfg.name, "batch": batch, "threads": threads, "bnncl_us": ours * 1e6,
                        "bnncl_per_layer_us": dev["latency_per_layer"][str(batch)] * 1e6,
                        "torch_fp32_us": fp32 * 1e6, "torch_bnn_us": tbnn * 1e6,
                        "speedup_vs_fp32": fp32 / ours, "speedup_vs_torch_bnn": tbnn / ours})
                    if base is not None:
                        b_us = base["latency"][str(batch)] * 1e6
                        report["rows"][-1].update(baseline_us=b_us, baseline_speedup_vs_fp32=fp32 * 1e6 / b_us)
    return report


def agreement(arch: str, model_path: str | None = None, paths: list[str] | None = None,
              oracle_images: int = 1000, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Agreement of the frozen engine with the torch model on the real test set, per kernel path:
    argmax-equal fraction of logits, fraction of equal ±1 latent elements at the LR split, max |logit|
    difference, and test accuracy of both (on the pretrained classes).  The slow ``numpy`` oracle path
    runs on the first ``oracle_images`` images only."""
    import torch

    from bnncl import data
    from bnncl.assets import model_path as shipped_model_path
    from bnncl.device import kernels
    from bnncl.device.frozen import FrozenEngine, resolve_stem
    from bnncl.nn.augment import to_input
    from bnncl.nn.export import build_device_model, load_host_model

    path = model_path or str(shipped_model_path(ASSET_NAMES[arch], ".safetensors"))
    model, info = load_host_model(path)
    test = data.load_fashion_mnist("test") if arch == "fmnist" else \
        data.load_cifar10(data.default_cifar10_path(), "test")
    dm = build_device_model(model, info)
    images, labels = test.images, test.labels
    classes = np.asarray(dm.pretrained_classes)
    seen = np.isin(labels, classes)
    torch.set_num_threads(2)
    logits_t, lat_t = [], []
    with torch.inference_mode():
        for i in range(0, len(images), 500):
            x = to_input(torch.from_numpy(images[i:i + 500]), model.config.mean, model.config.std)
            logits_t.append(model(x).numpy())
            lat_t.append(model.latent(x, dm.lr_split).permute(0, 2, 3, 1).numpy())
    ref_logits, ref_lat = np.concatenate(logits_t), np.concatenate(lat_t)
    acc = lambda lg: float((classes[lg.argmax(1)] == labels[:len(lg)])[seen[:len(lg)]].mean())  # noqa: E731
    out: dict[str, Any] = {"model": path, "split": dm.lr_split, "images": len(images),
                           "torch_accuracy_pretrained_classes": acc(ref_logits), "paths": {}}
    default = resolve_stem(dm.architecture)  # the stem the engine runs for this model
    other = "float32" if default == "int8" else "int8"
    out["default_stem"] = default
    for kp in paths or kernels.available_paths():
        # every path with the default stem; the other stem on the best path, for comparison
        for stem in (default, other) if kp == kernels.available_paths()[0] else (default,):
            n = oracle_images if kp == "numpy" else len(images)
            with kernels.kernel_path(kp):
                eng = FrozenEngine(dm, threads=2, stem=stem)
                lg, lat = eng.logits(images[:n]), eng.latents(images[:n])
            row = {"images": n, "stem": stem,
                   "argmax_equal": float((lg.argmax(1) == ref_logits[:n].argmax(1)).mean()),
                   "latent_elements_equal": float((lat == ref_lat[:n]).mean()),
                   "max_abs_logit_diff": float(np.abs(lg - ref_logits[:n]).max()), "accuracy": acc(lg)}
            out["paths"][kp if stem == default else f"{kp} ({stem} stem)"] = row
            log(f"{arch} {kp} stem {stem}: {row}")
    return out


def markdown(report: dict[str, Any]) -> str:
    """Latency table (+ the baseline's, when timed) + per-stage breakdown as markdown."""
    lines = ["| model | batch | threads | bnncl µs/img | (per-layer path) | torch fp32 twin µs/img | "
             "torch BNN µs/img | vs fp32 | vs torch BNN |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['bnncl_us']:.0f} | "
                     f"{r.get('bnncl_per_layer_us', float('nan')):.0f} | "
                     f"{r['torch_fp32_us']:.0f} | {r['torch_bnn_us']:.0f} | {r['speedup_vs_fp32']:.1f}x | "
                     f"{r['speedup_vs_torch_bnn']:.1f}x |")
    if any("baseline_us" in r for r in report["rows"]):
        lines += ["", "| model | batch | threads | baseline µs/img | baseline vs fp32 | bnncl µs/img | vs fp32 |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['batch']} | {r['threads']} | {r['baseline_us']:.0f} | "
                  f"{r['baseline_speedup_vs_fp32']:.1f}x | {r['bnncl_us']:.0f} | {r['speedup_vs_fp32']:.1f}x |"
                  for r in report["rows"] if "baseline_us" in r]
    lines += ["", "Peak RSS of the torch-free inference process: " + ", ".join(
        f"{k} {v / 2**20:.0f} MiB" for k, v in report["peak_rss"].items()), ""]
    for key, per_batch in report["breakdown"].items():
        for batch, stages in per_batch.items():
            total = sum(stages.values())
            parts = ", ".join(f"{k} {v * 1e6:.0f}" for k, v in stages.items())
            lines.append(f"- breakdown {key} batch {batch} (µs/img, sum {total * 1e6:.0f}): {parts}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``bnncl bench inference``: print a markdown table; ``--json PATH`` writes the full report."""
    ap = argparse.ArgumentParser(prog="bnncl bench inference", description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None, help="write the report as JSON to this file")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds, best kept (default 5)")
    ap.add_argument("--quick", action="store_true", help="short rounds (smoke run)")
    ap.add_argument("--baseline", metavar="SRC", default=None,
                    help="also time the engine of another checkout (its src/ folder, C core built) in the same run")
    ap.add_argument("--agreement", nargs="*", metavar="ARCH=MODEL", default=None,
                    help="instead of timing: agreement with torch on the real test set, per kernel path "
                         "(fmnist / cifar; default the shipped models, or ARCH=PATH of a host model)")
    args = ap.parse_args(argv)
    if args.agreement is not None:
        specs = args.agreement or list(ARCHS)
        report = {}
        for spec in specs:
            arch, _, path = spec.partition("=")
            if arch not in ARCHS:
                ap.error(f"--agreement: expected fmnist or cifar (optionally =PATH), got {spec!r}")
            report[arch] = agreement(arch, path or None)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
        if not threads or min(threads) < 1:
            raise ValueError
    except ValueError:
        ap.error(f"--threads: expected comma-separated integers >= 1, got {args.threads!r}")
    if args.rounds < 1:
        ap.error(f"--rounds: expected an integer >= 1, got {args.rounds}")
    report = run(threads, [1, 32], args.rounds, 0.02 if args.quick else 0.3, args.baseline)
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, kernel path {m.get('kernel_path')}, "
          f"load average {m['load_average_at_start']}")
    print(markdown(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
