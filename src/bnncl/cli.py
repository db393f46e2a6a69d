"""The ``bnncl`` command."""

from __future__ import annotations

import argparse
import sys

from bnncl.errors import BnnclError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnncl", description=__doc__)
    parser.add_subparsers(dest="command", required=True)
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
