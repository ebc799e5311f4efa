"""The `landscape` command line: parses arguments, calls the public API, prints.

Library code never prints; this module is the only place that talks to the terminal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .errors import LandscapeError

SUBCOMMANDS: dict[str, str] = {
    "audit": "measure one checkpoint by every standard measure and write a report",
    "compare": "compare the minima of several checkpoints side by side",
    "plot": "draw filter-normalized 1D/2D loss surfaces of a checkpoint",
    "track": "follow chosen measures over a series of training checkpoints",
    "demo": "train four small CNNs on the built-in digits data and compare their minima",
}

_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="landscape",
        description="Measure the geometry of a neural network's loss around a checkpoint.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _ADD_ARGS.get(name, lambda _p: None)(p)
    return parser


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, seed=args.seed, progress=True, echo=print)
    return 0


_ADD_ARGS: dict[str, Callable[[argparse.ArgumentParser], None]] = {"demo": _demo_args}
_HANDLERS["demo"] = _demo


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = _HANDLERS.get(args.command)
    if handler is None:
        print(f"landscape {args.command}: not available yet in this version.", file=sys.stderr)
        return 2
    try:
        return handler(args)
    except LandscapeError as exc:
        print(f"landscape {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
