"""Follow measures of the minimum over a series of training checkpoints.

`track(["ckpt_100.pt", "ckpt_200.pt", ...], model_fn=..., data=...)` measures each checkpoint
(the top Hessian eigenvalue by default) and returns a `Track` table against the training step,
read from each file name's last integer. With `out=` the table is saved after every checkpoint
and a rerun skips the checkpoints already measured. `Track.to_report()` is the table as a
`landscape.report.Report` (one row per checkpoint, the provenance table), and
`Track.write_pages(out, figures)` writes it as track.md and track.html.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ._reduce import fnorm
from ._results import to_jsonable
from .checkpoint import load_checkpoint
from .errors import LandscapeError
from .measures import REGISTRY, MeasureContext
from .probe import Probe
from .provenance import provenance, provenance_section
from .report import UNCONVERGED_MARK, Report, Row, Section, fmt, uncertainty_text, with_note

TRACK_MEASURES = ("top_eigenvalue", "trace", "sharpness", "gradient_norm", "loss")
# Each estimated column of a track is a registry measure with the track's settings.
_FROM_REGISTRY: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "top_eigenvalue": ("hessian_eigenvalues",
                       lambda t: {"k": 1, "tol": t["tol"], "seed": t["seed"]}),
    "trace": ("hessian_trace",
              lambda t: {"n_hvp": t["n_hvp"], "method": "hutch++", "seed": t["seed"]}),
    "sharpness": ("sharpness_worst_l2", lambda t: {"rho": t["rho"], "seed": t["seed"]}),
}
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
_EXACT = ("loss", "gradient_norm")  # computed, not estimated: their uncertainty reads "exact"


@dataclass(frozen=True)
class Track:
    """One row per checkpoint: `rows[i] = {"checkpoint", "step", measure: value, ...}`.

    Estimated measures also have `"<measure>_stderr"` (trace) and every row its `"seconds"`;
    a number that did not reach its tolerance has `"<measure>_note"` beside it (which, its
    residual or standard error, what to raise: `landscape.measures.flags`).
    """

    rows: list[dict[str, Any]]
    measures: tuple[str, ...]
    seed: int
    provenance: dict[str, Any] | None = None

    def column(self, measure: str) -> list[float | None]:
        return [row.get(measure) for row in self.rows]

    @property
    def steps(self) -> list[int]:
        return [row["step"] for row in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"measures": list(self.measures), "seed": self.seed,
                            "rows": self.rows, "provenance": self.provenance})

    def to_csv(self) -> str:
        keys = ["checkpoint", "step"]
        for r in self.rows:  # every column any row has (a note appears only where needed)
            keys += [k for k in r if k not in keys]
        lines = [",".join(keys)]
        lines += [",".join("" if r.get(k) is None else _csv_field(r.get(k)) for k in keys)
                  for r in self.rows]
        return "\n".join(lines) + "\n"

    def to_report(self) -> Report:
        """The report's content: one table row per checkpoint (every column of the JSON: step,
        each measure with its uncertainty and note, seconds) and the provenance table."""
        extra = [k for r in self.rows for k in r if k not in _known_keys(self.measures)]
        extra = list(dict.fromkeys(extra))
        columns = ["checkpoint", "step"]
        for m in self.measures:
            columns += [m, f"{m} uncertainty"]
        columns += ["seconds", *extra]
        rows = tuple(Row((str(r["checkpoint"]), str(r["step"]),
                          *(cell for m in self.measures for cell in _measure_cells(r, m)),
                          fmt(r.get("seconds")), *(_any_text(r.get(k)) for k in extra)))
                     for r in self.rows)
        data = (self.provenance or {}).get("data") or "data not described"
        summary = (f"{len(self.rows)} checkpoints measured on {data}: "
                   f"{', '.join(self.measures)}. Seed {self.seed}. A value marked "
                   f"{UNCONVERGED_MARK} did not reach its tolerance; its uncertainty cell says "
                   "why and what to raise.")
        table = Section("Checkpoints", columns=tuple(columns), rows=rows)
        sections = (table, provenance_section(self.provenance))
        return Report("Track of a training run", summary,
                      tuple(s for s in sections if s is not None), self.to_dict())

    def to_markdown(self, figures: Sequence[str] = ()) -> str:
        return self.to_report().to_markdown(figures)

    def to_html(self, figures: Sequence[Path] = ()) -> str:
        return self.to_report().to_html(figures)

    def write_pages(self, out: str | os.PathLike, figures: Sequence[Path] = ()) -> list[Path]:
        """Write track.md and track.html into `out` (PNG figures linked and inlined); the
        JSON is the file `track(out=...)` saves."""
        Path(out).mkdir(parents=True, exist_ok=True)
        return self.to_report().write_pages(Path(out), "track", figures)


def _known_keys(measures: Sequence[str]) -> set[str]:
    keys = {"checkpoint", "step", "seconds"}
    for m in measures:
        keys |= {m, f"{m}_stderr", f"{m}_note"}
    return keys


def _measure_cells(row: dict[str, Any], measure: str) -> tuple[str, str]:
    """A measure's value (marked when it did not reach its tolerance) and its uncertainty."""
    note = row.get(f"{measure}_note")
    value = fmt(row.get(measure))
    if note is not None and row.get(measure) is not None:
        value = f"{value} {UNCONVERGED_MARK}"
    if measure in _EXACT:
        return value, "exact"
    return value, with_note(uncertainty_text(row.get(f"{measure}_stderr"), None), note)


def _any_text(value: Any) -> str:
    if value is None:
        return "-"
    return fmt(value) if isinstance(value, float) else str(value)


def _csv_field(value: Any) -> str:
    """A CSV field: text with commas, quotes or line breaks quoted (RFC 4180)."""
    text = str(value)
    if any(c in text for c in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def checkpoint_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The checkpoint files of a folder (sorted by step) or of an explicit list (kept in order)."""
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        files = [p for p in Path(source).iterdir() if p.suffix in _CHECKPOINT_SUFFIXES]
        if not files:
            raise LandscapeError(
                f"folder {str(source)!r} holds no checkpoint files "
                f"({', '.join(_CHECKPOINT_SUFFIXES)})."
            )
        return sorted(files, key=lambda p: (step_of(p, 0), p.name))
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    missing = [str(p) for p in items if not Path(p).is_file()]
    if missing:
        raise LandscapeError(f"checkpoint files {missing} do not exist.")
    return [Path(p) for p in items]


def step_of(path: Path, default: int) -> int:
    """The training step in a checkpoint's file name: its last integer (`epoch_12.pt` -> 12)."""
    numbers = re.findall(r"\d+", Path(path).stem)
    return int(numbers[-1]) if numbers else default


def track(
    checkpoints: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    model_fn: Callable[[], nn.Module],
    data: Any,
    loss_fn: Callable[..., Any] | None = None,
    measures: Sequence[str] = ("top_eigenvalue",),
    rho: float = 0.05,
    n_hvp: int = 60,
    tol: float = 1e-3,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    data_name: str | None = None,
) -> Track:
    """Measure each checkpoint of a training run.

    Args:
        checkpoints: a folder of checkpoint files (sorted by the step in their names) or a list.
        model_fn: builds a fresh model for each checkpoint.
        data, loss_fn: the probe's data and loss.
        measures: among "top_eigenvalue" (Lanczos, relative residual `tol`), "trace" (Hutch++
            with `n_hvp` products, with stderr), "sharpness" (worst-case l2 at radius `rho`, a
            lower bound), "gradient_norm" and "loss" (exact).
        seed: seed of every stochastic measure.
        out: JSON file holding the table; rows already there (same checkpoint, measures and
            settings) are kept and not measured again.
        data_name: a description of the data for the provenance (versions, device, dtype,
            data and sample count, every checkpoint's path and SHA-256, seed, date) that the
            result and the JSON file carry.

    Returns:
        A `Track` with one row per checkpoint, in order.
    """
    measures = tuple(measures)
    unknown = [m for m in measures if m not in TRACK_MEASURES]
    if unknown or not measures:
        raise LandscapeError(f"measures must be among {TRACK_MEASURES}; got {list(measures)}.")
    files = checkpoint_files(checkpoints)
    settings = {"measures": list(measures), "rho": rho, "n_hvp": n_hvp, "tol": tol, "seed": seed}
    done: dict[str, dict[str, Any]] = {}
    previous = None
    out_path = Path(out) if out is not None else None
    if out_path is not None and out_path.is_file():
        saved = json.loads(out_path.read_text())
        if saved.get("settings") == settings:
            done = {row["checkpoint"]: row for row in saved.get("rows", [])}
            previous = saved.get("provenance")
    say = log or (lambda _line: None)
    rows: list[dict[str, Any]] = []
    probe = None
    iterator: Any = files
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(files, desc="checkpoints")
    for i, path in enumerate(iterator):
        key = str(path)
        if key in done:
            rows.append(done[key])
            continue
        say(f"measuring {path.name} ...")
        t0 = time.perf_counter()
        probe = Probe(load_checkpoint(model_fn(), path).eval(), data, loss_fn)
        row: dict[str, Any] = {"checkpoint": key, "step": step_of(path, i)}
        if "loss" in measures or "gradient_norm" in measures:
            loss, grad = probe.loss_and_gradient()
            if "loss" in measures:
                row["loss"] = loss
            if "gradient_norm" in measures:
                row["gradient_norm"] = fnorm(grad)
        context = MeasureContext(probe)
        for column, (spec_name, track_settings) in _FROM_REGISTRY.items():
            if column in measures:
                m = REGISTRY[spec_name].run(context, track_settings(settings))
                row[column] = m.value
                if m.stderr is not None:
                    row[f"{column}_stderr"] = m.stderr
                if m.note is not None:  # did not reach its tolerance: why, what to raise
                    row[f"{column}_note"] = m.note
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        if out_path is not None:  # save as we go: an interrupted run resumes from here
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(to_jsonable({"settings": settings, "rows": rows}),
                                           indent=2))
    if probe is None and previous is not None:  # every row resumed: as the file recorded it
        info = previous
    else:
        if probe is None:
            probe = Probe(load_checkpoint(model_fn(), files[0]).eval(), data, loss_fn)
        info = provenance(probe, seed=seed, data=data_name,
                          checkpoints={p.name: p for p in files})
    result = Track(rows, measures, seed, info)
    if out_path is not None:
        out_path.write_text(json.dumps(to_jsonable({"settings": settings, "rows": rows,
                                                    "provenance": info}), indent=2))
    return result
