"""Plain-text / markdown tables of continual-learning results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def settings_line(config: dict[str, Any]) -> str:
    """One line with the learning settings a run used (a ``RunConfig`` as a dict)."""
    c = config
    strategy = c.get("strategy", "cwr_star")
    if strategy == "slda":  # the SGD, tail and replay settings do not apply
        return (f"slda on the frozen pooled features, shrinkage {c.get('shrinkage')}, covariance at "
                f"{c.get('cov_bits')} bits, seed {c['seed']}")
    cap = "all" if c.get("new_per_class") is None else c["new_per_class"]
    epochs = "auto" if c.get("epochs") is None else c["epochs"]
    qw = f"{c['qw']}" if c["qw"] == 32 else f"{c['qw']} ({c.get('qw_rounding', 'nearest')} rounding)"
    return (f"K={c['tail_blocks']} tail blocks, q_f/q_b/q_w {c['qf']}/{c['qb']}/{qw}, LR {c['lr_bits']} bit, "
            f"buffer {c['buffer']}, epochs {epochs}, lr {c['lr']}, minibatch {c['minibatch']}, "
            f"new per class {cap}, {strategy}, seed {c['seed']}")


def experience_header() -> str:
    """Header of the per-experience table printed while a run goes."""
    return f"{'exp':>3}  {'classes':<10}{'acc all %':>10}{'acc seen %':>11}{'train s':>9}{'new':>7}{'replay':>8}"


def experience_row(e: dict[str, Any]) -> str:
    """One row of the per-experience table (``e`` is an experience dict of results.json)."""
    classes = ",".join(str(c) for c in e["classes"])
    if len(classes) > 9:
        classes = classes[:8] + "…"
    return (f"{e['index']:>3}  {classes:<10}{_pct(e['accuracy_all']):>10}{_pct(e['accuracy_seen']):>11}"
            f"{e['train_seconds']:>9.2f}{e.get('n_new', 0):>7}{e.get('n_replay', 0):>8}")


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Final / average accuracy, forgetting and memory of one run."""
    mem = result.get("memory_bytes", {})
    lines = [
        f"final accuracy {_pct(result['final_accuracy'])}%   average accuracy {_pct(result['average_accuracy'])}%   "
        f"forgetting {_pct(result['forgetting'])} pp",
    ]
    if mem:
        parts = ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in mem.items() if k != "total")
        lines.append(f"memory {mem.get('total', 0) / 1024:.1f} KiB ({parts})")
    return lines


def comparison_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table comparing runs: one row per (label, result)."""
    out = ["| run | final acc % | average acc % | forgetting pp | learning-state memory KiB | train s |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        res = r["result"]
        train = sum(e["train_seconds"] for e in res["experiences"])
        mem = res.get("memory_bytes", {}).get("total")
        out.append(f"| {r['label']} | {_pct(res['final_accuracy'])} | {_pct(res['average_accuracy'])} | "
                   f"{_pct(res['forgetting'])} | {'-' if mem is None else f'{mem / 1024:.1f}'} | {train:.1f} |")
    return "\n".join(out)
