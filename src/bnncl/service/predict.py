"""``bnncl predict --model FILE.bnn --state DIR IMAGE...``: class name and score per image, with the
committed state (read only; safe while ``bnncl learn`` runs). Images go through the resize policy of
:func:`bnncl.data.imagefolder.decode_image`. An unreadable image gets a one-line error (the others are
still answered) and the exit code is 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bnncl.assets import resolve_model
from bnncl.cl.state import NoStateError
from bnncl.errors import BnnclError, DataError
from bnncl.service import inbox
from bnncl.service.folders import read_item
from bnncl.service.learn import one_line_warnings, quiet_on_closed_pipe
from bnncl.service.session import LearnerSession


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bnncl predict", description="Classify images with the device's current state.")
    p.add_argument("--model", required=True, help="device model file (.bnn) the state belongs to, or a shipped "
                                                   "model's name (fmnist-b5, cifar10-b5)")
    p.add_argument("--state", required=True, help="state directory written by bnncl learn")
    p.add_argument("--threads", type=int, default=1, help="compute threads (default 1)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return quiet_on_closed_pipe(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    try:
        with one_line_warnings():
            return _predict(args)
    except NoStateError as exc:
        print(f"bnncl predict: error: {exc}; run bnncl learn first", file=sys.stderr)
        return 2
    except BnnclError as exc:
        print(f"bnncl predict: error: {exc}", file=sys.stderr)
        return 2


def _predict(args: argparse.Namespace) -> int:
    model = resolve_model(args.model, ".bnn")  # a path, or a shipped model's name
    session = LearnerSession.open(model, args.state, deploy=False, threads=max(1, args.threads))
    rc = 0
    arrays, names = [], []
    for name in args.images:
        path = Path(name)
        try:
            arr, _ = read_item(inbox.Item("", path.name, path), session.image_shape, follow=True)
        except DataError as exc:
            print(f"bnncl predict: error: {exc}", file=sys.stderr)
            rc = 2
            continue
        arrays.append(arr)
        names.append(name)
    if arrays:
        for name, (label, score) in zip(names, session.predict(np.stack(arrays))):
            print(f"{name}\t{label}\t{score:.3f}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
