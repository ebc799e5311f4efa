"""Loading checkpoints into a model, with the common wrappers and clear errors on mismatch."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._model_prep import plain_key
from .errors import LandscapeError

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


def read_state_dict(path_or_state: str | os.PathLike | Mapping[str, Any]) -> dict[str, Tensor]:
    """A plain `{name: tensor}` state dict from a path (`.pt`, `.pth`, `.safetensors`) or a dict.

    Unwraps `{"state_dict": ...}`, `{"model": ...}`, `{"model_state_dict": ...}`, drops the
    `_orig_mod.` components that `torch.compile` adds to the keys and strips a `module.` prefix
    (DataParallel / DistributedDataParallel). Pickled files are read with
    `weights_only=True`: no code from the file runs.
    """
    if isinstance(path_or_state, (str, os.PathLike)):
        path = Path(path_or_state)
        if path.is_dir():
            raise LandscapeError(
                f"checkpoint {str(path)!r} is a folder; give a checkpoint file (.pt, .pth or "
                ".safetensors) inside it."
            )
        if not path.is_file():
            raise LandscapeError(f"checkpoint file {str(path)!r} does not exist.")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - re-raised with the fix named
                raise LandscapeError(_unreadable(path, exc)) from None
    else:
        state = path_or_state
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise LandscapeError(
            f"a checkpoint must hold a state dict (a mapping of names to tensors); got "
            f"{type(state).__name__}."
        )
    for key in _WRAPPER_KEYS:
        inner = state.get(key)
        if isinstance(inner, Mapping) and inner and not _is_flat_tensor_dict(state):
            state = inner
            break
    if not _is_flat_tensor_dict(state):
        bad = [k for k, v in state.items() if not isinstance(v, Tensor)][:5]
        raise LandscapeError(
            f"the checkpoint's entries {bad} are not tensors and no known wrapper key "
            f"({', '.join(_WRAPPER_KEYS)}) holds the state dict; pass the state dict itself."
        )
    state = {plain_key(k): v for k, v in state.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_checkpoint(model: nn.Module, path_or_state: str | os.PathLike | Mapping[str, Any]
                    ) -> nn.Module:
    """Load a checkpoint into `model` (in place, on the model's device and dtype) and return it.

    Keys match whether the checkpoint or the model (or neither, or both) went through
    `torch.compile` (whose wrapper adds `_orig_mod.` to the keys).

    Raises:
        LandscapeError: the file is missing or unreadable, or its keys do not match the model:
            the message lists missing keys, unexpected keys and shape conflicts.
    """
    state = read_state_dict(path_or_state)
    own = model.state_dict()
    own_keys = {plain_key(k): k for k in own}
    state = {own_keys.get(k, k): v for k, v in state.items()}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if shapes:
            parts.append(f"shape conflicts {_short(shapes)}")
        raise LandscapeError(
            "the checkpoint does not match the model: " + "; ".join(parts)
            + ". Build the model with the same architecture and settings as the one saved."
        )
    model.load_state_dict(state)
    return model


def _unreadable(path: Path, exc: Exception) -> str:
    """Why torch.load failed, and the fix: a pickled object needs a state dict; anything else
    means the file is not an intact PyTorch checkpoint."""
    text = str(exc)
    if "Unsupported global" in text:
        return (f"checkpoint {str(path)!r} holds pickled Python objects (a whole model?) that "
                "torch.load(weights_only=True) refuses to run; save a state dict instead: "
                "torch.save(model.state_dict(), path).")
    detail = text.split("WeightsUnpickler error:", 1)[-1].strip() or type(exc).__name__
    reason = detail.splitlines()[0].split(". ")[0].rstrip(". ")
    return (f"checkpoint {str(path)!r} is not a readable PyTorch file ({reason}): it may be "
            "truncated or corrupt, or not a checkpoint at all.")


def _is_flat_tensor_dict(state: Mapping[str, Any]) -> bool:
    return all(isinstance(v, Tensor) for v in state.values())


def _short(items: list[str], limit: int = 10) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more
