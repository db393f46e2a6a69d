"""Regenerate the accuracy and memory figures the README quotes, with the commands it names.

    .venv/bin/python benchmarks/readme_figures.py [--only fmnist-b5|cifar10-b5] [--skip-existing]

These are the CWR* figures (the papers' method, `--strategy cwr_star`); the default strategy's figures
(streaming LDA) come from `benchmarks/field_protocols.py`. Each figure is one `bnncl run` (seeded,
1 thread); its results.json goes where benchmarks/README.md
says, and a summary (per-seed final accuracy, mean ± std, memory) is printed and written to
benchmarks/readme-figures.json. Every run is deterministic on a given machine and locked environment
(constraints.txt), so a rerun reproduces the printed digits; the seconds are not figures of this script.
cifar10-b5 needs CIFAR-10 (`$BNNCL_CIFAR10`); the fp32 baselines need torch and bnncl-models.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BNNCL = [sys.executable, "-m", "bnncl"]
FP32_TAIL = ["--engine", "torch", "--qf", "32", "--qb", "32", "--qw", "32", "--lr-bits", "32"]
HEAD_ONLY = ["--tail-blocks", "0", "--lr-bits", "8"]


def runs(protocol: str) -> list[tuple[str, list[str], Path]]:
    """(label, bnncl run arguments, where its results.json goes) for one protocol."""
    p = ["--protocol", protocol, "--strategy", "cwr_star"]  # the papers' method (slda: field_protocols.py)
    out: list[tuple[str, list[str], Path]] = []
    if protocol == "fmnist-b5":
        for s in (0, 1, 2):
            out.append((f"device s{s}", [*p, "--seed", str(s)], HERE / "seeds-fmnist-b5" / f"dev{s}.json"))
            out.append((f"fp32 tail s{s}", [*p, "--seed", str(s), *FP32_TAIL],
                        HERE / "seeds-fmnist-b5" / f"ref{s}.json"))
    else:
        for s in (0, 1, 2):
            out.append((f"device s{s}", [*p, "--seed", str(s)], HERE / "cifar10-b5" / f"tuned_dev_s{s}.json"))
            out.append((f"fp32 tail s{s}", [*p, "--seed", str(s), *FP32_TAIL],
                        HERE / "cifar10-b5" / f"tuned_ref_s{s}.json"))
            out.append((f"fp32 network s{s}", [*p, "--seed", str(s), *FP32_TAIL, "--model", "cifar10-b5-fp32",
                                               "--lr", "0.05"], HERE / "cifar10-b5" / f"twin_lr0.05_s{s}.json"))
    out.append(("head-only s0", [*p, *HEAD_ONLY], HERE / "head-only" / f"{protocol}.json"))
    return out


def run_one(args: list[str], dest: Path, skip: bool) -> dict:
    if skip and dest.is_file():
        return json.loads(dest.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [*BNNCL, "run", *args, "--threads", "1", "--out", tmp]
        print("$ bnncl run " + " ".join(args), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "results.json", dest)
    return json.loads(dest.read_text())


def compare(protocol: str, skip: bool) -> dict[str, float]:
    """`bnncl run --compare` (seed 0): device, fp32 tail, fp32 network, naive, joint; run{i}.json each."""
    from bnncl.experiment import COMPARE_RUNS

    dest = HERE / f"compare-{protocol}"
    if not (skip and (dest / f"run{len(COMPARE_RUNS) - 1}.json").is_file()):
        print(f"$ bnncl run --protocol {protocol} --compare", flush=True)
        subprocess.run([*BNNCL, "run", "--protocol", protocol, "--compare", "--threads", "1", "--out", str(dest)],
                       check=True, stdout=subprocess.DEVNULL)
        for i in range(len(COMPARE_RUNS)):  # run{i}/results.json -> run{i}.json (one file per run)
            shutil.move(dest / f"run{i}" / "results.json", dest / f"run{i}.json")
            shutil.rmtree(dest / f"run{i}")
    return {label: round(100 * json.loads((dest / f"run{i}.json").read_text())["final_accuracy"], 2)
            for i, (label, _) in enumerate(COMPARE_RUNS)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("fmnist-b5", "cifar10-b5"))
    ap.add_argument("--skip-existing", action="store_true", help="keep a results file that is already there")
    a = ap.parse_args()
    summary: dict[str, dict] = {}
    path = HERE / "readme-figures.json"
    if path.is_file():
        summary = json.loads(path.read_text())
    for protocol in (a.only,) if a.only else ("fmnist-b5", "cifar10-b5"):
        groups: dict[str, list[float]] = {}
        memory: dict[str, int] = {}
        for label, args, dest in runs(protocol):
            r = run_one(args, dest, a.skip_existing)
            groups.setdefault(label.rsplit(" ", 1)[0], []).append(round(100 * r["final_accuracy"], 2))
            memory[label.rsplit(" ", 1)[0]] = r["memory_bytes"]["total"]
        entry = {k: {"per_seed": v, "mean": round(statistics.fmean(v), 2),
                     "std": round(statistics.stdev(v), 2) if len(v) > 1 else 0.0, "memory_bytes": memory[k]}
                 for k, v in groups.items()}
        entry["compare_seed0"] = compare(protocol, a.skip_existing)
        summary[protocol] = entry
        path.write_text(json.dumps(summary, indent=1) + "\n")
        print(json.dumps({protocol: entry}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
