"""The built-in demo: four minima of the digits CNN, found by four optimizers, compared.

Trains the small BatchNorm CNN on the bundled digits data with SGD at a small batch size, SGD at a
large (full) batch size, Adam, and SAM, saves the checkpoints, then runs `compare` on the four
minima (BatchNorm statistics re-estimated along the interpolation paths) and writes the
comparison (JSON, Markdown, HTML, figures) to the output folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from ._validate import OneOf
from .compare import Comparison, compare
from .data import digits_cnn, digits_tensors
from .data.training import train
from .probe import Probe

# name -> (batch size, optimizer, learning rate, epochs). Full-batch SGD takes as many epochs as
# it needs to fit the training set about as well as the others.
RECIPES: dict[str, tuple[int, str, float, int]] = {
    "sgd_small_batch": (16, "sgd", 0.02, 15),
    "sgd_large_batch": (1438, "sgd", 0.1, 150),
    "adam": (32, "adam", 1e-3, 15),
    "sam": (16, "sam", 0.02, 15),
}

# What each demo budget runs: the fraction of RECIPES' epochs, the compare budget, the measures
# (None: compare's defaults) and the points on each interpolation path. "smoke" only checks that
# an installation works end to end (about 30 s of CPU); its minima are not converged.
DEMO_BUDGETS: dict[str, dict] = {
    "full": dict(epoch_fraction=1.0, budget="quick", measures=None, interpolation_points=21),
    "smoke": dict(epoch_fraction=0.07, budget="quick",
                  measures=("loss", "hessian_eigenvalues", "hessian_trace", "loss_line"),
                  interpolation_points=5),
}


def train_demo_models(out: str | Path, seed: int = 0,
                      log: Callable[[str], None] | None = None,
                      epoch_fraction: float = 1.0) -> dict[str, Path]:
    """Train the four demo CNNs and save their state dicts to `out/checkpoints/NAME.pt`.

    `epoch_fraction` scales every recipe's epochs (at least one epoch each).
    """
    say = log or (lambda _line: None)
    folder = Path(out) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    x, y = digits_tensors("train", image=True)
    paths = {}
    for name, (batch_size, optimizer, lr, epochs) in RECIPES.items():
        epochs = max(1, round(epochs * epoch_fraction))
        say(f"training {name}: {optimizer}, batch {batch_size}, lr {lr}, {epochs} epochs")
        loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        model = train(digits_cnn(seed=seed), loader, epochs=epochs, lr=lr, optimizer=optimizer,
                      seed=seed)
        paths[name] = folder / f"{name}.pt"
        torch.save(model.state_dict(), paths[name])
    return paths


def run_demo(out: str | Path = "demo-output", seed: int = 0, progress: bool = False,
             log: Callable[[str], None] | None = None, budget: str = "full",
             column: str | float = "single", log_scale: bool = True) -> Comparison:
    """Train the four minima, compare them on the training data, write everything to `out`.

    All four start from the same initialization (`seed`), so they differ only by the optimizer.
    `budget` is "full" (the demo of the README) or "smoke" (a few epochs and measures: a check
    that an installation works, not a result). `column` sizes the figures ("single", "double"
    or inches; `landscape.plot.figure_size`); `log_scale=False` draws linear loss axes.
    """
    OneOf(tuple(DEMO_BUDGETS))("demo budget", budget)
    plan = DEMO_BUDGETS[budget]
    say = log or (lambda _line: None)
    paths = train_demo_models(out, seed=seed, log=log, epoch_fraction=plan["epoch_fraction"])
    data = digits_tensors("train", image=True)
    test = digits_tensors("test", image=True)
    probes, held_out = {}, {}
    for name, path in paths.items():
        model = digits_cnn(seed=seed)
        model.load_state_dict(torch.load(path, weights_only=True))
        probes[name] = Probe(model.eval(), data)
        held_out[name] = Probe(model, test).evaluate()
        say(f"{name}: test loss {held_out[name].loss:.4f}, "
            f"test accuracy {held_out[name].accuracy:.3f}")
    # BatchNorm networks: the statistics re-estimated along the paths give the fair barriers
    result = compare(probes, budget=plan["budget"], seed=seed, buffers="recompute",
                     measures=plan["measures"],
                     interpolation_points=plan["interpolation_points"], progress=progress,
                     log=log)
    written = result.write(out, column=column, log=log_scale)
    table = ["", "## Held-out test data (359 samples)", "",
             "| minimum | test loss | test accuracy |", "|---|---|---|"]
    table += [f"| {n} | {e.loss:.4f} | {e.accuracy:.3f} |" for n, e in held_out.items()]
    with open(Path(out) / "comparison.md", "a") as f:
        f.write("\n".join(table) + "\n")
    say(result.to_markdown() + "\n".join(table))
    say(f"wrote {len(written)} files and the checkpoints to {out}")
    return result
