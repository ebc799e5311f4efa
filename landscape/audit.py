"""Audit one checkpoint: every standard measure of its minimum, with uncertainty and cost.

`audit(probe)` runs the estimators with defaults a user can accept without reading the papers and
returns an `AuditReport`: one `Measure` per quantity (a headline `value`, its `stderr` where it is
estimated, the settings and the cost), plus the raw results (density, line, surface) for figures.
`AuditReport.write(out_dir)` writes report.json, report.md, report.html and the figures.
"""

from __future__ import annotations

import base64
import html
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ._results import to_jsonable
from .errors import LandscapeError
from .probe import Probe

BUDGETS = ("quick", "standard", "thorough")

# Effort per budget. "quick" audits the digits CNN in 22 s of CPU time (docs/benchmarks/timings.md).
_EFFORT: dict[str, dict[str, Any]] = {
    "quick": dict(eig_tol=1e-3, eig_max_iter=60, trace_hvp=30, density_vectors=1,
                  density_steps=30, ascent_steps=10, average_draws=10, line_points=21,
                  grid_points=9),
    "standard": dict(eig_tol=1e-4, eig_max_iter=150, trace_hvp=99, density_vectors=3,
                     density_steps=60, ascent_steps=20, average_draws=30, line_points=41,
                     grid_points=21),
    "thorough": dict(eig_tol=1e-6, eig_max_iter=400, trace_hvp=300, density_vectors=8,
                     density_steps=90, ascent_steps=40, average_draws=100, line_points=81,
                     grid_points=41),
}

# Standard radii. rho for plain l2 sharpness and flatness is in parameter units (SAM's 0.05);
# adaptive rho is relative to |w| (ASAM's 0.5); average-case rho is a per-coordinate standard
# deviation relative to |w| (10% multiplicative weight noise).
RHO_WORST = 0.05
RHO_ADAPTIVE = 0.5
RHO_AVERAGE = 0.1
RHO_FLATNESS = 0.05

DESCRIPTIONS: dict[str, str] = {
    "loss": "Mean loss over all probed samples at the checkpoint (exact).",
    "accuracy": "Fraction of probed samples classified correctly at the checkpoint (exact).",
    "gradient_norm": "Euclidean norm of the full-data gradient at the checkpoint (exact); "
                     "near zero at a minimum.",
    "hessian_eigenvalues": "Largest algebraic eigenvalues of the Hessian by Lanczos (value: the "
                           "largest); large means a sharp direction.",
    "hessian_smallest_eigenvalue": "Smallest algebraic Hessian eigenvalue; clearly negative "
                                   "means the checkpoint is not a minimum.",
    "hessian_trace": "Trace of the Hessian (sum of all curvatures) by Hutch++, with its "
                     "standard error.",
    "hessian_density": "Spectral density of the Hessian by stochastic Lanczos quadrature (value: "
                       "the density's mean, an estimate of tr(H)/n).",
    "sharpness_worst_l2": f"Largest loss increase found in an l2 ball of radius {RHO_WORST} "
                          "around the weights (a lower bound of the maximum).",
    "sharpness_adaptive_worst_l2": f"Largest loss increase found when each weight moves by at "
                                   f"most a fraction {RHO_ADAPTIVE} of its size in l2 "
                                   "(ASAM; invariant to rescaling layers).",
    "sharpness_average_l2": f"Mean loss increase under Gaussian weight noise of relative size "
                            f"{RHO_AVERAGE}, with its standard error.",
    "first_order_flatness": f"GAM first-order flatness: {RHO_FLATNESS} times the largest "
                            "gradient norm found in the l2 ball of that radius.",
    "loss_line": "Largest loss increase along a filter-normalized random direction for "
                 "|alpha| <= 1 (Li et al. 2018).",
    "loss_surface": "Largest loss increase over a filter-normalized random plane for "
                    "|alpha|, |beta| <= 1 (Li et al. 2018).",
    "pac_bayes_flatness": "PAC-Bayes flatness: the largest std sigma of Gaussian weight noise that "
                          "raises the training error (or loss) by at most 0.1 (Jiang et al. "
                          "2020); larger is flatter.",
    "local_entropy": "Local entropy Phi(w; gamma=100) relative to its Gaussian limit (Chaudhari "
                     "et al. 2017), by Langevin sampling; higher is a wider basin.",
    "quadratic_agreement": "Smallest sharpness radius at which measured sharpness departs from "
                           "the quadratic prediction by more than 25% (NaN: never in the "
                           "radii tried).",
}
# Costly measures beyond the peers: only when asked for with `measures=`.
OPTIONAL_MEASURES = ("pac_bayes_flatness", "local_entropy", "quadratic_agreement")
MEASURES = tuple(k for k in DESCRIPTIONS if k not in ("accuracy", "gradient_norm"))
DEFAULT_MEASURES = tuple(m for m in MEASURES if m not in OPTIONAL_MEASURES)


@dataclass(frozen=True)
class Measure:
    """One audited quantity: headline `value`, its uncertainty, settings and cost.

    `stderr` is the standard error of a Monte Carlo estimate (None when the value is not a
    sample mean); `error_bound` a deterministic bound on |value - truth| where one is known
    (for a Lanczos eigenvalue `EigenResult.error_bounds`: min(r, r^2 / gap) from the true
    residual r = ||H v - theta v|| of the returned vector). Worst-case sharpness and flatness
    are lower bounds of a maximum and carry neither. `error` is None when the measure ran; when
    it raised, it is `{"type": exception class name, "message": its message}`, `value` is NaN
    and `cost` what was spent before the failure.
    """

    name: str
    value: float
    stderr: float | None
    description: str
    settings: dict[str, Any]
    cost: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    error_bound: float | None = None
    error: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


@dataclass(frozen=True)
class AuditReport:
    """Everything `audit` measured. `measures` is keyed by what each number is."""

    measures: dict[str, Measure]
    budget: str
    seed: int
    seconds: float
    n_params: int
    n_samples: int
    results: dict[str, Any] = field(default_factory=dict, repr=False)
    name: str | None = None
    data_name: str | None = None

    @property
    def title(self) -> str:
        """"Audit of NAME" (the checkpoint's name), or "Checkpoint audit" when unnamed."""
        return f"Audit of {self.name}" if self.name else "Checkpoint audit"

    def summary(self) -> str:
        """One plain-text line: what was audited, on which data, with which effort."""
        what = self.name or "an unnamed checkpoint (pass name= to audit)"
        data = f"{self.data_name} ({self.n_samples} samples)" if self.data_name \
            else f"{self.n_samples} samples"
        return (f"Checkpoint: {what}. Data: {data}. {self.n_params} parameters, budget "
                f"{self.budget}, seed {self.seed}, {self.seconds:.1f} s.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "data": self.data_name,
            "budget": self.budget, "seed": self.seed, "seconds": self.seconds,
            "n_params": self.n_params, "n_samples": self.n_samples,
            "measures": {k: m.to_dict() for k, m in self.measures.items()},
        }

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_markdown(self, title: str | None = None, figures: Sequence[str] = ()) -> str:
        """The report as Markdown: a title (default `self.title`), the summary line, one table
        row per measure (cells escaped so no text breaks the table) and the figures."""
        lines = [f"# {_md_text(title or self.title)}", "", _md_text(self.summary()), "",
                 "| measure | value | uncertainty | what it means | cost |",
                 "|---|---|---|---|---|"]
        for m in self.measures.values():
            cells = (f"`{m.name}`", _value_cell(m), _uncertainty(m), m.description,
                     _fmt_cost(m.cost))
            lines.append(_md_row(cells))
        lines.append("")
        for fig in figures:
            lines += [f"![{Path(fig).stem}]({fig})", ""]
        return "\n".join(lines)

    def to_html(self, title: str | None = None, figures: Sequence[Path] = ()) -> str:
        return _html_page(title or self.title, self.summary(), self.measures.values(), figures)

    def write(self, out: str | Path, title: str | None = None,
              column: str | float = "single") -> list[Path]:
        """Write report.json, report.md, report.html and the figures (PDF and 300 dpi PNG) to
        `out`; `column` sizes the figures ("single", "double" or inches, see
        `landscape.plot.figure_size`)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        figures = _audit_figures(self, out, column)
        (out / "report.json").write_text(self.to_json())
        pngs = [f for f in figures if f.suffix == ".png"]
        (out / "report.md").write_text(self.to_markdown(title, [f.name for f in pngs]))
        (out / "report.html").write_text(self.to_html(title, pngs))
        return [out / "report.json", out / "report.md", out / "report.html", *figures]


def audit(
    probe: Probe,
    *,
    budget: str = "standard",
    seed: int = 0,
    measures: Sequence[str] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    name: str | None = None,
    data_name: str | None = None,
) -> AuditReport:
    """Measure the minimum at the probe's weights by every standard measure.

    Args:
        probe: the model, data and loss to audit.
        budget: "quick" (22 s of CPU time for the digits CNN), "standard" or "thorough":
            scales iterations, Hessian-vector products, Monte Carlo draws and grid sizes.
        seed: seed of every stochastic estimator (each gets this seed).
        measures: subset of `landscape.audit.MEASURES` (default: `DEFAULT_MEASURES`, all but
            the costly `OPTIONAL_MEASURES`: PAC-Bayes flatness, local entropy and quadratic-model
            agreement). The loss, accuracy and gradient norm are always reported.
        progress: show progress bars.
        log: called with a line before each measure (the CLI prints them).
        name: what is audited (a checkpoint's file name): the report's title and summary name
            it. The CLI passes the checkpoint's file name.
        data_name: which data (e.g. "digits, train split"), named in the report's summary.

    Returns:
        An `AuditReport`; `report.measures[name].value` is each headline number.

    Raises:
        LandscapeError: unknown budget or measure names.
    """
    from .curvature import hessian_density, hessian_eigenvalues, hessian_trace
    from .directions import random_direction
    from .flatness import first_order_flatness
    from .sharpness import sharpness
    from .surface import loss_line, loss_surface

    if budget not in BUDGETS:
        raise LandscapeError(f"budget must be one of {BUDGETS}; got {budget!r}.")
    chosen = list(DEFAULT_MEASURES) if measures is None else list(measures)
    unknown = [m for m in chosen if m not in MEASURES]
    if unknown:
        raise LandscapeError(f"unknown measures {unknown}; choose among {list(MEASURES)}.")
    effort = _EFFORT[budget]
    report_name = name  # `name` is reused below for each measure's name
    say = log or (lambda _line: None)
    t0 = time.perf_counter()
    out: dict[str, Measure] = {}
    results: dict[str, Any] = {}

    meter = probe.meter()
    ev = probe.evaluate()
    loss0, grad = probe.loss_and_gradient()
    # One evaluation and one gradient give the loss, accuracy and gradient norm: the cost is
    # stated once, on the loss, so summing the cost column counts it once.
    shared = ["loss", "accuracy", "gradient_norm"] if ev.accuracy is not None \
        else ["loss", "gradient_norm"]
    base_cost = {**meter.cost().to_dict(), "shared_by": shared}
    out["loss"] = Measure("loss", ev.loss, None, DESCRIPTIONS["loss"], {}, base_cost)
    if ev.accuracy is not None:
        out["accuracy"] = Measure("accuracy", ev.accuracy, None, DESCRIPTIONS["accuracy"], {},
                                  {"shared_with": "loss"})
    out["gradient_norm"] = Measure("gradient_norm", float(grad.norm()), None,
                                   DESCRIPTIONS["gradient_norm"], {}, {"shared_with": "loss"})

    def run(name: str, compute: Callable[[], Measure]) -> None:
        if name not in chosen:
            return
        say(f"measuring {name} ...")
        started = probe.meter()
        try:
            out[name] = compute()
        except Exception as exc:  # noqa: BLE001 - one failed measure must not lose the report
            failed = _failed(name, exc, started.cost().to_dict())
            out[name] = failed
            say(f"{name} failed: {error_line(failed.error)}")
            warnings.warn(f"audit: {name} failed ({error_line(failed.error)}); the other "
                          "measures are still reported.", RuntimeWarning, stacklevel=3)

    def eigenvalues() -> Measure:
        r = hessian_eigenvalues(probe, k=5, tol=effort["eig_tol"], max_iter=effort["eig_max_iter"],
                                seed=seed, progress=progress)
        results["hessian_eigenvalues"] = r
        m = _measure("hessian_eigenvalues", float(r.eigenvalues[0]), None, r,
                     {"k": 5, "which": "largest", "tol": effort["eig_tol"], "seed": seed})
        return replace(m, error_bound=float(r.error_bounds[0]))

    def smallest() -> Measure:
        r = hessian_eigenvalues(probe, k=1, which="smallest", tol=effort["eig_tol"],
                                max_iter=effort["eig_max_iter"], seed=seed,
                                progress=progress)
        m = _measure("hessian_smallest_eigenvalue", float(r.eigenvalues[0]), None, r,
                     {"which": "smallest", "tol": effort["eig_tol"], "seed": seed})
        return replace(m, error_bound=float(r.error_bounds[0]))

    def trace() -> Measure:
        r = hessian_trace(probe, n_hvp=effort["trace_hvp"], method="hutch++", seed=seed,
                          progress=progress)
        results["hessian_trace"] = r
        return _measure("hessian_trace", float(r.estimate), float(r.stderr), r,
                        {"method": "hutch++", "n_hvp": effort["trace_hvp"], "seed": seed})

    def density() -> Measure:
        r = hessian_density(probe, n_vectors=effort["density_vectors"],
                            n_steps=effort["density_steps"], seed=seed, progress=progress)
        results["hessian_density"] = r
        mean = float((r.nodes * r.weights).sum() / max(r.weights.sum(), 1e-300))
        return _measure("hessian_density", mean, None, r,
                        {"n_vectors": effort["density_vectors"],
                         "n_steps": effort["density_steps"], "seed": seed}, keep=False)

    def worst() -> Measure:
        r = sharpness(probe, RHO_WORST, norm="l2", kind="worst", steps=effort["ascent_steps"],
                      seed=seed, progress=progress)
        return _measure("sharpness_worst_l2", float(r.value), None, r,
                        {"rho": RHO_WORST, "norm": "l2", "kind": "worst", "seed": seed,
                         "steps": effort["ascent_steps"]})

    def adaptive() -> Measure:
        r = sharpness(probe, RHO_ADAPTIVE, norm="l2", kind="worst", adaptive=True,
                      steps=effort["ascent_steps"], seed=seed, progress=progress)
        return _measure("sharpness_adaptive_worst_l2", float(r.value), None, r,
                        {"rho": RHO_ADAPTIVE, "norm": "l2", "kind": "worst", "adaptive": True,
                         "seed": seed, "steps": effort["ascent_steps"]})

    def average() -> Measure:
        r = sharpness(probe, RHO_AVERAGE, norm="l2", kind="average", adaptive=True,
                      n_samples=effort["average_draws"], seed=seed, progress=progress)
        return _measure("sharpness_average_l2", float(r.value), float(r.stderr), r,
                        {"rho": RHO_AVERAGE, "kind": "average", "adaptive": True,
                         "n_samples": effort["average_draws"], "seed": seed})

    def flatness() -> Measure:
        r = first_order_flatness(probe, RHO_FLATNESS, steps=effort["ascent_steps"], seed=seed,
                                 progress=progress)
        return _measure("first_order_flatness", float(r.value), None, r,
                        {"rho": RHO_FLATNESS, "steps": effort["ascent_steps"], "seed": seed})

    def line() -> Measure:
        import numpy as np

        d = random_direction(probe, seed=seed)
        alphas = np.linspace(-1, 1, effort["line_points"])
        r = loss_line(probe, d, alphas, progress=progress)
        results["loss_line"] = r
        rise = float(np.nanmax(r.loss) - loss0)
        return _measure("loss_line", rise, None, r,
                        {"normalization": "filter", "ignore": "biasbn", "seed": seed,
                         "points": len(alphas), "range": [-1, 1]}, keep=False)

    def surface() -> Measure:
        import numpy as np

        dx = random_direction(probe, seed=seed)
        dy = random_direction(probe, seed=seed + 1)
        xs = np.linspace(-1, 1, effort["grid_points"])
        r = loss_surface(probe, dx, dy, xs, xs, progress=progress)
        results["loss_surface"] = r
        rise = float(np.nanmax(r.loss) - loss0)
        return _measure("loss_surface", rise, None, r,
                        {"normalization": "filter", "ignore": "biasbn", "seeds": [seed, seed + 1],
                         "grid": [len(xs), len(xs)], "range": [-1, 1]}, keep=False)

    def pac_bayes() -> Measure:
        from .pacbayes import pac_bayes_flatness

        criterion = "error" if ev.accuracy is not None else "loss"
        r = pac_bayes_flatness(probe, target=0.1, criterion=criterion,
                               n_samples=effort["average_draws"], seed=seed)
        return _measure("pac_bayes_flatness", float(r.value), r.stderr, r,
                        {"target": 0.1, "criterion": criterion, "noise": "isotropic",
                         "n_samples": effort["average_draws"], "seed": seed})

    def entropy() -> Measure:
        from .entropy import local_entropy

        r = local_entropy(probe, [100.0], n_steps=10 * effort["ascent_steps"], seed=seed)
        return _measure("local_entropy", float(r.value[0]), float(r.stderr[0]), r,
                        {"gamma": 100.0, "temperature": r.temperature,
                         "n_steps": 10 * effort["ascent_steps"], "seed": seed})

    def agreement() -> Measure:
        from .agreement import quadratic_agreement

        known = {}
        eig = results.get("hessian_eigenvalues")
        if eig is not None:
            known["top_eigenvalue"] = float(eig.eigenvalues[0])
        tr = results.get("hessian_trace")
        if tr is not None:
            known["trace"], known["trace_stderr"] = float(tr.estimate), float(tr.stderr)
        rhos = (0.01, 0.03, 0.1, 0.3)
        r = quadratic_agreement(probe, rhos, steps=effort["ascent_steps"],
                                n_samples=effort["average_draws"], seed=seed, **known)
        value = float("nan") if r.value is None else float(r.value)
        return _measure("quadratic_agreement", value, None, r,
                        {"rhos": list(rhos), "band": list(r.band), "seed": seed})

    for name, fn in [
        ("hessian_eigenvalues", eigenvalues), ("hessian_smallest_eigenvalue", smallest),
        ("hessian_trace", trace), ("hessian_density", density), ("sharpness_worst_l2", worst),
        ("sharpness_adaptive_worst_l2", adaptive), ("sharpness_average_l2", average),
        ("first_order_flatness", flatness), ("loss_line", line), ("loss_surface", surface),
        ("pac_bayes_flatness", pac_bayes), ("local_entropy", entropy),
        ("quadratic_agreement", agreement),
    ]:
        run(name, fn)
    return AuditReport(out, budget, seed, time.perf_counter() - t0, probe.num_params,
                       probe.n_samples, results, name=report_name, data_name=data_name)


def _failed(name: str, exc: Exception, cost: dict[str, Any]) -> Measure:
    """The entry of a measure that raised: NaN value, the error's type and message, its cost."""
    error = {"type": type(exc).__name__, "message": str(exc)}
    return Measure(name, float("nan"), None, DESCRIPTIONS[name], {}, cost, error=error)


def error_line(error: dict[str, str]) -> str:
    """`"Type: first line of the message"` of a failed measure's `error`."""
    first = error["message"].strip().splitlines()
    return f"{error['type']}: {first[0]}" if first else error["type"]


def _measure(name: str, value: float, stderr: float | None, result: Any,
             settings: dict[str, Any], keep: bool = True) -> Measure:
    """A Measure from an estimator's result: its cost fields, and its whole dict if `keep`."""
    data = result.to_dict() if hasattr(result, "to_dict") else {}
    cost_keys = ("n_hvp", "n_forward", "n_backward", "n_gradient", "seconds", "cost")
    cost = {k: data[k] for k in cost_keys if k in data}
    if isinstance(cost.get("cost"), dict):
        cost = {**cost.pop("cost"), **cost}
    details = data if keep else {k: v for k, v in data.items()
                                 if not isinstance(v, list) or len(v) <= 16}
    return Measure(name, value, stderr, DESCRIPTIONS[name], settings, cost, details)


def _audit_figures(report: AuditReport, out: Path, column: str | float = "single") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import plot

    made: list[Path] = []
    drawers = {
        "loss_line": lambda r: plot.plot_line(r, column=column),
        "loss_surface": lambda r: plot.plot_contour(r, column=column),
        "hessian_density": lambda r: plot.plot_density(r, log=True, column=column),
    }
    for name, draw in drawers.items():
        r = report.results.get(name)
        if r is None:
            continue
        fig = draw(r).figure
        made += plot.save_figure(fig, out / name)
        plt.close(fig)
    return made


def _html_page(title: str, subtitle: str, measures: Any, figures: Sequence[Path],
               extra_tables: Sequence[str] = ()) -> str:
    """A self-contained HTML page: plain-text `subtitle` (escaped, never Markdown), the
    measures' table and the figures inlined as PNG."""
    rows = "".join(
        f"<tr><td><code>{html.escape(m.name)}</code></td><td>{html.escape(_value_cell(m))}</td>"
        f"<td>{html.escape(_uncertainty(m))}</td><td>{html.escape(m.description)}</td>"
        f"<td>{html.escape(_fmt_cost(m.cost))}</td></tr>"
        for m in measures
    )
    imgs = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(f.read_bytes()).decode()}" '
        f'alt="{html.escape(f.stem)}"><figcaption>{html.escape(f.stem)}</figcaption></figure>'
        for f in figures
    )
    table = ("<table><tr><th>measure</th><th>value</th><th>uncertainty</th><th>what it means"
             f"</th><th>cost</th></tr>{rows}</table>") if rows else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        "figure{display:inline-block;margin:8px}img{max-width:480px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>{table}"
        f"{''.join(extra_tables)}{imgs}</body></html>"
    )


def _value_cell(m: Measure) -> str:
    """The value as shown in a report table; for a failed measure, `failed (Type: message)`."""
    return f"failed ({error_line(m.error)})" if m.error is not None else _fmt(m.value)


def _uncertainty(m: Measure) -> str:
    if m.stderr is not None:
        return f"± {_fmt(m.stderr)} (s.e.)"
    if m.error_bound is not None:
        return f"± {_fmt(m.error_bound)} (bound)"
    return "-"


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}"


def _md_text(text: str) -> str:
    """Plain text made safe for Markdown: characters that would start emphasis, code, links,
    HTML or a table cell are backslash-escaped, and line breaks become spaces."""
    out = " ".join(str(text).split("\n"))
    for ch in ("\\", "`", "*", "_", "[", "]", "<", ">", "|", "#"):
        out = out.replace(ch, "\\" + ch)
    return out


def _md_row(cells: Sequence[str]) -> str:
    """One Markdown table row. Cells in backticks stay code (with `|` escaped, as GFM tables
    require); any other cell is escaped with `_md_text`."""
    out = []
    for cell in cells:
        if len(cell) > 1 and cell.startswith("`") and cell.endswith("`"):
            out.append(cell.replace("|", "\\|"))
        else:
            out.append(_md_text(cell))
    return "| " + " | ".join(out) + " |"


def _fmt_cost(cost: dict[str, Any]) -> str:
    """The cost in words: products, passes and seconds; a shared cost names who shares it."""
    if cost.get("shared_with"):
        return f"with {cost['shared_with']} (one evaluation)"
    parts = []
    for key, label in (("n_hvp", "HVP"), ("n_forward", "fwd"), ("n_gradient", "grad"),
                       ("n_backward", "bwd")):
        if cost.get(key):
            parts.append(f"{cost[key]} {label}")
    if cost.get("seconds") is not None:
        parts.append(f"{cost['seconds']:.2f} s")
    text = ", ".join(parts)
    shared = cost.get("shared_by")
    if shared and len(shared) > 1:
        names = [n.replace("_", " ") for n in shared]
        text = f"{', '.join(names[:-1])} and {names[-1]}: {text}"
    return text


