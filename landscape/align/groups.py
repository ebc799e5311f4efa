"""From atoms to a `PermutationSpec`: the free leaf atoms are the permutation groups (named after
their layer, or after the first tensor that uses them), each parameter axis is laid out as
segments of groups and fixed blocks, and the inner factor of a reshape that only ever moves with
its outer one (the dimensions within an attention head) is a nested group."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .axes import Unsupported
from .spec import PermutationSpec


def build_spec(analysis: Any, state: Mapping[str, Tensor]) -> PermutationSpec:
    """The spec of a finished `GraphAnalysis`, keyed by the names of `state`'s tensors."""
    analysis.atoms.propagate_fixed()
    builder = _SpecBuilder(analysis, state)
    axes = builder.axes()
    names = builder.names
    nested = {names[i]: names[o] for i, o in nesting(analysis).items()
              if i in names and o in names}
    rename = head_names(nested, builder.groups)
    r = lambda g: rename.get(g, g)  # noqa: E731
    return PermutationSpec(
        groups={r(g): n for g, n in builder.groups.items()},
        axes={k: {a: [tuple(r(f) if isinstance(f, str) else f for f in seg) for seg in lay]
                  for a, lay in ax.items()} for k, ax in axes.items()},
        nested={r(i): r(o) for i, o in nested.items()})


class _SpecBuilder:
    """Names the groups and lays out every parameter axis."""

    def __init__(self, analysis: Any, state: Mapping[str, Tensor]):
        self.analysis = analysis
        self.atoms = analysis.atoms
        self.groups: dict[str, int] = {}
        self.names: dict[int, str] = {}
        self.keys_of: dict[int, list[str]] = {}
        for k, v in state.items():
            self.keys_of.setdefault(id(v), []).append(k)
        keys_by_id = {id(v): k for k, v in state.items()}
        self.first_user: dict[int, str] = {}  # unnamed atoms: named after their first tensor
        for tid, lab in analysis.params.items():
            key = keys_by_id.get(tid) or analysis.param_names[tid][0]
            for axis, a in enumerate(lab):
                for r in self.walk(a):
                    self.first_user.setdefault(r, f"{key.removesuffix('.weight')}:{axis}")

    def walk(self, a: int) -> list[int]:
        r = self.atoms.find(a)
        ref = self.atoms.refine.get(r)
        return [x for c in ref[1] for x in self.walk(c)] if ref else [r]

    def name_of(self, r: int) -> str:
        if r not in self.names:
            own = self.atoms.name[r]
            base = own if own and own[0] not in "./" else self.first_user.get(r, f"group{r}")
            n, k = base, 1
            while n in self.groups:
                k += 1
                n = f"{base}#{k}"
            self.names[r] = n
            self.groups[n] = self.atoms.size[r]
        return self.names[r]

    def layout(self, a: int) -> list[list[Any]]:
        atoms = self.atoms
        r = atoms.find(a)
        if atoms.is_fixed(r):
            return [[atoms.size[r]]]
        ref = atoms.refine.get(r)
        if ref is None:
            return [[self.name_of(r)]]
        parts = [self.layout(c) for c in ref[1]]
        if ref[0] == "cat":
            return [seg for p in parts for seg in p]
        if any(len(p) > 1 for p in parts):
            raise Unsupported("a dimension split into pieces is then merged with another")
        return [[f for p in parts for f in p[0]]]

    def axes(self) -> dict[str, dict[int, Any]]:
        """key -> axis -> layout, for every axis with a permuted factor; tied tensors alike."""
        axes: dict[str, dict[int, Any]] = {}
        for tid, lab in self.analysis.params.items():
            for axis, a in enumerate(lab):
                segs = [_coalesced(seg) for seg in self.layout(a)]
                if all(all(isinstance(f, int) for f in s) for s in segs):
                    continue
                for key in self.keys_of.get(tid) or self.analysis.param_names.get(tid, []):
                    axes.setdefault(key, {})[axis] = list(segs)
        for keys in self.keys_of.values():  # tied tensors: every key of one tensor alike
            known = [axes[k] for k in keys if k in axes]
            for k in keys:
                if known:
                    axes[k] = known[0]
        return axes


def _coalesced(seg: list[Any]) -> tuple[Any, ...]:
    """A segment with neighbouring fixed blocks multiplied into one and blocks of 1 dropped."""
    merged: list[Any] = []
    for f in seg:
        if isinstance(f, int) and merged and isinstance(merged[-1], int):
            merged[-1] *= f
        elif not (isinstance(f, int) and f == 1):
            merged.append(f)
    return tuple(merged) or (1,)


def head_names(nested: dict[str, str], groups: dict[str, int]) -> dict[str, str]:
    """Attention names: the outer group is `BASE:heads`, the inner ones `BASE:head_dims`
    (numbered when several); empty when the new names would collide."""
    rename: dict[str, str] = {}
    for outer in dict.fromkeys(nested.values()):
        base = outer.split("/")[0].split(":")[0].rsplit(".", 1)[0] \
            if "/" in outer or ":" in outer else outer.rsplit(".", 1)[0]
        rename[outer] = f"{base}:heads"
        inners = [i for i, o in nested.items() if o == outer]
        for k, inner in enumerate(inners):
            rename[inner] = f"{base}:head_dims" + (str(k) if len(inners) > 1 else "")
    if len(set(rename.values())) < len(rename) or set(rename.values()) & set(groups):
        return {}  # keep the generic names rather than collide
    return rename


def nesting(analysis: Any) -> dict[int, int]:
    """Inner -> outer atoms that may be permuted per unit of the outer: the inner factor
    of a reshape (the dimensions within a head), in every tensor only with its outer."""
    atoms = analysis.atoms
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
    for lab in [*analysis.seen_labels, *analysis.params.values()]:
        flat = [x for a in lab for x in atoms.leaves(a)]
        for i, o in list(candidates.items()):
            if i in flat and o not in flat:
                del candidates[i]
    for lab in analysis.params.values():  # in a weight, the inner directly follows the outer
        for a in lab:
            flat = atoms.leaves(a)
            for k, x in enumerate(flat):
                if x in candidates and (k == 0 or flat[k - 1] != candidates[x]):
                    del candidates[x]
    return {i: o for i, o in candidates.items() if o not in candidates}
