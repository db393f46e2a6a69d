"""The portable random stream against NumPy's on fmnist-b5: head-only CWR* with the documented fixed setting
(``--tail-blocks 0 --lr-bits 8 --standardize on --mixing balanced --cwr-max-k 1 --epochs auto --lr 0.1``), final
test accuracy per seed with ``LearnerConfig.rng`` = ``numpy`` (the default) and ``portable`` (the stream libbnncl's
CWR* loop reproduces bit for bit). A sanity figure, not a test: the portable stream should learn as well.

Usage (from the repository root)::

    python benchmarks/portable_rng.py --seeds 0 1 2 --out benchmarks/portable-rng/fmnist-b5.json

Each run is ``bnncl run`` in this process (:func:`bnncl.experiment.run_protocol`); the ``rng`` choice is not a
command-line setting, so the run config carries it as an extra attribute that ``LearnerConfig.from_settings`` reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bnncl.experiment import run_config, run_protocol

SETTINGS: dict[str, Any] = {"strategy": "cwr_star", "tail_blocks": 0, "lr_bits": 8, "standardize": "on",
                            "mixing": "balanced", "cwr_max_k": 1.0, "epochs": None, "lr": 0.1}


def one_run(protocol: str, rng: str, seed: int) -> dict[str, Any]:
    cfg = run_config(protocol, SETTINGS | {"seed": seed})
    object.__setattr__(cfg, "rng", rng)  # read by LearnerConfig.from_settings (not a command-line setting)
    t0 = time.perf_counter()
    result = run_protocol(cfg)
    assert result["config"]["learner"]["rng"] == rng
    return {"protocol": protocol, "rng": rng, "seed": seed, "final_accuracy": result["final_accuracy"],
            "accuracies": [e["accuracy_all"] for e in result["experiences"]],
            "seconds": round(time.perf_counter() - t0, 1), "machine": result["machine"]}


def markdown(records: list[dict[str, Any]]) -> str:
    lines = ["| protocol | rng | seeds | final accuracy % (mean ± std) | per seed % |", "|---|---|---|---|---|"]
    for protocol in sorted({r["protocol"] for r in records}):
        for rng in ("numpy", "portable"):
            rs = sorted((r for r in records if r["protocol"] == protocol and r["rng"] == rng), key=lambda r: r["seed"])
            if not rs:
                continue
            acc = 100 * np.array([r["final_accuracy"] for r in rs])
            per = ", ".join(f"{a:.2f}" for a in acc)
            std = acc.std(ddof=1) if len(rs) > 1 else 0.0
            lines.append(f"| {protocol} | {rng} | {len(rs)} | {acc.mean():.2f} ± {std:.2f} | {per} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", default="fmnist-b5")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/portable-rng/fmnist-b5.json"))
    args = ap.parse_args(argv)
    records = []
    for seed in args.seeds:
        for rng in ("numpy", "portable"):
            rec = one_run(args.protocol, rng, seed)
            records.append(rec)
            print(f"{rng:9s} seed {seed}: final accuracy {100 * rec['final_accuracy']:.2f} % ({rec['seconds']} s)",
                  file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=2) + "\n")
    print(markdown(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
