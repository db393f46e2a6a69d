"""``bnncl state show DIR``: what a device's committed state holds (no model file needed).

Prints the generation and when it was written, the model sha256 it belongs to, the settings, the
classes (head row, name, images learned on the device, base images at deployment, CWR* pattern
count, patterns in the replay buffer), the buffer fill, the memory of each part as stored and, for
streaming LDA, the shrinkage it predicts with and how it was chosen (design §1.8)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from bnncl.cl.slda import LOO_MAX_COUNT, SHRINKAGE_GRID, StreamingLDA
from bnncl.cl.state import LoadedState, StateError, StateStore
from bnncl.cl.strategies import FEATURE_STRATEGIES
from bnncl.errors import BnnclError
from bnncl.service.learn import one_line_warnings, quiet_on_closed_pipe


def summarize(state: LoadedState) -> dict[str, Any]:
    """The facts ``show`` prints, as a JSON-able dict."""
    pos, arrays, meta = state.position, state.arrays, state.meta
    if pos.get("service") is None or "classes" not in pos:
        raise StateError("not a bnncl learn state (no service record in its position)")
    classes = list(pos["classes"])
    buf_meta = meta.get("buffer", {})
    buf_labels = np.asarray(arrays.get("buffer/labels", np.zeros(0, np.int64)))
    in_buffer = np.bincount(buf_labels, minlength=len(classes)) if buf_labels.size else np.zeros(len(classes), int)
    # patterns the strategy holds per class: CWR*'s consolidation counts or SLDA's class counts
    past = np.asarray(arrays.get("cwr/past", arrays.get("slda/counts", np.zeros(len(classes), np.int64))))
    learned = list(pos.get("learned_per_class", [])) + [0] * len(classes)
    base = list(pos.get("base_per_class", [])) + [0] * len(classes)
    rows = [
        {"row": i, "name": n, "learned": int(learned[i]), "base": int(base[i]),
         "patterns": int(past[i]) if i < len(past) else 0, "in_buffer": int(in_buffer[i])}
        for i, n in enumerate(classes)
    ]

    def nbytes(prefix: str) -> int:
        return int(sum(v.nbytes for k, v in arrays.items() if k.startswith(prefix)))

    settings = pos.get("settings", {})
    head = np.asarray(arrays.get("engine/head", np.zeros((0, 0))))
    qb = int(settings.get("qb", 32))
    return {
        "generation": state.generation,
        "created": state.created,
        "fell_back": state.fell_back,
        "model_sha256": state.model_sha256,
        "experience": int(pos.get("experience", 0)),
        "images_learned": int(pos.get("images_learned", 0)),
        "settings": settings,
        "head_capacity": int(head.shape[0]) if head.ndim == 2 else None,
        "classes": rows,
        "buffer": {"patterns": int(buf_labels.size), "capacity": buf_meta.get("capacity"),
                   "bits": buf_meta.get("bits")},
        "memory_bytes": {
            "replay": nbytes("buffer/"),
            "tail_weights": nbytes("engine/tail/"),
            "head": 0 if meta.get("config", {}).get("strategy") in FEATURE_STRATEGIES else int(
                head.size * (qb if qb < 32 else 32) // 8),
            "strategy": nbytes("") - nbytes("buffer/") - nbytes("engine/"),
        },
        "last_experience_files": len(pos.get("last_files", [])),
        "slda": _slda_summary(arrays, settings),
    }


def _slda_summary(arrays: Any, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The shrinkage streaming LDA predicts with and why (``None`` for other strategies)."""
    if "slda/means" not in arrays:
        return None
    means = np.asarray(arrays["slda/means"])
    head = StreamingLDA(means.shape[0], means.shape[1], float(settings.get("shrinkage", 1e-4)),
                        int(settings.get("cov_bits", 32)))
    head.load_state_dict({k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("slda/")})
    seen = head.counts[head.counts > 0]
    loo = head.loo_correct
    chosen = bool(seen.size and seen.min() <= LOO_MAX_COUNT and loo.any())
    return {"shrinkage_used": head.effective_shrinkage,
            "chosen_by": "leave-one-out" if chosen else "setting and fading rule",
            "leave_one_out_right": dict(zip(map(str, SHRINKAGE_GRID), map(int, loo)))}


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def format_summary(info: dict[str, Any], directory: str) -> str:
    s = info["settings"]
    lines = [
        f"state {directory}: generation {info['generation']} ({info['created']})"
        + ("  [loaded an older generation: the newest is damaged]" if info["fell_back"] else ""),
        f"model sha256 {info['model_sha256']}",
        f"experiences learned: {info['experience']} ({info['images_learned']} images)",
        "settings: " + ", ".join(f"{k}={v}" for k, v in s.items()),
        f"classes ({sum(1 for r in info['classes'] if r['patterns'] or r['in_buffer'])} seen, head holds "
        f"{info['head_capacity']}):",
        f"  {'row':>3}  {'name':<16} {'learned':>8} {'base':>6} {s.get('strategy', 'cwr_star'):>9} {'buffer':>7}",
    ]
    for r in info["classes"]:
        lines.append(f"  {r['row']:>3}  {r['name']:<16} {r['learned']:>8} {r['base']:>6} "
                     f"{r['patterns']:>9} {r['in_buffer']:>7}")
    b, m = info["buffer"], info["memory_bytes"]
    if b["capacity"] is not None:
        lines.append(f"replay buffer: {b['patterns']} / {b['capacity']} patterns at {b['bits']} bit(s)")
    if info.get("slda"):
        sl = info["slda"]
        best = max(sl["leave_one_out_right"].values())
        why = (f"leave-one-out, {best} right answers at the best values" if sl["chosen_by"] == "leave-one-out"
               else sl["chosen_by"])
        lines.append(f"slda shrinkage in use: {sl['shrinkage_used']:.4g} (chosen by {why})")
    lines.append(f"memory: replay {_kib(m['replay'])}, tail weights {_kib(m['tail_weights'])}, "
                 f"head {_kib(m['head'])}, {s.get('strategy', 'cwr_star')} state {_kib(m['strategy'])}, "
                 f"total {_kib(sum(m.values()))}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bnncl state", description="Inspect a device's learner state.")
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("show", help="classes, counts, buffer fill, memory, generation, model sha")
    s.add_argument("directory", metavar="DIR", help="state directory")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return quiet_on_closed_pipe(lambda: _show(args))


def _show(args: argparse.Namespace) -> int:
    try:
        with one_line_warnings():
            state = StateStore(args.directory).load()
            try:
                info = summarize(state)
            except StateError as exc:
                raise StateError(f"{args.directory}: {exc}") from None
    except BnnclError as exc:
        print(f"bnncl state: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=1) if args.json else format_summary(info, args.directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
