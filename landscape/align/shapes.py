"""How indexing, reshapes, reductions, splits, concatenations, broadcasting and matmul tie
the atoms of their inputs and outputs (a mixin of `graph.GraphAnalysis`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch import Tensor

from .axes import SCALAR, Lazy, Unsupported


class ShapeRules:
    """Shape operations; `self` is a `GraphAnalysis` (atoms, labels, values)."""

    atoms: Any
    labels: dict[Any, Any]
    values: dict[Any, Any]
    value_of: Any
    unify: Any

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

    def getitem(self, args: list[Any], value: Any) -> Any:
        base = self.labels[args[0]] if isinstance(args[0], torch.fx.Node) else SCALAR
        if isinstance(base, Lazy):
            raise Unsupported(base.why)
        idx = self.value_of(args[1])
        source = self.values[args[0]] if isinstance(args[0], torch.fx.Node) else None
        if not isinstance(source, Tensor):  # a tuple, a list or a shape
            if base is SCALAR:
                return SCALAR
            item = base[idx]
            if isinstance(item, Lazy):
                return item
            return item
        return self.index(base, source.shape, idx if isinstance(idx, tuple) else (idx,))

    def index(self, base: tuple[int, ...], shape: Any, idx: tuple[Any, ...]) -> tuple[int, ...]:
        """x[idx] for ints, slices, None and Ellipsis: a partial slice fixes its dimension."""
        if any(isinstance(i, (Tensor, list)) for i in idx):
            raise Unsupported("indexing with a tensor or list")
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
                    raise Unsupported(f"{what} repeats a dimension of {s_in} units")
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
            raise Unsupported("a matmul with a vector")
        self.unify(a[-1], b[-2])
        batch = self.broadcast([a[:-2], b[:-2]], tuple(value.shape[:-2]))
        return batch + (a[-2], b[-1])
