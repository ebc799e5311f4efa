"""Weight matching (Git Re-Basin, Ainsworth et al. 2023, algorithm 2): one permutation per
group chosen to maximize the inner product of two networks' weights,

    max over {P_g} of  sum over tensors t of <W_a[t], P(W_b[t])>,

by coordinate descent: for each group in turn (random order, seeded), with the other
permutations fixed, the best P_g is a linear assignment on

    C_g[i, j] = sum over tensors t with an axis in g of  <W_a[t] unit i, P_{-g}(W_b[t]) unit j>

(`scipy.optimize.linear_sum_assignment`, maximized), repeated until a full pass improves the
objective by no more than 1e-12 (relative) or `max_iter` passes. The objective never decreases;
the result is a local optimum.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .._results import to_jsonable
from ..errors import LandscapeError
from .spec import PermutationSpec, axis_index, identity_permutation, permute_tensor
from .trace import permutation_spec


@dataclass(frozen=True)
class AlignResult:
    """Model B permuted to match model A (weight matching).

    Attributes:
        state_dict: a permuted copy of model B's state dict (same keys, tensors new); load it
            into a model of the same class. Not part of `to_dict()`.
        perms: group name -> permutation `p` (a list of unit indices): unit i of the aligned B
            is unit p[i] of B.
        group_sizes: group name -> number of units; tensors: group name -> the "key:axis"
            entries it permutes.
        objective: sum over permuted tensors of <W_a, P(W_b)> (parameters only), at the
            identity permutation and then after each coordinate-descent pass (non-decreasing).
        n_iter: number of passes; converged: a pass improved the objective by no more than
            1e-12 relative before `max_iter`. seed: the seed of the group order.
        seconds: wall-clock time.
    """

    state_dict: dict[str, Tensor] = field(repr=False, compare=False)
    perms: dict[str, list[int]]
    group_sizes: dict[str, int]
    tensors: dict[str, list[str]]
    objective: list[float]
    n_iter: int
    converged: bool
    seed: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = to_jsonable({k: v for k, v in vars(self).items() if k != "state_dict"})
        return out


def align_weights(model_a: nn.Module, model_b: nn.Module, *, spec: PermutationSpec | None = None,
                  example_input: Any = None, max_iter: int = 100, seed: int = 0) -> AlignResult:
    """Permute the hidden units of `model_b` to match `model_a` by weight matching.

    Maximizes sum over parameters t of <W_a[t], P(W_b[t])> over one permutation per group by
    coordinate descent, each step a linear assignment (Ainsworth et al. 2023, algorithm 2; see
    the module docstring). For a group with nested groups (attention heads and the dimensions
    within each head) the step is exact over both levels: C[i, j] is the best match of head j
    of B onto head i of A over the within-head permutations (one assignment per pair), then the
    heads are assigned. Only parameters enter the objective (tied ones once); buffers
    (BatchNorm running statistics) are permuted with them.

    Args:
        model_a: the reference network (not changed).
        model_b: the network to permute, of the same architecture (not changed: the result holds
            a permuted copy of its state dict).
        spec: the permutation structure; None: `permutation_spec(model_a, example_input)`.
        example_input: one batch of inputs, to read the shapes when deriving the spec.
        max_iter: the most coordinate-descent passes over all groups.
        seed: seed of the random group order in each pass.

    Returns:
        `AlignResult` with the permuted state dict, the permutations and the objective trace.
        When model_b is a permutation of model_a, the aligned weights equal model_a's exactly
        (in practice: the assignment is then a sharp optimum).

    Raises:
        LandscapeError: architectures differ, an unsupported operation, max_iter < 1.

    Example:
        >>> import torch
        >>> from landscape.data import digits_mlp
        >>> a, b = digits_mlp(seed=0), digits_mlp(seed=1)
        >>> res = align_weights(a, b)
        >>> res.objective[-1] >= res.objective[0]
        True
    """
    if max_iter < 1:
        raise LandscapeError(f"max_iter must be at least 1; got {max_iter}.")
    start = time.perf_counter()
    sd_a = {k: v.detach() for k, v in model_a.state_dict().items()}
    sd_b = {k: v.detach() for k, v in model_b.state_dict().items()}
    if sd_a.keys() != sd_b.keys() or any(sd_a[k].shape != sd_b[k].shape for k in sd_a):
        raise LandscapeError(
            "model_a and model_b must have the same architecture (the same state-dict keys and "
            "shapes); build model_b from the same class and arguments as model_a."
        )
    for which, sd in (("model_a", sd_a), ("model_b", sd_b)):
        bad = [k for k, v in sd.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise LandscapeError(f"{which} has non-finite values in {bad[:3]}: weight matching "
                                 "needs finite weights (did its training diverge?).")
    if spec is None:
        spec = permutation_spec(model_a, example_input)
    elif not isinstance(spec, PermutationSpec):
        raise LandscapeError(f"spec must be a landscape.PermutationSpec; got "
                             f"{type(spec).__name__}.")
    spec.check(sd_a)
    params = [k for k, _ in model_a.named_parameters() if k in spec.axes]
    perms = identity_permutation(spec)
    names = [g for g in spec.groups if g not in spec.nested]
    inner_of = {g: [u for u, o in spec.nested.items() if o == g] for g in names}
    members = {g: [(k, a) for k, a in spec.members(g) if k in params] for g in names}
    gen = torch.Generator().manual_seed(seed)

    def objective() -> float:
        return float(sum((sd_a[k].double() * permute_tensor(spec, k, sd_b[k], perms).double())
                         .sum() for k in params))

    trace = [objective()]
    converged = False
    n_iter = 0
    for _ in range(max_iter):
        n_iter += 1
        for i in torch.randperm(len(names), generator=gen).tolist():
            g = names[i]
            _match_group(spec, g, inner_of[g], members[g], sd_a, sd_b, perms)
        trace.append(objective())
        if trace[-1] - trace[-2] <= 1e-12 * max(1.0, abs(trace[-2])):
            converged = True
            break
    aligned = {k: permute_tensor(spec, k, v, perms).clone() for k, v in sd_b.items()}
    tensors = {g: [f"{k}:{a}" for k, a in spec.members(g)] for g in spec.groups}
    return AlignResult(
        state_dict=aligned, perms={g: p.tolist() for g, p in perms.items()},
        group_sizes=dict(spec.groups), tensors=tensors, objective=trace, n_iter=n_iter,
        converged=converged, seed=seed, seconds=time.perf_counter() - start,
    )


def _match_group(spec: PermutationSpec, g: str, inner: list[str],
                 members: list[tuple[str, int]], sd_a: dict[str, Tensor],
                 sd_b: dict[str, Tensor], perms: dict[str, Tensor]) -> None:
    """One coordinate step: the best permutation of group `g` (and of the groups nested in it)
    with every other group fixed; kept only when strictly better than the current one."""
    n = spec.groups[g]
    cost = torch.zeros(n, n, dtype=torch.float64)
    pair = {u: torch.zeros(n, n, spec.groups[u], spec.groups[u], dtype=torch.float64)
            for u in inner}
    skip = frozenset({g})
    for key, axis in members:
        wa = sd_a[key].double()
        wb = sd_b[key]
        for ax, layout in spec.axes[key].items():
            wb = wb.index_select(ax, axis_index(spec, layout, perms, skip if ax == axis
                                                else frozenset()).to(wb.device))
        wb = wb.double()
        offset = 0
        for seg in spec.axes[key][axis]:
            sizes = [spec.factor_size(f) for f in seg]
            length = int(np.prod(sizes))
            views = []
            for w in (wa, wb):
                w = w.narrow(axis, offset, length).movedim(axis, 0).cpu()
                views.append(w.reshape(*sizes, -1))
            offset += length
            for d, f in enumerate(seg):
                if f != g:
                    continue
                u = seg[d + 1] if d + 1 < len(seg) and seg[d + 1] in inner else None
                front = [d, d + 1] if u else [d]
                va, vb = (v.movedim(front, list(range(len(front)))) for v in views)
                if u is None:
                    cost += va.reshape(n, -1) @ vb.reshape(n, -1).T
                else:
                    m = spec.groups[u]
                    pair[u] += torch.einsum("idr,jer->ijde", va.reshape(n, m, -1),
                                            vb.reshape(n, m, -1))
    rows = np.arange(n)
    current = perms[g].numpy()
    now = float(cost.numpy()[rows, current].sum())  # with the current within-head perms
    best_inner = {}
    for u, blocks in pair.items():
        m = spec.groups[u]
        value = torch.zeros(n, n, dtype=torch.float64)
        cols = torch.zeros(n, n, m, dtype=torch.long)
        for i in range(n):
            for j in range(n):
                c = blocks[i, j].numpy()
                _, col = linear_sum_assignment(c, maximize=True)
                value[i, j] = float(c[np.arange(m), col].sum())
                cols[i, j] = torch.as_tensor(col)
        now += float(blocks[rows, current].gather(
            2, perms[u][:, :, None]).sum())  # blocks[i, P(i), d, sigma_i(d)]
        cost += value
        best_inner[u] = cols
    c = cost.numpy()
    _, new = linear_sum_assignment(c, maximize=True)
    if c[rows, new].sum() > now:
        perms[g] = torch.as_tensor(new, dtype=torch.long)
        for u, cols in best_inner.items():
            perms[u] = cols[torch.arange(n), perms[g]]
