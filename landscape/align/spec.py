"""Permutation specs: which tensor axes share a permutation of hidden units, and applying one.

A network computes the same function after its hidden units are permuted consistently: the
rows of a layer's weight, its bias and the normalization that follows, and the input columns
of every layer that reads them. A `PermutationSpec` lists those permutation *groups* and, for
every state-dict tensor that a group touches, the *layout* of each permuted axis.

Layout of one axis: a sequence of *segments* laid end to end along the axis; a segment is a
tuple of *factors*, the segment being viewed row-major as an array of the factors' sizes. A
factor is a group name (the units of that group, permuted) or an int (a block of that many
entries that is never permuted). Examples, for an axis of a tensor in `state_dict`:

    "fc1"                                  one group: entry i is unit i of "fc1"
    ("conv2", 16)                          a flattened conv map: unit c covers 16 entries
    [("heads", "qk"), ("heads", "qk"), ("heads", "vo")]
                                           a fused q|k|v projection: three segments of
                                           n_heads x head_dim entries
    ["lstm", "lstm", "lstm", "lstm"]       the four gates of an LSTM, one group of hidden units

A group listed in `nested` (inner -> outer) has one permutation of its units *per unit of the
outer group*: the dimensions within each attention head, permuted independently per head and
moving with their head. A nested group always directly follows its outer group in a segment.

Convention of a permutation: `perms[g][i] = j` means unit i of the permuted network is unit j of
the original one; for a nested group, `perms[g][s][i] = j` is the same within head slot s of the
permuted network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import LandscapeError

Factor = str | int
Segment = tuple[Factor, ...]
Layout = tuple[Segment, ...]


def _as_layout(value: Any) -> Layout:
    """Normalize the short forms: "g" -> (("g",),), ("g", 16) -> (("g", 16),), a list -> one
    segment per item."""
    if isinstance(value, (str, int)):
        return ((value,),)
    if isinstance(value, tuple):
        if value and all(isinstance(s, tuple) for s in value):  # already normalized
            return value
        return (tuple(value),)
    if isinstance(value, list):
        return tuple((s,) if isinstance(s, (str, int)) else tuple(s) for s in value)
    raise LandscapeError(f"an axis layout must be a group name, a tuple of factors or a list of "
                         f"segments; got {type(value).__name__}.")


@dataclass(frozen=True)
class PermutationSpec:
    """Which tensor axes share a permutation of hidden units (see the module docstring).

    Attributes:
        groups: group name -> number of units.
        axes: state-dict key -> {axis: layout}. A layout is a group name, a tuple of factors
            (group names and ints) or a list of such segments; it is stored normalized to a
            tuple of segments. Tensors and axes not listed are not permuted.
        nested: inner group -> outer group, for groups permuted independently within each unit
            of another (the dimensions of each attention head).

    Example:
        A two-layer MLP `nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))`:

        >>> spec = PermutationSpec(groups={"hidden": 8},
        ...                        axes={"0.weight": {0: "hidden"}, "0.bias": {0: "hidden"},
        ...                              "2.weight": {1: "hidden"}})
        >>> spec.axes["2.weight"]
        {1: (('hidden',),)}
    """

    groups: dict[str, int]
    axes: dict[str, dict[int, Layout]]
    nested: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", {str(g): int(n) for g, n in self.groups.items()})
        object.__setattr__(self, "axes", {
            k: {int(a): _as_layout(v) for a, v in ax.items()} for k, ax in self.axes.items()})
        object.__setattr__(self, "nested", dict(self.nested))
        for g, n in self.groups.items():
            if n < 1:
                raise LandscapeError(f"group {g!r} must have at least one unit; got {n}.")
        for inner, outer in self.nested.items():
            if inner not in self.groups or outer not in self.groups:
                raise LandscapeError(f"nested group {inner!r} -> {outer!r}: both must be in "
                                     "groups.")
            if outer in self.nested:
                raise LandscapeError(f"group {outer!r} is nested itself; only one level of "
                                     "nesting is supported.")
        for key, ax in self.axes.items():
            for axis, layout in ax.items():
                for seg in layout:
                    for i, f in enumerate(seg):
                        if isinstance(f, str) and f not in self.groups:
                            raise LandscapeError(f"{key!r} axis {axis} uses the group {f!r}, "
                                                 f"which is not in groups {list(self.groups)}.")
                        if isinstance(f, int) and not isinstance(f, bool) and f < 1:
                            raise LandscapeError(f"{key!r} axis {axis}: a fixed block must "
                                                 f"have a positive size; got {f}.")
                        if f in self.nested and (i == 0 or seg[i - 1] != self.nested[f]):
                            raise LandscapeError(
                                f"{key!r} axis {axis}: the nested group {f!r} must directly "
                                f"follow its outer group {self.nested[f]!r} in the segment {seg}.")

    def factor_size(self, factor: Factor) -> int:
        return self.groups[factor] if isinstance(factor, str) else int(factor)

    def axis_size(self, layout: Layout) -> int:
        """The number of entries a layout covers."""
        total = 0
        for seg in layout:
            n = 1
            for f in seg:
                n *= self.factor_size(f)
            total += n
        return total

    def members(self, group: str) -> list[tuple[str, int]]:
        """The (state-dict key, axis) pairs that `group` permutes."""
        return [(k, a) for k, ax in self.axes.items() for a, layout in ax.items()
                if any(group in seg for seg in layout)]

    def check(self, state_dict: Mapping[str, Tensor]) -> None:
        """Raise a `LandscapeError` unless every listed axis exists with the layout's size."""
        for key, ax in self.axes.items():
            if key not in state_dict:
                raise LandscapeError(f"the permutation spec names {key!r}, which is not in the "
                                     f"model's state dict (keys: {list(state_dict)[:8]}...).")
            shape = tuple(state_dict[key].shape)
            for axis, layout in ax.items():
                if not -len(shape) <= axis < len(shape):
                    raise LandscapeError(f"{key!r} of shape {shape} has no axis {axis}.")
                if self.axis_size(layout) != shape[axis]:
                    raise LandscapeError(
                        f"{key!r} axis {axis} has {shape[axis]} entries but its layout "
                        f"{layout} covers {self.axis_size(layout)}; check the group sizes.")

    def to_dict(self) -> dict[str, Any]:
        return {"groups": dict(self.groups), "nested": dict(self.nested),
                "axes": {k: {str(a): [list(s) for s in lay] for a, lay in ax.items()}
                         for k, ax in self.axes.items()}}


# ---------------------------------------------------------------------- applying


def axis_index(spec: PermutationSpec, layout: Layout, perms: Mapping[str, Tensor],
               skip: frozenset[str] = frozenset()) -> Tensor:
    """The gather index of one axis: entry i of the permuted axis is entry index[i] of the
    original. Groups in `skip` (and groups nested in them) are left unpermuted."""
    parts, start = [], 0
    for seg in layout:
        sizes = [spec.factor_size(f) for f in seg]
        n = 1
        for s in sizes:
            n *= s
        idx = torch.arange(start, start + n).view(sizes)
        for d, f in enumerate(seg):
            if not isinstance(f, str) or f in skip or spec.nested.get(f) in skip:
                continue
            p = perms[f]
            if f in spec.nested:  # one permutation per slot of the outer factor d - 1
                shape = [1] * len(sizes)
                shape[d - 1], shape[d] = sizes[d - 1], sizes[d]
                idx = idx.gather(d, p.view(shape).expand(idx.shape))
            else:
                idx = idx.index_select(d, p)
        parts.append(idx.reshape(-1))
        start += n
    return torch.cat(parts)


def permute_tensor(spec: PermutationSpec, key: str, t: Tensor, perms: Mapping[str, Tensor],
                   skip: frozenset[str] = frozenset()) -> Tensor:
    """`t` (the state-dict entry `key`) with every listed axis permuted."""
    for axis, layout in spec.axes.get(key, {}).items():
        t = t.index_select(axis, axis_index(spec, layout, perms, skip).to(t.device))
    return t


def apply_permutation(state_dict: Mapping[str, Tensor], spec: PermutationSpec,
                      perms: Mapping[str, Tensor | Sequence[Any]]) -> dict[str, Tensor]:
    """A new state dict with the hidden units permuted: unit i becomes old unit perms[g][i].

    The network loaded with the result computes the same function as the original (up to
    floating-point summation order). Tensors not in `spec.axes` are copied unchanged.

    Args:
        state_dict: the model's state dict (not changed).
        spec: the permutation structure (`permutation_spec(model)` or one given by hand).
        perms: group -> a permutation of range(n) (a tensor or list); for a nested group, one
            permutation per unit of its outer group (shape (n_outer, n)).

    Raises:
        LandscapeError: a group is missing from `perms`, or a permutation is not one.
    """
    spec.check(state_dict)
    p = check_perms(spec, perms)
    return {k: permute_tensor(spec, k, v.detach(), p).clone() for k, v in state_dict.items()}


def random_permutation(spec: PermutationSpec, seed: int = 0) -> dict[str, Tensor]:
    """A uniformly random permutation for every group (its own `torch.Generator`); nested
    groups get an independent one per unit of their outer group."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for g, n in spec.groups.items():
        if g in spec.nested:
            out[g] = torch.stack([torch.randperm(n, generator=gen)
                                  for _ in range(spec.groups[spec.nested[g]])])
        else:
            out[g] = torch.randperm(n, generator=gen)
    return out


def identity_permutation(spec: PermutationSpec) -> dict[str, Tensor]:
    """The identity permutation of every group (in the layout of `random_permutation`)."""
    return {g: torch.arange(n).repeat(spec.groups[spec.nested[g]], 1) if g in spec.nested
            else torch.arange(n) for g, n in spec.groups.items()}


def check_perms(spec: PermutationSpec, perms: Mapping[str, Any]) -> dict[str, Tensor]:
    out = {}
    for g, n in spec.groups.items():
        if g not in perms:
            raise LandscapeError(f"no permutation for group {g!r}; give one for each of "
                                 f"{list(spec.groups)}.")
        p = torch.as_tensor(perms[g], dtype=torch.long)
        shape = (spec.groups[spec.nested[g]], n) if g in spec.nested else (n,)
        if p.shape != shape or not torch.equal(p.sort(-1).values,
                                               torch.arange(n).expand(shape)):
            what = f"{shape[0]} permutations of range({n})" if g in spec.nested else \
                f"a permutation of range({n})"
            raise LandscapeError(f"perms[{g!r}] must be {what}.")
        out[g] = p
    return out
