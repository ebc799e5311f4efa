"""Helpers shared by the result dataclasses: JSON-ready conversion."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch


def jsonable_without(result: Any, *skipped: str) -> dict[str, Any]:
    """`to_jsonable` of a dataclass without the fields named in `skipped` (parameter-sized
    tensors: converted first, 124M floats become a 124M-element Python list, minutes)."""
    return {f.name: to_jsonable(getattr(result, f.name)) for f in dataclasses.fields(result)
            if f.name not in skipped}


def to_jsonable(value: Any) -> Any:
    """Convert tensors, arrays, dataclasses and containers into plain JSON-ready Python.

    Non-finite floats become None (JSON has no NaN).
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [to_jsonable(x) for x in value.tolist()] if value.ndim else to_jsonable(value.item())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value
