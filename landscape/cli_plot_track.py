"""`landscape plot-track`: the sharpness-during-training figure of one or more monitor logs.

Kept beside `cli.py` (which registers it) so the command line stays one module per job.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import LandscapeError

HELP = "draw sharpness against step (with its edge of stability) and the loss from monitor logs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("logs", nargs="+",
                   help="curvature.jsonl files written by CurvatureMonitor (or their folders)")
    p.add_argument("--labels", default=None,
                   help="comma-separated legend labels, one per log (default: the folder names "
                        "when there are several logs)")
    p.add_argument("--out", default=None,
                   help="output folder (default: the first log's folder); writes "
                        "sharpness.pdf and sharpness.png")
    p.add_argument("--sharpness", choices=("top_eigenvalue", "preconditioned_sharpness"),
                   default=None, help="the measure to draw (default: the preconditioned "
                                      "sharpness for an Adam run, else the top eigenvalue)")
    p.add_argument("--column", choices=("single", "double"), default="single",
                   help="figure width: single (3.25 in) or double (6.75 in) column "
                        "(default: single)")


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .monitor import read_rows
    from .plot import save_figure
    from .track_plot import track_figure

    logs = [Path(p) for p in args.logs]
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(logs):
            raise LandscapeError(f"--labels gives {len(labels)} labels for {len(logs)} logs.")
    elif len(logs) > 1:
        labels = [(p if p.is_dir() else p.parent).name or str(p) for p in logs]
    else:
        labels = [""]
    if len(set(labels)) != len(labels):
        raise LandscapeError(f"labels must differ; got {labels}. Pass --labels.")
    runs = {label: read_rows(p) for label, p in zip(labels, logs)}
    source = runs if len(runs) > 1 or labels[0] else runs[labels[0]]
    fig = track_figure(source, sharpness=args.sharpness, column=args.column)
    out = Path(args.out) if args.out else (logs[0] if logs[0].is_dir() else logs[0].parent)
    written = save_figure(fig, out / "sharpness")
    plt.close(fig)
    last = {label: rows[-1] for label, rows in runs.items()}
    for label, row in last.items():
        ratio = row.get("eos_ratio")
        note = f", eos_ratio {ratio:.3g}" if isinstance(ratio, float) else ""
        print(f"{label or logs[0]}: {len(runs[label])} rows, last step {row.get('step')}{note}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
