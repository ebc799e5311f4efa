"""The `landscape` command line: parses arguments, calls the public API, prints.

Library code never prints; this module is the only place that talks to the terminal. Any mistake
in the arguments is one line on stderr naming what is wrong, and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .cli_args import (  # noqa: F401 - the option values stay importable from here
    AUDIT_MEASURES,
    BUDGETS,
    DEMO_BUDGETS,
    INTERPOLATION_BUFFERS,
    SUBCOMMANDS,
    TRACK_MEASURES,
    Parser,
    audit_args,
    compare_args,
    demo_args,
    plot_args,
    track_args,
)
from .errors import LandscapeError
from .warnings_words import warnings_in_words


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _bars(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: redirected to a file or a pipe, the command prints its
    plain lines ("measuring hessian_trace ...") and no control characters."""
    return not args.no_progress and sys.stderr.isatty()


# Library messages name Python keywords; on the command line the same fix is an option.
_CLI_TERMS = (("max_samples=", "--max-samples"), ("measures=", "--measures"),
              ("budget=", "--budget"), ("buffers=", "--buffers"), ("another out= path",
              "another --out folder"), ("out=", "--out"), ("seed=", "--seed"),
              ("pass name= to audit", "the CLI names it after --checkpoint"))


def _in_cli_terms(message: str) -> str:
    for python, cli in _CLI_TERMS:
        message = message.replace(python, cli)
    return message


def _probe_for(args: argparse.Namespace, checkpoint: str | None) -> Any:
    from .factories import build_data, build_model, check_model_fits
    from .probe import Probe

    model = _to_device(build_model(args.model, checkpoint), args.device)
    data = build_data(args.data, model)
    check_model_fits(model, data, args.model, args.data)
    return Probe(model, data)


def _check_out(out: str) -> None:
    """Refuse an output folder that cannot be written, before any work: an existing file, or a
    folder (or its nearest existing parent) without write permission or where no file can be
    made (a read-only mount, /proc: refused even for root). Creates nothing."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise LandscapeError(f"--out {out!r} is an existing file; give a folder to write into.")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise LandscapeError(f"--out {out!r} lies under the file {str(parent)!r}; give a folder "
                             "path to write into.")
    where = "" if parent == path else f" (its parent {str(parent)!r} cannot be written)"
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LandscapeError(f"--out {out!r} is not writable{where}; give a folder you can "
                             "write to.")
    try:  # os.access says yes to root everywhere: a read-only mount or /proc says no only here
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as exc:
        raise LandscapeError(f"--out {out!r} is not writable{where}: {exc.strerror}; give a "
                             "folder you can write to.") from None


def _check_args(args: argparse.Namespace) -> None:
    """The checks that need no model or data, made before any work: output folder, numeric
    ranges, checkpoint paths and measure names."""
    out = getattr(args, "out", None)
    if out is not None:
        _check_out(out)
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


def _to_device(model: Any, device: str) -> Any:
    import torch

    try:
        return model.to(torch.device(device))
    except (RuntimeError, AssertionError) as exc:
        first = str(exc).splitlines()[0]
        raise LandscapeError(f"cannot use --device {device!r}: {first}") from None


def _audit(args: argparse.Namespace) -> int:
    from .audit import audit

    probe = _probe_for(args, args.checkpoint)
    partial = Path(args.out) / "audit.partial.json"
    report = audit(probe, budget=args.budget, seed=args.seed, measures=args.measures,
                   progress=_bars(args), log=_log, name=Path(args.checkpoint).name,
                   data_name=args.data, lr=args.lr, batch_sizes=args.batch_sizes,
                   resume=partial, checkpoint=args.checkpoint,
                   max_gradients=args.max_gradients)
    written = report.write(args.out, column=args.column, log=args.log)
    partial.unlink(missing_ok=True)  # the report holds every measure now
    print(report.to_markdown())
    _log(f"wrote {len(written)} files to {args.out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare

    names = args.names or [Path(c).stem for c in args.checkpoints]
    if len(set(names)) != len(names):
        raise LandscapeError(f"checkpoint names must differ; got {names}. Pass --names.")
    probes = {}
    for name, ckpt in zip(names, args.checkpoints):
        probes[name] = _probe_for(args, ckpt)
    data_b = None
    if args.data_b is not None:
        from .factories import build_data

        data_b = build_data(args.data_b, next(iter(probes.values())).model)
    result = compare(probes, budget=args.budget, seed=args.seed, measures=args.measures,
                     buffers=args.buffers, progress=_bars(args), log=_log,
                     data_b=data_b, data_names=(args.data, str(args.data_b)),
                     alignment_params=args.head, checkpoints=dict(zip(names, args.checkpoints)))
    written = result.write(args.out, column=args.column, log=args.log)
    print(result.to_markdown())
    _log(f"wrote {len(written)} files to {args.out}")
    return 0


def _track(args: argparse.Namespace) -> int:
    from .factories import build_data, build_model, check_model_fits
    from .track import track

    source = args.checkpoints[0] if len(args.checkpoints) == 1 else args.checkpoints
    out = Path(args.out)
    probe_model = build_model(args.model)
    data = build_data(args.data, probe_model)
    check_model_fits(probe_model, data, args.model, args.data)
    result = track(source, model_fn=lambda: _to_device(build_model(args.model), args.device),
                   data_name=args.data,
                   data=data, measures=args.measures, seed=args.seed, out=out / "track.json",
                   progress=_bars(args), log=_log)
    (out / "track.csv").write_text(result.to_csv())
    figures = _save_track_plot(result, args.lr, out, args.column)
    pages = result.write_pages(out, figures)
    print(result.to_csv(), end="")
    for path in (out / "track.json", out / "track.csv", *pages, *figures):
        _log(f"wrote {path}")
    return 0


def _save_track_plot(result: Any, lr: float | None, out: Path, column: str) -> list[Path]:
    import matplotlib.pyplot as plt

    from .plot import plot_track, save_figure

    fig = plot_track(result, lr=lr, column=column).figure
    try:
        return save_figure(fig, out / "track")
    finally:
        plt.close(fig)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=args.out, seed=args.seed, budget=args.budget, progress=_bars(args),
             log=_log, column=args.column, log_scale=args.log)
    return 0


_ADD_ARGS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "audit": audit_args, "compare": compare_args, "track": track_args, "demo": demo_args,
}
_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "audit": _audit, "compare": _compare, "track": _track, "demo": _demo,
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="landscape",
        description="Measure the geometry of a neural network's loss around a checkpoint.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _ADD_ARGS.get(name, lambda _p: None)(p)
    return parser


def _plot(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import matplotlib.pyplot as plt
    import numpy as np

    from . import plot as lplot
    from .directions import random_direction
    from .surface import loss_line, loss_surface

    probe = _probe_for(args, args.checkpoint)
    progress = _bars(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    norm = None if args.normalization == "none" else args.normalization
    n = args.points or (51 if args.kind == "1d" else 25)
    if not progress and not args.no_progress:
        _log(f"evaluating the loss at {n if args.kind == '1d' else n * n} points ...")
    grid = np.linspace(args.range[0], args.range[1], n)
    d1 = random_direction(probe, normalization=norm, seed=args.seed)
    if args.kind == "1d":
        result = loss_line(probe, d1, grid, max_samples=args.max_samples, seed=args.seed,
                           out=out / "line.npz", progress=progress)
        ax = lplot.plot_line(result, log=args.log, column=args.column)
        lplot.set_title(ax.figure, "Loss along a filter-normalized direction")
        names = [p.name for p in lplot.save_figure(ax.figure, out / "line")]
        plt.close(ax.figure)
    else:
        d2 = random_direction(probe, normalization=norm, seed=args.seed + 1)
        result = loss_surface(probe, d1, d2, grid, grid, max_samples=args.max_samples,
                              seed=args.seed, out=out / "surface.h5", progress=progress)
        names = []
        draws = (("contour", lplot.plot_contour, {}), ("heatmap", lplot.plot_heatmap, {}),
                 ("surface3d", lplot.plot_surface_3d, {"zmax": _drawn_zmax(args)}))
        for stem, draw, extra in draws:
            ax = draw(result, log=args.log, column=args.column, **extra)
            if stem != "surface3d":  # a 3D view has no room above it (its clip note is there)
                lplot.set_title(ax.figure, "Loss on a filter-normalized plane")
            names += [p.name for p in lplot.save_figure(ax.figure, out / stem)]
            plt.close(ax.figure)
        lplot.export_vtp(result, out / "surface.vtp", log=args.log)
        names += ["surface.h5", "surface.vtp"]
    (out / f"{args.kind}.json").write_text(json.dumps(result.to_dict(), indent=1))
    print(f"loss at the checkpoint: {probe.loss():.6g}; finite range "
          f"[{np.nanmin(result.loss):.4g}, {np.nanmax(result.loss):.4g}]")
    print(f"wrote {', '.join(names + [f'{args.kind}.json'])} to {out}/")
    return 0


def _drawn_zmax(args: argparse.Namespace) -> float | None:
    """--zmax (a loss) in the drawn units: log10 of it with --log."""
    if args.zmax is None:
        return None
    return math.log10(args.zmax) if args.log else args.zmax


_ADD_ARGS["plot"] = plot_args
_HANDLERS["plot"] = _plot


def _plot_track_args(p: argparse.ArgumentParser) -> None:
    from .cli_plot_track import add_arguments

    add_arguments(p)


def _plot_track(args: argparse.Namespace) -> int:
    from .cli_plot_track import run

    return run(args)


_ADD_ARGS["plot-track"] = _plot_track_args
_HANDLERS["plot-track"] = _plot_track


@contextlib.contextmanager
def _torchrun(args: argparse.Namespace) -> Iterator[None]:
    """Launched by torchrun (RANK and WORLD_SIZE set): join the process group for the command.

    Backend gloo on CPU, NCCL with `--device cuda` (each rank on cuda:LOCAL_RANK). Every rank runs
    the same command (its collectives must match), but only rank 0 talks and writes: the others'
    output goes to /dev/null and their --out files to a scratch folder. The group is destroyed at
    the end. `track` and `demo` are single-process commands.
    """
    import os

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        yield
        return
    if args.command in ("track", "demo"):
        raise LandscapeError(f"{args.command} runs in one process; launch it without torchrun.")
    import torch
    import torch.distributed as dist

    own = not dist.is_initialized()
    if own:
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(torch.device(args.device))
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    try:
        if dist.get_rank() == 0:
            yield
            return
        with tempfile.TemporaryDirectory(prefix="landscape-rank-") as scratch, \
                open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
                contextlib.redirect_stderr(null):
            args.out = scratch
            yield
    finally:
        if own:
            dist.destroy_process_group()


@contextlib.contextmanager
def _tidy_out(args: argparse.Namespace) -> Iterator[None]:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler = _HANDLERS.get(args.command)
    if handler is None:
        print(f"landscape {args.command}: not available yet in this version.", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")  # the command line writes figures to files; the library never chooses
    try:
        _check_args(args)
        with _tidy_out(args), _torchrun(args), warnings_in_words(_log):
            status = handler(args)
        return status
    except LandscapeError as exc:
        message = " ".join(_in_cli_terms(str(exc)).split())
        print(f"landscape {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"landscape {args.command}: interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line unless the user asks for the traceback
        if getattr(args, "debug", False):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"landscape {args.command}: unexpected error: {type(exc).__name__}: {first} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
