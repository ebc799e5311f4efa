"""Turning the command line's `PATH.py:FACTORY` specs into models and data.

`--model` names a Python file or module and a function that builds the model
(`models.py:make_net`, `mypkg.models:resnet18`) or one of the built-in digits models
(`digits_mlp`, `digits_cnn`, `digits_resnet`, `digits_resnet_noskip`). `--data` is `digits` (the
built-in digits, train split; `digits:test`, `digits:all`), a `.pt` file holding an
`(inputs, targets)` pair, or `PATH.py:FACTORY` returning a DataLoader, a list of batches or an
`(inputs, targets)` pair.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import load_checkpoint
from .errors import LandscapeError

BUILTIN_MODELS = ("digits_mlp", "digits_cnn", "digits_resnet", "digits_resnet_noskip")
BUILTIN_DATA = {"digits": "train", "digits:train": "train", "digits:test": "test",
                "digits:all": "all"}


def load_object(spec: str, what: str) -> Any:
    """The object named by `file.py:name` or `package.module:name`."""
    location, sep, name = spec.rpartition(":")
    if not sep or not location or not name:
        raise LandscapeError(
            f"{what} {spec!r} must look like PATH.py:FUNCTION or package.module:FUNCTION."
        )
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise LandscapeError(f"{what} file {location!r} does not exist.")
        module_name = f"_landscape_user_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise LandscapeError(f"{what} file {location!r} cannot be imported as Python.")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's file failed: say so in one line
            raise LandscapeError(f"importing {what} file {location!r} failed: {exc!r}.") from None
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as exc:
            raise LandscapeError(f"cannot import {what} module {location!r}: {exc}.") from None
    if not hasattr(module, name):
        raise LandscapeError(f"{what} {location!r} has no function {name!r}.")
    return getattr(module, name)


def build_model(spec: str, checkpoint: str | None = None) -> nn.Module:
    """Build the model named by `spec` and (optionally) load `checkpoint` into it."""
    if spec in BUILTIN_MODELS:
        from . import data

        # a fixed initialization: `plot` without --checkpoint draws the same untrained model
        model = (data.digits_resnet(skip=False, seed=0) if spec == "digits_resnet_noskip"
                 else getattr(data, spec)(seed=0))
    else:
        if ":" not in spec:
            raise LandscapeError(
                f"--model {spec!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) nor "
                "PATH.py:FUNCTION or package.module:FUNCTION."
            )
        factory = load_object(spec, "--model")
        if not callable(factory):
            raise LandscapeError(f"--model {spec!r} is not a function.")
        _check_no_arguments(factory, spec)
        model = factory()
        if not isinstance(model, nn.Module):
            raise LandscapeError(
                f"--model {spec!r} returned {type(model).__name__}, not a torch.nn.Module."
            )
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()


def _check_no_arguments(factory: Any, spec: str) -> None:
    """Refuse a model function that needs arguments: the CLI calls it with none."""
    import inspect

    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C function: let the call decide
        return
    required = [p.name for p in signature.parameters.values()
                if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise LandscapeError(
            f"--model {spec!r} needs the arguments {', '.join(required)}; the command line calls "
            "it with none: give defaults, or point --model to a function without arguments "
            f"that returns the model (e.g. def make(): return {spec.split(':')[-1]}(...)).")


def build_data(spec: str, model: nn.Module | None = None) -> Any:
    """The data named by `spec`: built-in digits (image-shaped when the model has convolutions)."""
    if spec in BUILTIN_DATA:
        from .data import digits_tensors

        image = model is not None and any(isinstance(m, nn.Conv2d) for m in model.modules())
        return digits_tensors(BUILTIN_DATA[spec], image=image)
    if spec.endswith((".pt", ".pth")):
        return _tensor_pair_file(spec)
    factory = load_object(spec, "--data")
    return factory() if callable(factory) else factory


def _tensor_pair_file(spec: str) -> tuple[Any, Any]:
    import torch

    if not Path(spec).is_file():
        raise LandscapeError(f"--data file {spec!r} does not exist.")
    try:
        data = torch.load(spec, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the fix named
        first = str(exc).splitlines()[0]
        raise LandscapeError(f"--data {spec!r} cannot be read: {first}.") from None
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise LandscapeError(f"--data {spec!r} must hold an (inputs, targets) pair of tensors.")
    return data[0], data[1]


def check_model_fits(model: nn.Module, data: Any, model_spec: str, data_spec: str) -> None:
    """Run the model on two samples of the first batch, so that a model/data mismatch is one
    clear error before any measurement (instead of a matrix-shape error deep inside torch).

    Raises:
        LandscapeError: the model fails on the data's inputs; the message names the input shape,
            the shape the model's first layer expects and the likely fix.
    """
    import torch

    inputs = _first_inputs(data)
    if inputs is None:
        return  # not (inputs, targets) batches of tensors: the Probe's own checks take over
    param = next(model.parameters(), None)
    sample = inputs[:2]
    if param is not None:
        sample = sample.to(param.device)
        if sample.is_floating_point():
            sample = sample.to(param.dtype)
    try:
        with torch.no_grad():
            model(sample)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).splitlines()[0].rstrip(". ") if str(exc) else type(exc).__name__
        raise LandscapeError(
            f"--model {model_spec} cannot take the inputs of --data {data_spec}: inputs of "
            f"shape {tuple(inputs.shape)}, {_expected_input(model)} ({first}). "
            f"{_likely_fix(model, inputs)}"
        ) from None


def _first_inputs(data: Any) -> Any:
    from torch import Tensor

    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        return data[0]
    try:
        batch = next(iter(data))
    except (TypeError, StopIteration):
        return None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    return None


def _first_layer(model: nn.Module) -> nn.Module | None:
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return module
    return None


def _expected_input(model: nn.Module) -> str:
    layer = _first_layer(model)
    if isinstance(layer, nn.Linear):
        return f"but its first layer is Linear({layer.in_features}, ...), which takes (N, " \
               f"{layer.in_features})"
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        dims = {nn.Conv1d: "L", nn.Conv2d: "H, W", nn.Conv3d: "D, H, W"}[type(layer)]
        return f"but its first layer is {type(layer).__name__}({layer.in_channels}, ...), " \
               f"which takes (N, {layer.in_channels}, {dims})"
    return "which the model does not accept"


def _likely_fix(model: nn.Module, inputs: Any) -> str:
    layer = _first_layer(model)
    if isinstance(layer, nn.Linear) and inputs.dim() > 2:
        return ("Likely fix: flatten the inputs to (N, features), or choose a model for "
                "image-shaped inputs (digits_cnn, digits_resnet).")
    if isinstance(layer, nn.Conv2d) and inputs.dim() == 2:
        return ("Likely fix: reshape the inputs to (N, C, H, W), or choose a model for flat "
                "inputs (digits_mlp).")
    return "Likely fix: give --data inputs of the shape the --model's forward expects."
