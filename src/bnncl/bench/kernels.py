"""Kernel benchmark: bnncl binary conv / GEMM vs torch float32 on the shipped backbone shapes.

Ops are counted as 2 per binary multiply-accumulate (one XNOR + one popcount-add), the same
count as torch's 2 flops per float MAC, so ``ratio_vs_torch_fp32`` compares equal work.
``limit_fraction`` = achieved binary MACs/s / popcount limit, the limit being
``bits per popcount instruction x instructions per second x threads``, with the instruction
rate measured on this machine by a probe of independent popcount instructions (on Zen 4:
VPOPCNTQ zmm, 512 bits, 2 per cycle measured; the clock is estimated by a chain of dependent
1-cycle adds and also read from /proc/cpuinfo).  torch is optional and imported lazily.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from bnncl.bench.timing import best_time
from bnncl.device import kernels
from bnncl.device.bitpack import pack_signs
from bnncl.device.kernels import native
from bnncl.device.kernels.prepacked import PackedBinaryConv
from bnncl.machine import cpu_model, cpuinfo_field

# (name, H, W, Cin, Cout, stride); 3x3, padding 1
CONV_SHAPES = [
    ("cifar 32x32 32->32 s1", 32, 32, 32, 32, 1),
    ("cifar 32x32 32->64 s2", 32, 32, 32, 64, 2),
    ("cifar 16x16 64->64 s1", 16, 16, 64, 64, 1),
    ("cifar 16x16 64->128 s2", 16, 16, 64, 128, 2),
    ("cifar 8x8 128->128 s1", 8, 8, 128, 128, 1),
    ("cifar 8x8 128->256 s2", 8, 8, 128, 256, 2),
    ("cifar 4x4 256->256 s1", 4, 4, 256, 256, 1),
    ("fmnist 28x28 32->32 s1", 28, 28, 32, 32, 1),
    ("fmnist 28x28 32->64 s2", 28, 28, 32, 64, 2),
    ("fmnist 14x14 64->64 s1", 14, 14, 64, 64, 1),
    ("fmnist 14x14 64->128 s2", 14, 14, 64, 128, 2),
    ("fmnist 7x7 128->128 s1", 7, 7, 128, 128, 1),
]
GEMM_SIZE = 1024


def cpu_probe(clock_ghz: float | None = None) -> dict:
    """CPU model, nominal MHz (/proc/cpuinfo), measured clock and popcount instruction rate;
    with ``clock_ghz`` the limit uses that clock times the measured popcounts per cycle."""
    info: dict = {"platform": platform.platform(), "kernel_paths": kernels.available_paths(),
                  "load_average_at_start": os.getloadavg(),
                  "cpu_model": cpu_model(), "cpuinfo_mhz": cpuinfo_field("cpu MHz")}
    lib = native.load()
    if lib is None:
        return info
    import ctypes

    iters = 5_000_000
    bits = ctypes.c_int(0)
    clock = rate = 0.0
    for _ in range(6):  # best of several rounds: the core ramps its clock up under load
        start = time.perf_counter()
        cycles = lib.bnncl_clock_probe(iters)
        clock = max(clock, cycles / (time.perf_counter() - start))
        start = time.perf_counter()
        count = lib.bnncl_popcnt_probe(iters, ctypes.byref(bits))
        rate = max(rate, count / (time.perf_counter() - start))
    info.update(
        measured_clock_ghz=round(clock / 1e9, 3),
        popcount_bits_per_instruction=bits.value,
        popcount_instructions_per_second=rate,
        popcount_per_cycle=round(rate / clock, 2),
        popcount_limit_bits_per_second_per_thread=bits.value * rate,
    )
    if clock_ghz:
        info["limit_clock_ghz"] = clock_ghz
        info["popcount_limit_bits_per_second_per_thread"] = bits.value * rate / clock * clock_ghz * 1e9
    return info


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _bench_conv(shape, batch: int, threads: int, repeats: int, min_time: float, torch, rng) -> dict:
    name, h, w, cin, cout, stride = shape
    x = pack_signs(rng.standard_normal((batch, h, w, cin)))
    wt = pack_signs(rng.standard_normal((cout, 3, 3, cin)))
    scale = rng.random(cout).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    ho, wo = (h + 2 - 3) // stride + 1, (w + 2 - 3) // stride + 1
    macs = batch * ho * wo * cout * 9 * cin
    t = best_time(lambda: kernels.binary_conv2d(x, wt, cin, stride, 1, scale, bias, threads=threads), repeats, min_time)
    conv = PackedBinaryConv(wt, cin, stride, 1, scale, bias)  # weights laid out once, as the engine holds them
    tp = best_time(lambda: conv(x, threads), repeats, min_time)
    row = {"op": "conv3x3", "shape": name, "batch": batch, "threads": threads, "binary_macs": macs,
           "bnncl_seconds": t, "bnncl_ops_per_s": 2 * macs / t,
           "prepacked_seconds": tp, "prepacked_ops_per_s": 2 * macs / tp}
    if torch is not None:
        tx = torch.randn(batch, cin, h, w).to(memory_format=torch.channels_last)
        tw = torch.randn(cout, cin, 3, 3).to(memory_format=torch.channels_last)
        tb = torch.randn(cout)
        with torch.no_grad():
            tt = best_time(lambda: torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=1), repeats, min_time)
        row.update(torch_seconds=tt, torch_ops_per_s=2 * macs / tt, ratio_vs_torch_fp32=tt / t,
                   ratio_prepacked_vs_torch_fp32=tt / tp)
    return row


def _bench_gemm(threads: int, repeats: int, min_time: float, torch, rng) -> dict:
    n = GEMM_SIZE
    a = pack_signs(rng.standard_normal((n, n)))
    b = pack_signs(rng.standard_normal((n, n)))
    t = best_time(lambda: kernels.binary_gemm(a, b, n, threads=threads), repeats, min_time)
    row = {"op": "gemm", "shape": f"{n}x{n}x{n}", "batch": n, "threads": threads, "binary_macs": n**3,
           "bnncl_seconds": t, "bnncl_ops_per_s": 2 * n**3 / t}
    if torch is not None:
        ta, tb = torch.randn(n, n), torch.randn(n, n)
        tt = best_time(lambda: torch.matmul(ta, tb), repeats, min_time)
        row.update(torch_seconds=tt, torch_ops_per_s=2 * n**3 / tt, ratio_vs_torch_fp32=tt / t)
    return row


def run(threads_list: list[int], repeats: int, min_time: float, quick: bool,
        clock_ghz: float | None = None) -> dict:
    """Measure every shape at batch 1 and 32 (batch 1 only with ``quick``) and the GEMM."""
    torch = _torch()
    info = cpu_probe(clock_ghz)
    limit = info.get("popcount_limit_bits_per_second_per_thread")
    rng = np.random.default_rng(0)
    shapes = CONV_SHAPES[::3] if quick else CONV_SHAPES
    results = []
    for threads in threads_list:
        if torch is not None:
            torch.set_num_threads(threads)
        for shape in shapes:
            for batch in (1,) if quick else (1, 32):
                results.append(_bench_conv(shape, batch, threads, repeats, min_time, torch, rng))
        results.append(_bench_gemm(threads, repeats, min_time, torch, rng))
    for row in results:
        if limit:
            row["limit_fraction"] = row["binary_macs"] / row["bnncl_seconds"] / (limit * row["threads"])
    return {
        "machine": info,
        "kernel_path": kernels.active_path(),
        "torch_version": getattr(torch, "__version__", None),
        "op_count": "2 ops per binary MAC (XNOR + popcount-add), as 2 flops per float MAC",
        "prepacked_conv_op": "PackedBinaryConv (the frozen engine's per-layer path): weights laid out once at "
                             "construction, otherwise as binary_conv2d",
        "bnncl_conv_op": "binary_conv2d: packed NHWC input, 3x3, padding 1, fused float32 scale/bias output; "
                         "per call: weights re-laid-out, input copied zero-padded; avx512 path with cin % 32 == 0: "
                         "direct kernel (32-bit taps read from the padded input, no im2col), else im2col + panels",
        "torch_conv_op": "torch.nn.functional.conv2d float32, channels_last, with bias; torch.matmul for GEMM",
        "limit": "bits per popcount instruction x measured instructions/s (probe) x threads",
        "results": results,
    }


def markdown(report: dict) -> str:
    """The results as a markdown table (GOP/s = 1e9 ops/s)."""
    has_torch = report["torch_version"] is not None
    head = "| op | shape | batch | threads | bnncl GOP/s | prepacked GOP/s |"
    head += " torch fp32 GOP/s | ratio | prepacked ratio |" if has_torch else ""
    head += " limit fraction |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["results"]:
        pre = r.get("prepacked_ops_per_s")
        cells = [r["op"], r["shape"], str(r["batch"]), str(r["threads"]), f"{r['bnncl_ops_per_s'] / 1e9:.0f}",
                 f"{pre / 1e9:.0f}" if pre else "-"]
        if has_torch:
            cells += [f"{r['torch_ops_per_s'] / 1e9:.0f}", f"{r['ratio_vs_torch_fp32']:.1f}x",
                      f"{r['ratio_prepacked_vs_torch_fp32']:.1f}x" if pre else "-"]
        cells.append(f"{r['limit_fraction']:.2f}" if "limit_fraction" in r else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``bnncl bench kernels``: print a markdown table; ``--json PATH`` writes the full report."""
    parser = argparse.ArgumentParser(prog="bnncl bench kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="write the report as JSON to this file")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds per case, best kept (default 5)")
    parser.add_argument("--quick", action="store_true", help="a few shapes, batch 1, short rounds")
    parser.add_argument("--clock-ghz", type=float, default=None,
                        help="clock for the popcount limit (default: the measured one, low on a busy machine)")
    args = parser.parse_args(argv)
    # idle OpenMP threads (ours and torch's) must sleep, not spin, or 2-thread runs starve each other
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
        if not threads or min(threads) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--threads: expected comma-separated integers >= 1, got {args.threads!r}")
    if args.repeats < 1:
        parser.error(f"--repeats: expected an integer >= 1, got {args.repeats}")
    report = run(threads, args.repeats, 0.01 if args.quick else 0.05, args.quick, args.clock_ghz)
    info = report["machine"]
    print(f"machine: {info.get('cpu_model', '?')}, cpuinfo {info.get('cpuinfo_mhz', '?')} MHz, "
          f"measured clock {info.get('measured_clock_ghz', '?')} GHz, kernel path {report['kernel_path']}")
    if "popcount_per_cycle" in info:
        print(f"popcount limit: {info['popcount_bits_per_instruction']}-bit popcount x "
              f"{info['popcount_instructions_per_second'] / 1e9:.2f} G/s measured "
              f"({info['popcount_per_cycle']} per cycle) per thread; limit clock "
              f"{info.get('limit_clock_ghz', info.get('measured_clock_ghz'))} GHz; "
              f"load average {info['load_average_at_start']}")
    print(f"ops: {report['op_count']}")
    print(markdown(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
