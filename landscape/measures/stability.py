"""Stability measures (issue 24): ||H||_F, SGD's linear-stability ratio tr(H) lr / 2 and the top
eigenvalue of mini-batch Hessians.

`trace_ratio` needs the learning rate and `batch_spectrum` the batch sizes: the caller passes
them in `MeasureContext.options` (`audit(lr=..., batch_sizes=...)`, `--lr` and `--batch-sizes`
on the command line).
"""

from __future__ import annotations

from typing import Any

from ..errors import LandscapeError
from . import standard  # noqa: F401 - registered first: trace_ratio reuses hessian_trace
from .registry import REGISTRY, Measure, MeasureContext, MeasureSpec, from_result, register

Settings = dict[str, Any]
DEFAULT_BATCH_SIZES = (16, 64, 256, 1024, 4096)


def _frobenius(ctx: MeasureContext, s: Settings) -> Measure:
    from ..curvature import hessian_frobenius

    r = hessian_frobenius(ctx.probe, progress=ctx.progress, **s)
    ctx.results["hessian_frobenius"] = r
    return from_result("hessian_frobenius", float(r.estimate), float(r.stderr), r, s)


def _trace_ratio(ctx: MeasureContext, s: Settings) -> Measure:
    """tr(H) lr / 2, reusing the audit's trace when it was measured (then its cost is shared)."""
    from ..curvature import hessian_trace

    lr = ctx.options.get("lr")
    if lr is None:
        raise LandscapeError("trace_ratio needs the learning rate: pass lr= to audit (--lr on "
                             "the command line).")
    tr = ctx.results.get("hessian_trace")
    reused = tr is not None
    if tr is None:
        tr = hessian_trace(ctx.probe, progress=ctx.progress, **s)
        ctx.results["hessian_trace"] = tr
    settings = {**s, "lr": lr, "trace_reused": reused}
    m = from_result("trace_ratio", float(tr.estimate) * lr / 2, float(tr.stderr) * lr / 2, tr,
                    settings, keep=False)
    if reused:
        m = Measure(m.name, m.value, m.stderr, m.description, settings,
                    {"shared_with": "hessian_trace"}, m.details)
    return m


def batch_sizes_for(n_samples: int, asked: Any = None) -> list[int]:
    """The batch sizes of `batch_spectrum`: those asked for, else 16, 64, 256, ... up to half
    the samples (or a quarter of them for fewer than 32 samples)."""
    if asked:
        return [int(m) for m in asked]
    sizes = [m for m in DEFAULT_BATCH_SIZES if m <= n_samples // 2]
    return sizes or [max(1, n_samples // 4)]


def _batch_spectrum(ctx: MeasureContext, s: Settings) -> Measure:
    from ..curvature import batch_size_spectrum

    sizes = batch_sizes_for(ctx.probe.n_samples, ctx.options.get("batch_sizes"))
    settings = {**s, "batch_sizes": sizes}
    r = batch_size_spectrum(ctx.probe, sizes, progress=ctx.progress, **s)
    ctx.results["batch_spectrum"] = r
    small = min(r.rows, key=lambda row: row.batch_size)
    cost = {"n_hvp": r.n_hvp + sum(row.n_hvp for row in r.rows), "seconds": r.seconds,
            "note": "batch products are over m samples each"}
    details = {"full_value": r.full_value, "full_stable_lr": r.full_stable_lr,
               "rows": [{"batch_size": row.batch_size, "mean": row.mean, "stderr": row.stderr,
                         "count": row.count, "stable_lr": row.stable_lr} for row in r.rows]}
    return Measure("batch_spectrum", small.mean, small.stderr,
                   REGISTRY["batch_spectrum"].description, settings, cost, details)


register(MeasureSpec(
    "hessian_frobenius",
    "Frobenius norm of the Hessian, sqrt(tr(H^2)) = sqrt(sum of squared eigenvalues), by "
    "Hutch++ on H^2, with its standard error (SGD's stability involves it, Wu et al. 2022).",
    lambda e, seed: {"method": "hutch++", "n_hvp": e["trace_hvp"], "seed": seed},
    _frobenius, lambda s: {"n_hvp": s["n_hvp"]}, knob="trace_hvp", knob_min=6, share=0.06))
register(MeasureSpec(
    "trace_ratio",
    "tr(H) x lr / 2: SGD with this learning rate is linearly stable at a minimum only if it is "
    "<= 1 (Wu and Su 2023); measured only when a learning rate is given.",
    lambda e, seed: {"method": "hutch++", "n_hvp": e["trace_hvp"], "seed": seed},
    _trace_ratio, lambda s: {"n_hvp": s["n_hvp"]}, optional=True, knob="trace_hvp",
    knob_min=6, share=0.1))
register(MeasureSpec(
    "batch_spectrum",
    "Top Hessian eigenvalue of disjoint mini-batches (value: the mean at the smallest batch "
    "size, with its s.e.; every size and the full data in the details and figure). Mini-batches "
    "are sharper than the full data; 2 / lambda is gradient descent's largest stable rate.",
    # one batch per 6 trace products: 8 batches per size (quick), 16 (standard), 32 (thorough)
    lambda e, seed: {"tol": e["eig_tol"], "max_iter": e["eig_max_iter"], "seed": seed,
                     "max_batches": max(8, min(32, e["trace_hvp"] // 6))},
    _batch_spectrum,
    lambda s: {"n_hvp": s["max_iter"] * (1 + s["max_batches"] * 3)}, optional=True,
    knob="eig_max_iter", knob_min=20, share=0.1))
