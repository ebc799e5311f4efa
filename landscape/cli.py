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


_PLOT_MODELS = ("digits_mlp", "digits_cnn", "digits_resnet", "digits_resnet_noskip")


def _plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help=f"a built-in model ({', '.join(_PLOT_MODELS)}) or 'package.module:factory' "
                        "(a callable returning the nn.Module)")
    p.add_argument("--checkpoint", default=None, help="state dict to load (.pt/.pth/.safetensors)")
    p.add_argument("--data", default="digits",
                   help="'digits' (train split), 'digits-test', 'digits-all', or a .pt file "
                        "holding an (inputs, targets) pair (default: digits)")
    p.add_argument("--kind", choices=("1d", "2d"), default="2d", help="line or plane (default 2d)")
    p.add_argument("--out", default="plot-output", help="output folder (default: plot-output)")
    p.add_argument("--points", type=int, default=None,
                   help="points per axis (default: 51 in 1d, 25 in 2d)")
    p.add_argument("--range", type=float, nargs=2, default=(-1.0, 1.0), metavar=("LO", "HI"),
                   help="coordinate range of each axis (default: -1 1)")
    p.add_argument("--normalization", default="filter",
                   choices=("filter", "layer", "model", "none"),
                   help="direction normalization (default: filter, Li et al. 2018)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first direction (default 0)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="evaluate each point on a subset of this many samples (with stderr)")
    p.add_argument("--log", action="store_true", help="draw log10 of the loss")
    p.add_argument("--batch-size", type=int, default=1024, help="evaluation batch size")


def _plot(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    from . import plot as lplot
    from ._cli_plot import build_model, load_data
    from .checkpoint import load_checkpoint
    from .directions import random_direction
    from .probe import Probe
    from .surface import loss_line, loss_surface

    model = build_model(args.model)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    image = not args.model.startswith("digits_mlp")
    probe = Probe(model, load_data(args.data, image=image), batch_size=args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    norm = None if args.normalization == "none" else args.normalization
    n = args.points or (51 if args.kind == "1d" else 25)
    if n < 2:
        raise LandscapeError(f"--points must be at least 2; got {n}.")
    grid = np.linspace(args.range[0], args.range[1], n)
    d1 = random_direction(probe, normalization=norm, seed=args.seed)
    if args.kind == "1d":
        result = loss_line(probe, d1, grid, max_samples=args.max_samples, seed=args.seed,
                           out=out / "line.npz", progress=True)
        ax = lplot.plot_line(result, log=args.log)
        names = ["line.png", "line.pdf"]
        for name in names:
            ax.figure.savefig(out / name)
    else:
        d2 = random_direction(probe, normalization=norm, seed=args.seed + 1)
        result = loss_surface(probe, d1, d2, grid, grid, max_samples=args.max_samples,
                              seed=args.seed, out=out / "surface.h5", progress=True)
        names = []
        for stem, draw in (("contour", lplot.plot_contour), ("surface3d", lplot.plot_surface_3d),
                           ("heatmap", lplot.plot_heatmap)):
            ax = draw(result, log=args.log)
            for suffix in (".png", ".pdf"):
                ax.figure.savefig(out / (stem + suffix))
                names.append(stem + suffix)
        lplot.export_vtp(result, out / "surface.vtp", log=args.log)
        names += ["surface.h5", "surface.vtp"]
    (out / f"{args.kind}.json").write_text(json.dumps(result.to_dict(), indent=1))
    print(f"loss at the checkpoint: {probe.loss():.6g}; finite range "
          f"[{np.nanmin(result.loss):.4g}, {np.nanmax(result.loss):.4g}]")
    print(f"wrote {', '.join(names + [f'{args.kind}.json'])} to {out}/")
    return 0


_ADD_ARGS["plot"] = _plot_args
_HANDLERS["plot"] = _plot


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
