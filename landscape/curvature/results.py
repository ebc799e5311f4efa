"""Result types of the curvature estimators: frozen dataclasses with `to_dict()`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
from torch import Tensor

from .._results import to_jsonable


@dataclass(frozen=True)
class EigenResult:
    """Extreme eigenvalues of the Hessian (or GGN) at w.

    Attributes:
        eigenvalues: shape (k,), descending for `which="largest"` (largest algebraic first),
            ascending for `which="smallest"` (most negative first).
        eigenvectors: None unless `return_vectors=True`; then a (k, num_params) tensor on the
            probe's device whose row i is the unit eigenvector of `eigenvalues[i]`.
        residuals: shape (k,), the true residual ||H v_i - lambda_i v_i|| of each returned unit
            vector v_i (lambda_i its Rayleigh quotient v_i^T H v_i), computed with one product
            per pair on the vector itself (counted in n_hvp), inner products in float64. Not the
            Lanczos estimate beta_m |s_mi|, which assumes an orthonormal basis in exact
            arithmetic and was 40-450x too small on float32 models of 14M-124M parameters.
        error_bounds: shape (k,), an a-posteriori bound on |lambda_true - lambda_i| for the
            eigenvalue of H nearest lambda_i: min(r_i, r_i^2 / gap_i), r_i the residual and
            gap_i the distance from lambda_i to the neighbouring Ritz values less their
            residuals. r_i alone always holds; the Kato-Temple form r_i^2 / gap_i (used when
            gap_i > 0) needs the gap estimate to be right, i.e. no undiscovered eigenvalue
            closer to lambda_i than the neighbouring Ritz values.
        n_hvp: Hessian-vector products spent.
        converged: every true residual <= tol * |lambda_i| (or the roundoff floor, see the
            estimator).
        seconds: wall-clock time.
        which, method, curvature, tol, seed: the settings.
        stored_vectors: parameter-sized vectors the estimator stored beyond the model, one
            gradient and one product (its memory; 2 for the three-term recurrence).
        peak_vectors: the call's peak memory beyond a plain `probe.gradient()`'s peak, in
            parameter-sized vectors: `stored_vectors` plus what one product holds beyond a
            gradient (the kept gradient graph, measured as distinct saved storage, and the
            product's work vectors; `landscape.hvp_memory`). With basis_device="cpu" the basis
            lives in host memory and counts 1 here. Allocator retention and temporaries
            inside autograd are not in it (`scripts/bench_scale.py` compares it with the
            measured resident memory).
        hvp_method: the Hessian-vector product the call used ("cached_graph",
            "double_backward", "forward_over_reverse", "finite_difference"; "ggn" for the
            Gauss-Newton matrix).
        hvp_reason: one line saying why that product (under hvp_method="auto": finite
            differences when measured faster and accurate enough for `tol`).
    """

    eigenvalues: np.ndarray
    eigenvectors: Tensor | None
    residuals: np.ndarray
    n_hvp: int
    converged: bool
    seconds: float
    which: str = "largest"
    method: str = "lanczos"
    curvature: str = "hessian"
    tol: float = 1e-4
    seed: int = 0
    stored_vectors: int = 0
    error_bounds: np.ndarray | None = None
    peak_vectors: float | None = None
    hvp_method: str | None = None
    hvp_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; eigenvectors are left out (too large), their shape is kept."""
        out = to_jsonable(self)
        out["eigenvectors"] = (None if self.eigenvectors is None
                               else list(self.eigenvectors.shape))
        return out


@dataclass(frozen=True)
class TraceResult:
    """A stochastic estimate of tr(H) (or tr(GGN)).

    Attributes:
        estimate: the trace estimate (unbiased for "hutchinson" and "hutch++"; XTrace is
            unbiased too).
        stderr: its standard error (0 when computed exactly, NaN when fewer than 2 samples).
        n_hvp: Hessian-vector products spent (never more than asked for).
        method: "hutchinson", "hutch++", "xtrace" or "exact" (num_params <= n_hvp: the sum of
            e_i^T H e_i, computed exactly).
        stopped_early: the rtol criterion stopped the estimate before n_hvp products.
        sketch_size: Hutch++'s sketch size s (0 for the other methods).
        stored_vectors: parameter-sized vectors stored beyond the model, one gradient and one
            product (the memory).
        seconds, curvature, seed, rtol: cost and settings.
    """

    estimate: float
    stderr: float
    n_hvp: int
    method: str
    seconds: float
    stopped_early: bool = False
    curvature: str = "hessian"
    seed: int = 0
    rtol: float | None = None
    sketch_size: int = 0
    stored_vectors: int = 1

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


@dataclass(frozen=True)
class DensityResult:
    """Spectral density of the Hessian by stochastic Lanczos quadrature.

    Attributes:
        grid: shape (n_grid,), eigenvalue axis.
        density: shape (n_grid,), phi(t) = sum_j weights_j N(t; nodes_j, sigma^2), normalized
            so that its trapezoid integral over `grid` is 1.
        nodes: Ritz values of all Lanczos runs, concatenated (shape (n_nodes,)).
        weights: their quadrature weights tau_j^2 / n_vectors (they sum to 1).
        sigma: width of the Gaussian broadening.
        mean: sum_j weights_j nodes_j, an unbiased estimate of tr(H) / num_params.
        mean_stderr: its standard error over the n_vectors runs (NaN with one vector).
        n_vectors, n_steps, seed, curvature: the settings; n_hvp, seconds: the cost.
        stored_vectors: parameter-sized vectors stored beyond the model, one gradient and one
            product (the memory); reorthogonalized: whether the Lanczos vectors were fully
            reorthogonalized (False: the three-term recurrence, chosen when the basis did not
            fit the budget).
        trace: n * mean (n = num_params), Hutchinson's unbiased estimate of tr(H) with the
            n_vectors start vectors as samples (each run's mean is v^T H v exactly).
        trace_stderr: its standard error: n * (standard deviation of the runs' means) /
            sqrt(n_vectors); with one vector, sqrt(2 n v^T H^2 v) from the run's second moment
            (the Rademacher variance bound 2 tr(H^2), estimated). A few vectors give a large
            error on trained networks: compare it with `hessian_trace` through both errors.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    mean: float
    mean_stderr: float
    n_vectors: int
    n_steps: int
    n_hvp: int
    seconds: float
    seed: int = 0
    curvature: str = "hessian"
    num_params: int = 0
    stored_vectors: int = 0
    reorthogonalized: bool = True
    trace: float = math.nan
    trace_stderr: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


R = TypeVar("R", EigenResult, TraceResult, DensityResult)


@dataclass(frozen=True)
class LayerResults(Generic[R]):
    """One result per parameter group (`by="layer"` or `by="parameter"`), in model order.

    `results["fc1"]` is the estimate for the Hessian block of the parameters of module `fc1`
    (its diagonal block: curvature within the layer, cross-layer terms left out).
    """

    results: dict[str, R] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> R:
        return self.results[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def items(self):
        return self.results.items()

    def to_dict(self) -> dict[str, Any]:
        return {name: {"num_params": self.sizes.get(name), **r.to_dict()}
                for name, r in self.results.items()}

    def js_distances(self, sigma: float | None = None, grid: int = 2000) -> Any:
        """Pairwise Jensen-Shannon distances between the groups' spectral densities (results
        of `hessian_density(..., by=...)`), each re-broadened with one common width `sigma`
        (stated in the returned `BlockDistances`); see `landscape.curvature.blocks`."""
        from .blocks import js_distances

        return js_distances(self.results, sigma, grid)

    def to_markdown(self) -> str:
        """A markdown table: one row per group (the caller prints it)."""
        rows = ["| group | params | value | error | HVPs | seconds |",
                "|---|---:|---:|---:|---:|---:|"]
        for name, r in self.results.items():
            if isinstance(r, TraceResult):
                value, err = f"{r.estimate:.6g}", f"{r.stderr:.2g}"
            elif isinstance(r, DensityResult):  # the density's mean eigenvalue
                value, err = f"mean {r.mean:.6g}", f"{r.mean_stderr:.2g}"
            else:
                value = ", ".join(f"{x:.6g}" for x in r.eigenvalues)
                if not r.converged:  # on the line of the numbers, never only in the JSON
                    value += f" (not converged at tol={r.tol:g}: raise max_iter)"
                err = ", ".join(f"{x:.2g}" for x in r.residuals)
            rows.append(f"| {name} | {self.sizes.get(name, '')} | {value} | {err} | {r.n_hvp} "
                        f"| {r.seconds:.3g} |")
        return "\n".join(rows)
