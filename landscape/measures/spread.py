"""How much the data decides, as optional audit measures: the headline curvature measures on
disjoint quarters of the samples (`landscape.data_spread`).

Each is optional (asked for by name in `measures=`), since it repeats its estimator once per
part: `n_splits` times the products of the measure it spreads, on 1 / n_splits of the data each.
"""

from __future__ import annotations

from typing import Any

from . import stability  # noqa: F401 - registered first: these come last in reports
from .registry import Measure, MeasureContext, MeasureSpec, from_result, register

N_SPLITS = 4


def _spread_measure(name: str, estimator: str) -> Any:
    def run(ctx: MeasureContext, s: dict[str, Any]) -> Measure:
        from ..spread import data_spread

        kwargs = {k: v for k, v in s.items() if k not in ("n_splits", "seed")}
        r = data_spread(ctx.probe, estimator, n_splits=s["n_splits"], seed=s["seed"], **kwargs)
        ctx.results[name] = r
        return from_result(name, r.std, None, r, s)
    return run


register(MeasureSpec(
    "top_eigenvalue_data_spread",
    f"How much the top Hessian eigenvalue depends on the samples: its standard deviation "
    f"between {N_SPLITS} disjoint random quarters of the data (each value, the mean and the "
    "relative spread in the details); large against the top eigenvalue means too few samples.",
    lambda e, seed: {"n_splits": N_SPLITS, "tol": e["eig_tol"], "max_iter": e["eig_max_iter"],
                     "seed": seed},
    _spread_measure("top_eigenvalue_data_spread", "top_eigenvalue"),
    # n_splits runs of max_iter products, each over 1 / n_splits of the data (the products of
    # the parts' own probes): max_iter full-data products of time
    lambda s: {"n_hvp": s["max_iter"]}, optional=True, knob="eig_max_iter",
    knob_min=2, share=0.1))
register(MeasureSpec(
    "trace_data_spread",
    f"How much the Hessian trace depends on the samples: its standard deviation between "
    f"{N_SPLITS} disjoint random quarters of the data (Hutch++ on each; each value and its own "
    "standard error in the details).",
    lambda e, seed: {"n_splits": N_SPLITS, "method": "hutch++", "n_hvp": e["trace_hvp"],
                     "seed": seed},
    _spread_measure("trace_data_spread", "trace"),
    lambda s: {"n_hvp": s["n_hvp"]}, optional=True, knob="trace_hvp",
    knob_min=6, share=0.1))
