"""Regenerate the demo's figures and table shown in the README (figures/demo_*).

Runs the built-in demo (`landscape demo`: four digits CNNs trained with small-batch SGD,
large-batch SGD, Adam and SAM, then compared) into a temporary folder and copies its comparison
figures and Markdown table into figures/. About a minute on a 2-core CPU.

Run: `python scripts/make_demo_figures.py [--out figures]`.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from landscape.demo import run_demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="figures")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run_demo(out=tmp, seed=args.seed, log=print)
        for name in ("lines.png", "interpolation.png", "comparison.md"):
            shutil.copy(Path(tmp) / name, out / f"demo_{name}")
    print(f"wrote demo_lines.png, demo_interpolation.png, demo_comparison.md to {out}")


if __name__ == "__main__":
    main()
