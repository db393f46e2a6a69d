"""Crash soak: the power-loss simulator of the test suite (tests/crashsim.py) on longer recordings.

    .venv/bin/python benchmarks/crash_soak.py [--saves 40] [--per-point 400] [--lie 1 2 3]
                                              [--images 30] [--per-experience 5] [--seed 0]

1. state store: ``--saves`` saves (two of them on a full disk), crash images at every point of the
   log (up to ``--per-point`` per point); each is loaded (the acknowledged save or the one in flight,
   exact content, never partial) and saved again;
2. the same log with the last N syncs lost (``--lie``: a storage whose write cache acknowledges
   fsync early): the load returns a complete generation with its exact content, or a StateError;
3. ``bnncl learn`` over ``--images`` PNG files (``--per-experience`` per experience, one unreadable
   file): the loop resumed on every distinct crash image ends exactly as the uninterrupted run;
4. the same with processed/ and rejected/ on "another file system" (every move a copy, fsync, rename
   and removal of the original);
5. the resumed run with the newest committed generation damaged: every image still learned once.

Writes benchmarks/crash-soak.json (every count and outcome) and adds one line to
benchmarks/crash-soak.md. CI runs the short version (tests/cl/test_crash_sim.py,
tests/service/test_learn_crash_sim.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "cl"), str(TESTS / "service")]

import conftest  # noqa: E402  (tests/service: the FAST settings and the PNG stream)
import test_crash_sim as store_sim  # noqa: E402
import test_learn_crash_sim as learn_sim  # noqa: E402

from bnncl import atomic  # noqa: E402
from bnncl.assets import model_path  # noqa: E402
from bnncl.service.session import LearnerSession  # noqa: E402
from crashsim import Exploration, explore  # noqa: E402


def _entry(name: str, result: Exploration, seconds: float, **extra) -> dict:
    print(f"{name}: {result.summary()}; {seconds:.1f} s", flush=True)
    for v in result.violations[:5]:
        print(f"  VIOLATION {v}")
    return {"scenario": name, "crash_points": result.points, "images_built": result.built,
            "distinct_images": result.explored, "distinct_outcomes": len(result.outcomes),
            "violations": len(result.violations), "first_violations": result.violations[:5],
            "outcomes": {repr(k): v for k, v in sorted(result.outcomes.items(), key=str)},
            "seconds": round(seconds, 1), **extra}


def store_soak(tmp: Path, saves: int, per_point: int, lies: list[int], seed: int) -> list[dict]:
    store_sim.SAVES = saves
    t0 = time.perf_counter()
    recorder, gens = store_sim.record_saves(tmp / "store")
    check = store_sim.check_store(recorder, gens, resave_every=5)
    out = [_entry(f"state store, {saves} saves", explore(recorder, check, seed=seed, per_point=per_point),
                  time.perf_counter() - t0, operations=len(recorder.ops))]
    for lie in lies:
        t0 = time.perf_counter()
        result = explore(recorder, store_sim.lying_check(gens), seed=seed + lie, per_point=max(8, per_point // 10),
                         lie=lie)
        out.append(_entry(f"state store, last {lie} sync(s) lost", result, time.perf_counter() - t0))
    return out


def learn_soak(tmp: Path, images: int, per_experience: int, seed: int) -> list[dict]:
    model = model_path("fmnist-b5", ".bnn")
    template = tmp / "template"
    LearnerSession.open(model, template, conftest.FAST)
    src = tmp / "src"
    learn_sim.setup(src, template, conftest.write_stream, images)
    ref = tmp / "ref"
    shutil.copytree(src, ref)
    learn_sim.run(ref, model, per_experience=per_experience)
    names = sorted(n for n, _ in learn_sim.files(src, "waiting") if not n.endswith("b.png"))
    out = []
    scenarios = (("bnncl learn, resumed", False, lambda: learn_sim.resume_check(model, ref, per_experience)),
                 ("bnncl learn, cross-device moves", True, lambda: learn_sim.resume_check(model, ref, per_experience)),
                 ("bnncl learn, newest generation damaged", False,
                  lambda: learn_sim.damaged_check(model, names, per_experience)))
    real = atomic.rename
    for name, exdev, make in scenarios:
        t0 = time.perf_counter()
        root = tmp / name.replace(" ", "_").replace(",", "")
        atomic.rename = learn_sim.cross_device(real) if exdev else real
        try:
            recorder = learn_sim.record(src, root, model, per_experience)
            result = explore(recorder, make(), seed=seed, per_point=30)
        finally:
            atomic.rename = real
        out.append(_entry(name, result, time.perf_counter() - t0, operations=len(recorder.ops), images=images,
                          per_experience=per_experience))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--saves", type=int, default=40)
    p.add_argument("--per-point", type=int, default=400)
    p.add_argument("--lie", type=int, nargs="*", default=[1, 2, 3])
    p.add_argument("--images", type=int, default=30)
    p.add_argument("--per-experience", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "crash-soak.json"))
    p.add_argument("--md", default=str(HERE / "crash-soak.md"))
    args = p.parse_args()
    random.seed(args.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crash-soak-") as tmp:
        rows = store_soak(Path(tmp), args.saves, args.per_point, args.lie, args.seed)
        rows += learn_soak(Path(tmp), args.images, args.per_experience, args.seed)
    total = time.perf_counter() - t0
    doc = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
           "machine": platform.machine(), "args": vars(args), "seconds": round(total, 1), "scenarios": rows}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    images = sum(r["distinct_images"] for r in rows)
    violations = sum(r["violations"] for r in rows)
    line = (f"| {doc['date'][:10]} | {args.saves} saves, lie {args.lie}, {args.images} images / "
            f"{args.per_experience} per experience | {sum(r['images_built'] for r in rows)} | {images} | "
            + " / ".join(str(r["distinct_outcomes"]) for r in rows) + f" | {violations} | {total:.0f} s |\n")
    with open(args.md, "a") as fh:
        fh.write(line)
    print(f"{images} distinct crash images, {violations} violations, {total:.0f} s; wrote {args.out}, {args.md}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
