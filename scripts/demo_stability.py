"""The demo's small-batch and large-batch SGD minima compared by ||H||_F, mini-batch spectra and
Hessian alignment across data sets (issue 24's measures; the numbers in docs/measures.md).

Trains the two digits CNNs of `landscape demo` (same recipes: `landscape.demo.RECIPES`, seed 0),
then prints for each minimum:

* the top eigenvalue, tr(H), ||H||_F (Hutch++, 99 products) and SGD's linear-stability ratio
  tr(H) x lr / 2 at the learning rate it was trained with;
* `batch_size_spectrum` for batch sizes 16, 64 and 256 (32 batches each) beside the full data,
  with the figure `OUT/batch_spectrum.png` (both minima, one panel each);
* `hessian_alignment` of the training split against the held-out split and against the
  held-out split shifted by one pixel (a synthetic domain shift), for the whole network and for
  the classifier head (the last Linear layer, "7").

Run: `python scripts/demo_stability.py [--out stability-output] [--seed 0]` (46 s of CPU time,
1.5 minutes of wall time on a 2-core container at load average 6, 1 thread); copy
`OUT/batch_spectrum.png` to figures/demo_batch_spectrum.png for the docs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from landscape import (  # noqa: E402
    Probe,
    batch_size_spectrum,
    hessian_alignment,
    hessian_eigenvalues,
    hessian_frobenius,
    hessian_trace,
)
from landscape.data import digits_cnn, digits_tensors  # noqa: E402
from landscape.data.training import train  # noqa: E402
from landscape.demo import RECIPES  # noqa: E402
from landscape.plot import save_figure, subplots  # noqa: E402
from landscape.plot_batch import plot_batch_spectrum  # noqa: E402
from landscape.warnings_words import warnings_in_words  # noqa: E402

MINIMA = ("sgd_small_batch", "sgd_large_batch")
BATCH_SIZES = (16, 64, 256)


def train_minimum(name: str, seed: int) -> torch.nn.Module:
    batch_size, optimizer, lr, epochs = RECIPES[name]
    x, y = digits_tensors("train", image=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    return train(digits_cnn(seed=seed), loader, epochs=epochs, lr=lr, optimizer=optimizer,
                 seed=seed)


def curvature_row(name: str, probe: Probe, seed: int) -> str:
    lr = RECIPES[name][2]
    top = hessian_eigenvalues(probe, k=1, seed=seed)
    trace = hessian_trace(probe, n_hvp=99, seed=seed)
    frob = hessian_frobenius(probe, n_hvp=99, seed=seed)
    ratio = trace.estimate * lr / 2
    return (f"| {name} | {lr} | {top.eigenvalues[0]:.4g} (± {top.residuals[0]:.1g}) | "
            f"{trace.estimate:.4g} ± {trace.stderr:.2g} | {frob.estimate:.4g} ± "
            f"{frob.stderr:.2g} | {ratio:.3g} ± {trace.stderr * lr / 2:.1g} | "
            f"{2 / top.eigenvalues[0]:.3g} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="stability-output")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.perf_counter()
    train_data = digits_tensors("train", image=True)
    x_test, y_test = digits_tensors("test", image=True)
    domains = {"test": (x_test, y_test),
               "test shifted 1 px": (torch.roll(x_test, 1, dims=3), y_test)}
    models = {name: train_minimum(name, args.seed) for name in MINIMA}
    print(f"trained {', '.join(MINIMA)} in {time.perf_counter() - t0:.0f} s\n")

    print("| minimum | lr | lambda_max | tr(H) | norm_F(H) | tr(H) lr / 2 | 2 / lambda_max |")
    print("|---|---|---|---|---|---|---|")
    for name, model in models.items():
        print(curvature_row(name, Probe(model, train_data), args.seed))

    fig, axes = subplots(1, 2, column="double", aspect=0.4, sharey=True)
    for ax, (name, model) in zip(axes, models.items()):
        spectrum = batch_size_spectrum(Probe(model, train_data), BATCH_SIZES, seed=args.seed)
        print(f"\n### {name}: top eigenvalue of mini-batch Hessians "
              f"({spectrum.seconds:.0f} s)\n")
        print(spectrum.to_markdown())
        plot_batch_spectrum(spectrum, ax=ax)
        ax.set_title(name.replace("_", " "), fontsize=8)
    axes[1].set_ylabel("")  # the shared axis is named once, on the left
    save_figure(fig, out / "batch_spectrum")

    print("\n### Hessian and gradient alignment: a = train, b as named\n")
    print("| minimum | b | parameters | spectral norm of H_a - H_b | lambda_max(H_a) | "
          "lambda_max(H_b) | norm of g_a - g_b | cos(g_a, g_b) | HVPs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, model in models.items():
        for domain, data in domains.items():
            for params, what in ((None, "all"), ("7", "head (Linear 7)")):
                r = hessian_alignment(Probe(model, train_data), Probe(model, data),
                                      params=params, seed=args.seed)
                print(f"| {name} | {domain} | {what} | {r.hessian_distance:.4g} "
                      f"(± {r.hessian_distance_residual:.1g}) | {r.eigenvalues_a[0]:.4g} | "
                      f"{r.eigenvalues_b[0]:.4g} | {r.gradient_distance:.4g} | "
                      f"{r.gradient_cosine:.3f} | {r.n_hvp} |")
    print(f"\nwrote {out / 'batch_spectrum.png'}; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    # warnings reported once each, in words, at the end (as the command line does)
    with warnings_in_words(lambda line: print(line, file=sys.stderr, flush=True)):
        main()
