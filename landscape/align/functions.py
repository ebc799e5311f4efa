"""How function and method calls tie atoms: the dispatch of one fx `call_function` or
`call_method` node (ATen operators of exported graphs translated first) to the structural rules
here, the layer functions of `layers` and the shape rules of `shapes` (a mixin of
`graph.GraphAnalysis`)."""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
from torch import Tensor

from .axes import SCALAR, Unsupported
from .ops import (
    ELEMENTWISE,
    ELEMENTWISE_METHODS,
    REDUCE,
    REDUCE_METHODS,
    RESHAPE,
    SAME_METHODS,
    SOFTMAX,
    F,
    aten_target,
)

NO_RULE = object()  # a rule's answer when the call is not its kind


class Call:
    """The arguments of one call node, read as atoms labels (`lab`) or as values (`arg`)."""

    def __init__(self, analysis: Any, node: torch.fx.Node, args: list[Any] | None = None):
        self.analysis = analysis
        self.node = node
        self.is_method = node.op == "call_method"
        self.args = list(node.args) if args is None else args
        self.kwargs = dict(node.kwargs)

    def lab(self, i: int, key: str | None = None) -> Any:
        if i < len(self.args):
            return self.analysis.label_of(self.args[i])
        return self.analysis.label_of(self.kwargs.get(key)) if key else SCALAR

    def arg(self, i: int, key: str, default: Any = None) -> Any:
        value_of = self.analysis.value_of
        return value_of(self.args[i]) if i < len(self.args) else \
            value_of(self.kwargs.get(key, default))

    def shape(self, i: int) -> Any:
        return self.analysis.value_of(self.args[i]).shape


class FunctionRules:
    """Function and method calls; `self` is a `GraphAnalysis`."""

    atoms: Any
    label_of: Any
    value_of: Any
    opaque: Any

    def function(self, node: torch.fx.Node, target: Any, value: Any) -> Any:
        if isinstance(value, torch.Size) or not isinstance(value, (Tensor, list, tuple)):
            return SCALAR
        call = Call(self, node)
        if isinstance(target, torch._ops.OpOverload):
            target, call, out = self.aten(call, target, value)
            if out is not NO_RULE:
                return out
        for rule in (self.structural, self.reshaping, self.layer_function):
            out = rule(call, target, value)
            if out is not NO_RULE:
                return out
        what = f".{target}()" if call.is_method else getattr(target, "__name__", str(target))
        return self.opaque(node, value,
                           f"the {'method' if call.is_method else 'function'} {what}")

    def aten(self, call: Call, target: Any, value: Any) -> tuple[Any, Call, Any]:
        """(torch-level target, the call as it reads, the label when the operator is handled
        here, else NO_RULE) for an ATen operator of an exported graph."""
        known = aten_target(target.overloadpacket)
        if known is None:
            return target, call, self.opaque(call.node, value, f"the operator {target}")
        args = call.args
        if known == "aten.embedding":  # (weight, indices)
            return F.embedding, Call(self, call.node, [args[1], args[0], *args[2:]]), NO_RULE
        if known == "aten.slice":  # (x, dim, start, end, step)
            return known, call, self.slice(call.lab(0), call.shape(0),
                                           *(self.value_of(a) for a in args[1:]))
        if known == "aten.select":  # (x, dim, index): the dimension goes
            x = call.lab(0)
            dim = self.value_of(args[1]) % len(x)
            self.atoms.fix(x[dim])
            return known, call, x[:dim] + x[dim + 1:]
        if known == "aten.addmm":  # bias + m1 @ m2
            out = self.matmul(call.lab(1), call.lab(2), value)
            return known, call, self.broadcast([out, call.lab(0)], tuple(value.shape))
        return known, call, NO_RULE

    def structural(self, call: Call, target: Any, value: Any) -> Any:
        """Attributes, items, elementwise operations, copies, softmax and reductions."""
        if target is getattr:
            attr = call.args[1]
            if attr in ("T", "mT"):
                x = call.lab(0)
                return x[:-2] + (x[-1], x[-2])
            if attr in ("shape", "dtype", "device", "ndim", "is_cuda"):
                return SCALAR
            raise Unsupported(f"the attribute {attr!r}")
        if target is operator.getitem:
            return self.getitem(call.args, value)
        if target in ELEMENTWISE or (call.is_method and target in ELEMENTWISE_METHODS):
            labs = [self.label_of(a) for a in [*call.args, *call.kwargs.values()]]
            labs = [x for x in labs if isinstance(x, tuple) and all(isinstance(a, int)
                                                                    for a in x)]
            return self.broadcast(labs, tuple(value.shape))
        if call.is_method and target in SAME_METHODS or target in (torch.clone, torch.detach):
            return call.lab(0)
        if target in SOFTMAX:
            return call.lab(0)
        if target in REDUCE or (call.is_method and target in REDUCE_METHODS):
            return self.reduce(call.node, target, call.lab(0), call.arg(0, "input").shape,
                               call.args, call.kwargs, value)
        return NO_RULE

    def reshaping(self, call: Call, target: Any, value: Any) -> Any:
        """Reshapes, permutes, transposes, squeezes, splits, concatenations and matmul."""
        if target in RESHAPE:
            return self.reshape(call.lab(0), call.shape(0), value.shape)
        if target in ("permute", torch.permute):
            dims = call.args[1:] if call.is_method else [call.arg(1, "dims")]
            dims = self.value_of(dims[0]) if len(dims) == 1 and isinstance(
                self.value_of(dims[0]), (list, tuple)) else [self.value_of(d) for d in dims]
            x = call.lab(0)
            return tuple(x[d] for d in dims)
        if target in ("transpose", torch.transpose, "swapaxes", torch.swapaxes):
            x = list(call.lab(0))
            i, j = call.arg(1, "dim0"), call.arg(2, "dim1")
            x[i], x[j] = x[j], x[i]
            return tuple(x)
        if target in ("t", torch.t):
            return tuple(reversed(call.lab(0)))
        if target in ("unsqueeze", torch.unsqueeze, "squeeze", torch.squeeze, "expand",
                      "expand_as", "repeat"):
            return self.align_shape(call.lab(0), call.shape(0), value.shape, str(target))
        if target in ("split", torch.split, "chunk", torch.chunk, "tensor_split",
                      "unbind", torch.unbind):
            unbind = target in ("unbind", torch.unbind)
            return self.split(unbind, call.lab(0), value, call.arg(1 if unbind else 2, "dim", 0))
        if target in (torch.cat, torch.concat, torch.stack):
            return self.cat(target, list(call.lab(0, "tensors")), call.arg(1, "dim", 0), value)
        if target in (torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm"):
            return self.matmul(call.lab(0), call.lab(1), value)
        return NO_RULE
