"""The graph analysis: every dimension of every value in a model's fx graph gets an atom
(`axes.Atoms`); each node is visited once, in order, and ties the atoms of its inputs, its
parameters and its output as its operation requires. Which operation ties what is in the rule
mixins: `layers` (modules and layer functions), `functions` (function and method calls) and
`shapes` (indexing, reshapes, reductions, splits, concatenations, matmul). `groups` turns the
atoms into a `PermutationSpec`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from ..errors import LandscapeError
from .axes import SCALAR, Atoms, Lazy, Unsupported
from .functions import FunctionRules
from .groups import build_spec
from .layers import LayerRules
from .ops import GUIDE
from .shapes import ShapeRules
from .spec import PermutationSpec


class GraphAnalysis(FunctionRules, LayerRules, ShapeRules):
    """Atoms of every value of `gm` (run on an example input: `values` holds each node's
    output), tied by the nodes' operations."""

    def __init__(self, model: nn.Module, gm: torch.fx.GraphModule, values: dict[Any, Any]):
        self.model = model
        self.gm = gm
        self.values = values
        self.atoms = Atoms()
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
            if isinstance(lab, Lazy):
                raise Unsupported(lab.why)
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

    # --- driver -------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            try:
                lab = self.visit(node)
            except Unsupported as e:
                raise LandscapeError(
                    f"permutation alignment cannot follow {describe(node, self.gm)} in "
                    f"{type(self.model).__name__}: {e}. Give the permutation structure by hand "
                    f"(align_weights(..., spec=PermutationSpec(...)), see {GUIDE})."
                ) from None
            self.labels[node] = lab
            self.remember(lab)

    def remember(self, lab: Any) -> None:
        if isinstance(lab, tuple) and all(isinstance(a, int) for a in lab):
            self.seen_labels.append(lab)
        elif isinstance(lab, (tuple, list)):
            for x in lab:
                self.remember(x)

    def visit(self, node: torch.fx.Node) -> Any:
        op, target = node.op, node.target
        value = self.values.get(node)
        if op == "placeholder":
            return self.fixed_like(value)
        if op == "output":
            self.fix_all(self.label_of(node.args[0]))
            return None
        if op == "get_attr":
            t = get_attr(self.gm, target)
            if isinstance(t, Tensor):
                return self.param(t, target)
            return SCALAR
        if op == "call_module":
            if value is None:  # a guard (torch.export) or a module returning nothing
                return SCALAR
            return self.module(node, self.gm.get_submodule(target), value)
        return self.function(node, target, value)

    def fixed_like(self, value: Any) -> Any:
        if isinstance(value, Tensor):
            return self.fresh(value.shape)
        if isinstance(value, (list, tuple)):
            return type(value)(self.fixed_like(v) for v in value)
        if isinstance(value, Mapping):
            raise Unsupported("a dict input (pass tensors as separate arguments)")
        return SCALAR

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
            return self.fixed_like(value)
        raise Unsupported(what)

    # --- the result ---------------------------------------------------------------------
    def spec(self, state: Mapping[str, Tensor]) -> PermutationSpec:
        """The permutation groups and, for each tensor of `state`, the layout of its axes."""
        return build_spec(self, state)


def get_attr(gm: torch.fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def describe(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"the module {node.target!r} ({type(gm.get_submodule(node.target)).__name__})"
    target = node.target if isinstance(node.target, str) else \
        getattr(node.target, "__name__", str(node.target))
    return f"the {node.op.replace('call_', '')} {target!r} (fx node {node.name!r})"
