"""One checkpoint on two data sets: `compare(..., data_b=...)` measures, for each minimum, how
differently the two data sets curve its loss (`hessian_alignment`), and this module builds the
report section of it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .curvature import AlignmentResult, hessian_alignment
from .probe import ParamSelection, Probe
from .report import Row, Section, fmt


def align_across_data(probes: Mapping[str, Probe], data_b: Any, *, loss_fn: Any = None,
                      probe_kwargs: Mapping[str, Any] | None = None,
                      params: ParamSelection = None, seed: int = 0, tol: float = 1e-4,
                      progress: bool = False, say: Callable[[str], None] = lambda _l: None,
                      ) -> dict[str, AlignmentResult]:
    """`hessian_alignment` of each probe's model on its own data (a) against `data_b` (b).

    The probe on b is built on the same model with `loss_fn` (None: the probe's own loss, and
    its `batch_loss`) and `probe_kwargs`.
    """
    out = {}
    for name, probe in probes.items():
        say(f"aligning {name} across the two data sets ...")
        fn = loss_fn if loss_fn is not None else probe.loss_fn
        kwargs = {"batch_loss": probe.batch_loss, **dict(probe_kwargs or {})}
        probe_b = Probe(probe.model, data_b, fn, **kwargs)
        out[name] = hessian_alignment(probe, probe_b, params=params, seed=seed, tol=tol,
                                      progress=progress)
    return out


def alignment_section(results: Mapping[str, AlignmentResult],
                      data_names: tuple[str, str] = ("data", "data_b")) -> Section:
    """The report section: one row per minimum, H_a - H_b and g_a - g_b on the two data sets."""
    a, b = data_names
    rows = []
    for name, r in results.items():
        note = None if r.converged else f"{name}: a Lanczos run did not converge"
        rows.append(Row((
            name, f"{fmt(r.hessian_distance)} (± {fmt(r.hessian_distance_residual)})",
            f"{fmt(r.difference_largest)}, {fmt(r.difference_smallest)}",
            fmt(float(r.eigenvalues_a[0])), fmt(float(r.eigenvalues_b[0])),
            fmt(r.gradient_distance), f"{r.gradient_cosine:.3f}",
            f"{r.n_hvp} HVP, {r.seconds:.2f} s"), note))
    params = sorted({", ".join(r.params) for r in results.values()})
    return Section(
        f"One checkpoint on two data sets (a = {a}, b = {b})",
        ("Spectral norm of H_a - H_b by Lanczos on the difference (both ends of its spectrum; "
         "± the residual of its Ritz pair), the top Hessian eigenvalue on each data set, and "
         "the distance and cosine of the two gradients (Hemati et al. 2023). Parameters: "
         + "; ".join(params) + ".",),
        ("minimum", "spectral norm of H_a - H_b", "largest, smallest eigenvalue of H_a - H_b",
         "top eigenvalue on a", "top eigenvalue on b", "distance of gradients",
         "cosine of gradients", "cost"),
        tuple(rows))
