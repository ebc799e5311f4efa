"""Provenance: what a reader needs to trust or reproduce a report's numbers.

`provenance(probe, ...)` collects the versions (this package, torch, numpy, Python), the machine
(platform, device, dtype), the data (a description and the sample count), the checkpoints (path
and SHA-256 of each file), the seed, the budget and the date (UTC, ISO 8601). Every report of
`audit`, `compare` and `track` carries it in its JSON and as a table in its Markdown and HTML
(`provenance_section`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Field -> how the report's table names it, in the table's order.
FIELDS: dict[str, str] = {
    "package": "package", "torch": "torch", "numpy": "numpy", "python": "Python",
    "platform": "platform", "device": "device", "dtype": "dtype", "data": "data",
    "n_samples": "samples", "n_params": "parameters", "checkpoints": "checkpoints (SHA-256)",
    "seed": "seed", "budget": "budget", "date": "date (UTC)",
}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def provenance(probe: Any, *, seed: int | None, budget: str | None = None,
               data: str | None = None,
               checkpoints: Mapping[str, str | os.PathLike] | None = None) -> dict[str, Any]:
    """The provenance of a measurement on `probe` (None: a field that does not apply).

    Args:
        probe: the measured `Probe` (device, dtype, sample and parameter counts).
        seed: the seed of the estimators.
        budget: the effort ("quick", ...), where the workflow has one.
        data: a description of the data (e.g. "digits:train"); None reads "not described".
        checkpoints: name -> checkpoint file; each is listed with its path and SHA-256 (a file
            that cannot be read is listed with `sha256: None`).

    Returns:
        A JSON-ready dict with the keys of `FIELDS`.
    """
    import numpy
    import torch

    from . import __version__

    files = []
    for name, path in (checkpoints or {}).items():
        try:
            digest: str | None = file_sha256(path)
        except OSError:
            digest = None
        files.append({"name": name, "path": str(Path(path).resolve()), "sha256": digest})
    return {
        "package": f"landscape-probe {__version__}",
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "device": str(probe.device),
        "dtype": str(probe.dtype).replace("torch.", ""),
        "data": data if data is not None else "not described (pass data_name=)",
        "n_samples": probe.n_samples,
        "n_params": probe.num_params,
        "checkpoints": files,
        "seed": seed,
        "budget": budget,
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }


def provenance_rows(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, value) rows of the provenance table, in `FIELDS` order, values as text."""
    rows = []
    for key, label in FIELDS.items():
        value = info.get(key)
        if key == "checkpoints":
            text = "; ".join(f"{c['name']}: {c['path']} ({c['sha256'] or 'unreadable'})"
                             for c in value) if value else "none (weights given in memory)"
        elif value is None:
            text = "not applicable"
        else:
            text = str(value)
        rows.append((label, text))
    return rows


def provenance_section(info: Mapping[str, Any] | None) -> Any:
    """The report's "Provenance" table (a `landscape.report.Section`), or None without one."""
    from .report import Row, Section

    if not info:
        return None
    return Section("Provenance", columns=("field", "value"),
                   rows=tuple(Row(cells) for cells in provenance_rows(info)))
