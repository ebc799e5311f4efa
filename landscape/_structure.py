"""Derive a `PermutationSpec` from a model's `torch.fx` graph, run once on an example input.

Every dimension of every value in the graph gets an *atom*: a set of interchangeable units.
Atoms are merged (union-find) when an operation requires two dimensions to be permuted alike
(the two sides of an addition, the contracted dimensions of a matmul, a layer's input and the
columns of its weight), and *refined* when a dimension is reshaped into several (a product:
the heads and the dimensions within a head) or split into pieces (a concatenation: the q, k and
v thirds of a fused projection). Dimensions of the inputs and outputs, and dimensions an
operation depends on the order of (slicing, creation ops, kernel positions), are *fixed*.
The free leaf atoms are the permutation groups. The example input supplies the concrete shapes
that reshapes and splits need.
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from .errors import LandscapeError
from .permspec import PermutationSpec

F = nn.functional
GUIDE = "docs/guides/alignment.md"

_NORM1D = (nn.LayerNorm, nn.RMSNorm)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RNN = (nn.LSTM, nn.GRU, nn.RNN)
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softsign,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.Softmax, nn.LogSoftmax,
)
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_LEAVES = (nn.Linear, *_CONV, nn.Embedding, *_NORM1D, *_BATCHNORM, nn.GroupNorm, *_RNN,
           nn.Flatten, *_ELEMENTWISE_MODULES, *_POOL_MODULES)

_ELEMENTWISE = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, operator.itruediv, operator.pow, operator.neg, operator.eq, operator.ne,
    operator.lt, operator.le, operator.gt, operator.ge, operator.and_, operator.or_,
    operator.invert, torch.add, torch.sub, torch.mul, torch.div, torch.where, torch.maximum,
    torch.minimum, torch.pow, torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.tanh,
    torch.sigmoid, torch.relu, torch.erf, torch.abs, torch.clamp, torch.sin, torch.cos,
    torch.square, torch.masked_fill, torch.dropout, torch.lerp,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.softplus,
    F.hardtanh, F.hardswish, F.hardsigmoid, F.softsign, F.tanh, F.sigmoid, F.dropout,
    F.dropout1d, F.dropout2d, F.dropout3d,
}
_ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_", "pow", "exp", "log", "sqrt",
    "rsqrt", "tanh", "sigmoid", "relu", "abs", "clamp", "neg", "masked_fill", "masked_fill_",
    "square", "eq", "ne", "lt", "le", "gt", "ge", "sin", "cos", "where", "lerp",
}
_SAME_METHODS = {"contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to",
                 "type", "type_as", "cpu", "cuda", "requires_grad_"}
_SOFTMAX = {torch.softmax, torch.log_softmax, F.softmax, F.log_softmax, "softmax",
            "log_softmax"}
_REDUCE = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax", torch.amin: "amin",
           torch.max: "max", torch.min: "min", torch.var: "var", torch.std: "std",
           torch.logsumexp: "logsumexp", torch.norm: "norm", torch.prod: "prod"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin", "max", "min", "var", "std", "logsumexp",
                   "norm", "prod"}
_RESHAPE = {torch.reshape, torch.flatten, torch.unflatten, "view", "reshape", "flatten",
            "unflatten", "view_as", "reshape_as"}
_CREATE = {torch.arange, torch.ones, torch.zeros, torch.full, torch.empty, torch.tensor,
           torch.ones_like, torch.zeros_like, torch.full_like, torch.tril, torch.triu,
           torch.eye, torch.randn, torch.rand}
_POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
                   F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                   F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                   F.adaptive_max_pool3d, F.interpolate}



def _aten_table() -> dict[Any, Any]:
    """ATen operators (in graphs from `torch.export`) -> the torch-level equivalent handled."""
    aten = torch.ops.aten
    same = {
        "linear": F.linear, "add": torch.add, "sub": torch.sub, "mul": torch.mul,
        "div": torch.div, "rsub": torch.sub, "gelu": F.gelu, "relu": torch.relu,
        "tanh": torch.tanh, "sigmoid": torch.sigmoid, "silu": F.silu, "pow": torch.pow,
        "rsqrt": torch.rsqrt, "sqrt": torch.sqrt, "exp": torch.exp, "log": torch.log,
        "neg": operator.neg, "where": torch.where, "masked_fill": torch.masked_fill,
        "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "gt": operator.gt,
        "le": operator.le, "ge": operator.ge, "abs": torch.abs, "clamp": torch.clamp,
        "erf": torch.erf, "maximum": torch.maximum, "minimum": torch.minimum,
        "dropout": F.dropout, "softmax": torch.softmax, "_softmax": torch.softmax,
        "log_softmax": torch.log_softmax, "_log_softmax": torch.log_softmax,
        "mean": torch.mean, "sum": torch.sum, "amax": torch.amax, "amin": torch.amin,
        "var": torch.var, "view": torch.reshape, "reshape": torch.reshape,
        "_unsafe_view": torch.reshape, "flatten": torch.flatten, "unflatten": torch.unflatten,
        "permute": torch.permute, "transpose": torch.transpose, "t": torch.t,
        "unsqueeze": torch.unsqueeze, "squeeze": torch.squeeze, "expand": "expand",
        "split": torch.split, "split_with_sizes": torch.split, "chunk": torch.chunk,
        "unbind": torch.unbind, "cat": torch.cat, "stack": torch.stack,
        "matmul": torch.matmul, "bmm": torch.matmul, "mm": torch.matmul,
        "scaled_dot_product_attention": F.scaled_dot_product_attention,
        "layer_norm": F.layer_norm, "rms_norm": getattr(F, "rms_norm", None),
        "conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d,
        "contiguous": torch.clone, "clone": torch.clone, "detach": torch.detach,
        "alias": torch.clone, "_to_copy": torch.clone, "to": torch.clone,
        "lift_fresh_copy": torch.clone, "type_as": torch.clone,
        "arange": torch.arange, "zeros": torch.zeros, "ones": torch.ones, "full": torch.full,
        "empty": torch.empty, "scalar_tensor": torch.tensor, "zeros_like": torch.zeros_like,
        "ones_like": torch.ones_like, "full_like": torch.full_like, "tril": torch.tril,
        "triu": torch.triu, "new_ones": torch.ones, "new_zeros": torch.zeros,
        "new_full": torch.full, "new_empty": torch.empty,
        "max_pool2d": F.max_pool2d, "avg_pool2d": F.avg_pool2d,
        "adaptive_avg_pool2d": F.adaptive_avg_pool2d, "adaptive_avg_pool1d": F.adaptive_avg_pool1d,
        "embedding": "aten.embedding", "slice": "aten.slice", "select": "aten.select",
        "addmm": "aten.addmm",
    }
    table = {}
    for name, target in same.items():
        packet = getattr(aten, name, None)
        if packet is not None and target is not None:
            table[packet] = target
    return table


_ATEN: dict[Any, Any] = {}


class InputMismatch(LandscapeError):
    """The model does not run on the example input."""


class _Unsupported(Exception):
    """An operation the analysis does not understand (becomes a LandscapeError)."""


class _Lazy:
    """A value that may not be used: using it raises (an LSTM's stacked final states)."""

    def __init__(self, why: str):
        self.why = why


SCALAR = object()


class _Atoms:
    """Union-find over dimension atoms, with sizes, fixedness and refinements."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.name: list[str] = []
        self.fixed: list[bool] = []
        self.refine: dict[int, tuple[str, list[int]]] = {}  # root -> ("prod"|"cat", children)

    def new(self, size: int, name: str = "", fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.name.append(name)
        self.fixed.append(fixed or size == 1)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def fix(self, a: int) -> None:
        self.fixed[self.find(a)] = True

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            raise _Unsupported(f"dimensions of {self.size[ra]} and {self.size[rb]} units meet")
        if (rb < ra or not self.name[ra]) and self.name[rb]:  # the earliest named atom names it
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.fixed[ra] = self.fixed[ra] or self.fixed[rb]
        ref_a, ref_b = self.refine.get(ra), self.refine.pop(rb, None)
        if ref_b is None:
            return
        if ref_a is None:
            self.refine[ra] = ref_b
        elif ref_a[0] == ref_b[0] == "cat":
            if [self.size[c] for c in ref_a[1]] != [self.size[c] for c in ref_b[1]]:
                raise _Unsupported("a dimension is split into pieces in two different ways")
            for x, y in zip(ref_a[1], ref_b[1]):
                self.union(x, y)
        elif ref_a[0] == ref_b[0] == "prod":
            self.unify_seq(list(ref_a[1]), list(ref_b[1]))
        else:
            raise _Unsupported("a dimension is both reshaped and split into pieces")

    def leaves(self, a: int) -> list[int]:
        """The atom as a product of atoms (expanding product refinements only)."""
        r = self.find(a)
        ref = self.refine.get(r)
        if ref is not None and ref[0] == "prod":
            return [x for c in ref[1] for x in self.leaves(c)]
        return [r]

    def refine_as(self, a: int, kind: str, sizes: list[int], name: str) -> list[int]:
        r = self.find(a)
        children = [self.new(s, f"{self.name[r]}{name}{i}") for i, s in enumerate(sizes)]
        if r in self.refine:  # reconcile with an existing refinement through a twin atom
            twin = self.new(self.size[r])
            self.refine[twin] = (kind, children)
            self.union(r, twin)
        else:
            self.refine[r] = (kind, children)
        return children

    def unify_seq(self, xs: list[int], ys: list[int]) -> None:
        """Unify two products of atoms with the same total size, refining where needed."""
        xs = [x for a in xs for x in self.leaves(a) if self.size[x] > 1]
        ys = [y for a in ys for y in self.leaves(a) if self.size[y] > 1]
        while xs and ys:
            x, y = xs.pop(0), ys.pop(0)
            sx, sy = self.size[x], self.size[y]
            if sx == sy:
                self.union(x, y)
                continue
            big, small, rest = (x, y, xs) if sx > sy else (y, x, ys)
            sb, ss = self.size[big], self.size[small]
            if sb % ss:
                raise _Unsupported(f"a reshape regroups {sb} units by {ss}")
            if self.refine.get(self.find(big), ("prod",))[0] == "cat":
                raise _Unsupported("a dimension split into pieces is then reshaped")
            first, second = self.refine_as(big, "prod", [ss, sb // ss], ".")
            self.union(first, small)
            rest.insert(0, second)
        if xs or ys:
            raise _Unsupported("a reshape does not preserve the number of units")

    def is_fixed(self, a: int) -> bool:
        return self.fixed[self.find(a)]

    def propagate_fixed(self) -> None:
        """A fixed atom fixes the atoms it is made of."""
        changed = True
        while changed:
            changed = False
            for r, (_, children) in list(self.refine.items()):
                if self.find(r) == r and self.fixed[r]:
                    for c in children:
                        if not self.fixed[self.find(c)]:
                            self.fixed[self.find(c)] = changed = True

    def merged(self, atoms: list[int]) -> int:
        """One atom for several dimensions merged row-major (flatten, view)."""
        atoms = [a for a in atoms if self.size[self.find(a)] > 1]
        if len(atoms) == 1:
            return atoms[0]
        m = self.new(math.prod(self.size[a] for a in atoms) if atoms else 1)
        if atoms:
            self.refine[m] = ("prod", list(atoms))
        return m


class _Analysis:
    def __init__(self, model: nn.Module, gm: torch.fx.GraphModule, values: dict[Any, Any]):
        self.model = model
        self.gm = gm
        self.values = values
        self.atoms = _Atoms()
        self.labels: dict[Any, Any] = {}
        self.params: dict[int, tuple[int, ...]] = {}  # id(tensor) -> atom of each axis
        self.param_names: dict[int, list[str]] = {}  # id(tensor) -> its names in the graph
        self.seen_labels: list[tuple[int, ...]] = []  # every tensor label, for nesting

    # --- labels -------------------------------------------------------------------------
    def fresh(self, shape: Any, fixed: bool = True, name: str = "") -> tuple[int, ...]:
        return tuple(self.atoms.new(s, name, fixed) for s in shape)

    def label_of(self, arg: Any) -> Any:
        if isinstance(arg, torch.fx.Node):
            lab = self.labels[arg]
            if isinstance(lab, _Lazy):
                raise _Unsupported(lab.why)
            return lab
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.label_of(a) for a in arg)
        if isinstance(arg, Tensor):  # a constant tensor in the graph
            return self.fresh(arg.shape)
        return SCALAR

    def value_of(self, arg: Any) -> Any:
        if isinstance(arg, torch.fx.Node):
            return self.values[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value_of(a) for a in arg)
        if isinstance(arg, slice):
            return slice(self.value_of(arg.start), self.value_of(arg.stop),
                         self.value_of(arg.step))
        return arg

    def param(self, t: Tensor, key: str, names: Mapping[int, str] | None = None
              ) -> tuple[int, ...]:
        self.param_names.setdefault(id(t), [])
        if key not in self.param_names[id(t)]:
            self.param_names[id(t)].append(key)
        if id(t) not in self.params:
            names = names or {}
            base = key.removesuffix(".weight")
            self.params[id(t)] = tuple(self.atoms.new(s, names.get(i, f"{base}:{i}"))
                                       for i, s in enumerate(t.shape))
        return self.params[id(t)]

    def unify(self, a: int, b: int) -> None:
        if self.atoms.size[self.atoms.find(a)] > 1 and self.atoms.size[self.atoms.find(b)] > 1:
            self.atoms.union(a, b)

    def fix_all(self, lab: Any) -> None:
        if isinstance(lab, tuple) and all(isinstance(a, int) for a in lab):
            for a in lab:
                self.atoms.fix(a)
        elif isinstance(lab, (tuple, list)):
            for x in lab:
                self.fix_all(x)

    def broadcast(self, labs: list[tuple[int, ...]], shape: tuple[int, ...]) -> tuple[int, ...]:
        out = []
        for d in range(1, len(shape) + 1):
            found = [lab[-d] for lab in labs if len(lab) >= d
                     and self.atoms.size[self.atoms.find(lab[-d])] == shape[-d]]
            if not found or shape[-d] == 1:
                out.append(self.atoms.new(shape[-d], fixed=True))
                continue
            for a in found[1:]:
                self.unify(found[0], a)
            out.append(found[0])
        return tuple(reversed(out))

    # --- driver -------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            try:
                lab = self.visit(node)
            except _Unsupported as e:
                raise LandscapeError(
                    f"permutation alignment cannot follow {_describe(node, self.gm)} in "
                    f"{type(self.model).__name__}: {e}. Give the permutation structure by hand "
                    f"(align_weights(..., spec=PermutationSpec(...)), see {GUIDE})."
                ) from None
            self.labels[node] = lab
            self._remember(lab)

    def _remember(self, lab: Any) -> None:
        if isinstance(lab, tuple) and all(isinstance(a, int) for a in lab):
            self.seen_labels.append(lab)
        elif isinstance(lab, (tuple, list)):
            for x in lab:
                self._remember(x)

    def visit(self, node: torch.fx.Node) -> Any:
        op, target = node.op, node.target
        value = self.values.get(node)
        if op == "placeholder":
            return self._fixed_like(value)
        if op == "output":
            self.fix_all(self.label_of(node.args[0]))
            return None
        if op == "get_attr":
            t = _get_attr(self.gm, target)
            if isinstance(t, Tensor):
                return self.param(t, target)
            return SCALAR
        if op == "call_module":
            if value is None:  # a guard (torch.export) or a module returning nothing
                return SCALAR
            return self.module(node, self.gm.get_submodule(target), value)
        return self.function(node, target, value)

    def _fixed_like(self, value: Any) -> Any:
        if isinstance(value, Tensor):
            return self.fresh(value.shape)
        if isinstance(value, (list, tuple)):
            return type(value)(self._fixed_like(v) for v in value)
        if isinstance(value, Mapping):
            raise _Unsupported("a dict input (pass tensors as separate arguments)")
        return SCALAR

    # --- modules ------------------------------------------------------------------------
    def module(self, node: torch.fx.Node, mod: nn.Module, value: Any) -> Any:
        args = [self.label_of(a) for a in node.args]
        if node.kwargs or not args or not isinstance(args[0], tuple):
            raise _Unsupported(f"a call of {type(mod).__name__} with these arguments")
        x = args[0]
        name = str(node.target)
        if isinstance(mod, nn.Linear):
            w = self.param(mod.weight, f"{name}.weight", {0: name})
            self.unify(w[1], x[-1])
            if mod.bias is not None:
                self.unify(self.param(mod.bias, f"{name}.bias")[0], w[0])
            return x[:-1] + (w[0],)
        if isinstance(mod, _CONV):
            w = self.param(mod.weight, f"{name}.weight", {0: name})
            for a in w[2:]:
                self.atoms.fix(a)
            if mod.groups == 1:
                self.unify(w[1], x[1])
            elif mod.groups == mod.in_channels == mod.out_channels:  # depthwise
                self.unify(w[0], x[1])
            else:
                raise _Unsupported(f"the grouped convolution {name!r} (groups={mod.groups}; "
                                   "only 1 and depthwise are supported)")
            if mod.bias is not None:
                self.unify(self.param(mod.bias, f"{name}.bias")[0], w[0])
            return (x[0], w[0], *self.fresh(value.shape[2:]))
        if isinstance(mod, nn.Embedding):
            w = self.param(mod.weight, f"{name}.weight", {1: name})
            self.atoms.fix(w[0])
            return x + (w[1],)
        if isinstance(mod, _NORM1D):
            k = len(mod.normalized_shape)
            for p in ("weight", "bias"):
                t = getattr(mod, p, None)
                if t is not None:
                    for a, b in zip(self.param(t, f"{name}.{p}"), x[-k:]):
                        self.unify(a, b)
            return x
        if isinstance(mod, (*_BATCHNORM, nn.GroupNorm)):
            if isinstance(mod, nn.GroupNorm) and mod.num_groups not in (1, mod.num_channels):
                raise _Unsupported(f"GroupNorm {name!r} with {mod.num_groups} groups (only 1 "
                                   "or one per channel keep channels interchangeable)")
            for p in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(mod, p, None)
                if isinstance(t, Tensor):
                    self.unify(self.param(t, f"{name}.{p}")[0], x[1])
            return x
        if isinstance(mod, _RNN):
            return self.rnn(node, mod, x, len(args))
        if isinstance(mod, nn.Flatten):
            return self.reshape(x, self.values[node.args[0]].shape, value.shape)
        if isinstance(mod, _ELEMENTWISE_MODULES):
            if any(True for _ in mod.parameters()):
                raise _Unsupported(f"{type(mod).__name__} {name!r} with parameters")
            return x
        if isinstance(mod, _POOL_MODULES):
            return x[:2] + self.fresh(value.shape[2:])
        raise _Unsupported(f"the module {name!r} of type {type(mod).__name__}")

    def rnn(self, node: torch.fx.Node, mod: nn.Module, x: tuple[int, ...], n_args: int) -> Any:
        name = str(node.target)
        if n_args != 1:
            raise _Unsupported(f"{type(mod).__name__} {name!r} called with an initial state")
        if mod.bidirectional or getattr(mod, "proj_size", 0):
            raise _Unsupported(f"{type(mod).__name__} {name!r}: bidirectional and projected "
                               "recurrent layers are not supported")
        if len(x) != 3:
            raise _Unsupported(f"{type(mod).__name__} {name!r} on an unbatched input")
        gates = {nn.LSTM: 4, nn.GRU: 3}.get(type(mod), 1)
        h_in = x[-1]
        hidden = []
        for layer in range(mod.num_layers):
            h = self.atoms.new(mod.hidden_size, f"{name}.l{layer}")
            for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                t = getattr(mod, f"{p}_l{layer}", None)
                if t is None:
                    continue
                lab = self.param(t, f"{name}.{p}_l{layer}")
                rows = self.atoms.new(gates * mod.hidden_size)
                self.atoms.refine[rows] = ("cat", [h] * gates)
                self.atoms.union(lab[0], rows)
                if p == "weight_ih":
                    self.unify(lab[1], h_in)
                elif p == "weight_hh":
                    self.unify(lab[1], h)
            h_in = h
            hidden.append(h)
        batch, time_ = (x[0], x[1]) if mod.batch_first else (x[1], x[0])
        out = (batch, time_, hidden[-1]) if mod.batch_first else (time_, batch, hidden[-1])
        if mod.num_layers == 1:
            state = (self.atoms.new(1), batch, hidden[0])
        else:
            state = _Lazy(f"the final states of the {mod.num_layers}-layer "
                          f"{type(mod).__name__} {name!r} (stacked over layers)")
        return (out, (state, state)) if isinstance(mod, nn.LSTM) else (out, state)

    # --- functions and methods ----------------------------------------------------------
    def function(self, node: torch.fx.Node, target: Any, value: Any) -> Any:
        lab_of = self.label_of
        is_method = node.op == "call_method"
        args = list(node.args)
        kwargs = dict(node.kwargs)
        if isinstance(value, torch.Size) or not isinstance(value, (Tensor, list, tuple)):
            return SCALAR
        if isinstance(target, torch._ops.OpOverload):
            if not _ATEN:
                _ATEN.update(_aten_table())
            if target.overloadpacket not in _ATEN:
                return self.opaque(node, value, f"the operator {target}")
            target = _ATEN[target.overloadpacket]
            if target == "aten.embedding":  # (weight, indices)
                target, args = F.embedding, [args[1], args[0], *args[2:]]
            elif target == "aten.slice":  # (x, dim, start, end, step)
                return self.slice(lab_of(args[0]), self.value_of(args[0]).shape, *(
                    self.value_of(a) for a in args[1:]))
            elif target == "aten.select":  # (x, dim, index): the dimension goes
                x, dim = lab_of(args[0]), self.value_of(args[1]) % len(lab_of(args[0]))
                self.atoms.fix(x[dim])
                return x[:dim] + x[dim + 1:]
            elif target == "aten.addmm":  # bias + m1 @ m2
                out = self.matmul(lab_of(args[1]), lab_of(args[2]), value)
                return self.broadcast([out, lab_of(args[0])], tuple(value.shape))
        what = f".{target}()" if is_method else getattr(target, "__name__", str(target))

        def lab(i: int, key: str | None = None) -> Any:
            if i < len(args):
                return self.label_of(args[i])
            return self.label_of(kwargs.get(key)) if key else SCALAR

        def arg(i: int, key: str, default: Any = None) -> Any:
            return self.value_of(args[i]) if i < len(args) else \
                self.value_of(kwargs.get(key, default))

        if target is getattr:
            attr = args[1]
            if attr in ("T", "mT"):
                x = lab(0)
                return x[:-2] + (x[-1], x[-2])
            if attr in ("shape", "dtype", "device", "ndim", "is_cuda"):
                return SCALAR
            raise _Unsupported(f"the attribute {attr!r}")
        if target is operator.getitem:
            return self.getitem(args, value)
        if target in _ELEMENTWISE or (is_method and target in _ELEMENTWISE_METHODS):
            labs = [self.label_of(a) for a in [*args, *kwargs.values()]]
            labs = [x for x in labs if isinstance(x, tuple) and all(isinstance(a, int)
                                                                    for a in x)]
            return self.broadcast(labs, tuple(value.shape))
        if is_method and target in _SAME_METHODS or target in (torch.clone, torch.detach):
            return lab(0)
        if target in _SOFTMAX:
            return lab(0)
        if target in _REDUCE or (is_method and target in _REDUCE_METHODS):
            return self.reduce(node, target, lab(0), arg(0, "input").shape, args, kwargs, value)
        if target in _RESHAPE:
            return self.reshape(lab(0), self.value_of(args[0]).shape, value.shape)
        if target in ("permute", torch.permute):
            dims = args[1:] if is_method else [arg(1, "dims")]
            dims = self.value_of(dims[0]) if len(dims) == 1 and isinstance(
                self.value_of(dims[0]), (list, tuple)) else [self.value_of(d) for d in dims]
            x = lab(0)
            return tuple(x[d] for d in dims)
        if target in ("transpose", torch.transpose, "swapaxes", torch.swapaxes):
            x = list(lab(0))
            i, j = arg(1, "dim0"), arg(2, "dim1")
            x[i], x[j] = x[j], x[i]
            return tuple(x)
        if target in ("t", torch.t):
            x = lab(0)
            return tuple(reversed(x))
        if target in ("unsqueeze", torch.unsqueeze, "squeeze", torch.squeeze, "expand",
                      "expand_as", "repeat"):
            return self.align_shape(lab(0), self.value_of(args[0]).shape, value.shape,
                                    str(target))
        if target in ("split", torch.split, "chunk", torch.chunk, "tensor_split",
                      "unbind", torch.unbind):
            unbind = target in ("unbind", torch.unbind)
            return self.split(unbind, lab(0), value, arg(1 if unbind else 2, "dim", 0))
        if target in (torch.cat, torch.concat, torch.stack):
            return self.cat(target, list(lab(0, "tensors")), arg(1, "dim", 0), value)
        if target in (torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm"):
            return self.matmul(lab(0), lab(1), value)
        if target in (F.conv1d, F.conv2d, F.conv3d):
            x, w = lab(0), lab(1, "weight")
            groups = arg(6, "groups", 1)
            for a in w[2:]:
                self.atoms.fix(a)
            if groups == 1:
                self.unify(w[1], x[1])
            elif groups == self.value_of(args[0]).shape[1] == value.shape[1]:
                self.unify(w[0], x[1])
            else:
                raise _Unsupported(f"a grouped convolution (groups={groups})")
            b = lab(2, "bias")
            if isinstance(b, tuple):
                self.unify(b[0], w[0])
            return (x[0], w[0], *self.fresh(value.shape[2:]))
        if target is F.embedding:
            x, w = lab(0), lab(1, "weight")
            self.atoms.fix(w[0])
            return x + (w[1],)
        if target is F.linear:
            x, w = lab(0), lab(1, "weight")
            self.unify(w[1], x[-1])
            b = lab(2, "bias")
            if isinstance(b, tuple):
                self.unify(b[0], w[0])
            return x[:-1] + (w[0],)
        if target is F.scaled_dot_product_attention:
            q, k, v = lab(0), lab(1), lab(2)
            self.unify(q[-1], k[-1])
            self.unify(k[-2], v[-2])
            for a, b, c in zip(q[:-2], k[:-2], v[:-2]):
                self.unify(a, b)
                self.unify(a, c)
            out = q[:-1] + (v[-1],)
            mask = lab(3, "attn_mask")
            if isinstance(mask, tuple):
                self.broadcast([mask, q[:-1] + (k[-2],)], tuple(value.shape[:-1])
                               + (self.value_of(args[1]).shape[-2],))
            return out
        if target is F.layer_norm or target is getattr(F, "rms_norm", None):
            x = lab(0)
            k = len(arg(1, "normalized_shape"))
            for key, i in (("weight", 2), ("bias", 3)):
                p = lab(i, key)
                if isinstance(p, tuple):
                    for a, b in zip(p, x[-k:]):
                        self.unify(a, b)
            return x
        if target in _POOL_FUNCTIONS:
            x = lab(0)
            return x[:2] + self.fresh(value.shape[2:])
        if target in _CREATE or target in ("new_zeros", "new_ones", "new_full", "new_empty",
                                          "new_tensor", "tril", "triu"):
            if target in (torch.tril, torch.triu, "tril", "triu", torch.ones_like,
                          torch.zeros_like, torch.full_like):
                self.fix_all(lab(0))
            return self._fixed_like(value)
        return self.opaque(node, value, f"the {'method' if is_method else 'function'} {what}")

    def opaque(self, node: torch.fx.Node, value: Any, what: str) -> Any:
        """An operation the analysis does not know: allowed when none of its inputs has a
        dimension that may be permuted (mask and position arithmetic); its outputs are fixed."""
        self.atoms.propagate_fixed()
        labs: list[Any] = []
        for a in [*node.args, *node.kwargs.values()]:
            lab = self.label_of(a)
            stack = [lab]
            while stack:
                x = stack.pop()
                if isinstance(x, tuple) and all(isinstance(i, int) for i in x):
                    labs.extend(x)
                elif isinstance(x, (tuple, list)):
                    stack.extend(x)
        if all(self.atoms.is_fixed(a) for a in labs):
            return self._fixed_like(value)
        raise _Unsupported(what)

    def getitem(self, args: list[Any], value: Any) -> Any:
        base = self.labels[args[0]] if isinstance(args[0], torch.fx.Node) else SCALAR
        if isinstance(base, _Lazy):
            raise _Unsupported(base.why)
        idx = self.value_of(args[1])
        source = self.values[args[0]] if isinstance(args[0], torch.fx.Node) else None
        if not isinstance(source, Tensor):  # a tuple, a list or a shape
            if base is SCALAR:
                return SCALAR
            item = base[idx]
            if isinstance(item, _Lazy):
                return item
            return item
        return self.index(base, source.shape, idx if isinstance(idx, tuple) else (idx,))

    def index(self, base: tuple[int, ...], shape: Any, idx: tuple[Any, ...]) -> tuple[int, ...]:
        """x[idx] for ints, slices, None and Ellipsis: a partial slice fixes its dimension."""
        if any(isinstance(i, (Tensor, list)) for i in idx):
            raise _Unsupported("indexing with a tensor or list")
        if Ellipsis in idx:
            e = idx.index(Ellipsis)
            n_used = sum(1 for i in idx if i is not None and i is not Ellipsis)
            idx = idx[:e] + (slice(None),) * (len(shape) - n_used) + idx[e + 1:]
        out, d = [], 0
        for i in idx:
            if i is None:
                out.append(self.atoms.new(1))
                continue
            a = base[d]
            n = shape[d]
            if isinstance(i, slice):
                if i.indices(n) == (0, n, 1):
                    out.append(a)
                else:
                    self.atoms.fix(a)
                    out.append(self.atoms.new(len(range(*i.indices(n))), fixed=True))
            else:  # an int: picks one entry, the dimension goes
                self.atoms.fix(a)
            d += 1
        out.extend(base[d:])
        return tuple(out)

    def slice(self, x: tuple[int, ...], shape: Any, dim: int = 0, start: Any = None,
              end: Any = None, step: Any = 1) -> tuple[int, ...]:
        dim = dim % len(x)
        idx = (slice(None),) * dim + (slice(start, end, step),)
        return self.index(x, shape, idx)

    def reduce(self, node: torch.fx.Node, target: Any, x: tuple[int, ...], shape: Any,
               args: list[Any], kwargs: dict[str, Any], value: Any) -> Any:
        dims = self.value_of(args[1]) if len(args) > 1 else self.value_of(kwargs.get("dim"))
        keep = bool(self.value_of(args[2]) if len(args) > 2 and isinstance(
            self.value_of(args[2]), bool) else self.value_of(kwargs.get("keepdim", False)))
        if dims is None:
            return () if not isinstance(value, tuple) else ((), ())
        dims = {d % len(shape) for d in ((dims,) if isinstance(dims, int) else dims)}
        out = tuple(self.atoms.new(1) if d in dims else a for d, a in enumerate(x)
                    if keep or d not in dims)
        if isinstance(value, tuple):  # (values, indices): indices depend on the unit order
            for d in dims:
                self.atoms.fix(x[d])
            return (out, out)
        return out

    def reshape(self, x: tuple[int, ...], shape_in: Any, shape_out: Any) -> tuple[int, ...]:
        shape_in, shape_out = list(shape_in), list(shape_out)
        out: list[int | None] = [None] * len(shape_out)
        ins = [(d, s) for d, s in enumerate(shape_in) if s != 1]
        outs = [(d, s) for d, s in enumerate(shape_out) if s != 1]
        i = j = 0
        while i < len(ins) and j < len(outs):
            ci, cj = [ins[i]], [outs[j]]
            pi, pj = ins[i][1], outs[j][1]
            i, j = i + 1, j + 1
            while pi != pj:
                if pi < pj:
                    ci.append(ins[i])
                    pi *= ins[i][1]
                    i += 1
                else:
                    cj.append(outs[j])
                    pj *= outs[j][1]
                    j += 1
            src = self.atoms.merged([x[d] for d, _ in ci])
            if len(cj) == 1:
                out[cj[0][0]] = src
            else:
                parts = [self.atoms.new(s) for _, s in cj]
                self.atoms.unify_seq([src], parts)
                for (d, _), a in zip(cj, parts):
                    out[d] = a
        return tuple(self.atoms.new(1) if a is None else a for a in out)

    def align_shape(self, x: tuple[int, ...], shape_in: Any, shape_out: Any,
                    what: str) -> tuple[int, ...]:
        """unsqueeze / squeeze / expand / repeat: dimensions of size > 1 keep their atom."""
        kept = [(a, s) for a, s in zip(x, shape_in) if s != 1]
        out = []
        for s in reversed(shape_out) if what in ("expand", "expand_as", "repeat") else []:
            out.append(s)
        if what in ("expand", "expand_as", "repeat"):  # right-aligned
            res = []
            for d in range(1, len(shape_out) + 1):
                s_in = shape_in[-d] if d <= len(shape_in) else 1
                if s_in == shape_out[-d]:
                    res.append(x[-d])
                elif s_in == 1:
                    res.append(self.atoms.new(shape_out[-d], fixed=True))
                else:
                    raise _Unsupported(f"{what} repeats a dimension of {s_in} units")
            return tuple(reversed(res))
        res, k = [], 0
        for s in shape_out:
            if s == 1:
                res.append(self.atoms.new(1))
            else:
                res.append(kept[k][0])
                k += 1
        return tuple(res)

    def split(self, unbind: bool, x: tuple[int, ...], value: Any, dim: Any) -> Any:
        dim = dim % len(x)
        if unbind:
            self.atoms.fix(x[dim])
            return tuple(x[:dim] + x[dim + 1:] for _ in value)
        sizes = [v.shape[dim] for v in value]
        a = x[dim]
        if self.atoms.is_fixed(a) or len(sizes) == 1:
            pieces = [self.atoms.new(s, fixed=True) for s in sizes] if len(sizes) > 1 else [a]
        else:
            pieces = self.atoms.refine_as(a, "cat", sizes, "/")
        return tuple(x[:dim] + (p,) + x[dim + 1:] for p in pieces)

    def cat(self, target: Any, labs: list[tuple[int, ...]], dim: int, value: Tensor) -> Any:
        rank = value.ndim if target is not torch.stack else value.ndim - 1
        dim = dim % value.ndim
        others = [d for d in range(rank) if d != dim or target is torch.stack]
        for d in others:
            for lab in labs[1:]:
                self.unify(labs[0][d], lab[d])
        if target is torch.stack:
            return labs[0][:dim] + (self.atoms.new(len(labs), fixed=True),) + labs[0][dim:]
        m = self.atoms.new(value.shape[dim])
        self.atoms.refine[m] = ("cat", [lab[dim] for lab in labs])
        return labs[0][:dim] + (m,) + labs[0][dim + 1:]

    def matmul(self, a: tuple[int, ...], b: tuple[int, ...], value: Tensor) -> tuple[int, ...]:
        if len(a) < 2 or len(b) < 2:
            raise _Unsupported("a matmul with a vector")
        self.unify(a[-1], b[-2])
        batch = self.broadcast([a[:-2], b[:-2]], tuple(value.shape[:-2]))
        return batch + (a[-2], b[-1])

    # --- the result ---------------------------------------------------------------------
    def spec(self, state: Mapping[str, Tensor]) -> PermutationSpec:
        atoms = self.atoms
        atoms.propagate_fixed()
        nested = self._nesting()
        groups: dict[str, int] = {}
        names: dict[int, str] = {}

        first_user: dict[int, str] = {}  # unnamed atoms: named after their first tensor
        keys_by_id = {id(v): k for k, v in state.items()}

        def walk(a: int) -> list[int]:
            r = atoms.find(a)
            ref = atoms.refine.get(r)
            return [x for c in ref[1] for x in walk(c)] if ref else [r]

        for tid, lab in self.params.items():
            key = keys_by_id.get(tid) or self.param_names[tid][0]
            for axis, a in enumerate(lab):
                for r in walk(a):
                    first_user.setdefault(r, f"{key.removesuffix('.weight')}:{axis}")

        def name_of(r: int) -> str:
            if r not in names:
                own = atoms.name[r]
                base = own if own and own[0] not in "./" else first_user.get(r, f"group{r}")
                n, k = base, 1
                while n in groups:
                    k += 1
                    n = f"{base}#{k}"
                names[r] = n
                groups[n] = atoms.size[r]
            return names[r]

        def layout(a: int) -> list[list[Any]] | None:
            r = atoms.find(a)
            if atoms.is_fixed(r):
                return [[atoms.size[r]]]
            ref = atoms.refine.get(r)
            if ref is None:
                return [[name_of(r)]]
            parts = [layout(c) for c in ref[1]]
            if ref[0] == "cat":
                return [seg for p in parts for seg in p]
            if any(len(p) > 1 for p in parts):
                raise _Unsupported("a dimension split into pieces is then merged with another")
            return [[f for p in parts for f in p[0]]]

        axes: dict[str, dict[int, Any]] = {}
        keys_of: dict[int, list[str]] = {}
        for k, v in state.items():
            keys_of.setdefault(id(v), []).append(k)
        for tid, lab in self.params.items():
            for axis, a in enumerate(lab):
                lay = layout(a)
                segs = []
                for seg in lay:
                    merged: list[Any] = []
                    for f in seg:  # coalesce fixed blocks
                        if isinstance(f, int) and merged and isinstance(merged[-1], int):
                            merged[-1] *= f
                        elif not (isinstance(f, int) and f == 1):
                            merged.append(f)
                    segs.append(tuple(merged) or (1,))
                if all(all(isinstance(f, int) for f in s) for s in segs):
                    continue
                for key in keys_of.get(tid) or self.param_names.get(tid, []):
                    axes.setdefault(key, {})[axis] = list(segs)
        for keys in keys_of.values():  # tied tensors: every key of one tensor alike
            known = [axes[k] for k in keys if k in axes]
            for k in keys:
                if known:
                    axes[k] = known[0]
        nested = {names[i]: names[o] for i, o in nested.items() if i in names and o in names}
        # attention: the outer group is the heads, the inner ones the dimensions within a head
        rename: dict[str, str] = {}
        for outer in dict.fromkeys(nested.values()):
            base = outer.split("/")[0].split(":")[0].rsplit(".", 1)[0] \
                if "/" in outer or ":" in outer else outer.rsplit(".", 1)[0]
            rename[outer] = f"{base}:heads"
            inners = [i for i, o in nested.items() if o == outer]
            for k, inner in enumerate(inners):
                rename[inner] = f"{base}:head_dims" + (str(k) if len(inners) > 1 else "")
        if len(set(rename.values())) < len(rename) or set(rename.values()) & set(groups):
            rename = {}  # keep the generic names rather than collide
        r = lambda g: rename.get(g, g)  # noqa: E731
        return PermutationSpec(
            groups={r(g): n for g, n in groups.items()},
            axes={k: {a: [tuple(r(f) if isinstance(f, str) else f for f in seg) for seg in lay]
                      for a, lay in ax.items()} for k, ax in axes.items()},
            nested={r(i): r(o) for i, o in nested.items()})

    def _nesting(self) -> dict[int, int]:
        """Inner -> outer atoms that may be permuted per unit of the outer: the inner factor
        of a reshape (the dimensions within a head), in every tensor only with its outer."""
        atoms = self.atoms
        candidates: dict[int, int] = {}
        for r, (kind, children) in atoms.refine.items():
            if kind == "prod" and atoms.find(r) == r:
                for o, i in zip(children, children[1:]):
                    ro, ri = atoms.find(o), atoms.find(i)
                    if ro not in atoms.refine and ri not in atoms.refine and ri != ro and \
                            not atoms.is_fixed(ro) and not atoms.is_fixed(ri):
                        if candidates.get(ri, ro) != ro:
                            candidates[ri] = -1
                        else:
                            candidates[ri] = ro
        candidates = {i: o for i, o in candidates.items() if o >= 0}
        for lab in [*self.seen_labels, *self.params.values()]:
            flat = [x for a in lab for x in atoms.leaves(a)]
            for i, o in list(candidates.items()):
                if i in flat and o not in flat:
                    del candidates[i]
        for lab in self.params.values():  # in a weight, the inner directly follows the outer
            for a in lab:
                flat = atoms.leaves(a)
                for k, x in enumerate(flat):
                    if x in candidates and (k == 0 or flat[k - 1] != candidates[x]):
                        del candidates[x]
        return {i: o for i, o in candidates.items() if o not in candidates}


def _get_attr(gm: torch.fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _describe(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"the module {node.target!r} ({type(gm.get_submodule(node.target)).__name__})"
    target = node.target if isinstance(node.target, str) else \
        getattr(node.target, "__name__", str(node.target))
    return f"the {node.op.replace('call_', '')} {target!r} (fx node {node.name!r})"


class _Tracer(torch.fx.Tracer):
    """Traces through every module except the layers the analysis knows; buffers are proxied
    (a causal mask sliced to the sequence length)."""

    proxy_buffer_attributes = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # a subclass with its own forward (a channels-first LayerNorm) is traced through
        return any(isinstance(m, base) and type(m).forward is base.forward for base in _LEAVES)


def trace(model: nn.Module, example: Any) -> tuple[torch.fx.GraphModule, bool]:
    """The fx graph of `model` and whether it came from `torch.export`: torch.fx with our
    leaves, then `transformers`' fx tracer (Hugging Face models, transformers 4), then
    `torch.export` on the example input."""
    try:
        graph = _Tracer().trace(model)
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


class _Recorder(torch.fx.Interpreter):
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
    import copy

    work = copy.deepcopy(model).eval()
    config = getattr(work, "config", None)
    if getattr(config, "use_cache", None):  # Hugging Face: no key/value cache in the output
        config.use_cache = False
    gm, exported = trace(work, example_input)
    recorder = _Recorder(gm)
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
    analysis = _Analysis(work, gm, recorder.values)
    analysis.run()
    state = work.state_dict(keep_vars=True)
    try:
        spec = analysis.spec(state)
    except _Unsupported as e:
        raise LandscapeError(f"permutation alignment cannot describe {type(model).__name__}: "
                             f"{e}. Give the permutation structure by hand (see {GUIDE}).") \
            from None
    return spec
