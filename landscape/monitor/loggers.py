"""Where the monitor's rows go: files, TensorBoard, Weights & Biases, or a function.

Files (`log_dir/curvature.jsonl`, `log_dir/curvature.csv`) hold the rows as measured, keys
unprefixed (the file name says what they are), appended one row a line. Every other logger gets
the numbers under `curvature/<key>` (`curvature/top_eigenvalue`, ...) at the training step.
TensorBoard and wandb are imported only when asked for.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._extras import require
from .._results import to_jsonable
from ..errors import LandscapeError

LOGGER_NAMES = ("jsonl", "csv", "tensorboard", "wandb")
PREFIX = "curvature/"
JSONL_NAME = "curvature.jsonl"
CSV_NAME = "curvature.csv"

Logger = Callable[[dict[str, Any], int], None]


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The row's numbers under `curvature/<key>` (booleans as 0/1; the step left out)."""
    out = {}
    for key, value in row.items():
        if key == "step" or isinstance(value, str) or value is None:
            continue
        out[PREFIX + key] = float(value)
    return out


def jsonl_logger(log_dir: Path) -> Logger:
    path = log_dir / JSONL_NAME

    def log(row: dict[str, Any], step: int) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(to_jsonable(row)) + "\n")

    return log


def csv_logger(log_dir: Path) -> Logger:
    """Columns fixed by the first row (every row of a monitor has the same keys)."""
    path = log_dir / CSV_NAME
    columns: list[str] = []

    def log(row: dict[str, Any], step: int) -> None:
        new = not columns
        if new:
            columns.extend(row)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if new and (not path.exists() or path.stat().st_size == 0):
                writer.writeheader()
            writer.writerow({k: _cell(row.get(k)) for k in columns})

    return log


def _cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return "" if value is None else value


def tensorboard_logger(log_dir: Path | None, writer: Any = None) -> Logger:
    """`add_scalar("curvature/<key>", value, step)` on a `SummaryWriter` (a new one on
    `log_dir` unless given), flushed after each row."""
    if writer is None:
        tensorboard = require("torch.utils.tensorboard", "tensorboard", "the 'tensorboard' logger")
        writer = tensorboard.SummaryWriter(log_dir=str(log_dir))

    def log(row: dict[str, Any], step: int) -> None:
        for key, value in scalars(row).items():
            writer.add_scalar(key, value, step)
        writer.flush()

    return log


def wandb_logger() -> Logger:
    """Logs to the active wandb run, against its own step metric `curvature/step` (so the
    training's own `wandb.log` calls and their step counter are left alone)."""
    wandb = require("wandb", "wandb", "the 'wandb' logger")
    if wandb.run is None:
        raise LandscapeError(
            "the 'wandb' logger logs to the active run, and there is none; call wandb.init(...) "
            "before building the monitor."
        )
    run = wandb.run
    run.define_metric(PREFIX + "step")
    run.define_metric(PREFIX + "*", step_metric=PREFIX + "step")

    def log(row: dict[str, Any], step: int) -> None:
        run.log({**scalars(row), PREFIX + "step": step})

    return log


def callable_logger(fn: Callable[[dict[str, float], int], Any]) -> Logger:
    """`fn({"curvature/<key>": value, ...}, step)`."""

    def log(row: dict[str, Any], step: int) -> None:
        fn(scalars(row), step)

    return log


def make_loggers(loggers: Sequence[Any], log_dir: str | os.PathLike | None,
                 rank: int = 0) -> list[Logger]:
    """The logger functions for `loggers` (names, callables or a `SummaryWriter`).

    "jsonl" writes only with a `log_dir` (without one the rows are kept in the monitor); "csv"
    and a "tensorboard" by name need one. On ranks other than 0 only the callables log.
    """
    if isinstance(loggers, (str, bytes)) or callable(loggers):
        loggers = [loggers]
    folder = Path(log_dir) if log_dir is not None else None
    out: list[Logger] = []
    for spec in loggers:
        if hasattr(spec, "add_scalar") and hasattr(spec, "flush"):  # a SummaryWriter
            if rank == 0:
                out.append(tensorboard_logger(folder, spec))
        elif callable(spec):
            out.append(callable_logger(spec))
        elif spec not in LOGGER_NAMES:
            raise LandscapeError(
                f"loggers must hold names among {LOGGER_NAMES}, a SummaryWriter or callables "
                f"taking (row, step); got {spec!r}."
            )
        elif rank != 0:
            continue
        elif spec == "wandb":
            out.append(wandb_logger())
        elif folder is None:
            if spec != "jsonl":
                raise LandscapeError(
                    f"the {spec!r} logger writes into log_dir; pass log_dir= to the monitor."
                )
        else:
            folder.mkdir(parents=True, exist_ok=True)
            maker = {"jsonl": jsonl_logger, "csv": csv_logger, "tensorboard": tensorboard_logger}
            out.append(maker[spec](folder))
    return out


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a monitor's `curvature.jsonl` (a folder holding one works too), in order;
    JSON null (a NaN when written) read back as NaN."""
    path = Path(path)
    if path.is_dir():
        path = path / JSONL_NAME
    if not path.is_file():
        raise LandscapeError(f"no monitor log at {str(path)!r}; pass a curvature.jsonl file "
                             "or the monitor's log_dir.")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LandscapeError(f"{path}:{number} is not a JSON row ({e}).") from None
        rows.append({k: (math.nan if v is None else v) for k, v in row.items()})
    return rows
