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
        # e.name is the module that is really missing: torch.utils.tensorboard fails on
        # `tensorboard`, not on torch
        missing = (e.name or module).split(".")[0]
        raise LandscapeError(
            f"{what} needs the {missing} package: pip install 'landscape-probe[{extra}]'."
        ) from e
