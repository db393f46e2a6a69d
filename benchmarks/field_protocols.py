"""Strategies on the field-like protocols: final accuracy, the weakest class's recall and memory, per seed.

Usage (from the repository root)::

    python benchmarks/field_protocols.py --protocols fmnist-on-cifar cifar-on-fmnist \\
        --variants slda probe cwr_star cwr_star_fixed --seeds 0 1 2 --out benchmarks/field/test.json
    python benchmarks/field_protocols.py ... --validation 0.2   # tuning: held-out train images, not the test split

Each (protocol, variant, seed, shots) is one ``bnncl run`` in this process (:func:`bnncl.experiment.run_protocol`).
The JSON file holds one record per run and is rewritten after each run, so a long sweep can be stopped and
its finished runs kept; ``--markdown`` prints the mean ± std table of a JSON file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bnncl.experiment import run_config, run_protocol

#: baselines with slda's small-sample adjustments switched off (no bias correction, no raised shrinkage, no
#: leave-one-out selection): the plain LDA and nearest class mean of issue 11's targets; run with
#: :func:`plain_slda` around ``bnncl run`` (``lda_plain_fp16``: records of an earlier run, kept in b5.json)
PLAIN = {"lda_plain": "plain LDA (shrinkage 1e-4, no adjustment)",
         "lda_plain_fp16": "plain LDA, float16 covariance", "ncm_plain": "plain nearest class mean"}


@contextlib.contextmanager
def plain_slda() -> Iterator[None]:
    """slda as plain LDA while the block runs: the small-sample bias correction, the raised shrinkage and its
    leave-one-out selection off (module constants of :mod:`bnncl.cl.slda`, read at every solve)."""
    from bnncl.cl import slda

    saved = slda.SMALL_SAMPLE_PRIOR, slda.RARE_CLASS_SHRINKAGE, slda.LOO_MAX_COUNT
    slda.SMALL_SAMPLE_PRIOR, slda.RARE_CLASS_SHRINKAGE, slda.LOO_MAX_COUNT = float("inf"), 0.0, 0
    try:
        yield
    finally:
        slda.SMALL_SAMPLE_PRIOR, slda.RARE_CLASS_SHRINKAGE, slda.LOO_MAX_COUNT = saved

#: variant name -> settings over the protocol's tuned ones (as ``bnncl run`` flags)

VARIANTS: dict[str, dict[str, Any]] = {
    "slda": {"strategy": "slda"},
    "slda_fp16": {"strategy": "slda", "cov_bits": 16},
    "probe": {"strategy": "probe"},
    # shared covariance -> identity: nearest class mean (with the same small-sample correction of its bias)
    "ncm": {"strategy": "slda", "shrinkage": 0.999999},
    "lda_plain": {"strategy": "slda"},  # under plain_slda()
    "ncm_plain": {"strategy": "slda", "shrinkage": 0.999999},  # under plain_slda()
    "cwr_star": {"strategy": "cwr_star"},
    "cwr_star_k0": {"strategy": "cwr_star", "tail_blocks": 0, "lr_bits": 8},
    "cwr_star_balanced": {"strategy": "cwr_star", "mixing": "balanced"},
    "cwr_star_aligned": {"strategy": "cwr_star", "weight_align": "on"},
    "cwr_star_fixed": {"strategy": "cwr_star", "mixing": "balanced", "weight_align": "on"},
    "cwr_star_k0_e64": {"strategy": "cwr_star", "tail_blocks": 0, "lr_bits": 8, "epochs": 64},
    "cwr_star_fixed_k0": {"strategy": "cwr_star", "tail_blocks": 0, "lr_bits": 8, "mixing": "balanced",
                          "weight_align": "on"},
    # head-only CWR* without recency collapse (issue 11, item 2; chosen on validation splits): standardized
    # features, balanced minibatches, old rows' merge weight capped at 1, epochs from the experience size
    "cwr_star_std_k0": {"strategy": "cwr_star", "tail_blocks": 0, "lr_bits": 8, "standardize": "on",
                        "mixing": "balanced", "cwr_max_k": 1.0, "epochs": "auto", "lr": 0.1},
}


def recalls(result: dict[str, Any]) -> list[float]:
    """Per-class recall of the final model over the classes of the test set."""
    cm = np.asarray(result["confusion"], dtype=np.float64)
    support = cm.sum(axis=1)
    return [float(cm[i, i] / support[i]) for i in range(len(cm)) if support[i] > 0]


def one_run(protocol: str, variant: str, seed: int, shots: int | None, validation: float) -> dict[str, Any]:
    settings = dict(VARIANTS[variant])
    given = {k: None if k == "epochs" and v == "auto" else v for k, v in settings.items()}  # "auto" is None
    extra = {"seed": seed} | ({"shots": shots} if shots is not None else {}) | ({"validation": validation}
                                                                              if validation else {})
    cfg = run_config(protocol, given | extra)
    t0 = time.perf_counter()
    with plain_slda() if variant in PLAIN else contextlib.nullcontext():
        result = run_protocol(cfg)
    rec = recalls(result)
    return {
        "protocol": protocol, "variant": variant, "seed": seed, "shots": shots, "validation": validation,
        "settings": settings, "final_accuracy": result["final_accuracy"], "min_recall": min(rec),
        "recalls": rec, "memory_bytes": result["memory_bytes"], "seconds": round(time.perf_counter() - t0, 1),
        "train_seconds": round(sum(e["train_seconds"] for e in result["experiences"]), 2),
        "machine": result["machine"], "software": result["software"],
    }


def markdown(records: list[dict[str, Any]]) -> str:
    """Mean ± std over seeds of final accuracy and of the weakest class's recall, per protocol/shots/variant."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["protocol"], r["shots"], r["variant"])].append(r)
    lines = ["| protocol | shots | variant | seeds | final accuracy % | weakest class recall % | learner memory KiB |",
             "|---|---|---|---|---|---|---|"]
    for (protocol, shots, variant), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[0][2])):
        acc = 100 * np.array([r["final_accuracy"] for r in rs])
        low = 100 * np.array([r["min_recall"] for r in rs])
        mem = rs[0]["memory_bytes"]
        kib = (mem.get("total", 0)) / 1024
        lines.append(f"| {protocol} | {shots or '-'} | {variant} | {len(rs)} | {acc.mean():.2f} ± {acc.std():.2f} | "
                     f"{low.mean():.1f} ± {low.std():.1f} | {kib:.1f} |")
    return "\n".join(lines)


def plot_shots(records: list[dict[str, Any]], path: Path) -> Path:
    """Final accuracy (mean ± std over seeds) against the images per new class, one panel per few-shot
    protocol, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shot_recs = [r for r in records if r["shots"]]
    protocols = sorted({r["protocol"] for r in shot_recs})
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.2 * len(protocols), 3.8), dpi=120, squeeze=False)
    for ax, protocol in zip(axes[0], protocols):
        for variant in sorted({r["variant"] for r in shot_recs if r["protocol"] == protocol}):
            rs = [r for r in shot_recs if r["protocol"] == protocol and r["variant"] == variant]
            ks = sorted({r["shots"] for r in rs})
            acc = [100 * np.array([r["final_accuracy"] for r in rs if r["shots"] == k]) for k in ks]
            ax.errorbar(ks, [a.mean() for a in acc], yerr=[a.std() for a in acc], marker="o", capsize=3,
                        label=PLAIN.get(variant, variant))
        ax.set_xscale("log")
        ax.set_xticks([1, 5, 10, 20, 50], ["1", "5", "10", "20", "50"])
        ax.set_xlabel("images per new class (k)")
        ax.set_ylabel("final accuracy, all 10 classes (%)")
        ax.set_title(protocol)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--protocols", nargs="+", default=["fmnist-on-cifar", "cifar-on-fmnist"])
    p.add_argument("--variants", nargs="+", default=["slda", "probe", "cwr_star", "cwr_star_fixed"],
                   choices=sorted(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--shots", nargs="+", type=int, default=None, help="few-shot protocols: each k")
    p.add_argument("--validation", type=float, default=0.0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None, help="print the table of this JSON file and exit")
    p.add_argument("--plot", type=Path, default=None, help="with --markdown: also plot accuracy vs shots here")
    args = p.parse_args(argv)
    if args.markdown:
        records = json.loads(args.markdown.read_text())
        print(markdown(records))
        if args.plot:
            print(f"wrote {plot_shots(records, args.plot)}")
        return 0
    records: list[dict[str, Any]] = []
    if args.out and args.out.exists():
        records = json.loads(args.out.read_text())
    done = {(r["protocol"], r["variant"], r["seed"], r["shots"], r["validation"]) for r in records}
    for protocol in args.protocols:
        for shots in args.shots or [None]:
            for variant in args.variants:
                for seed in args.seeds:
                    key = (protocol, variant, seed, shots, args.validation)
                    if key in done:
                        continue
                    rec = one_run(protocol, variant, seed, shots, args.validation)
                    records.append(rec)
                    print(f"{protocol} k={shots} {variant} seed {seed}: {100 * rec['final_accuracy']:.2f}% "
                          f"(weakest class {100 * rec['min_recall']:.1f}%) in {rec['seconds']} s", flush=True)
                    if args.out:
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        args.out.write_text(json.dumps(records, indent=1))
    print(markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
