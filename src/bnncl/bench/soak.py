"""``bnncl bench soak``: run the ``bnncl learn`` loop over many small experiences and sample RSS.

Each round writes ``--images`` embedded Fashion-MNIST images (new classes 5-9, cycling) as PNG files
into a temporary incoming folder, runs one :meth:`~bnncl.service.learn.LearnLoop.step` (decode,
learn, commit a state generation, move the files) and samples the process's resident set size
(``VmRSS``). The deployment happens first, outside the sampled rounds. The report compares the
median RSS of the first and the last tenth of the rounds and fits a line to the second half.

    python -m bnncl.bench.soak --experiences 200 --images 8
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_kib() -> int:
    """Resident set size of this process in KiB (Linux ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("VmRSS not found in /proc/self/status (Linux only)")


def soak(experiences: int, images: int, settings: dict, workdir: Path, say=print) -> dict:
    from PIL import Image

    from bnncl.assets import model_path
    from bnncl.data.embedded import load_embedded
    from bnncl.service.learn import LearnLoop
    from bnncl.service.session import LearnerSession

    train = load_embedded("train")
    pool = np.flatnonzero(train.labels >= 5)
    pool = pool[np.random.default_rng(0).permutation(len(pool))]
    inc, state = workdir / "inc", workdir / "state"
    inc.mkdir(parents=True)
    t0 = time.perf_counter()
    session = LearnerSession.open(model_path("fmnist-b5", ".bnn"), state, settings)
    deploy_s = time.perf_counter() - t0
    loop = LearnLoop(session, inc, workdir / "processed", workdir / "rejected", say=lambda m: None)
    rss, secs = [], []
    k = 0
    for e in range(experiences):
        for _ in range(images):
            i = int(pool[k % len(pool)])
            folder = inc / train.class_names[int(train.labels[i])].replace("/", "_")
            folder.mkdir(exist_ok=True)
            Image.fromarray(train.images[i, :, :, 0]).save(folder / f"{k:07d}.png")
            k += 1
        t = time.perf_counter()
        assert loop.step() == images
        secs.append(time.perf_counter() - t)
        rss.append(rss_kib())
        if (e + 1) % max(1, experiences // 10) == 0:
            say(f"experience {e + 1}/{experiences}: RSS {rss[-1] / 1024:.1f} MiB, {secs[-1]:.2f} s")
    tenth = max(1, experiences // 10)
    half = np.arange(experiences // 2, experiences)
    slope = float(np.polyfit(half, np.asarray(rss, float)[half], 1)[0]) if len(half) > 1 else 0.0
    return {
        "experiences": experiences,
        "images_per_experience": images,
        "settings": session.settings.__dict__,
        "deploy_seconds": round(deploy_s, 2),
        "seconds_per_experience_median": round(float(np.median(secs)), 3),
        "rss_mib_first_tenth_median": round(float(np.median(rss[:tenth])) / 1024, 1),
        "rss_mib_last_tenth_median": round(float(np.median(rss[-tenth:])) / 1024, 1),
        "rss_mib_max": round(max(rss) / 1024, 1),
        "rss_kib_per_100_experiences_second_half": round(slope * 100, 1),
        "final_generation": session.generation,
        "images_learned": session.position["images_learned"],
        "rss_kib": rss,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bnncl bench soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiences", type=int, default=200)
    p.add_argument("--images", type=int, default=8, help="images per experience (default 8)")
    p.add_argument("--tail-blocks", type=int, default=2)
    p.add_argument("--lr-bits", type=int, default=1)
    p.add_argument("--buffer", type=int, default=1500)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--out", help="write the JSON result here")
    args = p.parse_args(argv)
    settings = {"tail_blocks": args.tail_blocks, "lr_bits": args.lr_bits, "buffer": args.buffer,
                "epochs": args.epochs}
    with tempfile.TemporaryDirectory(prefix="bnncl-soak-") as tmp:
        result = soak(args.experiences, args.images, settings, Path(tmp))
    text = json.dumps(result, indent=1)
    if args.out:
        from bnncl.atomic import replace_file

        replace_file(args.out, text.encode())
    summary = {k: v for k, v in result.items() if k != "rss_kib"}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
