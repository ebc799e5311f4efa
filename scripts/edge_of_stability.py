"""The edge of stability on the built-in digits data, drawn with the CurvatureMonitor.

Full-batch gradient descent on a tanh MLP (64-64-64-10, float64) with the mean squared error
on 512 digits, at three learning rates; the monitor measures the top Hessian eigenvalue every
10 steps (Lanczos warm-started from the previous eigenvector). The sharpness rises, reaches
2 / lr and then hovers there (Cohen et al. 2021). Writes each run's curvature.jsonl and
figures/edge_of_stability.{pdf,png}, and prints, per learning rate, the mean and range of
sharpness x lr / 2 over the last third of training and the Lanczos products per measurement.

    python scripts/edge_of_stability.py            # about 2 minutes on 1 CPU thread
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from landscape.data.edge_of_stability import gradient_descent_run  # noqa: E402
from landscape.plot import save_figure, track_figure  # noqa: E402
from landscape.warnings_words import warnings_in_words  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--logs", default="eos-output", help="folder of the runs' logs")
    parser.add_argument("--out", default=str(ROOT / "figures" / "edge_of_stability"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = {}
    for lr in args.lrs:
        t0 = time.perf_counter()
        log_dir = Path(args.logs) / f"lr_{lr:g}"
        if (log_dir / "curvature.jsonl").exists():
            (log_dir / "curvature.jsonl").unlink()
        rows = gradient_descent_run(lr, args.steps, every=args.every, log_dir=log_dir)
        runs[f"lr = {lr:g}"] = rows
        last = [r for r in rows if r["step"] >= 2 * args.steps / 3]
        ratio = np.array([r["eos_ratio"] for r in last])
        products = np.array([r["top_eigenvalue_n_hvp"] for r in rows[1:]])
        print(f"lr {lr:g}: 2/lr = {2 / lr:.3g}; last third: sharpness x lr / 2 mean "
              f"{ratio.mean():.3f}, range [{ratio.min():.3f}, {ratio.max():.3f}]; "
              f"final loss {rows[-1]['loss']:.4g}; Lanczos products per measurement: first "
              f"{rows[0]['top_eigenvalue_n_hvp']}, then mean {products.mean():.1f}; "
              f"{time.perf_counter() - t0:.1f} s")
    fig = track_figure(runs, column="single")
    for path in save_figure(fig, args.out):
        print(f"wrote {path}")
    plt.close(fig)


if __name__ == "__main__":
    # warnings reported once each, in words, at the end (as the command line does)
    with warnings_in_words(lambda line: print(line, file=sys.stderr, flush=True)):
        main()
