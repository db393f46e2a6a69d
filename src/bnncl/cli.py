"""The ``bnncl`` command: pretrain, summary, run, bench."""

from __future__ import annotations

import argparse
import sys

from bnncl.errors import BnnclError


def _classes(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    if not out:
        raise argparse.ArgumentTypeError(f"expected classes like '0-4' or '0,1,2', got {text!r}")
    return out


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from bnncl.data import load_dataset
    from bnncl.nn.backbones import CONFIGS
    from bnncl.nn.pretrain import PretrainSettings, pretrain

    train, test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    config = CONFIGS[args.arch](binary=not args.float)
    settings = PretrainSettings(classes=args.classes, epochs=args.epochs, batch_size=args.batch_size,
                                lr=args.lr, seed=args.seed, crop_pad=args.crop_pad, hflip=not args.no_flip,
                                threads=args.threads, max_steps=args.max_steps)
    _, record = pretrain(train, test, config, settings, args.output, resume=args.resume, dataset_name=args.data,
                      progress=not args.no_progress)
    if record.get("test_accuracy") is not None:
        print(f"saved {args.output}: test accuracy {record['test_accuracy'] * 100:.2f}% on classes {args.classes}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from bnncl.nn.checkpoint import load_model
    from bnncl.nn.summary import format_summary, summarize

    model, info = load_model(args.model)
    print(format_summary(summarize(model)))
    if info.get("history"):
        st = info.get("settings", {})
        print(f"trained on {info.get('dataset')} classes {info.get('classes')}: {len(info['history'])} epochs, "
              f"seed {st.get('seed')}, {info.get('train_seconds', 0) / 60:.1f} min, "
              f"test accuracy {100 * info['test_accuracy']:.2f}%")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    raise BnnclError("the continual learner is not built yet (issue 4); try `bnncl summary` or `bnncl pretrain`")


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "kernels":
        from bnncl.bench.kernels import main as bench_main
    else:
        raise BnnclError(f"unknown benchmark {args.what!r}; expected one of: kernels")
    return int(bench_main(args.rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnncl", description="On-device continual learning with binary neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain a backbone on base classes (runs under torchrun for DDP)")
    p.add_argument("--data", required=True, help="fmnist | cifar10 | embedded | PATH")
    p.add_argument("--arch", choices=["fmnist", "cifar"], required=True)
    p.add_argument("--classes", type=_classes, default=list(range(5)), help="e.g. 0-4 (default)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop-pad", type=int, default=4)
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--float", action="store_true", help="train the float twin (fp32 network baseline)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT.ckpt")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("summary", help="parameters, memory by bit width and MACs of a model file")
    p.add_argument("model")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("run", help="continual learning on a protocol (default: fmnist-b5, embedded data)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("bench", help="benchmarks: kernels")
    p.add_argument("what")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BnnclError as exc:
        print(f"bnncl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
