"""The training record of shipped models as a markdown table (``python -m bnncl.nn.record``).

Everything is read from the model files' own metadata, so the table cannot drift from the weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bnncl.nn.checkpoint import load_model
from bnncl.nn.summary import summarize


def training_chain(info: dict) -> list[dict]:
    """The records a model was trained through, oldest first: a fine-tuned model (``--init``) carries
    the record of the model it started from as ``init_record``."""
    chain = [info]
    while isinstance(chain[0].get("init_record"), dict):
        chain.insert(0, chain[0]["init_record"])
    return chain


def pretrain_command(info: dict, arch: str, binary: bool, output: str, stem_bits: int = 32) -> str:
    """The ``bnncl pretrain`` command line that produced a model, from its recorded settings."""
    st = info["settings"]
    cls = st["classes"]
    classes = f"{cls[0]}-{cls[-1]}" if cls == list(range(cls[0], cls[-1] + 1)) else ",".join(map(str, cls))
    parts = [f"bnncl pretrain --data {info['dataset']} --arch {arch} --classes {classes}",
             f"--epochs {st['epochs']} --seed {st['seed']} --lr {st['lr']} --batch-size {st['batch_size']}",
             f"--crop-pad {st['crop_pad']}"]
    if not st.get("hflip", True):
        parts.append("--no-flip")
    if st.get("threads"):
        parts.append(f"--threads {st['threads']}")
    if not binary:
        parts.append("--float")
    if stem_bits != 32:
        parts.append(f"--stem-bits {stem_bits}")
    if st.get("init"):
        parts.append(f"--init {st['init']} --warmup-epochs {st.get('warmup_epochs', 1.0):g}")
    parts.append(f"-o {output}")
    return " ".join(parts)


def record_markdown(paths: list[Path]) -> str:
    """One row per model file: command, seed, epochs, wall time, machine, base accuracy, sizes."""
    rows = ["| model | base-class test accuracy | epochs | seed | wall time | machine | params "
            "| deployed bytes (by bits) | float32 bytes |",
            "|---|---|---|---|---|---|---|---|---|"]
    commands = []
    for path in paths:
        model, info = load_model(path)
        cfg = model.config
        s = summarize(model)
        arch = "cifar" if cfg.input_shape[0] == 32 else "fmnist"
        by = ", ".join(f"{b}-bit {n:,}" for b, n in s.bytes_by_bits().items())
        m = info.get("machine", {})
        machine = (f"{m.get('cpu', '?')}, {m.get('torch_threads', '?')} torch thread(s), "
                   f"world size {info.get('world_size', 1)}")
        chain = training_chain(info)
        epochs = " + ".join(str(len(r["history"])) for r in chain)
        minutes = sum(r["train_seconds"] for r in chain) / 60
        rows.append(f"| `{path.name}` ({cfg.name}) | {100 * info['test_accuracy']:.2f}% on classes {info['classes']} "
                    f"| {epochs} | {info['settings']['seed']} | {minutes:.1f} min | {machine} "
                    f"| {s.params:,} | {s.bytes:,} ({by}) | {4 * s.params:,} |")
        lines = []
        for i, r in enumerate(chain):
            last = i == len(chain) - 1
            out = path.name if last else Path(chain[i + 1]["settings"]["init"]).name
            lines.append(pretrain_command(r, arch, cfg.binary, out, cfg.stem_bits if last else 32))
        commands.append(f"# {path.name}\n" + "\n".join(lines))
    return "\n".join(rows) + "\n\n```sh\n" + "\n".join(commands) + "\n```\n"


def main(argv: list[str] | None = None) -> int:
    from bnncl.assets import SHIPPED_MODELS, find_model

    names = argv if argv else [str(p) for n in SHIPPED_MODELS if (p := find_model(n, ".safetensors"))]
    print(record_markdown([Path(n) for n in names if Path(n).is_file()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
