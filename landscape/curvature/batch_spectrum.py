"""Top Hessian eigenvalues of mini-batches against the full data: how sharpness grows as the
batch shrinks, and the largest stable learning rate of gradient descent it implies."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from .._checks import check_int, check_positive, check_probe
from .._random import generator
from .._results import to_jsonable
from ..errors import LandscapeError
from ..probe import ParamSelection, Probe
from ._common import operator
from .lanczos import hessian_eigenvalues
from .results import EigenResult


@dataclass(frozen=True)
class BatchRow:
    """The top eigenvalues of the Hessians of disjoint mini-batches of one size.

    Attributes:
        batch_size: m, samples per mini-batch.
        values: shape (count,), lambda_max(H_b) of each measured batch (largest algebraic).
        mean: their mean; by convexity of lambda_max it is >= the full-data value when the
            batches cover the data (Jensen), and in expectation over which batches are drawn.
        stderr: standard error of the mean over batches (sample std / sqrt(count); NaN for one).
        count: number of batches measured.
        batches: shape (count,), index i of each batch: it holds samples [i m, (i + 1) m) of
            the probe's data in order (as `Probe.sample_groups(m)` makes them).
        eigenvalues: shape (count, k), the k largest eigenvalues of each batch (descending).
        residuals: shape (count,), the Lanczos residual ||H_b v - lambda v|| of each top value.
        stable_lr: 2 / mean, the largest learning rate at which gradient descent is stable on
            the quadratic model of a typical batch's loss (inf when mean <= 0).
        n_batches: full batches of m samples in the data (a last, smaller group is left out).
        converged: every batch's Lanczos run met its tolerance.
        n_hvp: Hessian-vector products on the batches (each over m samples); seconds: time.
    """

    batch_size: int
    values: np.ndarray
    mean: float
    stderr: float
    count: int
    batches: np.ndarray
    eigenvalues: np.ndarray
    residuals: np.ndarray
    stable_lr: float
    n_batches: int
    converged: bool
    n_hvp: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


@dataclass(frozen=True)
class BatchSpectrum:
    """Top Hessian eigenvalues of mini-batches of several sizes beside the full data's.

    Attributes:
        rows: one `BatchRow` per batch size, in the order asked.
        full_value: lambda_max(H) of the full data (all the probe's samples).
        full_eigenvalues: shape (k,), its k largest eigenvalues (descending).
        full_residual: the Lanczos residual of full_value.
        full_stable_lr: 2 / full_value, gradient descent's stability threshold on the full data.
        n_samples: samples in the probe's data.
        k, seed, tol, max_batches: the settings.
        n_hvp: products spent on the full data (each over all samples); the rows count their
            own (each over m samples). seconds: total time.
    """

    rows: list[BatchRow]
    full_value: float
    full_eigenvalues: np.ndarray
    full_residual: float
    full_stable_lr: float
    n_samples: int
    k: int
    seed: int
    tol: float
    max_batches: int | None
    n_hvp: int
    seconds: float

    @property
    def batch_sizes(self) -> list[int]:
        return [r.batch_size for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    def to_markdown(self) -> str:
        """A Markdown table: one row per batch size, then the full data (the caller prints)."""
        lines = ["| batch size | batches | mean lambda_max | s.e. | min | max | 2 / mean |",
                 "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            lines.append(f"| {r.batch_size} | {r.count} of {r.n_batches} | {r.mean:.5g} | "
                         f"{r.stderr:.2g} | {r.values.min():.5g} | {r.values.max():.5g} | "
                         f"{r.stable_lr:.4g} |")
        lines.append(f"| all ({self.n_samples}) | 1 | {self.full_value:.5g} | "
                     f"(± {self.full_residual:.2g}) | | | {self.full_stable_lr:.4g} |")
        return "\n".join(lines)


def batch_size_spectrum(
    probe: Probe,
    batch_sizes: Sequence[int],
    k: int = 1,
    *,
    seed: int = 0,
    max_batches: int | None = 32,
    tol: float = 1e-4,
    max_iter: int | None = None,
    params: ParamSelection = None,
    curvature: str = "hessian",
    progress: bool = False,
) -> BatchSpectrum:
    """The top eigenvalues of mini-batch Hessians for each batch size m, beside the full data's.

    The probe's samples, in order, are split into disjoint batches of m consecutive samples
    (`Probe.sample_groups(m)`; a last, smaller group is left out). For each batch b the k
    largest eigenvalues of H_b, the Hessian of the mean loss over its m samples, are found by
    Lanczos (`hessian_eigenvalues` with `tol`); each row reports lambda_max(H_b) per batch,
    their mean, standard error and count. The full-data value lambda_max(H) is computed the
    same way on all samples.

    Since H is the mean of the H_b over batches that cover the data and lambda_max is convex
    (a maximum of linear functions of H), Jensen's inequality gives
    mean_b lambda_max(H_b) >= lambda_max(H): mini-batches are sharper than the full data, and
    more so the smaller m is (Granziol et al. 2022 describe the growth with random matrix
    theory). For k > 1 the same holds for the sum of the k largest (Ky Fan), not for each.

    Each value implies a largest stable learning rate for gradient descent on the quadratic
    model of that loss: lr < 2 / lambda_max (the rows report 2 / mean, the full data
    2 / lambda_max(H)). This is gradient descent's threshold, stated as such: SGD's own linear
    stability also involves tr(H) and ||H||_F (Wu and Su 2023), and Adam's differs.

    Args:
        probe: the model, data and loss.
        batch_sizes: the batch sizes m (each in [1, number of samples]).
        k: eigenvalues per batch (1 <= k <= number of probed parameters).
        seed: seeds the Lanczos start vectors and the choice of batches.
        max_batches: at most this many batches per size, drawn without replacement (by `seed`)
            among the full batches, so the cost is bounded when m is small; None: every batch
            (then the mean is >= the full value exactly when m divides the number of samples).
        tol, max_iter: Lanczos tolerance and product budget per batch (see
            `hessian_eigenvalues`).
        params: restrict to a subset of the probed parameters (their Hessian block).
        curvature: "hessian" or "ggn".
        progress: show a progress bar over the batches.

    Returns:
        BatchSpectrum with one BatchRow per batch size (in the order given) and the full-data
        value. A Lanczos run that did not converge warns (RuntimeWarning) and its row says
        converged=False.

    Raises:
        LandscapeError: empty or bad batch sizes, bad k, max_batches, tol or curvature.

    References:
        Granziol, Zohren and Roberts, "Learning Rates as a Function of Batch Size: A Random
        Matrix Theory Approach to Neural Network Training" (JMLR 2022); Wu and Su, "The
        Implicit Regularization of Dynamical Stability in Stochastic Gradient Descent"
        (ICML 2023); Cohen et al., "Gradient Descent on Neural Networks Typically Occurs at the
        Edge of Stability" (ICLR 2021) for the 2 / lr threshold.
    """
    check_probe(probe)
    sizes = _check_sizes(batch_sizes)
    check_int("k", k)
    check_positive("tol", tol)
    if max_batches is not None:
        check_int("max_batches", max_batches)
    operator(probe, curvature)
    generator(seed)
    t0 = time.perf_counter()
    n = probe.n_samples
    too_big = [m for m in sizes if m > n]
    if too_big:
        raise LandscapeError(f"batch sizes {too_big} exceed the number of samples ({n}); "
                             f"choose batch sizes in [1, {n}].")
    eig = dict(k=k, tol=tol, max_iter=max_iter, seed=seed, params=params, curvature=curvature)
    full = cast(EigenResult, hessian_eigenvalues(probe, **eig))  # by=None: one result
    rows = []
    with tqdm(total=len(sizes), disable=not progress, desc="batch sizes") as bar:
        for m in sizes:
            rows.append(_row(probe, m, eig, max_batches, seed))
            bar.update(1)
    top = float(full.eigenvalues[0])
    return BatchSpectrum(rows=rows, full_value=top, full_eigenvalues=full.eigenvalues,
                         full_residual=float(full.residuals[0]), full_stable_lr=_lr(top),
                         n_samples=n, k=k, seed=seed, tol=tol, max_batches=max_batches,
                         n_hvp=full.n_hvp, seconds=time.perf_counter() - t0)


def _check_sizes(batch_sizes: Sequence[int]) -> list[int]:
    if isinstance(batch_sizes, int) and not isinstance(batch_sizes, bool):
        batch_sizes = [batch_sizes]
    sizes = list(batch_sizes)
    if not sizes:
        raise LandscapeError("batch_sizes is empty; give at least one batch size, e.g. [16, 64].")
    for m in sizes:
        check_int("each batch size", m)
    return sizes


def _lr(value: float) -> float:
    """2 / value, gradient descent's stability threshold (inf when value <= 0)."""
    return 2.0 / value if value > 0 else math.inf


def _row(probe: Probe, m: int, eig: dict[str, Any], max_batches: int | None,
         seed: int) -> BatchRow:
    """The row of batch size m: Lanczos on each chosen full batch of m samples."""
    t0 = time.perf_counter()
    groups = probe.sample_groups(m)
    n_full = probe.n_samples // m
    chosen = np.arange(n_full)
    if max_batches is not None and n_full > max_batches:
        gen = torch.Generator().manual_seed(seed)
        chosen = np.sort(torch.randperm(n_full, generator=gen)[:max_batches].numpy())
    results = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in chosen:
            results.append(hessian_eigenvalues(groups[i], **eig))
    failed = sum(not r.converged for r in results)
    if failed:
        warnings.warn(f"batch_size_spectrum: {failed} of {len(chosen)} batches of size {m} did "
                      "not converge; the row says converged=False. Raise max_iter or tol.",
                      RuntimeWarning, stacklevel=3)
    for w in caught:  # anything else is passed on as it was
        if not str(w.message).startswith("hessian_eigenvalues did not converge"):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    eigenvalues = np.stack([r.eigenvalues for r in results])
    values = eigenvalues[:, 0]
    mean = float(values.mean())
    stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return BatchRow(batch_size=m, values=values, mean=mean, stderr=stderr, count=len(values),
                    batches=chosen, eigenvalues=eigenvalues,
                    residuals=np.array([float(r.residuals[0]) for r in results]),
                    stable_lr=_lr(mean), n_batches=n_full,
                    converged=all(r.converged for r in results),
                    n_hvp=sum(r.n_hvp for r in results), seconds=time.perf_counter() - t0)
