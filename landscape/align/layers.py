"""How layers tie the axes of their weights to their inputs' dimensions: the modules traced
as leaves (Linear, convolutions, Embedding, normalizations, recurrent layers, activations,
pools) and the same layers called as functions (a mixin of `graph.GraphAnalysis`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from .axes import Lazy, Unsupported
from .functions import NO_RULE
from .ops import (
    BATCHNORM,
    CONV,
    CREATE,
    ELEMENTWISE_MODULES,
    NORM1D,
    POOL_FUNCTIONS,
    POOL_MODULES,
    RNN,
    F,
)


class LayerRules:
    """Layer modules; `self` is a `GraphAnalysis`."""

    atoms: Any
    values: dict[Any, Any]
    label_of: Any
    param: Any
    unify: Any
    fresh: Any
    reshape: Any
    broadcast: Any
    fix_all: Any
    fixed_like: Any

    def module(self, node: torch.fx.Node, mod: nn.Module, value: Any) -> Any:
        args = [self.label_of(a) for a in node.args]
        if node.kwargs or not args or not isinstance(args[0], tuple):
            raise Unsupported(f"a call of {type(mod).__name__} with these arguments")
        x = args[0]
        name = str(node.target)
        if isinstance(mod, nn.Linear):
            w = self.param(mod.weight, f"{name}.weight", {0: name})
            self.unify(w[1], x[-1])
            if mod.bias is not None:
                self.unify(self.param(mod.bias, f"{name}.bias")[0], w[0])
            return x[:-1] + (w[0],)
        if isinstance(mod, CONV):
            w = self.param(mod.weight, f"{name}.weight", {0: name})
            for a in w[2:]:
                self.atoms.fix(a)
            if mod.groups == 1:
                self.unify(w[1], x[1])
            elif mod.groups == mod.in_channels == mod.out_channels:  # depthwise
                self.unify(w[0], x[1])
            else:
                raise Unsupported(f"the grouped convolution {name!r} (groups={mod.groups}; "
                                   "only 1 and depthwise are supported)")
            if mod.bias is not None:
                self.unify(self.param(mod.bias, f"{name}.bias")[0], w[0])
            return (x[0], w[0], *self.fresh(value.shape[2:]))
        if isinstance(mod, nn.Embedding):
            w = self.param(mod.weight, f"{name}.weight", {1: name})
            self.atoms.fix(w[0])
            return x + (w[1],)
        if isinstance(mod, NORM1D):
            k = len(mod.normalized_shape)
            for p in ("weight", "bias"):
                t = getattr(mod, p, None)
                if t is not None:
                    for a, b in zip(self.param(t, f"{name}.{p}"), x[-k:]):
                        self.unify(a, b)
            return x
        if isinstance(mod, (*BATCHNORM, nn.GroupNorm)):
            if isinstance(mod, nn.GroupNorm) and mod.num_groups not in (1, mod.num_channels):
                raise Unsupported(f"GroupNorm {name!r} with {mod.num_groups} groups (only 1 "
                                   "or one per channel keep channels interchangeable)")
            for p in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(mod, p, None)
                if isinstance(t, Tensor):
                    self.unify(self.param(t, f"{name}.{p}")[0], x[1])
            return x
        if isinstance(mod, RNN):
            return self.rnn(node, mod, x, len(args))
        if isinstance(mod, nn.Flatten):
            return self.reshape(x, self.values[node.args[0]].shape, value.shape)
        if isinstance(mod, ELEMENTWISE_MODULES):
            if any(True for _ in mod.parameters()):
                raise Unsupported(f"{type(mod).__name__} {name!r} with parameters")
            return x
        if isinstance(mod, POOL_MODULES):
            return x[:2] + self.fresh(value.shape[2:])
        raise Unsupported(f"the module {name!r} of type {type(mod).__name__}")

    def rnn(self, node: torch.fx.Node, mod: nn.Module, x: tuple[int, ...], n_args: int) -> Any:
        name = str(node.target)
        if n_args != 1:
            raise Unsupported(f"{type(mod).__name__} {name!r} called with an initial state")
        if mod.bidirectional or getattr(mod, "proj_size", 0):
            raise Unsupported(f"{type(mod).__name__} {name!r}: bidirectional and projected "
                               "recurrent layers are not supported")
        if len(x) != 3:
            raise Unsupported(f"{type(mod).__name__} {name!r} on an unbatched input")
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
            state = Lazy(f"the final states of the {mod.num_layers}-layer "
                          f"{type(mod).__name__} {name!r} (stacked over layers)")
        return (out, (state, state)) if isinstance(mod, nn.LSTM) else (out, state)

    def layer_function(self, call: Any, target: Any, value: Any) -> Any:
        """Layers called as functions (conv, embedding, linear, attention, layer norm), pools
        and creation ops; NO_RULE for any other call."""
        if target in (F.conv1d, F.conv2d, F.conv3d):
            x, w = call.lab(0), call.lab(1, "weight")
            groups = call.arg(6, "groups", 1)
            for a in w[2:]:
                self.atoms.fix(a)
            if groups == 1:
                self.unify(w[1], x[1])
            elif groups == call.shape(0)[1] == value.shape[1]:
                self.unify(w[0], x[1])
            else:
                raise Unsupported(f"a grouped convolution (groups={groups})")
            self.tie_bias(call.lab(2, "bias"), w[0])
            return (x[0], w[0], *self.fresh(value.shape[2:]))
        if target is F.embedding:
            x, w = call.lab(0), call.lab(1, "weight")
            self.atoms.fix(w[0])
            return x + (w[1],)
        if target is F.linear:
            x, w = call.lab(0), call.lab(1, "weight")
            self.unify(w[1], x[-1])
            self.tie_bias(call.lab(2, "bias"), w[0])
            return x[:-1] + (w[0],)
        if target is F.scaled_dot_product_attention:
            return self.attention(call, value)
        if target is F.layer_norm or target is getattr(F, "rms_norm", None):
            x = call.lab(0)
            k = len(call.arg(1, "normalized_shape"))
            for key, i in (("weight", 2), ("bias", 3)):
                p = call.lab(i, key)
                if isinstance(p, tuple):
                    for a, b in zip(p, x[-k:]):
                        self.unify(a, b)
            return x
        if target in POOL_FUNCTIONS:
            return call.lab(0)[:2] + self.fresh(value.shape[2:])
        if target in CREATE or target in ("new_zeros", "new_ones", "new_full", "new_empty",
                                          "new_tensor", "tril", "triu"):
            if target in (torch.tril, torch.triu, "tril", "triu", torch.ones_like,
                          torch.zeros_like, torch.full_like):
                self.fix_all(call.lab(0))
            return self.fixed_like(value)
        return NO_RULE

    def tie_bias(self, bias: Any, rows: int) -> None:
        if isinstance(bias, tuple):
            self.unify(bias[0], rows)

    def attention(self, call: Any, value: Any) -> Any:
        """scaled_dot_product_attention(q, k, v, attn_mask): q and k share their last
        dimension, k and v their sequence, all three their leading dimensions."""
        q, k, v = call.lab(0), call.lab(1), call.lab(2)
        self.unify(q[-1], k[-1])
        self.unify(k[-2], v[-2])
        for a, b, c in zip(q[:-2], k[:-2], v[:-2]):
            self.unify(a, b)
            self.unify(a, c)
        mask = call.lab(3, "attn_mask")
        if isinstance(mask, tuple):
            self.broadcast([mask, q[:-1] + (k[-2],)],
                           tuple(value.shape[:-1]) + (call.shape(1)[-2],))
        return q[:-1] + (v[-1],)
