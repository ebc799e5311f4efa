"""Regenerate the demo's figures and table shown in the README (figures/demo_*).

Runs the built-in demo (`landscape demo`: four digits CNNs trained with small-batch SGD,
large-batch SGD, Adam and SAM, then compared at the `quick` budget) into a temporary folder and
copies its Markdown table (`demo_comparison.md`, the numbers `landscape demo` prints) into
figures/. The two figures are then drawn from the same four checkpoints at paper resolution,
not at the quick budget's: `compare(..., measures=["loss_line"], budget="standard")` draws each
minimum's 1D line at `LINE_POINTS` points along the same filter-normalized direction as the
demo's (same seed: the script checks that its losses equal the demo's at the demo's points) and
each pair's interpolation, raw and aligned, at `INTERPOLATION_POINTS` points. Warnings are
reported once each, in words, at the end. About a minute of CPU on a 2-core CPU container.

Run: `python scripts/make_demo_figures.py [--out figures]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from landscape.compare import compare, comparison_figures  # noqa: E402
from landscape.data import digits_cnn, digits_tensors  # noqa: E402
from landscape.demo import run_demo  # noqa: E402
from landscape.measures import EFFORT  # noqa: E402
from landscape.warnings_words import warnings_in_words  # noqa: E402

LINE_POINTS = EFFORT["standard"]["line_points"]  # 41: alpha in steps of 0.05 over [-1, 1]
INTERPOLATION_POINTS = 51  # alpha in steps of 0.02 over [0, 1]


def paper_figures(checkpoints: Path, demo_lines: dict, out: Path, seed: int) -> list[Path]:
    """The demo's line and interpolation figures at paper resolution, from its checkpoints;
    `demo_lines` (the demo's own lines) must agree with the new ones where their alphas meet.
    The line figure is one column wide; the interpolation figure two, so that the legend of
    its twelve paths fits in two columns beside each other instead of filling half a tall
    single-column canvas."""
    names = [p.stem for p in sorted(checkpoints.glob("*.pt"))]
    order = [n for n in demo_lines if n in names]
    fine = compare({n: checkpoints / f"{n}.pt" for n in order},
                   model_fn=lambda: digits_cnn(seed=seed),
                   data=digits_tensors("train", image=True), budget="standard", seed=seed,
                   measures=["loss_line"], buffers="recompute",
                   interpolation_points=INTERPOLATION_POINTS)
    for name, coarse in demo_lines.items():
        line = fine.lines[name]
        at = [int(np.argmin(np.abs(line.alphas - a))) for a in coarse.alphas]
        if len(line.alphas) != LINE_POINTS or not np.allclose(
                line.loss[at], coarse.loss, rtol=1e-6, atol=1e-9):
            raise SystemExit(f"make_demo_figures: the {LINE_POINTS}-point line of {name} does not "
                             "pass through the demo's points: not the demo's direction")
    single, double = out / "single", out / "double"
    single.mkdir()
    double.mkdir()
    return ([p for p in comparison_figures(fine, single) if p.stem == "lines"]
            + [p for p in comparison_figures(fine, double, column="double")
               if p.stem == "interpolation"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="figures")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        demo = run_demo(out=tmp, seed=args.seed, log=print)
        shutil.copy(Path(tmp) / "comparison.md", out / "demo_comparison.md")
        for path in paper_figures(Path(tmp) / "checkpoints", demo.lines, Path(tmp), args.seed):
            if path.suffix == ".png":
                shutil.copy(path, out / f"demo_{path.name}")
    print(f"wrote demo_lines.png ({LINE_POINTS} points a line), demo_interpolation.png "
          f"({INTERPOLATION_POINTS} points a path), demo_comparison.md to {out}")


if __name__ == "__main__":
    # warnings reported once each, in words, at the end (as the command line does)
    with warnings_in_words(lambda line: print(line, file=sys.stderr, flush=True)):
        main()
