"""The ``bnncl`` command: pretrain, summary, run, bench."""

from __future__ import annotations

import argparse
import os
import sys

from bnncl.errors import BnnclError

TORCH_HINT = "pip install 'bnncl[torch]' (torch==2.13.0, the pinned CPU build)"


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


def _protocol_tuning() -> dict[str, list[tuple[str, object]]]:
    """Setting name -> the protocols that tune it and their values (``bnncl run --help`` lists them)."""
    from bnncl.data.protocols import PROTOCOLS

    out: dict[str, list[tuple[str, object]]] = {}
    for p in PROTOCOLS.values():
        for name, value in p.settings.items():
            out.setdefault(name, []).append((p.name, value))
    return out


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bnncl")
    except PackageNotFoundError:  # running from a source tree that is not installed
        from bnncl import __version__

        return __version__


def _require_torch(command: str) -> None:
    """One :class:`BnnclError` line instead of a traceback where a host command runs without torch
    (the device install); called before the command starts any work."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise BnnclError(f"bnncl {command} needs PyTorch: {TORCH_HINT}") from None


def _cmd_pretrain(args: argparse.Namespace) -> int:
    _require_torch("pretrain")
    from dataclasses import replace

    from bnncl.assets import resolve_model
    from bnncl.data import load_dataset
    from bnncl.nn.backbones import CONFIGS
    from bnncl.nn.pretrain import PretrainSettings, pretrain

    init = str(resolve_model(args.init, ".safetensors")) if args.init else None
    train, test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    config = replace(CONFIGS[args.arch](binary=not args.float), stem_bits=args.stem_bits)
    settings = PretrainSettings(classes=args.classes, epochs=args.epochs, batch_size=args.batch_size,
                                lr=args.lr, seed=args.seed, crop_pad=args.crop_pad, hflip=not args.no_flip,
                                threads=args.threads, max_steps=args.max_steps, init=init,
                                warmup_epochs=args.warmup_epochs)
    _, record = pretrain(train, test, config, settings, args.output, resume=args.resume, dataset_name=args.data,
                      progress=not args.no_progress)
    if record.get("test_accuracy") is not None:
        print(f"saved {args.output}: test accuracy {record['test_accuracy'] * 100:.2f}% on classes {args.classes}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    _require_torch("summary")
    from bnncl.assets import resolve_model
    from bnncl.nn.checkpoint import load_model
    from bnncl.nn.summary import format_summary, summarize

    model, info = load_model(resolve_model(args.model, ".safetensors"))
    print(format_summary(summarize(model)))
    if info.get("history"):
        st = info.get("settings", {})
        print(f"trained on {info.get('dataset')} classes {info.get('classes')}: {len(info['history'])} epochs, "
              f"seed {st.get('seed')}, {info.get('train_seconds', 0) / 60:.1f} min, "
              f"test accuracy {100 * info['test_accuracy']:.2f}%")
    return 0


def _run_one(cfg, label: str, quiet: bool = False) -> dict:
    from dataclasses import asdict

    from tqdm import tqdm

    from bnncl.experiment import run_protocol
    from bnncl.report.tables import experience_header, experience_row, settings_line, summary_lines

    bars: dict[int, tqdm] = {}

    def on_batch(p) -> None:
        bar = bars.get(p.experience)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[p.experience] = tqdm(total=None, desc=f"experience {p.experience}", leave=False,
                                            disable=True if quiet else None, unit="batch")  # None: off when not a TTY
        bar.update(1)
        bar.set_postfix(epoch=p.epoch + 1, loss=f"{p.loss:.3f}")

    def on_experience(e) -> None:
        for bar in bars.values():
            bar.close()
        bars.clear()
        print(experience_row(asdict(e)), flush=True)

    print(f"== {label}")
    print(settings_line(asdict(cfg)))
    print(experience_header())
    result = run_protocol(cfg, on_batch, on_experience)
    for line in summary_lines(result):
        print(line)
    return result


def _cmd_run(args: argparse.Namespace) -> int:
    if args.compare or args.engine == "torch":  # before any work: --compare runs the torch baselines
        _require_torch("run --compare" if args.compare else "run --engine torch")
    from pathlib import Path

    from bnncl.experiment import compare_configs, run_config, write_results
    from bnncl.report.plots import plot_accuracy
    from bnncl.report.tables import comparison_markdown
    from bnncl.settings import given_settings

    given = given_settings(args) | {"engine": args.engine, "threads": args.threads, "model": args.model,
                                    "shots": args.shots, "validation": args.validation}
    cfg = run_config(args.protocol, given)
    out = Path(args.out)
    if not args.compare:
        result = _run_one(cfg, f"{cfg.protocol} on the {cfg.engine} engine", args.quiet)
        path = write_results(result, out)
        png = plot_accuracy([(f"{cfg.engine} {cfg.strategy}", result)], out / "accuracy.png", cfg.protocol)
        print(f"wrote {path}" + (f" and {png}" if png else " (no plot: matplotlib not installed)"))
        return 0
    rows = []
    for i, (label, run_cfg) in enumerate(compare_configs(args.protocol, given)):
        result = _run_one(run_cfg, label, args.quiet)
        write_results(result, out / f"run{i}")
        rows.append({"label": label, "result": result})
    table = comparison_markdown(rows)
    print(table)
    (out / "compare.md").write_text(f"# {cfg.protocol}: comparison\n\n{table}\n")
    png = plot_accuracy([(r["label"], r["result"]) for r in rows], out / "accuracy.png", cfg.protocol)
    print(f"wrote {out / 'compare.md'}" + (f" and {png}" if png else ""))
    return 0


#: ``bnncl bench`` subcommands: name -> what it measures (each module ``bnncl.bench.<name>`` has a ``main``).
BENCHES = {
    "kernels": "binary conv / GEMM kernels vs torch fp32 on the shipped backbone shapes (benchmarks/kernels.md)",
    "inference": "whole-backbone inference: frozen engine vs torch fp32 twin and BNN (benchmarks/inference.md)",
    "learning": "time and memory to learn on the device vs the torch fp32 reference (benchmarks/learning.md)",
    "sweeps": "accuracy sweeps: q_f x q_b, replay bits, buffer size, tail blocks, seeds (benchmarks/sweeps)",
    "soak": "the bnncl learn loop over many small experiences, sampling memory (benchmarks/soak.md)",
}


def _bench_help() -> str:
    width = max(map(len, BENCHES))
    lines = [f"usage: bnncl bench {{{','.join(BENCHES)}}} [options]", "",
             "Benchmarks behind the figures in benchmarks/. Subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in BENCHES.items()]
    lines += ["", "Options of one benchmark: bnncl bench NAME --help (e.g. --json PATH)."]
    return "\n".join(lines)


def _cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    if args.what not in BENCHES:
        raise BnnclError(f"unknown benchmark {args.what!r}; expected one of: {', '.join(BENCHES)}")
    bench_main = importlib.import_module(f"bnncl.bench.{args.what}").main
    return int(bench_main(args.rest) or 0)


def _cmd_export(args: argparse.Namespace) -> int:
    _require_torch("export")
    from bnncl.nn.export import main as export_main

    return int(export_main(args.rest) or 0)


def _cmd_learn(args: argparse.Namespace) -> int:
    from bnncl.service.learn import main as learn_main

    return int(learn_main(args.rest) or 0)


def _cmd_predict(args: argparse.Namespace) -> int:
    from bnncl.service.predict import main as predict_main

    return int(predict_main(args.rest) or 0)


def _cmd_state(args: argparse.Namespace) -> int:
    from bnncl.service.show import main as show_main

    return int(show_main(args.rest) or 0)


def _cmd_info(args: argparse.Namespace) -> int:
    from bnncl.assets import resolve_model
    from bnncl.device.info import main as info_main

    # `bnncl info M [--json]`: its one positional is a model (a path, or a shipped model's name)
    rest = [arg if arg.startswith("-") else str(resolve_model(arg, ".bnn")) for arg in args.rest]
    return int(info_main(rest) or 0)


#: the learning settings ``bnncl export-c`` takes (the rest do not apply to what libbnncl learns)
EXPORT_C_SETTINGS = ("strategy", "buffer", "lr_bits", "qf", "qb", "minibatch", "epochs", "lr", "mixing",
                     "standardize", "cwr_max_k", "new_per_class", "seed")
EXPORT_C_STRATEGIES = ("slda", "cwr_star")


def _cmd_export_c(args: argparse.Namespace) -> int:
    from bnncl.assets import resolve_model
    from bnncl.device.export_c import export_c
    from bnncl.device.modelfile import DeviceModel
    from bnncl.settings import given_settings

    given = given_settings(args)
    strategy = given.pop("strategy", "slda")
    if strategy not in EXPORT_C_STRATEGIES:
        raise BnnclError(f"export-c --strategy: libbnncl learns with {' or '.join(EXPORT_C_STRATEGIES)}, "
                         f"got {strategy!r}")
    path = resolve_model(args.model, ".bnn")
    model = DeviceModel.load(path)
    if strategy == "cwr_star":
        return _export_c_cwr(model, path, args, given)
    if given:
        raise BnnclError(f"export-c: {', '.join('--' + n.replace('_', '-') for n in sorted(given))} "
                         "apply to --strategy cwr_star only")
    slda = _deployed_slda(model, path, args) if args.deploy else None
    figures = export_c(model, args.out, args.symbol, slda=slda)
    state = f", initial streaming-LDA state {figures['state_array_bytes']} bytes" if slda is not None else ""
    print(f"wrote {args.out}/model.c, model.h, model_config.h: {figures['array_bytes']} bytes of const arrays"
          f"{state}, arena {figures['arena_bytes']} bytes")
    return 0


def _export_c_cwr(model, path, args: argparse.Namespace, given: dict) -> int:
    """``export-c --strategy cwr_star``: head-only CWR* with the portable stream, its state after the deployment
    on the base classes with ``--deploy`` (else empty)."""
    from bnncl.api import Learner
    from bnncl.device.export_c import cwr_export, export_c
    from bnncl.service.session import FREE_ROWS

    if given.get("lr_bits", 8) == 1:
        raise BnnclError("export-c --strategy cwr_star: --lr-bits 1 does not apply: the head-only replay stores real-"
                         "valued pooled features (8 or 32 bits)")
    settings = {"lr_bits": 8, **given, "strategy": "cwr_star", "tail_blocks": 0, "rng": "portable"}
    learner = Learner(model, num_classes=args.capacity or len(model.class_names) + FREE_ROWS, **settings)
    if args.deploy:
        images, labels = _base_images(model, path, args)
        learner.deploy(images, labels)
    cwr = cwr_export(learner, args.max_images)
    figures = export_c(model, args.out, args.symbol, cwr=cwr)
    state = f", initial CWR* state {figures['state_array_bytes']} bytes" if args.deploy else ""
    print(f"wrote {args.out}/model.c, model.h, model_config.h: {figures['array_bytes']} bytes of const arrays"
          f"{state}, arena {figures['arena_bytes']} bytes (CWR* state {figures['cwr_state_bytes']}, learn scratch "
          f"{figures['cwr_scratch_bytes']} for {args.max_images} images)")
    return 0


def _base_images(model, path, args: argparse.Namespace):
    """The model's base-class images and their head rows (the embedded Fashion-MNIST subset for the shipped
    fmnist-b5, else ``--base DIR``)."""
    import numpy as np

    from bnncl.cl.state import sha256_file
    from bnncl.service.folders import deployment_images
    from bnncl.service.inbox import folder_name

    names = list(model.class_names)
    images, labels = deployment_images(sha256_file(path), args.base, model.architecture["input_shape"], str(path))
    rows = {n: i for i, n in enumerate(names)} | {folder_name(n): i for i, n in enumerate(names)}
    unknown = sorted({n for n in labels if n not in rows})
    if unknown:
        raise BnnclError(f"--base {args.base}: class folders {unknown[:5]} are not classes of the model "
                         f"(expected among {names})")
    return images, np.array([rows[n] for n in labels])


def _deployed_slda(model, path, args: argparse.Namespace):
    """The streaming-LDA state a device starts from: deployed on the model's base classes (:func:`_base_images`),
    with ``--capacity`` head rows."""
    from bnncl.api import Learner
    from bnncl.service.session import FREE_ROWS

    images, labels = _base_images(model, path, args)
    learner = Learner(model, num_classes=args.capacity or len(model.class_names) + FREE_ROWS, strategy="slda")
    learner.deploy(images, labels)
    return learner.learner.feature_head


def build_parser() -> argparse.ArgumentParser:
    from bnncl.data.protocols import PROTOCOLS
    from bnncl.settings import add_arguments

    parser = argparse.ArgumentParser(prog="bnncl",
                                     description="On-device continual learning with binary neural networks.")
    parser.add_argument("--version", action="version", version=f"bnncl {_version()}")
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
    p.add_argument("--warmup-epochs", type=float, default=1.0,
                   help="linear warm-up before the cosine decay (default 1)")
    p.add_argument("--stem-bits", type=int, choices=[8, 32], default=32,
                   help="8: train the stem fake-quantized as the int8 device stem (default 32: float stem)")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="start from this model's weights (same architecture and classes), e.g. to fine-tune "
                        "a shipped model with --stem-bits 8")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT.ckpt")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("summary", help="parameters, memory by bit width and MACs of a model file")
    p.add_argument("model", help="host model file (.safetensors), or a shipped model's name (e.g. fmnist-b5)")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("run", help="continual learning on a protocol (default: fmnist-b5, embedded data)")
    p.add_argument("--protocol", default="fmnist-b5", metavar="NAME",
                   help=f"{' | '.join(PROTOCOLS)} (default fmnist-b5; docs/design.md §3)")
    p.add_argument("--shots", type=int, default=None, metavar="K",
                   help="images per new class, for the few-shot protocols (default 10)")
    p.add_argument("--validation", type=float, default=0.0, metavar="F",
                   help="hold out this fraction of each train class and test on it instead of the test split "
                        "(tune settings this way; default 0: the test split)")
    p.add_argument("--engine", default="device", choices=["device", "torch"])
    add_arguments(p.add_argument_group("learning settings (a protocol may tune some; a flag you give wins)"),
                  _protocol_tuning())
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=None, help="model file (default: the protocol's shipped model)")
    p.add_argument("--compare", action="store_true",
                   help="slda vs CWR* (device) vs fp32 tail vs fp32 network vs naive vs joint vs a joint linear probe")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", default="runs/latest", help="output folder (results.json, accuracy.png)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("export", help="turn a host model into the device format (.bnn)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("info", help="layers, bit widths and memory of a device model file", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("export-c", help="write a device model as const C arrays for libbnncl (model.c, model.h)")
    p.add_argument("model", help="device model (.bnn path or a shipped model's name)")
    p.add_argument("-o", "--out", required=True, help="output folder (model.c, model.h, model_config.h)")
    p.add_argument("--symbol", default="bnncl_exported_model", help="C name of the model (default: %(default)s)")
    p.add_argument("--deploy", action="store_true",
                   help="embed the streaming-LDA state deployed on the base classes, so the device learns from "
                        "its first image (the embedded subset for fmnist-b5; other models need --base)")
    p.add_argument("--base", default=None, help="with --deploy: ImageFolder <dir>/<class>/<image> of base images")
    p.add_argument("--capacity", type=int, default=None,
                   help="with --deploy or --strategy cwr_star: classes the device can hold (default the model's "
                        "names + 16)")
    p.add_argument("--max-images", type=int, default=100, metavar="N",
                   help="--strategy cwr_star: images one bnncl_learn call (one experience) may hold; the arena keeps "
                        "their features (default %(default)s)")
    add_arguments(p.add_argument_group("learning settings (--strategy cwr_star: head-only CWR* with the portable "
                                       "random stream)"),
                  {"strategy": [("export-c", "slda or cwr_star")], "lr_bits": [("export-c", 8)]},
                  names=EXPORT_C_SETTINGS)
    p.set_defaults(func=_cmd_export_c)

    for name, func, text in (
        ("learn", _cmd_learn, "the on-device loop: learn what arrives in an incoming folder, crash-safe"),
        ("predict", _cmd_predict, "classify images with a device model and its learned state"),
        ("state", _cmd_state, "inspect a device's learned state: bnncl state show DIR"),
    ):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)

    p = sub.add_parser("bench", help=f"benchmarks: {' | '.join(BENCHES)}", add_help=False)
    p.add_argument("what", choices=list(BENCHES))
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_bench)
    return parser


#: Commands whose own ``main(argv)`` parses every argument (their ``--help`` included).
PASSTHROUGH = {"export": _cmd_export, "info": _cmd_info, "learn": _cmd_learn, "predict": _cmd_predict,
               "state": _cmd_state}


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["bench"] and (len(argv) == 1 or argv[1] in ("-h", "--help")):
        print(_bench_help(), file=sys.stdout if len(argv) > 1 else sys.stderr)
        return 0 if len(argv) > 1 else 2
    parser = build_parser()
    if argv and argv[0] in PASSTHROUGH:
        args = argparse.Namespace(rest=argv[1:], func=PASSTHROUGH[argv[0]])
    elif argv[:1] == ["bench"]:
        args = argparse.Namespace(what=argv[1], rest=argv[2:], func=_cmd_bench)
    else:
        args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BnnclError as exc:
        print(f"bnncl: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a host-only path reached without torch on a device install
        if (exc.name or "").partition(".")[0] != "torch":
            raise
        print(f"bnncl: error: bnncl {argv[0]} needs PyTorch: {TORCH_HINT}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2. A closed stdout (``bnncl ... | head -1``)
    ends the command quietly, as the Python docs advise for SIGPIPE."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            return _dispatch(argv)
        finally:
            sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
    except BrokenPipeError:
        try:  # Python flushes stdout again at exit: point it at devnull so that flush cannot fail
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
            pass
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
