"""What the Probe does with the model it is given before measuring, and the precision guard.

* `torch.compile(model)` returns a wrapper (an `OptimizedModule`) whose compiled graph cannot be
  differentiated twice (aot_autograd has no double backward), so every Hessian-vector product
  through it fails. The probe measures through the wrapped original, `model._orig_mod`: the two
  share their parameters and buffers, so the measurement is the same. A model compiled in place
  (`model.compile()`) or holding compiled submodules is refused with the fix named: the probe
  cannot reach an uncompiled path without changing the model.
* `dtype=`: the model is measured as a copy converted to that dtype (a float32 copy of a bf16 or
  fp16 model); the user's model is never changed.
* `require_precision`: curvature, sharpness and flatness refuse a bf16 or fp16 probe. They are
  small differences of losses and gradients, below the rounding of 8 or 11 significant bits.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from . import param_select
from .errors import LandscapeError
from .wrapped import refuse_sharded, unwrap_parallel

COMPUTE_DTYPES = (None, torch.float32, torch.float64)
LOW_PRECISION = (torch.float16, torch.bfloat16)
_COMPILED_NAME = "_orig_mod"  # the attribute and state-dict component of torch.compile's wrapper


def prepare_model(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """The module the probe measures: `model` uncompiled (`uncompiled`), then converted to `dtype`
    as a copy (`compute_copy`)."""
    model = unwrap_parallel(uncompiled(model))  # DDP / DataParallel: the module inside
    refuse_sharded(model)  # FSDP: shards cannot be measured as a model
    return compute_copy(model, dtype)


def is_compiled_wrapper(module: nn.Module) -> bool:
    """True for the wrapper that `torch.compile(module)` returns."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if eval_frame is None:  # dynamo never imported: nothing can have been compiled
        return False
    return isinstance(module, eval_frame.OptimizedModule)


def unwrap_compiled(module: nn.Module) -> nn.Module:
    """`module._orig_mod` for `torch.compile(module)` (repeatedly), else `module` itself."""
    while is_compiled_wrapper(module):
        module = getattr(module, _COMPILED_NAME)
    return module


def uncompiled(model: nn.Module) -> nn.Module:
    """The uncompiled module behind `torch.compile(model)` (the model itself when not compiled).

    Raises:
        LandscapeError: the model was compiled in place (`model.compile()`) or holds a compiled
            submodule: its forward pass runs the compiled graph, which has no double backward.
    """
    model = unwrap_compiled(model)
    for name, module in model.named_modules():
        inner = is_compiled_wrapper(module)
        if inner or getattr(module, "_compiled_call_impl", None) is not None:
            where = f"submodule {name!r}" if name else "the model"
            how = "torch.compile(...)" if inner else ".compile()"
            raise LandscapeError(
                f"{where} is compiled ({how}): a compiled graph cannot be differentiated twice, "
                "so Hessian-vector products would fail. Build the Probe from the uncompiled "
                "model (before calling .compile(), or with the submodule's ._orig_mod put back), "
                "or compile the whole model with torch.compile(model): the probe then measures "
                "through its original module, with the same parameters."
            )
    return model


def compute_copy(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """`model` itself when `dtype` is None or already its dtype, else a copy converted to `dtype`.

    The copy (`copy.deepcopy`, tied weights stay tied, then `.to(dtype)`) holds every floating
    parameter and buffer in `dtype`: for a bf16 model measured in float32, 4 bytes per parameter
    beside the model, and the measurement's vectors (gradients, products, bases) are float32 too.
    Integer buffers keep their dtype; the copy's `.grad` fields are cleared.

    Raises:
        LandscapeError: `dtype` is not None, torch.float32 or torch.float64, or the model cannot
            be copied.
    """
    if dtype not in COMPUTE_DTYPES:
        raise LandscapeError(
            f"dtype must be None (the model's own), torch.float32 or torch.float64; got {dtype!r}."
        )
    if dtype is None:
        return model
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.dtype == dtype for t in tensors if t.is_floating_point()):
        return model
    try:
        twin = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001 - re-raised with the fix named
        raise LandscapeError(
            f"cannot copy the model to measure it in {dtype} (copy.deepcopy failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); convert "
            f"a copy yourself (model.to({dtype})) and build the Probe from it."
        ) from None
    for p in twin.parameters():
        p.grad = None
    return twin.to(dtype)


def require_precision(probe: object, what: str) -> None:
    """Raise when the probe computes in bf16 or fp16, where `what` would be rounding noise.

    Raises:
        LandscapeError: the probe's dtype is torch.bfloat16 or torch.float16; the message names
            the fix, `Probe(..., dtype=torch.float32)`.
    """
    dtype = getattr(probe, "dtype", None)
    if dtype not in LOW_PRECISION:
        return
    eps = torch.finfo(dtype).eps
    raise LandscapeError(
        f"{what} in {dtype} is rounding noise: {dtype} resolves relative differences of only "
        f"{eps:.1e}, and curvature and sharpness are small differences of losses and gradients. "
        "Build the probe with Probe(model, data, dtype=torch.float32): it measures a float32 "
        "copy of the model (4 more bytes per parameter; your model is not changed). Loss "
        "values, lines, surfaces and interpolations are allowed in low precision."
    )


def plain_key(key: str) -> str:
    """A state-dict key without torch.compile's `_orig_mod.` components:
    `"_orig_mod.fc.weight"` -> `"fc.weight"`, `"enc._orig_mod.fc.weight"` -> `"enc.fc.weight"`."""
    if _COMPILED_NAME not in key:
        return key
    return ".".join(part for part in key.split(".") if part != _COMPILED_NAME)


# ---------------------------------------------------------------------- probed parameters

ParamSelection = Sequence[str] | Callable[[str, nn.Parameter], bool] | None


@dataclass(frozen=True)
class ParamInfo:
    """Where one probed parameter lives in the flat vector: `flat[start:stop]`."""

    name: str
    shape: tuple[int, ...]
    start: int
    stop: int

    @property
    def numel(self) -> int:
        return self.stop - self.start

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def layer(self) -> str:
        """The owning module's name (`"fc1"` for `"fc1.weight"`; `""` at the top level)."""
        return self.name.rpartition(".")[0]


def select_params(model: nn.Module, selection: ParamSelection) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the selected trainable parameters: names, module prefixes or glob
    patterns, or a predicate (`landscape.param_select`)."""
    return param_select.select_params(model, selection)


def check_placement(params: Sequence[nn.Parameter], device: torch.device | str | None
                    ) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of the probed parameters; raises when their dtypes are mixed or the
    model is not on `device` (when given): the probe never moves or converts a model."""
    actual, dtype = params[0].device, params[0].dtype
    if any(p.dtype != dtype for p in params):
        raise LandscapeError(
            "the probed parameters have mixed dtypes "
            f"({sorted({str(p.dtype) for p in params})}); convert the model to one dtype "
            "or select parameters of one dtype with params=."
        )
    if device is None or torch.device(device) == actual:
        return actual, dtype
    # torch.device("cuda") != torch.device("cuda:0"): compare the type and index loosely.
    want = torch.device(device)
    if want.type != actual.type or (want.index is not None and want.index != actual.index):
        raise LandscapeError(
            f"the model is on {actual} but device={want} was asked for; move the "
            f"model first (model.to('{want}')): the probe never moves your model."
        )
    return actual, dtype


# ---------------------------------------------------------------------- kernels guards


def twice_differentiable() -> contextlib.AbstractContextManager:
    """Use the math attention kernel: the fused ones (flash, memory-efficient) have no double
    backward, so Hessian-vector products through `scaled_dot_product_attention` would fail."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def cudnn_off_needed(model: torch.nn.Module, device: torch.device) -> bool:
    """True when `model` has a recurrent layer (LSTM, GRU, RNN) on CUDA: cuDNN's RNN backward
    runs only in training mode and has no double backward, so measurements (in eval mode, with
    Hessian-vector products) must use the native kernels."""
    return device.type == "cuda" and any(isinstance(m, torch.nn.RNNBase)
                                         for m in model.modules())


def recurrent_safe(model: torch.nn.Module, device: torch.device
                   ) -> contextlib.AbstractContextManager:
    """cuDNN switched off inside the block when `cudnn_off_needed`, else nothing."""
    if cudnn_off_needed(model, device):
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()
