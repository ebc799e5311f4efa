"""Compare minima: the audit's measures side by side, overlaid curves, pairwise barriers.

`compare({"sgd": probe_a, "adam": "adam.pt"}, model_fn=..., data=...)` audits each minimum with
the same seed (so the filter-normalized 1D curves are drawn along the same kind of direction),
interpolates every pair linearly with its loss and error barriers, distance and cosine, and
returns a `Comparison` that writes comparison.json, comparison.md and the figures.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ._results import to_jsonable
from ._validate import OneOf, validate_params
from .audit import AuditReport, audit, value_cell
from .checkpoint import load_checkpoint
from .errors import LandscapeError
from .measures import BUDGETS, measure_names
from .probe import Probe
from .provenance import provenance, provenance_section
from .report import Report, Row, Section, fmt, save_figures

# The 2D surface is the costliest measure and is not drawn side by side: left out by default.
DEFAULT_MEASURES = tuple(m for m in measure_names(optional=False) if m != "loss_surface")


@dataclass(frozen=True)
class PairResult:
    """Linear interpolation from minimum `a` (alpha 0) to minimum `b` (alpha 1).

    `barrier` (loss) and `error_barrier` are on the raw weights; `aligned_*` after permuting the
    hidden units of `b` to match `a` (Git Re-Basin weight matching, `align_weights`), None with
    an `alignment_note` when the architecture cannot be aligned.
    """

    a: str
    b: str
    barrier: float
    barrier_alpha: float
    error_barrier: float | None
    distance: float
    cosine: float
    alphas: np.ndarray
    loss: np.ndarray
    error: np.ndarray | None
    aligned_barrier: float | None = None
    aligned_error_barrier: float | None = None
    aligned_distance: float | None = None
    alignment_note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


BUFFER_NOTES = {
    "interpolate": "interpolated between the two minima's own (f(0), f(1) are their losses)",
    "recompute": "re-estimated at every alpha on the first minimum's data (the 'repair' of Git "
                 "Re-Basin)",
    "keep": "the first minimum's at every alpha",
}
# "auto": re-estimate BatchNorm statistics when the model has them (interpolated statistics
# overstate the barriers of BatchNorm networks, Jordan et al. 2023), else interpolate.
COMPARE_BUFFERS = ("auto", "interpolate", "recompute", "keep")


def resolve_buffers(buffers: str, model: nn.Module) -> tuple[str, str]:
    """(the buffer convention used, why): "auto" becomes "recompute" for a model with BatchNorm
    running statistics and "interpolate" otherwise."""
    from .batchnorm import running_stat_modules

    if buffers != "auto":
        return buffers, "asked for"
    if running_stat_modules(model):
        return "recompute", "chosen automatically: the model has BatchNorm statistics"
    return "interpolate", "chosen automatically: the model has no BatchNorm statistics"


@dataclass(frozen=True)
class Comparison:
    """Audits of several minima (same seed and budget) and every pair's interpolation."""

    audits: dict[str, AuditReport]
    pairs: list[PairResult]
    seed: int
    budget: str
    seconds: float
    lines: dict[str, Any] = field(default_factory=dict, repr=False)
    interpolations: dict[str, Any] = field(default_factory=dict, repr=False)
    buffers: str = "interpolate"
    # with `data_b`: name -> AlignmentResult of that minimum on data (a) against data_b (b)
    across_data: dict[str, Any] = field(default_factory=dict)
    data_names: tuple[str, str] = ("data", "data_b")
    buffers_reason: str = "asked for"
    aligned_interpolations: dict[str, Any] = field(default_factory=dict, repr=False)
    provenance: dict[str, Any] | None = None

    @property
    def names(self) -> list[str]:
        return list(self.audits)

    def table(self) -> dict[str, dict[str, dict[str, float | None]]]:
        """`table[measure][name] = {"value", "stderr", "error_bound", "error", "values",
        "unconverged", "note"}` for every measure (`error`: None, or the failed measure's
        `{"type", "message"}`; `values`, `unconverged`, `note`: see `Measure`)."""
        rows: dict[str, dict[str, dict[str, Any]]] = {}
        for name, report in self.audits.items():
            for key, m in report.measures.items():
                rows.setdefault(key, {})[name] = {
                    "value": m.value, "stderr": m.stderr, "error_bound": m.error_bound,
                    "error": m.error, "values": m.values, "unconverged": m.unconverged,
                    "note": m.note}
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": self.names, "seed": self.seed, "budget": self.budget,
            "seconds": self.seconds, "buffers": self.buffers,
            "buffers_reason": self.buffers_reason,
            "table": to_jsonable(self.table()),
            "audits": {k: r.to_dict() for k, r in self.audits.items()},
            "pairs": [p.to_dict() for p in self.pairs],
            "across_data": {k: r.to_dict() for k, r in self.across_data.items()},
            "data_names": list(self.data_names),
            "tests": [t.to_dict() for t in self.tests()],
            "provenance": self.provenance,
        }

    def tests(self) -> list[Any]:
        """For every pair and measure, the test of their difference (`DifferenceTest`: z-test
        with Holm's adjustment over the pair's measures, exact or by error bounds)."""
        from .compare_stats import difference_tests

        return difference_tests(self.audits)

    def to_report(self) -> Report:
        """The comparison's content: the measures side by side, the tests of their
        differences, every pair's barriers, the alignment across data sets, the provenance."""
        names = self.names
        summary = (f"Budget {self.budget}, seed {self.seed}, {self.seconds:.1f} s. x ± s is an "
                   "estimate with one standard error; x (± b) a Lanczos eigenvalue with its "
                   "residual bound; worst-case sharpness and flatness are lower bounds of a "
                   "maximum; other values are exact for the data.")
        rows = tuple(
            Row((f"`{key}`", *(value_cell(self.audits[n].measures[key], uncertainty=True)
                               if key in self.audits[n].measures else "not measured"
                               for n in names)))
            for key in self.table())
        sections = [Section(columns=("measure", *names), rows=rows)]
        if len(names) > 1:
            from .compare_stats import tests_section

            sections.append(tests_section(self.tests()))
        if self.pairs:
            sections.append(self._pairs_section())
        if self.across_data:
            from .compare_data import alignment_section

            sections.append(alignment_section(self.across_data, self.data_names))
        if self.provenance:
            sections.append(provenance_section(self.provenance))
        return Report("Comparison of minima", summary, tuple(sections), self.to_dict())

    def _pairs_section(self) -> Section:
        rows = tuple(Row((
            f"{p.a} -> {p.b}", fmt(p.barrier), f"{p.barrier_alpha:.2f}",
            _or(p.error_barrier, "no accuracy"), fmt(p.distance), f"{p.cosine:.3f}",
            _or(p.aligned_barrier, "not aligned"), _or(p.aligned_error_barrier, "not aligned"),
            _or(p.aligned_distance, "not aligned"))) for p in self.pairs)
        notes = sorted({p.alignment_note for p in self.pairs if p.alignment_note})
        return Section(
            "Linear interpolation between minima",
            (f"BatchNorm statistics along the paths: {BUFFER_NOTES[self.buffers]} "
             f"({self.buffers}, {self.buffers_reason}).",),
            ("pair", "loss barrier", "at alpha", "error barrier", "distance", "cosine",
             "aligned loss barrier", "aligned error barrier", "aligned distance"),
            rows, tuple(f"Alignment not possible: {n}" for n in notes))

    def to_json(self, indent: int = 2) -> str:
        return self.to_report().to_json(indent)

    def to_markdown(self, figures: Sequence[str] = ()) -> str:
        return self.to_report().to_markdown(figures)

    def write(self, out: str | Path, column: str | float = "single",
              log: bool = True) -> list[Path]:
        """Write comparison.json, comparison.md, comparison.html and the figures (PDF and
        300 dpi PNG, sized by `column`: "single", "double" or inches; logarithmic loss axes
        unless `log=False`) to `out`."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        figures = comparison_figures(self, out, column, log)
        return [*self.to_report().write(out, "comparison", figures), *figures]


@validate_params(buffers=OneOf(COMPARE_BUFFERS), budget=OneOf(BUDGETS))
def compare(
    minima: Mapping[str, Probe | str | os.PathLike | Mapping[str, Any] | nn.Module],
    *,
    model_fn: Callable[[], nn.Module] | None = None,
    data: Any = None,
    loss_fn: Callable[..., Any] | None = None,
    probe_kwargs: Mapping[str, Any] | None = None,
    budget: str = "quick",
    seed: int = 0,
    measures: Sequence[str] | None = None,
    interpolation_points: int = 21,
    align: bool = True,
    buffers: str = "auto",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    data_b: Any = None,
    data_names: tuple[str, str] = ("data", "data_b"),
    alignment_params: Any = None,
    checkpoints: Mapping[str, str | os.PathLike] | None = None,
) -> Comparison:
    """Measure several minima the same way and compare them.

    Args:
        minima: name -> a `Probe`, a checkpoint (path or state dict) or a model. Checkpoints and
            models are probed on `data` with `loss_fn`; checkpoints are loaded into `model_fn()`.
        model_fn: builds a fresh model for each checkpoint.
        data, loss_fn, probe_kwargs: how to build probes for checkpoints and models.
        budget, seed, measures: as for `audit` (default measures: all but the 2D surface).
        interpolation_points: alphas in [0, 1] for each pair's linear interpolation
            f(a) = L((1 - a) w_A + a w_B), evaluated on the data of the first of the pair.
            Floating-point buffers (BatchNorm statistics) follow `buffers`: "auto" (default:
            "recompute" when the model has BatchNorm running statistics, else "interpolate"),
            or as in `landscape.interpolate`: "interpolate" (f(0) and f(1) are the two minima's
            own losses), "recompute" (re-estimated at every alpha on the first probe's data:
            the fair barrier for BatchNorm networks, Git Re-Basin's "repair", one more forward
            pass per point) or "keep". The report states which was used and why.
        align: also report each pair's barriers after permutation alignment (Ainsworth et al.
            2023, `landscape.align_weights`), with the same buffer convention.
        data_b: a second data set: each minimum is also measured on its own data (a) against
            this one (b) by `hessian_alignment` (spectral norm of H_a - H_b, top eigenvalues,
            gradient distance and cosine), reported in `Comparison.across_data`. One checkpoint
            and `data_b` compare one minimum across two data sets (domains).
        data_names: how the report names the two data sets.
        alignment_params: the parameters `hessian_alignment` compares (e.g. the classifier
            head, "fc"); None: all probed parameters.

        checkpoints: name -> the checkpoint file of that minimum, hashed (SHA-256) into the
            report's provenance; by default the minima given as paths.

    Returns:
        A `Comparison`: `comparison.table()[measure][name]` and `comparison.pairs`.
    """
    from .surface import interpolate

    if len(minima) < 1:
        raise LandscapeError("compare needs at least one minimum (a dict name -> checkpoint).")
    say = log or (lambda _line: None)
    t0 = time.perf_counter()
    probes = {name: _as_probe(name, item, model_fn, data, loss_fn, probe_kwargs or {})
              for name, item in minima.items()}
    buffers, buffers_reason = resolve_buffers(buffers, next(iter(probes.values())).model)
    chosen = DEFAULT_MEASURES if measures is None else tuple(measures)
    files = dict(checkpoints) if checkpoints is not None else {
        n: item for n, item in minima.items() if isinstance(item, (str, os.PathLike))}
    described = None if data_names[0] == "data" else data_names[0]
    audits: dict[str, AuditReport] = {}
    for name, probe in probes.items():
        say(f"auditing {name} ...")
        audits[name] = audit(probe, budget=budget, seed=seed, measures=chosen,
                             progress=progress, log=log, name=name, data_name=described,
                             checkpoint=files.get(name))
    pairs, interpolations, aligned = [], {}, {}
    alphas = np.linspace(0.0, 1.0, interpolation_points)
    for a, b in itertools.combinations(probes, 2):
        say(f"interpolating {a} -> {b} ...")
        line = interpolate(probes[a], probes[b].model, alphas, buffers=buffers,
                           progress=progress)
        pair = _pair(a, b, line)
        if align:
            pair, aligned_line = _with_alignment(pair, probes[a], probes[b].model, alphas,
                                                 buffers)
            if aligned_line is not None:
                aligned[f"{a} -> {b}"] = aligned_line
        pairs.append(pair)
        interpolations[f"{a} -> {b}"] = line
    across = {}
    if data_b is not None:
        from .compare_data import align_across_data

        across = align_across_data(probes, data_b, loss_fn=loss_fn, probe_kwargs=probe_kwargs,
                                   params=alignment_params, seed=seed, progress=progress,
                                   say=say)
    lines = {n: r.results["loss_line"] for n, r in audits.items() if "loss_line" in r.results}
    return Comparison(audits, pairs, seed, budget, time.perf_counter() - t0, lines,
                      interpolations, buffers, across, tuple(data_names),
                      buffers_reason=buffers_reason, aligned_interpolations=aligned,
                      provenance=provenance(next(iter(probes.values())), seed=seed,
                                            budget=budget, data=described, checkpoints=files))


def _pair(a: str, b: str, line: Any) -> PairResult:
    error = None if getattr(line, "accuracy", None) is None else 1.0 - np.asarray(line.accuracy)
    return PairResult(
        a=a, b=b, barrier=float(line.barrier), barrier_alpha=float(line.barrier_alpha),
        error_barrier=None if getattr(line, "error_barrier", None) is None
        else float(line.error_barrier),
        distance=float(line.distance), cosine=float(line.cosine),
        alphas=np.asarray(line.alphas), loss=np.asarray(line.loss), error=error,
    )


def _with_alignment(pair: PairResult, probe_a: Probe, model_b: nn.Module,
                    alphas: np.ndarray, buffers: str) -> tuple[PairResult, Any]:
    """The pair with its barriers after permuting `model_b` onto model A, and the aligned path's
    `Line` (None when alignment is not possible; the raw path is already in `pair`)."""
    from .align import align_weights, example_input
    from .surface import interpolate

    try:
        alignment = align_weights(probe_a.model, model_b, example_input=example_input(probe_a))
    except LandscapeError as exc:
        return replace(pair, alignment_note=str(exc)), None
    except Exception as exc:  # noqa: BLE001 - a failed alignment must not lose the comparison
        return replace(pair, alignment_note=f"{type(exc).__name__}: {exc}"), None
    line = interpolate(probe_a, alignment.state_dict, alphas, buffers=buffers)
    return replace(pair, aligned_barrier=float(line.barrier),
                   aligned_error_barrier=None if line.error_barrier is None
                   else float(line.error_barrier),
                   aligned_distance=float(line.distance)), line


def _as_probe(name: str, item: Any, model_fn: Callable[[], nn.Module] | None, data: Any,
              loss_fn: Any, probe_kwargs: Mapping[str, Any]) -> Probe:
    if isinstance(item, Probe):
        return item
    if data is None:
        raise LandscapeError(
            f"minimum {name!r} is not a Probe: pass data= (and model_fn= for checkpoints) so "
            "compare can build one."
        )
    if isinstance(item, nn.Module):
        model = item
    else:
        if model_fn is None:
            raise LandscapeError(
                f"minimum {name!r} is a checkpoint: pass model_fn= (a function that builds the "
                "model) so compare can load it."
            )
        model = load_checkpoint(model_fn(), item).eval()
    return Probe(model, data, loss_fn, **probe_kwargs)


def comparison_figures(comparison: Comparison, out: Path, column: str | float = "single",
                       log: bool = True) -> list[Path]:
    """The minima's 1D lines overlaid, and the pairs' interpolations overlaid: each pair in one
    colour, its path on the raw weights ("A -> B") solid (pale and wide under an aligned path) and
    its path after permutation alignment ("A -> B, aligned", where alignment was possible)
    dashed over it, so paths that coincide stay visible. `log`: logarithmic loss axes."""
    from . import plot

    def overlay(lines: dict[str, Any], xlabel: str, title: str, styles: Any) -> Any:
        ax = plot.plot_line(list(lines.values()), labels=list(lines), xlabel=xlabel,
                            column=column, log=log, styles=styles)
        plot.set_title(ax.figure, title)
        return ax.figure

    paths, styles = {}, []
    for k, (key, line) in enumerate(comparison.interpolations.items()):
        color = plot.OKABE_ITO[k % len(plot.OKABE_ITO)]
        paths[key] = line
        aligned = key in comparison.aligned_interpolations
        # pale under its aligned path, so dashes that coincide with it still show
        styles.append({"color": color, **({"alpha": 0.45, "linewidth": 2.0} if aligned else {})})
        if aligned:
            paths[f"{key}, aligned"] = comparison.aligned_interpolations[key]
            styles.append({"color": color, "linestyle": (0, (3, 2))})
    figures = (
        ("lines", comparison.lines, r"$\alpha$ along a filter-normalized random direction",
         "1D loss of each minimum", None),
        ("interpolation", paths, r"$\alpha$ in $(1 - \alpha)\, w_A + \alpha\, w_B$",
         "Linear interpolation between minima" + (" (raw and aligned)" if len(paths) > len(
             comparison.interpolations) else ""), styles),
    )
    return save_figures(out, [(stem, lambda ls=lines, x=xlabel, t=title, st=st:
                               overlay(ls, x, t, st))
                              for stem, lines, xlabel, title, st in figures if lines])


def _or(value: float | None, missing: str) -> str:
    """A table number, or what its absence means (never a bare dash)."""
    return missing if value is None else fmt(value)
