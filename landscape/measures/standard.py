"""The standard measures of a minimum: curvature, sharpness, flatness, 1D and 2D loss, and the
costly optional ones (PAC-Bayes flatness, local entropy, quadratic-model agreement).

Each is registered with its settings for a budget's effort (`EFFORT` in `registry`), how it
runs and what it is estimated to cost. `cost` counts Hessian-vector products (`n_hvp`),
gradients (`n_gradient`) and forward passes over the probe's data (`n_forward`); an iterative
estimator that stops early spends less.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from .flags import density_flags, eigen_flags, trace_flags
from .registry import Measure, MeasureContext, MeasureSpec, from_result, register

Settings = dict[str, Any]

# Standard radii. rho for plain l2 sharpness and flatness is in parameter units (SAM's 0.05);
# adaptive rho is relative to |w| (ASAM's 0.5); average-case rho is a per-coordinate standard
# deviation relative to |w| (10% multiplicative weight noise).
RHO_WORST = 0.05
RHO_ADAPTIVE = 0.5
RHO_AVERAGE = 0.1
RHO_FLATNESS = 0.05


# ------------------------------------------------------------------------------- curvature
def _eigenvalues(ctx: MeasureContext, s: Settings, name: str = "hessian_eigenvalues") -> Measure:
    from ..curvature import hessian_eigenvalues

    r = hessian_eigenvalues(ctx.probe, progress=ctx.progress, **s)
    ctx.results[name] = r
    m = from_result(name, float(r.eigenvalues[0]), None, r, s,
                    error_bound=float(r.error_bounds[0]))
    marked, note = eigen_flags(r, s)
    return replace(m, values=[float(x) for x in r.eigenvalues], unconverged=marked, note=note)


def _smallest(ctx: MeasureContext, s: Settings) -> Measure:
    return _eigenvalues(ctx, s, "hessian_smallest_eigenvalue")


def _trace(ctx: MeasureContext, s: Settings) -> Measure:
    from ..curvature import hessian_trace

    target = s.get("rel_stderr")
    r = hessian_trace(ctx.probe, progress=ctx.progress, **_estimator_settings(s))
    ctx.results["hessian_trace"] = r
    m = from_result("hessian_trace", float(r.estimate), float(r.stderr), r, s)
    marked, note = trace_flags(r, s, target)
    return replace(m, unconverged=marked, note=note)


def _density(ctx: MeasureContext, s: Settings) -> Measure:
    from ..curvature import hessian_density

    r = hessian_density(ctx.probe, progress=ctx.progress, **_estimator_settings(s))
    ctx.results["hessian_density"] = r
    mean = float((r.nodes * r.weights).sum() / max(r.weights.sum(), 1e-300))
    # the mean's standard error (DensityResult.trace_stderr / n: over the runs, or with one run
    # the Rademacher variance bound), so a report can set n * mean against the trace
    stderr = r.trace_stderr / max(r.num_params, 1)
    m = from_result("hessian_density", mean, stderr, r, s, keep=False)
    marked, note = density_flags(r, s, s.get("rel_stderr"))
    return replace(m, unconverged=marked, note=note)


def _estimator_settings(s: Settings) -> Settings:
    """The settings without the report's tolerance (`rel_stderr`), which no estimator takes."""
    return {k: v for k, v in s.items() if k != "rel_stderr"}


def _lanczos_cost(s: Settings) -> dict[str, int]:
    return {"n_hvp": int(s.get("max_iter") or 100)}


def _lanczos_spec(name: str, description: str, which: str, k: int,
                  share: float) -> MeasureSpec:
    return MeasureSpec(
        name, description,
        lambda e, seed: {"k": k, "which": which, "tol": e["eig_tol"],
                         "max_iter": e["eig_max_iter"], "seed": seed},
        _smallest if which == "smallest" else _eigenvalues, _lanczos_cost,
        knob="eig_max_iter", knob_min=k + 1, share=share)


register(_lanczos_spec(
    "hessian_eigenvalues", "Largest algebraic eigenvalues of the Hessian by Lanczos (value: "
    "the largest); large means a sharp direction.", "largest", 5, 0.34))
register(_lanczos_spec(
    "hessian_smallest_eigenvalue", "Smallest algebraic Hessian eigenvalue; clearly negative "
    "means the checkpoint is not a minimum.", "smallest", 1, 0.08))
register(MeasureSpec(
    "hessian_trace",
    "Trace of the Hessian (sum of all curvatures) by Hutch++, with its standard error.",
    lambda e, seed: {"method": "hutch++", "n_hvp": e["trace_hvp"], "seed": seed,
                     "rel_stderr": e["rel_stderr"]},
    _trace, lambda s: {"n_hvp": s["n_hvp"]}, knob="trace_hvp", knob_min=6, share=0.16))
register(MeasureSpec(
    "hessian_density",
    "Spectral density of the Hessian by stochastic Lanczos quadrature (value: the density's "
    "mean, an estimate of tr(H)/n).",
    lambda e, seed: {"n_vectors": e["density_vectors"], "n_steps": e["density_steps"],
                     "seed": seed, "rel_stderr": e["rel_stderr"]},
    _density, lambda s: {"n_hvp": s["n_vectors"] * s["n_steps"]},
    knob="density_steps", knob_min=5, share=0.08))


# ------------------------------------------------------------------- sharpness and flatness
def _sharpness_measure(name: str) -> Any:
    def run(ctx: MeasureContext, s: Settings) -> Measure:
        from ..sharpness import sharpness

        r = sharpness(ctx.probe, progress=ctx.progress, **s)
        stderr = float(r.stderr) if s.get("kind") == "average" else None
        return from_result(name, float(r.value), stderr, r, s)
    return run


def _ascent_cost(s: Settings) -> dict[str, int]:
    return {"n_gradient": int(s.get("steps", 20)) + 1, "n_forward": int(s.get("steps", 20)) + 1}


def _worst_spec(name: str, description: str, rho: float, extra: Settings) -> MeasureSpec:
    return MeasureSpec(
        name, description,
        lambda e, seed: {"rho": rho, "norm": "l2", "kind": "worst", **extra, "seed": seed,
                         "steps": e["ascent_steps"]},
        _sharpness_measure(name), _ascent_cost, knob="ascent_steps", share=0.04)


register(_worst_spec(
    "sharpness_worst_l2", f"Largest loss increase found in an l2 ball of radius {RHO_WORST} "
    "around the weights (a lower bound of the maximum).", RHO_WORST, {}))
register(_worst_spec(
    "sharpness_adaptive_worst_l2", "Largest loss increase found when each weight moves by at "
    f"most a fraction {RHO_ADAPTIVE} of its size in l2 (ASAM; invariant to rescaling layers).",
    RHO_ADAPTIVE, {"adaptive": True}))
register(MeasureSpec(
    "sharpness_average_l2",
    f"Mean loss increase under Gaussian weight noise of relative size {RHO_AVERAGE}, with its "
    "standard error.",
    lambda e, seed: {"rho": RHO_AVERAGE, "norm": "l2", "kind": "average", "adaptive": True,
                     "n_samples": e["average_draws"], "seed": seed},
    _sharpness_measure("sharpness_average_l2"),
    lambda s: {"n_forward": int(s["n_samples"]) + 1}, knob="average_draws", knob_min=2,
    share=0.03))


def _flatness(ctx: MeasureContext, s: Settings) -> Measure:
    from ..flatness import first_order_flatness

    r = first_order_flatness(ctx.probe, progress=ctx.progress, **s)
    return from_result("first_order_flatness", float(r.value), None, r, s)


register(MeasureSpec(
    "first_order_flatness",
    f"GAM first-order flatness: {RHO_FLATNESS} times the largest gradient norm found in the l2 "
    "ball of that radius.",
    lambda e, seed: {"rho": RHO_FLATNESS, "steps": e["ascent_steps"], "seed": seed},
    # counted by the probe: a gradient and a product a step, and two gradients at w
    _flatness, lambda s: {"n_hvp": s["steps"], "n_gradient": s["steps"] + 2},
    knob="ascent_steps", share=0.06))


# ------------------------------------------------------------------------- lines and planes
def _rise(ctx: MeasureContext, loss: Any) -> float:
    """Largest loss along the line or plane above the loss at w (NaN points skipped)."""
    base = ctx.loss if ctx.loss is not None else ctx.probe.loss()
    return float(np.nanmax(loss) - base)


def _line(ctx: MeasureContext, s: Settings) -> Measure:
    from ..directions import random_direction
    from ..surface import loss_line

    d = random_direction(ctx.probe, normalization=s["normalization"], ignore=s["ignore"],
                         seed=s["seed"])
    r = loss_line(ctx.probe, d, np.linspace(*s["range"], s["points"]), progress=ctx.progress)
    ctx.results["loss_line"] = r
    return from_result("loss_line", _rise(ctx, r.loss), None, r, s, keep=False)


def _surface(ctx: MeasureContext, s: Settings) -> Measure:
    from ..directions import random_direction
    from ..surface import loss_surface

    dx, dy = (random_direction(ctx.probe, normalization=s["normalization"], ignore=s["ignore"],
                               seed=seed) for seed in s["seeds"])
    xs = np.linspace(*s["range"], s["grid"][0])
    ys = np.linspace(*s["range"], s["grid"][1])
    r = loss_surface(ctx.probe, dx, dy, xs, ys, progress=ctx.progress)
    ctx.results["loss_surface"] = r
    return from_result("loss_surface", _rise(ctx, r.loss), None, r, s, keep=False)


register(MeasureSpec(
    "loss_line",
    "Largest loss increase along a filter-normalized random direction for |alpha| <= 1 (Li et "
    "al. 2018).",
    lambda e, seed: {"normalization": "filter", "ignore": "biasbn", "seed": seed,
                     "points": e["line_points"], "range": [-1, 1]},
    _line, lambda s: {"n_forward": s["points"]}, knob="line_points", knob_min=5, share=0.02))
register(MeasureSpec(
    "loss_surface",
    "Largest loss increase over a filter-normalized random plane for |alpha|, |beta| <= 1 (Li "
    "et al. 2018).",
    lambda e, seed: {"normalization": "filter", "ignore": "biasbn", "seeds": [seed, seed + 1],
                     "grid": [e["grid_points"], e["grid_points"]], "range": [-1, 1]},
    _surface, lambda s: {"n_forward": s["grid"][0] * s["grid"][1]}, knob="grid_points",
    knob_min=3, share=0.05))


# ----------------------------------------------------------------- optional (costly) measures
def _pac_bayes(ctx: MeasureContext, s: Settings) -> Measure:
    from ..pacbayes import pac_bayes_flatness

    if s["criterion"] == "error" and not ctx.has_accuracy:
        s = {**s, "criterion": "loss"}
    r = pac_bayes_flatness(ctx.probe, **s)
    return from_result("pac_bayes_flatness", float(r.value), r.stderr, r, s)


def _entropy(ctx: MeasureContext, s: Settings) -> Measure:
    from ..entropy import local_entropy

    r = local_entropy(ctx.probe, [s["gamma"]], n_steps=s["n_steps"], seed=s["seed"])
    return from_result("local_entropy", float(r.value[0]), float(r.stderr[0]), r,
                       {**s, "temperature": r.temperature})


def _agreement(ctx: MeasureContext, s: Settings) -> Measure:
    from ..agreement import quadratic_agreement

    known = {}
    eig = ctx.results.get("hessian_eigenvalues")
    if eig is not None:
        known["top_eigenvalue"] = float(eig.eigenvalues[0])
    tr = ctx.results.get("hessian_trace")
    if tr is not None:
        known["trace"], known["trace_stderr"] = float(tr.estimate), float(tr.stderr)
    r = quadratic_agreement(ctx.probe, s["rhos"], steps=s["steps"], n_samples=s["n_samples"],
                            seed=s["seed"], **known)
    value = float("nan") if r.value is None else float(r.value)
    return from_result("quadratic_agreement", value, None, r, {**s, "band": list(r.band)})


def _pac_bayes_settings(e: dict[str, Any], seed: int) -> Settings:
    # criterion "error" needs an accuracy; audit swaps in "loss" for tasks without one.
    return {"target": 0.1, "criterion": "error", "n_samples": e["average_draws"], "seed": seed}


register(MeasureSpec(
    "pac_bayes_flatness",
    "PAC-Bayes flatness: the largest std sigma of Gaussian weight noise that raises the training "
    "error (or loss) by at most 0.1 (Jiang et al. 2020); larger is flatter.",
    _pac_bayes_settings, _pac_bayes,
    lambda s: {"n_forward": 60 * s["n_samples"]}, optional=True, knob="average_draws",
    knob_min=2, share=0.1))
register(MeasureSpec(
    "local_entropy",
    "Local entropy Phi(w; gamma=100) relative to its Gaussian limit (Chaudhari et al. 2017), by "
    "Langevin sampling; higher is a wider basin.",
    lambda e, seed: {"gamma": 100.0, "n_steps": 10 * e["ascent_steps"], "seed": seed},
    # local_entropy's grid: 4 nodes a decade over gamma to 100 gamma, 9 nodes; each node runs
    # 50 burn-in steps and n_steps recorded ones, a gradient each, and one more
    _entropy, lambda s: {"n_gradient": 9 * (s["n_steps"] + 51), "n_forward": 1}, optional=True,
    knob="ascent_steps",
    share=0.1))
register(MeasureSpec(
    "quadratic_agreement",
    "Smallest sharpness radius at which measured sharpness departs from the quadratic "
    "prediction by more than 25% (NaN: never in the radii tried).",
    lambda e, seed: {"rhos": [0.01, 0.03, 0.1, 0.3], "steps": e["ascent_steps"],
                     "n_samples": e["average_draws"], "seed": seed},
    _agreement,
    lambda s: {"n_gradient": len(s["rhos"]) * (s["steps"] + 1),
               "n_forward": len(s["rhos"]) * (s["n_samples"] + 3)}, optional=True,
    knob="ascent_steps", share=0.1))
