"""What the command line checks before and around a command, without torch or matplotlib.

The option values the parser offers, the checks made before any work (output folder, numeric
ranges, checkpoint paths, measure names), library messages restated in option names, the output
folder removed when a failed command leaves it empty, and warnings reported once each in words.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import LandscapeError

# The option values the parser offers, kept here so that `landscape --help` imports neither torch
# nor matplotlib (tests/test_cli.py checks they equal the library's own tuples).
BUDGETS = ("quick", "standard", "thorough")
AUDIT_MEASURES = (
    "loss", "hessian_eigenvalues", "hessian_smallest_eigenvalue", "hessian_trace",
    "hessian_density", "sharpness_worst_l2", "sharpness_adaptive_worst_l2",
    "sharpness_average_l2", "first_order_flatness", "loss_line", "loss_surface",
    "pac_bayes_flatness", "local_entropy", "quadratic_agreement", "hessian_frobenius",
    "trace_ratio", "batch_spectrum",
)
TRACK_MEASURES = ("top_eigenvalue", "trace", "sharpness", "gradient_norm", "loss")
INTERPOLATION_BUFFERS = ("interpolate", "recompute", "keep")
DEMO_BUDGETS = ("full", "smoke")


# Library messages name Python keywords; on the command line the same fix is an option.
CLI_TERMS = (("max_samples=", "--max-samples"), ("measures=", "--measures"),
              ("budget=", "--budget"), ("buffers=", "--buffers"), ("another out= path",
              "another --out folder"), ("out=", "--out"), ("seed=", "--seed"),
              ("pass name= to audit", "the CLI names it after --checkpoint"))


def in_cli_terms(message: str) -> str:
    for python, cli in CLI_TERMS:
        message = message.replace(python, cli)
    return message


def check_out(out: str) -> None:
    """Refuse an output folder that cannot be written, before any work: an existing file, or a
    folder (or its nearest existing parent) without write permission."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise LandscapeError(f"--out {out!r} is an existing file; give a folder to write into.")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise LandscapeError(f"--out {out!r} lies under the file {str(parent)!r}; give a folder "
                             "path to write into.")
    if not os.access(parent, os.W_OK | os.X_OK):
        where = "" if parent == path else f" (its parent {str(parent)!r} cannot be written)"
        raise LandscapeError(f"--out {out!r} is not writable{where}; give a folder you can "
                             "write to.")


def check_args(args: argparse.Namespace) -> None:
    """The checks that need no model or data, made before any work: output folder, numeric
    ranges, checkpoint paths and measure names."""
    out = getattr(args, "out", None)
    if out is not None:
        check_out(out)
    span = getattr(args, "range", None)
    if span is not None and not all(math.isfinite(v) for v in span):
        raise LandscapeError("--range needs two finite numbers, e.g. --range -1 1.")
    if span is not None and not span[0] < span[1]:
        raise LandscapeError(f"--range {span[0]:g} {span[1]:g}: LO must be below HI, e.g. "
                             "--range -1 1.")
    names = getattr(args, "names", None)
    if names is not None and len(names) != len(args.checkpoints):
        raise LandscapeError(
            f"--names gives {len(names)} names for {len(args.checkpoints)} checkpoints; give "
            "one name per checkpoint.")
    paths = [args.checkpoint] if getattr(args, "checkpoint", None) else []
    if args.command == "compare":
        paths = list(args.checkpoints)
    for path in paths:
        if Path(path).is_dir():
            raise LandscapeError(f"checkpoint {path!r} is a folder; give a checkpoint file "
                                 "(.pt, .pth or .safetensors).")
        if not Path(path).is_file():
            raise LandscapeError(f"checkpoint file {path!r} does not exist.")
    if args.command in ("audit", "compare") and args.measures is not None:
        unknown = [m for m in args.measures if m not in AUDIT_MEASURES]
        if unknown:
            raise LandscapeError(f"unknown measures {unknown}; choose among "
                                 f"{', '.join(AUDIT_MEASURES)}.")
    if args.command == "track":
        unknown = [m for m in args.measures if m not in TRACK_MEASURES]
        if unknown:
            raise LandscapeError(f"unknown measures {unknown}: measures must be among "
                                 f"{', '.join(TRACK_MEASURES)}.")
        missing = [c for c in args.checkpoints if not Path(c).exists()]
        if missing:
            raise LandscapeError(f"checkpoints {missing} do not exist.")


@contextlib.contextmanager
def tidy_out(args: argparse.Namespace) -> Iterator[None]:
    """Remove the --out folder (and the parents) this command created when it fails leaving
    them empty: a failed run leaves no empty folders behind."""
    out = getattr(args, "out", None)
    created = []
    if out is not None:
        path = Path(out).absolute()
        while not path.exists():
            created.append(path)
            path = path.parent
    ok = False
    try:
        yield
        ok = True
    finally:
        if not ok:
            for path in created:  # deepest first
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()


@contextlib.contextmanager
def words_for_warnings() -> Iterator[None]:
    """Warnings caught and reported once each, in words, after the command: no raw
    `RuntimeWarning: ...` lines with file names in the output."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            seen = []
            for w in caught:
                if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)):
                    continue
                text = " ".join(str(w.message).split())
                if text not in seen:
                    seen.append(text)
            for text in seen:
                print(f"note: {text}", file=sys.stderr, flush=True)


# argparse types: a bad value is refused in one line naming the option (exit 2)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive; got {text}")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low`, refused in one line otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}; got {text}")
        return value

    return parse


seed_value = int_at_least(0)
