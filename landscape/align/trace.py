"""Reading a model's permutation structure: trace its graph (torch.fx with the known layers as
leaves, else `transformers`' tracer, else `torch.export`), run it once on an example input to
record every value's shape, and analyse the graph (`graph.GraphAnalysis`); `permutation_spec`
is the public entry, with a model's own `permutation_spec()` and a guessed input when none is
given."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from ..errors import LandscapeError
from ..probe import Probe
from ..probe_data import unpack
from .axes import InputMismatch, Unsupported
from .graph import GraphAnalysis
from .ops import GUIDE, LEAVES
from .spec import PermutationSpec


def permutation_spec(model: nn.Module, example_input: Any = None) -> PermutationSpec:
    """The permutation structure of `model`: its groups of hidden units and the axes each permutes.

    In order of precedence:

    1. a `torch.compile`d model is replaced by the module it wraps (`_orig_mod`); the spec's
       keys keep the `_orig_mod.` prefix of the compiled model's state dict;
    2. a model with a method `permutation_spec()` returning a `PermutationSpec` gives its own
       (for models whose code cannot be traced; see docs/guides/alignment.md);
    3. otherwise the spec is derived from the graph of a copy of the model, run once on
       `example_input` for the shapes: `torch.fx`, else `transformers`' fx tracer (Hugging Face
       models, transformers 4), else `torch.export` (its ATen operators read the same way;
       Hugging Face models are exported without their key/value cache). Operations not listed
       below are accepted when none of their inputs has a permutable dimension. Understood:
       Linear, Conv (plain or depthwise), Embedding, LSTM/GRU/RNN (gates permute together),
       LayerNorm/RMSNorm/BatchNorm/GroupNorm (1 or per-channel groups), elementwise operations
       with broadcasting (residual additions, layer scale, gating as in squeeze-excitation),
       reductions, softmax, reshapes and permutes (channels-last LayerNorm, attention heads),
       split/cat (fused q|k|v, class tokens), matmul and `scaled_dot_product_attention`,
       slicing of fixed dimensions.

    Args:
        model: the network (not changed).
        example_input: one batch of the model's inputs (a tensor, a tuple of positional inputs
            or a dict of keyword inputs); a few samples are enough. None: guessed from the first
            layer when it is a Linear (float features), an Embedding (token ids) or a
            convolution (square inputs of 8, 16, 28, 32, 64 or 224 pixels tried in turn), else
            an error asks for it.

    Returns:
        The `PermutationSpec`.

    Raises:
        LandscapeError: the model cannot be traced, or uses an operation whose effect on the
            hidden units is not known (the message names it and points at the hand-given spec).
    """
    inner = getattr(model, "_orig_mod", None)
    if isinstance(inner, nn.Module):  # torch.compile's OptimizedModule
        spec = permutation_spec(inner, example_input)
        return PermutationSpec(spec.groups, {f"_orig_mod.{k}": v for k, v in spec.axes.items()},
                               spec.nested)
    own = getattr(model, "permutation_spec", None)
    if callable(own):
        spec = own()
        if not isinstance(spec, PermutationSpec):
            raise LandscapeError(f"{type(model).__name__}.permutation_spec() must return a "
                                 f"landscape.PermutationSpec; got {type(spec).__name__}.")
        spec.check(model.state_dict())
        return spec
    guesses = [example_input] if example_input is not None else _guess_inputs(model)
    for guess in guesses:
        try:
            spec = derive_spec(model, guess)
        except InputMismatch:
            if example_input is not None:
                raise
            continue
        spec.check(model.state_dict())
        return spec
    raise LandscapeError(
        f"permutation alignment runs {type(model).__name__} once to read its shapes: pass "
        "example_input= (one batch of its inputs, a few samples are enough). aligned_barrier "
        "and compare take it from the probe's data."
    )


def _guess_inputs(model: nn.Module) -> list[Tensor]:
    """Inputs to try when none is given, from the first Linear, Embedding or convolution in
    `model.modules()`: features, token ids, or channels at a few square sizes (8 to 224)."""
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if isinstance(mod, nn.Linear):
            return [torch.zeros(2, mod.in_features, dtype=w.dtype, device=w.device)]
        if isinstance(mod, nn.Embedding):
            return [torch.zeros(2, 4, dtype=torch.long, device=w.device)]
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dims = w.ndim - 2
            return [torch.zeros(2, mod.in_channels, *[size] * dims, dtype=w.dtype,
                                device=w.device) for size in (8, 16, 28, 32, 64, 224)]
    return []


def example_input(probe: Probe) -> Any:
    """The model inputs of the probe's first batch (captured at the model's forward call when
    the probe computes its own loss with `batch_loss`); the forward itself is not run."""
    batch = next(iter(probe.batch_pass.batches()))
    if probe.batch_loss is None:
        return unpack(batch)[0]

    class _Captured(Exception):
        pass

    def grab(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        raise _Captured(args, kwargs)

    handle = probe.model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            probe.batch_loss(probe.model, batch)
    except _Captured as c:
        args, kwargs = c.args
        return kwargs if kwargs and not args else args if len(args) != 1 or kwargs else args[0]
    finally:
        handle.remove()
    raise LandscapeError("the probe's batch_loss never calls the model: pass example_input=.")


class LeafTracer(torch.fx.Tracer):
    """Traces through every module except the layers the analysis knows; buffers are proxied
    (a causal mask sliced to the sequence length)."""

    proxy_buffer_attributes = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # a subclass with its own forward (a channels-first LayerNorm) is traced through
        return any(isinstance(m, base) and type(m).forward is base.forward for base in LEAVES)


def trace(model: nn.Module, example: Any) -> tuple[torch.fx.GraphModule, bool]:
    """The fx graph of `model` and whether it came from `torch.export`: torch.fx with our
    leaves, then `transformers`' fx tracer (Hugging Face models, transformers 4), then
    `torch.export` on the example input."""
    try:
        graph = LeafTracer().trace(model)
        return torch.fx.GraphModule(model, graph), False
    except Exception as first:  # noqa: BLE001 - any tracing failure is about the model's code
        hf = _hf_trace(model)
        if hf is not None:
            return hf, False
        args, kwargs = _split_example(example)
        try:
            return torch.export.export(model, args, kwargs, strict=False).module(), True
        except Exception as second:  # noqa: BLE001 - reported with the first failure
            raise LandscapeError(
                f"permutation alignment cannot read the structure of {type(model).__name__}: "
                f"torch.fx cannot trace its forward ({_first_line(first)}) and torch.export "
                f"cannot export it ({_first_line(second)}). This comes from the model's code "
                "(Python control flow on tensor values, or calls the tracers cannot follow), "
                "not from your data. Give the permutation structure by hand: align_weights(..., "
                f"spec=PermutationSpec(...)) or a method model.permutation_spec(); see {GUIDE}."
            ) from first


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _split_example(example: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example, tuple):
        return example, {}
    if isinstance(example, Mapping):
        return (), dict(example)
    return (example,), {}


def _hf_trace(model: nn.Module) -> torch.fx.GraphModule | None:
    try:
        from transformers import PreTrainedModel  # noqa: PLC0415 - optional
        from transformers.utils.fx import symbolic_trace as hf_symbolic_trace  # noqa: PLC0415
    except Exception:  # noqa: BLE001 - not installed or incompatible: not available
        return None
    if not isinstance(model, PreTrainedModel):
        return None
    try:
        return hf_symbolic_trace(model)
    except Exception:  # noqa: BLE001 - fall through to the error about the model
        return None


class Recorder(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__(gm)
        self.values: dict[Any, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def _bind(gm: torch.fx.GraphModule, model: nn.Module, example: Any, exported: bool
          ) -> list[Any]:
    args, kwargs = _split_example(example)
    if exported:  # placeholders are the flattened inputs
        return list(torch.utils._pytree.tree_leaves((args, kwargs)))
    try:
        bound = inspect.signature(model.forward).bind_partial(*args, **kwargs).arguments
    except TypeError as e:
        raise LandscapeError(f"example_input does not fit {type(model).__name__}.forward: "
                             f"{e}.") from e
    values = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            name = str(node.target).lstrip("*")
            values.append(bound[name] if name in bound else (node.args[0] if node.args
                                                             else None))
    return values


def derive_spec(model: nn.Module, example_input: Any) -> PermutationSpec:
    """The permutation structure of `model` (not changed), read from one forward pass of a
    copy on `example_input` (a tensor, a tuple of positional inputs or a dict of keyword
    inputs)."""
    work = copy.deepcopy(model).eval()
    config = getattr(work, "config", None)
    if getattr(config, "use_cache", None):  # Hugging Face: no key/value cache in the output
        config.use_cache = False
    gm, exported = trace(work, example_input)
    recorder = Recorder(gm)
    try:
        with torch.no_grad():
            recorder.run(*_bind(gm, work, example_input, exported))
    except LandscapeError:
        raise
    except Exception as e:  # noqa: BLE001 - the model does not run on the example input
        raise InputMismatch(
            f"{type(model).__name__} does not run on example_input ({type(e).__name__}: {e}); "
            "pass one batch of the model's inputs as example_input."
        ) from e
    analysis = GraphAnalysis(work, gm, recorder.values)
    analysis.run()
    state = work.state_dict(keep_vars=True)
    try:
        spec = analysis.spec(state)
    except Unsupported as e:
        raise LandscapeError(f"permutation alignment cannot describe {type(model).__name__}: "
                             f"{e}. Give the permutation structure by hand (see {GUIDE}).") \
            from None
    return spec
