"""libbnncl on the emulated Cortex-M boards: flash, RAM and instructions per model and board.

    python benchmarks/libbnncl_mcu.py [-o benchmarks/libbnncl-mcu.json]

For fmnist-b5 (16 embedded test images, 8 + 8 training images of classes 5 and 7, the state deployed on the
embedded base images) and cifar10-b5 (4 CIFAR-10 test images, 8 + 8 training images of classes 5 and 7, the
state deployed on the first 100 training images of each base class) on the MPS2 AN386 (Cortex-M4F, FPv4-SP:
float64 in software) and AN500 (Cortex-M7, FPv5 double precision) boards under qemu-system-arm: the checks
and the figures of ``tests/native/test_libbnncl_cortexm.py`` (``run_board``: predictions identical to the
Python engine, frozen logits bit-identical), written as JSON and printed as a markdown table.
Instructions from ``qemu -icount shift=0`` (calibrated on each run); learned-image figures include the
leave-one-out tally of the experience (its classes hold 8 features: one Householder reduction of the D x D
covariance to tridiagonal form, then O(D) work per image and value of the shrinkage grid, 11) and the
classifier refresh (one Cholesky of D x D), shared over its 16 images.

fmnist-b5 with head-only CWR* (``bnncl export-c --strategy cwr_star``: the documented head-only setting, balanced,
standardize on, cwr_max_k 1, auto epochs, lr 0.1, minibatch 128, the state deployed on the 1,500 embedded base
images, 20 images per learn call) on the M4F with an 8-bit buffer of 1,000 and of 400 patterns: 16 test images
predicted, 8 + 8 training images of classes 5 and 7 learned as one experience, save, reload
(``tests/native/test_libbnncl_ctx_cwr.py``'s ``run_cwr_board``: predictions and scores bit-identical to the Python
learner with the portable stream, the saved state's header and checksum equal to its state); instructions per
prediction and for the whole experience.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "native")]

from test_libbnncl_cortexm import BOARDS, _tools_missing, report, run_board  # noqa: E402
from test_libbnncl_ctx_cwr import cwr_report, run_cwr_board  # noqa: E402

CASES = {"fmnist-b5": {"ntest": 16, "per_class": 8, "base_per_class": None},
         "cifar10-b5": {"ntest": 4, "per_class": 8, "base_per_class": 100}}
CWR_BUFFERS, CWR_MAX_IMAGES = (1000, 400), 20  # head-only CWR* on the M4F: 8-bit buffers, images per learn call


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", default=str(ROOT / "benchmarks" / "libbnncl-mcu.json"))
    a = ap.parse_args()
    missing = _tools_missing()
    if missing:
        print(f"libbnncl_mcu: {missing}", file=sys.stderr)
        return 2
    rows = []
    for model_name, case in CASES.items():
        for board in ("m4f", "m7"):
            with tempfile.TemporaryDirectory() as tmp:
                r = run_board(Path(tmp), BOARDS[board], model_name, (5, 7), case["per_class"], case["ntest"],
                              base_per_class=case["base_per_class"], timeout=600)
            print(report(board, model_name, r), flush=True)
            r.pop("sizes")
            rows.append({"model": model_name, "board": board, "machine": BOARDS[board].machine,
                         "flags": BOARDS[board].flags, **r})
    cwr_rows = []
    for buffer in CWR_BUFFERS:
        with tempfile.TemporaryDirectory() as tmp:
            r = run_cwr_board(Path(tmp), "m4f", buffer=buffer, max_images=CWR_MAX_IMAGES, per_class=8, ntest=16)
        print(cwr_report("m4f", r), flush=True)
        r.pop("sizes")
        cwr_rows.append({"model": "fmnist-b5", "strategy": "cwr_star", "board": "m4f", "machine": BOARDS["m4f"].machine,
                         "flags": BOARDS["m4f"].flags, **r})
    Path(a.out).write_text(json.dumps(rows + cwr_rows, indent=1) + "\n")
    print("\n| model | board | flash | RAM (arena + .data/.bss + stack) | arena | stack | instructions / prediction "
          "| / learned image |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['board']} ({r['machine']}) | {r['flash']:,} | {r['ram']:,} | {r['arena']:,} | "
              f"{r['stack']:,} | {r['insn_predict'] / 1e6:.1f} M | {r['insn_learn'] / 1e6:.1f} M |")
    print("\n| model, head-only CWR* | board | buffer (8 bits) | flash (initial state) | RAM (arena + .data/.bss + "
          "stack) | arena | stack | instructions / prediction | / experience of 16 images |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in cwr_rows:
        print(f"| {r['model']} | {r['board']} ({r['machine']}) | {r['buffer']:,} | {r['flash']:,} "
              f"({r['state_arrays']:,}) | {r['ram']:,} | {r['arena']:,} | {r['stack']:,} | "
              f"{r['insn_predict'] / 1e6:.1f} M | {r['insn_learn'] / 1e6:.1f} M |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
