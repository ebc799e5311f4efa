"""Shared plumbing of the curvature estimators: the operator, parameter blocks, groups."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor

from .._checks import check_option
from .._model_prep import require_precision
from .._vector_space import using
from ..errors import LandscapeError
from ..hvp_memory import heap_guarded, product_vectors
from ..probe import ParamSelection, Probe
from .blocks import groups
from .results import LayerResults

CURVATURES = ("hessian", "ggn")

MatVec = Callable[[Tensor], Tensor]


def operator(probe: Probe, curvature: str) -> MatVec:
    """The matrix-vector product of the chosen curvature matrix at w (flat vectors)."""
    check_option("curvature", curvature, CURVATURES)
    require_precision(probe, "the Hessian")
    if curvature == "ggn":
        if probe.batch_loss is not None:
            raise LandscapeError(
                "curvature='ggn' needs the model outputs and loss_fn separately; it is not "
                "available with batch_loss=. Use curvature='hessian' instead."
            )
        return probe.ggn_vp
    return probe.hvp


def select(probe: Probe, params: ParamSelection) -> Probe:
    """The probe itself, or the probe restricted to `params` (its Hessian block)."""
    return probe if params is None else probe.restricted(params)


def per_group(probe: Probe, by: str | dict | None, estimate: Callable[[Probe], Any]) -> Any:
    """`estimate(probe)` for the whole probe (by=None) or a LayerResults over its groups
    ("layer", "parameter", or a dict of block name -> names or glob patterns), with the heap's
    free pages given back as resident memory grows on a CPU probe (`hvp_memory.HeapGuard`)."""
    vector = probe.num_params * probe.dtype.itemsize
    with heap_guarded(vector, probe.device.type == "cpu"):
        if by is None:
            with using(getattr(probe, "layout", None)):  # a sharded model: sums over the ranks
                return estimate(probe)
        results, sizes = {}, {}
        for name, names in groups(probe, by).items():
            sub = probe.restricted(names)
            results[name] = estimate(sub)
            sizes[name] = sub.num_params
        return LayerResults(results, sizes)


@contextlib.contextmanager
def products_for(probe: Probe, curvature: str, tol: float, checked: bool = True
                 ) -> Iterator[str]:
    """Inside the block the Hessian's products are finite differences where they are faster
    and accurate enough for relative tolerance `tol` (`landscape.hvp_choice.fd_verdict`; the
    probe's "auto" method is settled first), for an estimator that checks its results with
    exact products (`checked`; else the probe's own method); yields the one-line reason."""
    if curvature != "hessian" or not checked:
        yield "Gauss-Newton products" if curvature != "hessian" else "the probe's method"
        return
    with probe.products.for_tolerance(tol) as reason:
        yield reason


def held_vectors(probe: Probe) -> float:
    """Vectors a product holds beyond a gradient's peak, of the products a call inside
    `products_for` uses (its checks are exact where it iterates with finite differences)."""
    held = product_vectors(probe)
    rebuilt = probe.products.chosen_fd  # the exact checks build the dropped graph again
    with probe.products.exact_only():
        return max(held, product_vectors(probe, rebuilt))


def hessian_into(probe: Probe, curvature: str, home: Any, bar: Any
                 ) -> Callable[[Tensor, Tensor], Tensor] | None:
    """`into(v, out)`: the Hessian product H v written into out (`probe.hvp(v, out=out)`), one
    step on the progress bar `bar`; None for Gauss-Newton products or when the estimator's
    vectors live elsewhere than the probe's device (`home`)."""
    if curvature != "hessian" or home != probe.device:
        return None

    def into(v: Tensor, out: Tensor) -> Tensor:
        bar.update(1)
        return probe.hvp(v, out=out)

    return into


def exact_check(probe: Probe, matvec: MatVec) -> MatVec | None:
    """`matvec` with exact products where `products_for` chose finite differences (for the
    returned pairs' true residuals); None where the products are exact anyway."""
    if not probe.products.chosen_fd:
        return None

    def exact(v: Tensor) -> Tensor:
        with probe.products.exact_only():
            return matvec(v)

    return exact
