"""Optional dependencies (the monitor's integrations), imported only when used."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import LandscapeError


def require(module: str, extra: str, what: str) -> ModuleType:
    """`import module`, or a LandscapeError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise LandscapeError(
            f"{what} needs the {module.split('.')[0]} package: pip install "
            f"'landscape-probe[{extra}]'."
        ) from e
