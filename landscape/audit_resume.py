"""Keep each finished audit measure on disk, so an interrupted or failed audit resumes.

`AuditProgress(path, key)` is the file `audit(..., resume=path)` writes after every measure that
finished: the measure (value, uncertainty, settings, cost) and, for the measures that are drawn
(loss line, loss surface, Hessian density), the arrays of the figure. The file is replaced
atomically (a temporary file in the same folder, then `os.replace`), so an interruption leaves
the previous complete version. A rerun with the same `key` (a SHA-256 of the package version,
budget, seed, the probed weights and the data's size and loss) takes the stored measures instead
of measuring them again; a file with another key is ignored and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ._results import to_jsonable
from .errors import LandscapeError

FORMAT_VERSION = 1
# What each drawn measure needs for its figure (the rest of its result is in the Measure).
_FIGURE_FIELDS = {
    "loss_line": ("alphas", "loss", "accuracy", "loss_stderr", "n_samples"),
    "loss_surface": ("xs", "ys", "loss", "accuracy", "loss_stderr", "cosine", "n_samples"),
    "hessian_density": ("grid", "density"),
}


def audit_key(probe: Any, budget: str, seed: int, loss: float) -> str:
    """SHA-256 of what decides an audit's numbers: package version, budget, seed, the probed
    weights (their bytes), the number of samples and the loss at the weights."""
    from . import __version__

    digest = hashlib.sha256()
    digest.update(json.dumps([__version__, budget, seed, probe.n_samples, repr(float(loss)),
                              probe.param_names]).encode())
    import torch

    for p in probe.params:
        digest.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class AuditProgress:
    """The measures of one audit finished so far, mirrored to `path` (None: memory only)."""

    def __init__(self, path: str | os.PathLike | None, key: str):
        self.path = None if path is None else Path(path)
        self.key = key
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.is_file():
            try:
                stored = json.loads(self.path.read_text())
            except (OSError, ValueError):
                stored = {}
            if stored.get("key") == key and stored.get("format_version") == FORMAT_VERSION:
                self.entries = dict(stored.get("measures", {}))

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def measure(self, name: str, cls: type) -> Any:
        """The stored measure `name` as a `cls` (the audit's `Measure`), NaN for JSON nulls."""
        d = dict(self.entries[name]["measure"])
        d["value"] = float("nan") if d["value"] is None else d["value"]
        return cls(**d)

    def figure_result(self, name: str, seed: int) -> Any:
        """The arrays of a drawn measure, as the object its plot function takes (None when the
        measure is not drawn)."""
        fields = self.entries[name].get("figure")
        if fields is None:
            return None
        arrays = {k: (None if v is None else np.array(v, dtype=float)) if isinstance(v, list)
                  else v for k, v in fields.items()}
        if name == "loss_line":
            from .surface import Line

            return Line(arrays["alphas"], arrays["loss"], arrays["accuracy"],
                        arrays["loss_stderr"], {}, int(arrays["n_samples"]), None, seed, None)
        if name == "loss_surface":
            from .surface import Surface

            return Surface(arrays["xs"], arrays["ys"], arrays["loss"], arrays["accuracy"],
                           arrays["loss_stderr"], ({}, {}), float(arrays["cosine"] or 0.0),
                           int(arrays["n_samples"]), None, seed, "")
        return SimpleNamespace(**arrays)

    def save(self, name: str, measure: Any, result: Any = None) -> None:
        """Record a finished measure (and its figure's arrays) and rewrite the file."""
        entry: dict[str, Any] = {"measure": measure.to_dict()}
        if name in _FIGURE_FIELDS and result is not None:
            entry["figure"] = to_jsonable({k: getattr(result, k, None)
                                           for k in _FIGURE_FIELDS[name]})
        self.entries[name] = entry
        if self.path is None:
            return
        text = json.dumps({"format_version": FORMAT_VERSION, "key": self.key,
                           "measures": self.entries})
        try:
            atomic_write_text(self.path, text)
        except OSError as exc:
            raise LandscapeError(f"cannot write the audit's progress to {str(self.path)!r} "
                                 f"({exc.strerror}); pass a writable resume= path.") from None

    def remove(self) -> None:
        """Delete the file (the finished report holds everything)."""
        if self.path is not None and self.path.is_file():
            self.path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`: readers and
    interruptions see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
