"""Model and data look-up for `landscape plot` (built-in names or `package.module:factory`)."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from .errors import LandscapeError


def build_model(spec: str) -> nn.Module:
    """A built-in digits model by name, or the result of calling `package.module:factory`."""
    from .data import models

    builtins = {
        "digits_mlp": models.digits_mlp,
        "digits_cnn": models.digits_cnn,
        "digits_resnet": lambda: models.digits_resnet(skip=True),
        "digits_resnet_noskip": lambda: models.digits_resnet(skip=False),
    }
    if spec in builtins:
        return builtins[spec]()
    module, sep, attr = spec.partition(":")
    if not sep:
        raise LandscapeError(
            f"--model {spec!r} is neither a built-in ({', '.join(builtins)}) nor "
            "'package.module:factory'."
        )
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise LandscapeError(f"cannot import --model {spec!r}: {exc}.") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise LandscapeError(f"--model {spec!r} returned {type(model).__name__}, not an nn.Module.")
    return model


def load_data(spec: str, *, image: bool) -> Any:
    """'digits', 'digits-test', 'digits-all', or a .pt file with an (inputs, targets) pair."""
    from .data import digits_tensors

    splits = {"digits": "train", "digits-train": "train", "digits-test": "test",
              "digits-all": "all"}
    if spec in splits:
        return digits_tensors(splits[spec], image=image)
    try:
        data = torch.load(spec, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the fix named
        raise LandscapeError(
            f"--data {spec!r}: not 'digits', 'digits-test', 'digits-all' nor a readable .pt file "
            f"with an (inputs, targets) pair ({str(exc).splitlines()[0]})."
        ) from None
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise LandscapeError(f"--data {spec!r} must hold an (inputs, targets) pair of tensors.")
    return tuple(data)
