"""How the top eigenvalue and the trace change with the number of samples (docs/figures).

Trains the digits CNN (`landscape.data.digits_cnn`, 20 epochs of SGD on the 1438 training
images), then for each sample size n measures `data_spread` on disjoint sets of n samples:
up to 8 sets, drawn from a fixed subset of 8 n samples (`probe.subset`), fewer where the
training split has no room for 8. Draws the mean and the spread (one standard deviation between
sets, the number a single set of n samples can give) of the top eigenvalue and the Hutch++ trace
against n, with the value on all 1438 samples, and prints the table the docs show.

Run: `python scripts/make_spread_figure.py [--out docs/figures]` (28 s of CPU time, 1 minute of
wall time on a 2-core CPU container at load average 6, one thread).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402

from landscape import Probe, data_spread, hessian_eigenvalues, hessian_trace  # noqa: E402
from landscape.data import digits_cnn, digits_loaders, digits_tensors  # noqa: E402
from landscape.data.training import train  # noqa: E402
from landscape.plot import save_figure, subplots  # noqa: E402
from landscape.warnings_words import warnings_in_words  # noqa: E402

SIZES = (16, 32, 64, 128, 256, 512)
MEASURES = {
    "top eigenvalue": ("top_eigenvalue", dict(tol=1e-3)),
    "trace (Hutch++, 60 products)": ("trace", dict(n_hvp=60)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/figures")
    args = ap.parse_args()
    torch.set_num_threads(1)
    loader, _ = digits_loaders(batch_size=64, image=True)
    model = train(digits_cnn(seed=0), loader, epochs=20, lr=0.05)
    probe = Probe(model, digits_tensors("train", image=True))
    full = {
        "top eigenvalue": float(hessian_eigenvalues(probe, tol=1e-4).eigenvalues[0]),
        "trace (Hutch++, 60 products)": float(hessian_trace(probe, n_hvp=60).estimate),
    }
    fig, axes = subplots(1, 2, column="double", aspect=0.38)
    print(f"| samples per set | sets | {' | '.join(f'{m}: mean ± std' for m in MEASURES)} |")
    print("|---|---|" + "---|" * len(MEASURES))
    rows: dict[str, list[tuple[int, float, float]]] = {m: [] for m in MEASURES}
    for n in SIZES:
        splits = min(8, probe.n_samples // n)
        sub = probe.subset(splits * n, seed=n)
        cells = []
        for label, (name, kwargs) in MEASURES.items():
            spread = data_spread(sub, name, n_splits=splits, seed=0, **kwargs)
            rows[label].append((n, spread.mean, spread.std))
            cells.append(f"{spread.mean:.4g} ± {spread.std:.2g}")
        print(f"| {n} | {splits} | {' | '.join(cells)} |", flush=True)
    print(f"| all {probe.n_samples} | 1 | "
          f"{' | '.join(f'{full[m]:.4g}' for m in MEASURES)} |")
    for ax, (label, data) in zip(axes, rows.items()):
        n, mean, std = (np.array(c) for c in zip(*data))
        ax.fill_between(n, mean - std, mean + std, alpha=0.25, label="± 1 std between sets")
        ax.plot(n, mean, marker="o", label="mean over sets")
        ax.axhline(full[label], color="k", linestyle="--", linewidth=1,
                   label=f"all {probe.n_samples} samples")
        ax.set_xscale("log", base=2)
        ax.set_xticks(SIZES, labels=[str(size) for size in SIZES])
        ax.minorticks_off()
        ax.set_xlabel("samples per set")
        ax.set_ylabel(label)
    axes[0].legend(fontsize="small")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = save_figure(fig, out / "data_spread", formats=("png",))
    print("wrote", ", ".join(str(p) for p in written))


if __name__ == "__main__":
    # warnings reported once each, in words, at the end (as the command line does)
    with warnings_in_words(lambda line: print(line, file=sys.stderr, flush=True)):
        main()
