"""Sweeps that reproduce the papers' claims: q_f x q_b, LR bits, buffer size, tail blocks, seeds.

``bnncl bench sweeps --protocol fmnist-b5 --what qfqb,lrbits,buffer,tail --seeds 0,1,2 --out benchmarks/sweeps``
runs :func:`bnncl.experiment.run_protocol` once per grid point and seed (device engine unless
``--engine torch``), and writes ``<out>/<protocol>-<what>.json`` (every run's summary), a markdown
table ``<out>/<protocol>-<what>.md`` (mean ± std over seeds) and a plot where it helps. Slow by
nature: each point is a whole continual-learning run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bnncl.atomic import replace_file
from bnncl.experiment import RunConfig, config_for, run_protocol

BITS = (4, 8, 16, 32)
GRIDS = ("qfqb", "lrbits", "buffer", "tail")


def grid(what: str, base: RunConfig) -> list[tuple[str, RunConfig]]:
    """The labelled configurations of one sweep."""
    if what == "qfqb":
        return [(f"qf={qf} qb={qb}", replace(base, qf=qf, qb=qb)) for qf in BITS for qb in BITS]
    if what == "lrbits":
        return [(f"LR {b} bit", replace(base, lr_bits=b)) for b in (1, 8, 32)]
    if what == "buffer":
        return [(f"buffer {n}", replace(base, buffer=n)) for n in (300, 750, 1500, 3000)]
    if what == "tail":
        return [(f"K={k}", replace(base, tail_blocks=k, lr_bits=base.lr_bits if k == base.tail_blocks else 8))
                for k in (0, 1, 2, 3)]
    raise ValueError(f"unknown sweep {what!r}; expected one of {GRIDS}")


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    return {
        "final_accuracy": res["final_accuracy"], "average_accuracy": res["average_accuracy"],
        "forgetting": res["forgetting"], "memory_bytes": res["memory_bytes"],
        "train_seconds": sum(e["train_seconds"] for e in res["experiences"]),
        "accuracy_all": [e["accuracy_all"] for e in res["experiences"]],
    }


def _stats(values: Iterable[float | None]) -> str:
    vals = [100 * v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.1f}"
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}"


def run_sweep(what: str, base: RunConfig, seeds: list[int], log=print) -> dict[str, Any]:
    """Run every point of sweep ``what`` for every seed; returns the JSON-able report."""
    points = []
    for label, cfg in grid(what, base):
        runs = []
        for seed in seeds:
            t0 = time.perf_counter()
            res = run_protocol(replace(cfg, seed=seed))
            runs.append({"seed": seed, **_summary(res)})
            log(f"{what} {label} seed {seed}: final {100 * res['final_accuracy']:.1f}% "
                f"({time.perf_counter() - t0:.0f} s)")
        points.append({"label": label, "config": asdict(cfg), "runs": runs})
    return {"sweep": what, "protocol": base.protocol, "engine": base.engine, "seeds": seeds, "points": points}


def markdown(report: dict[str, Any]) -> str:
    """Mean ± std over seeds of one sweep, as a markdown table."""
    lines = [f"### {report['protocol']}: {report['sweep']} ({report['engine']} engine, seeds {report['seeds']})", "",
             "| setting | final acc % | average acc % | forgetting pp | learning memory KiB | train s |",
             "|---|---|---|---|---|---|"]
    for p in report["points"]:
        runs = p["runs"]
        mem = statistics.mean(r["memory_bytes"]["total"] for r in runs) / 1024
        secs = statistics.mean(r["train_seconds"] for r in runs)
        lines.append(f"| {p['label']} | {_stats(r['final_accuracy'] for r in runs)} | "
                     f"{_stats(r['average_accuracy'] for r in runs)} | {_stats(r['forgetting'] for r in runs)} | "
                     f"{mem:.1f} | {secs:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bnncl bench sweeps", description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="fmnist-b5")
    parser.add_argument("--engine", default="device", choices=["device", "torch"])
    parser.add_argument("--what", default="qfqb,lrbits,buffer,tail", help=f"comma list of {GRIDS}")
    parser.add_argument("--seeds", default="0", help="comma list, e.g. 0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="default: the protocol's (bnncl run --help)")
    parser.add_argument("--lr", type=float, default=None, help="default: the protocol's (bnncl run --help)")
    parser.add_argument("--tail-blocks", type=int, default=RunConfig.tail_blocks)
    parser.add_argument("--out", default="benchmarks/sweeps")
    args = parser.parse_args(argv)
    base = config_for(args.protocol, engine=args.engine, epochs=args.epochs, lr=args.lr,
                      tail_blocks=args.tail_blocks)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for what in [w for w in args.what.split(",") if w]:
        report = run_sweep(what, base, seeds)
        stem = out / f"{args.protocol}-{what}"
        replace_file(stem.with_suffix(".json"), json.dumps(report, indent=2).encode())
        replace_file(stem.with_suffix(".md"), markdown(report).encode())
        print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
