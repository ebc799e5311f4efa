"""Resumable storage of loss lines and surfaces in HDF5 (`.h5`, `.hdf5`) or NumPy (`.npz`) files.

A file holds the coordinates (`xs`, and `ys` for surfaces), the arrays `loss`, `accuracy`,
`loss_stderr` (NaN where not computed or not finite), a boolean `done` mask, the settings as JSON
(directions' seeds and normalization, the grid, the subset options, fingerprints of the
checkpoint and of the directions) and their SHA-256 `settings_hash`. A run that finds a file
with the same hash continues from its `done` mask; a different hash is refused, never reused.

Arrays are kept in memory and written whole: at most every `flush_seconds`, at the end, and when
the computation raises (the `finally` of the caller), so an interrupted run loses nothing that
was computed. `.npz` files are replaced atomically (write to a temporary file, then rename).

Distributed (`comm=` a probe's process group): rank 0 alone reads and writes the file; it sends
the stored arrays (the `done` mask) to every rank, and a refused file raises on every rank. The
caller gives every rank every computed point (`set`), so all ranks hold the whole grid.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LandscapeError

SUFFIXES = (".h5", ".hdf5", ".npz")
FORMAT_VERSION = 1
_ARRAYS = ("loss", "accuracy", "loss_stderr", "done")


def settings_hash(settings: dict[str, Any]) -> str:
    """SHA-256 of the settings as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def check_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise LandscapeError(
            f"out={str(path)!r}: the file name must end in one of {SUFFIXES} (HDF5 or NumPy)."
        )
    return path


class GridStore:
    """In-memory result arrays of one grid, mirrored to a file when `path` is given."""

    def __init__(self, path: str | os.PathLike | None, coords: dict[str, np.ndarray],
                 settings: dict[str, Any], flush_seconds: float = 2.0, comm: Any = None):
        self.path = None if path is None else check_path(path)
        self.coords = coords
        self.settings = settings
        self.hash = settings_hash(settings)
        shape = tuple(len(c) for c in coords.values())
        self.loss = np.full(shape, np.nan)
        self.accuracy = np.full(shape, np.nan)
        self.loss_stderr = np.full(shape, np.nan)
        self.done = np.zeros(shape, dtype=bool)
        self.flush_seconds = flush_seconds
        self._last = time.monotonic()
        self._dirty = False
        self.writer = comm is None or comm.rank == 0
        stored, error = None, None
        if self.writer and self.path is not None and self.path.exists():
            try:
                stored = self._read_matching()
            except LandscapeError as exc:
                error = exc
        if comm is not None:
            comm.reduce([], error=error)  # a refused file raises on every rank
            stored = comm.broadcast_object(stored)
        elif error is not None:
            raise error
        if stored is not None:
            for name in _ARRAYS:
                getattr(self, name)[...] = stored[name]

    def _read_matching(self) -> dict[str, np.ndarray]:
        stored = read(self.path)  # type: ignore[arg-type]
        if stored["settings_hash"] != self.hash:
            raise LandscapeError(
                f"{str(self.path)!r} was made with different settings (stored settings: "
                f"{_diff(stored['settings'], self.settings)}); pass another out= path or delete "
                "the file to start over."
            )
        return {name: stored[name] for name in _ARRAYS}

    def set(self, index: tuple[int, ...], loss: float, accuracy: float | None,
            stderr: float | None = None) -> None:
        self.loss[index] = loss
        self.accuracy[index] = np.nan if accuracy is None else accuracy
        self.loss_stderr[index] = np.nan if stderr is None else stderr
        self.done[index] = True
        self._dirty = True
        if self.path is not None and time.monotonic() - self._last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self.path is None or not self.writer or not (self._dirty or not self.path.exists()):
            return
        arrays = {**self.coords, "loss": self.loss, "accuracy": self.accuracy,
                  "loss_stderr": self.loss_stderr, "done": self.done}
        meta = {"settings": json.dumps(self.settings, sort_keys=True),
                "settings_hash": self.hash, "format_version": FORMAT_VERSION}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp" + self.path.suffix)
        if self.path.suffix == ".npz":
            np.savez(tmp, **arrays, **{k: np.array(v) for k, v in meta.items()})
        else:
            import h5py

            with h5py.File(tmp, "w") as f:
                for k, v in arrays.items():
                    f.create_dataset(k, data=v)
                for k, v in meta.items():
                    f.attrs[k] = v
        os.replace(tmp, self.path)
        self._dirty = False
        self._last = time.monotonic()


def read(path: str | os.PathLike) -> dict[str, Any]:
    """Everything in a stored grid file: arrays, coordinates, `settings` (dict), `settings_hash`."""
    path = check_path(path)
    if not path.is_file():
        raise LandscapeError(f"{str(path)!r} does not exist.")
    out: dict[str, Any] = {}
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                for k in f.files:
                    out[k] = f[k]
            meta = {k: out.pop(k).item() for k in ("settings", "settings_hash", "format_version")}
        else:
            import h5py

            with h5py.File(path, "r") as f:
                for k in f.keys():
                    out[k] = f[k][...]
                meta = {k: f.attrs[k] for k in ("settings", "settings_hash", "format_version")}
    except (OSError, KeyError, ValueError) as exc:
        raise LandscapeError(
            f"{str(path)!r} is not a landscape grid file ({exc}); pass a file written by "
            "loss_surface(out=...) or loss_line(out=...)."
        ) from None
    meta = {k: v.decode() if isinstance(v, bytes) else v for k, v in meta.items()}
    out["settings"] = json.loads(str(meta["settings"]))
    out["settings_hash"] = str(meta["settings_hash"])
    return out


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {_short(old.get(k))} here vs {_short(new.get(k))} now" for k in keys)


def _short(v: Any) -> str:
    s = json.dumps(v)
    return s if len(s) <= 60 else s[:57] + "..."
