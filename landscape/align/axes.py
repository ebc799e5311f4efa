"""Atoms: the sets of interchangeable units that tensor dimensions are made of, kept in a
union-find with sizes, fixedness (a dimension whose order matters) and refinements (a dimension
reshaped into a product of atoms, or split into pieces laid end to end)."""

from __future__ import annotations

import math

from ..errors import LandscapeError


class InputMismatch(LandscapeError):
    """The model does not run on the example input."""


class Unsupported(Exception):
    """An operation the analysis does not understand (becomes a LandscapeError)."""


class Lazy:
    """A value that may not be used: using it raises (an LSTM's stacked final states)."""

    def __init__(self, why: str):
        self.why = why


SCALAR = object()


class Atoms:
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
            raise Unsupported(f"dimensions of {self.size[ra]} and {self.size[rb]} units meet")
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
                raise Unsupported("a dimension is split into pieces in two different ways")
            for x, y in zip(ref_a[1], ref_b[1]):
                self.union(x, y)
        elif ref_a[0] == ref_b[0] == "prod":
            self.unify_seq(list(ref_a[1]), list(ref_b[1]))
        else:
            raise Unsupported("a dimension is both reshaped and split into pieces")

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
                raise Unsupported(f"a reshape regroups {sb} units by {ss}")
            if self.refine.get(self.find(big), ("prod",))[0] == "cat":
                raise Unsupported("a dimension split into pieces is then reshaped")
            first, second = self.refine_as(big, "prod", [ss, sb // ss], ".")
            self.union(first, small)
            rest.insert(0, second)
        if xs or ys:
            raise Unsupported("a reshape does not preserve the number of units")

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
