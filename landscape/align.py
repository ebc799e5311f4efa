"""Permutation alignment of two networks (Git Re-Basin weight matching) and aligned barriers.

Hidden units of a network can be permuted without changing the function it computes: permute
the output units of a layer (rows of its weight, entries of its bias and of the normalization
that follows) and the input columns of the next layer the same way. Two independently trained
networks may sit in basins that are permutations of each other; the loss barrier on the straight
line between them then says more about the permutation than about the landscape (Entezari et
al. 2022).

Weight matching (Ainsworth et al. 2023, algorithm 2) chooses one permutation P_g per
permutation group g to maximize the inner product of the weights,

    max over {P_g} of  sum over tensors t of <W_a[t], P(W_b[t])>,

where P(W_b[t]) permutes every axis of tensor t that belongs to a group. It is solved by
coordinate descent: for each group in turn (random order, seeded), with the other permutations
fixed, the best P_g is a linear assignment on

    C_g[i, j] = sum over tensors t with an axis in g of  <W_a[t] unit i, P_{-g}(W_b[t]) unit j>

(`scipy.optimize.linear_sum_assignment`, maximized), repeated until a full pass improves the
objective by no more than 1e-12 (relative) or `max_iter` passes. The objective never decreases;
the result is a local optimum.

Which tensors share a permutation is derived from the model with `torch.fx.symbolic_trace`:
each Linear or Conv output opens a group of hidden units, which flows through elementwise
activations, dropout, pooling, BatchNorm (weight, bias, running_mean, running_var permute
together), LayerNorm over the feature dimension, flatten (a conv channel becomes a block of
consecutive features) and residual additions (both summands must share one permutation: groups
are merged, union-find). Groups that reach the model's output, or are added to the input, are
not permuted. Any other operation raises a `LandscapeError` naming it.

References:
    Ainsworth, Hayase, Srinivasa, Git Re-Basin: Merging Models modulo Permutation Symmetries
    (ICLR 2023).
    Entezari, Sedghi, Saukh, Neyshabur, The Role of Permutation Invariance in Linear Mode
    Connectivity of Neural Networks (ICLR 2022).
    Frankle, Dziugaite, Roy, Carbin, Linear Mode Connectivity and the Lottery Ticket Hypothesis
    (ICML 2020).
"""

from __future__ import annotations

import operator
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from . import batchnorm
from ._results import to_jsonable
from .errors import LandscapeError
from .probe import Probe
from .surface import barrier, interpolate  # noqa: F401 - barrier: importable from here too

BUFFERS = ("interpolate", "recompute", "keep")

# (axis, group name, block): units of the group are `block` consecutive entries along `axis`
AxisSpec = tuple[int, str, int]

_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softsign,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_F = nn.functional
_PASS_FUNCTIONS = {
    torch.relu, torch.tanh, torch.sigmoid, torch.dropout, _F.relu, _F.relu6, _F.leaky_relu,
    _F.elu, _F.selu, _F.gelu, _F.silu, _F.mish, _F.softplus, _F.hardtanh, _F.hardswish,
    _F.tanh, _F.sigmoid, _F.dropout, _F.max_pool1d, _F.max_pool2d, _F.max_pool3d, _F.avg_pool1d,
    _F.avg_pool2d, _F.avg_pool3d, _F.adaptive_avg_pool1d, _F.adaptive_avg_pool2d,
    _F.adaptive_avg_pool3d, _F.adaptive_max_pool2d, operator.neg,
}
_PASS_METHODS = {"relu", "tanh", "sigmoid", "contiguous", "clone", "detach", "float", "double",
                 "to", "neg"}
_ADD = {operator.add, operator.iadd, operator.sub, torch.add, torch.sub, "add", "sub", "add_"}
_SCALE = {operator.mul, operator.truediv, torch.mul, "mul", "div"}


@dataclass(frozen=True)
class PermutationSpec:
    """Which tensor axes share a permutation of hidden units, derived from the model's graph.

    Attributes:
        groups: group name (the first module that produces its units) -> number of units.
        axes: state-dict key -> the permuted axes of that tensor, as (axis, group, block):
            unit i of the group covers entries i * block ... (i + 1) * block - 1 along the axis.
            Tensors not listed are not permuted.
    """

    groups: dict[str, int]
    axes: dict[str, tuple[AxisSpec, ...]]

    def members(self, group: str) -> list[tuple[str, int, int]]:
        """The (tensor, axis, block) triples permuted by `group`."""
        return [(k, a, b) for k, spec in self.axes.items() for a, g, b in spec if g == group]


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


@dataclass(frozen=True)
class BarrierCurve:
    """The linear path f(a) = L((1 - a) w_A + a w_B) and its barriers (docs/measures.md).

    Attributes:
        alphas: the interpolation coefficients a (ascending, always containing 0 and 1).
        loss: f(a) at each alpha. error: 1 - accuracy at each alpha (None without accuracy).
        loss_barrier: max over a in [0, 1] of f(a) - ((1 - a) f(0) + a f(1)); loss_barrier_alpha
            the a where it occurs. error_barrier, error_barrier_alpha: the same on the error.
        distance: ||w_A - w_B|| over the probed parameters; cosine: cos(w_A, w_B).
    """

    alphas: list[float]
    loss: list[float]
    error: list[float] | None
    loss_barrier: float
    loss_barrier_alpha: float
    error_barrier: float | None
    error_barrier_alpha: float | None
    distance: float
    cosine: float

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


@dataclass(frozen=True)
class AlignedBarrierResult:
    """Barriers between model A and model B before (`raw`) and after (`aligned`) alignment.

    Attributes:
        raw, aligned: the interpolation curves and barriers (`BarrierCurve`).
        alignment: the `AlignResult` (permutations, objective trace).
        buffers: "interpolate" or "keep" (what happened to floating-point buffers such as
            BatchNorm running statistics along the path).
        n_forward: passes over the probe's data. seconds: wall-clock time, alignment included.
    """

    raw: BarrierCurve
    aligned: BarrierCurve
    alignment: AlignResult
    buffers: str
    n_forward: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = to_jsonable({k: v for k, v in vars(self).items() if k != "alignment"})
        out["alignment"] = self.alignment.to_dict()
        return out


# ---------------------------------------------------------------------- structure


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def add(self, x: str) -> None:
        self.parent.setdefault(x, x)

    def find(self, x: str) -> str:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # keep the earlier-created name as the root (its creation order)
            order = list(self.parent)
            keep, drop = (ra, rb) if order.index(ra) <= order.index(rb) else (rb, ra)
            self.parent[drop] = keep


_FIXED = "<fixed>"  # the group of axes that must not be permuted (input, output)
_SCALAR = object()  # a non-tensor value (x.size(0), a shape)


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """Derive the permutation groups of `model` from its `torch.fx` graph.

    Args:
        model: an MLP, CNN or residual network built from Linear / Conv layers, BatchNorm,
            LayerNorm (over the feature dimension), elementwise activations, pooling, flatten
            and additions. The model is traced, never changed.

    Returns:
        The `PermutationSpec`: groups of hidden units and the tensor axes each permutes.

    Raises:
        LandscapeError: the model cannot be traced, or uses an operation whose effect on the
            hidden units is not known (the message names it).
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # noqa: BLE001 - any tracing failure is the user's model
        raise LandscapeError(
            f"permutation alignment traces the model with torch.fx and tracing failed "
            f"({type(e).__name__}: {e}); data-dependent control flow is not supported."
        ) from e
    uf = _UnionFind()
    uf.add(_FIXED)
    sizes: dict[str, int] = {}
    # value spec of each node: None (fixed axis), _SCALAR, or (group, flattened)
    spec: dict[torch.fx.Node, Any] = {}
    raw_axes: dict[str, list[tuple[int, str, Any]]] = {}  # block "flat" resolved at the end

    def unsupported(node: torch.fx.Node, what: str) -> LandscapeError:
        return LandscapeError(
            f"permutation alignment does not support {what} (fx node {node.name!r}); supported: "
            "Linear/Conv (groups=1), BatchNorm, LayerNorm over features, elementwise "
            "activations, dropout, pooling, flatten, mean over spatial dims and additions."
        )

    def tensor_inputs(node: torch.fx.Node) -> list[Any]:
        found = []
        for a in [*node.args, *node.kwargs.values()]:
            for x in (a if isinstance(a, (list, tuple)) else [a]):
                if isinstance(x, torch.fx.Node) and spec[x] is not _SCALAR:
                    found.append(spec[x])
        return found

    def single(node: torch.fx.Node, what: str) -> Any:
        ins = tensor_inputs(node)
        if len(ins) != 1:
            raise unsupported(node, f"{what} with {len(ins)} tensor inputs")
        return ins[0]

    def new_group(name: str, size: int) -> str:
        uf.add(name)
        sizes[name] = size
        return name

    def fix(s: Any) -> None:
        if s is not None:
            uf.union(_FIXED, s[0])

    for node in graph.nodes:
        op, target = node.op, node.target
        if op == "placeholder":
            spec[node] = None
        elif op == "output":
            for s in tensor_inputs(node):
                fix(s)
        elif op == "get_attr":
            raise unsupported(node, f"a direct use of the attribute {target!r}")
        elif op == "call_module":
            mod = model.get_submodule(target)
            s_in = single(node, type(mod).__name__)
            if isinstance(mod, _LINEAR):
                if getattr(mod, "groups", 1) != 1:
                    raise unsupported(node, f"a grouped convolution {target!r} (groups > 1)")
                n_in = mod.weight.shape[1]
                if s_in is not None:
                    raw_axes.setdefault(f"{target}.weight", []).append((1, s_in[0], s_in[1]))
                    if not s_in[1]:
                        _check_size(node, sizes, s_in[0], n_in)
                    else:
                        _check_blocks(node, sizes, s_in[0], n_in)
                g = new_group(target, mod.weight.shape[0])
                raw_axes.setdefault(f"{target}.weight", []).append((0, g, False))
                if mod.bias is not None:
                    raw_axes.setdefault(f"{target}.bias", []).append((0, g, False))
                spec[node] = (g, False)
            elif isinstance(mod, _NORMS):
                if isinstance(mod, nn.LayerNorm) and len(mod.normalized_shape) != 1:
                    raise unsupported(node, f"LayerNorm {target!r} over more than one dimension")
                if s_in is not None and s_in[1]:
                    raise unsupported(node, f"{type(mod).__name__} {target!r} after flatten")
                if s_in is None:
                    spec[node] = None
                    continue
                _check_size(node, sizes, s_in[0], _norm_size(mod))
                for name in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(mod, name, None) is not None:
                        raw_axes.setdefault(f"{target}.{name}", []).append((0, s_in[0], False))
                spec[node] = s_in
            elif isinstance(mod, nn.Flatten):
                if mod.start_dim != 1:
                    raise unsupported(node, f"Flatten {target!r} with start_dim={mod.start_dim}")
                spec[node] = None if s_in is None else (s_in[0], True)
            elif isinstance(mod, _PASS_MODULES):
                if any(True for _ in mod.parameters()):
                    raise unsupported(node, f"{type(mod).__name__} {target!r} with parameters")
                spec[node] = s_in
            else:
                raise unsupported(node, f"the module {target!r} of type {type(mod).__name__}")
        elif op in ("call_function", "call_method"):
            key = target
            if op == "call_method" and target in ("size", "dim") or (
                    target is getattr and node.args[1] in ("shape", "ndim")):
                spec[node] = _SCALAR
            elif key in _ADD:
                ins = tensor_inputs(node)
                if len(ins) == 1:
                    spec[node] = ins[0]
                elif len(ins) == 2:
                    a, b = ins
                    if a is None or b is None:
                        fix(a)
                        fix(b)
                        spec[node] = None
                    else:
                        if a[1] != b[1]:
                            raise unsupported(node, "an addition of flattened and unflattened "
                                                    "features")
                        _check_size(node, sizes, b[0], sizes[a[0]])
                        uf.union(a[0], b[0])
                        spec[node] = a
                else:
                    raise unsupported(node, f"{key} with {len(ins)} tensor inputs")
            elif key in _SCALE:
                ins = tensor_inputs(node)
                if len(ins) != 1:
                    raise unsupported(node, f"a product of two tensors ({key})")
                spec[node] = ins[0]
            elif key in _PASS_FUNCTIONS or (op == "call_method" and key in _PASS_METHODS):
                spec[node] = single(node, str(key))
            elif key in (torch.flatten, "flatten"):
                s_in = single(node, "flatten")
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                if start != 1:
                    raise unsupported(node, f"flatten with start_dim={start}")
                spec[node] = None if s_in is None else (s_in[0], True)
            elif key in ("view", "reshape") or key is torch.reshape:
                s_in = single(node, str(key))
                shape = [a for a in node.args[1:]]
                if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
                    shape = list(shape[0])
                if len(shape) != 2 or shape[1] != -1:
                    raise unsupported(node, f"{key} to a shape other than (batch, -1)")
                spec[node] = None if s_in is None else (s_in[0], True)
            elif key in (torch.mean, "mean", torch.sum, "sum", torch.amax, "amax"):
                s_in = single(node, str(key))
                dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
                dims = (dims,) if isinstance(dims, int) else dims
                if dims is None or 1 in dims:  # reduces over the units: invariant
                    spec[node] = None
                elif all(isinstance(d, int) and d >= 2 for d in dims):
                    spec[node] = s_in
                else:
                    raise unsupported(node, f"{key} over dims {dims} (use positive spatial dims)")
            else:
                raise unsupported(node, f"the {op.replace('call_', '')} {key!r}")
        else:  # pragma: no cover - fx has no other node kinds
            raise unsupported(node, f"the fx op {op!r}")

    groups: dict[str, int] = {}
    for g, n in sizes.items():
        root = uf.find(g)
        if uf.find(_FIXED) != root:
            groups.setdefault(root, n)
    axes: dict[str, tuple[AxisSpec, ...]] = {}
    state = model.state_dict()
    for key, entries in raw_axes.items():
        resolved = []
        for axis, g, flat in entries:
            root = uf.find(g)
            if root not in groups:
                continue
            block = state[key].shape[axis] // groups[root] if flat else 1
            resolved.append((axis, root, block))
        if resolved:
            axes[key] = tuple(resolved)
    return PermutationSpec(groups, axes)


def _norm_size(mod: nn.Module) -> int:
    return mod.normalized_shape[0] if isinstance(mod, nn.LayerNorm) else mod.num_features


def _check_size(node: torch.fx.Node, sizes: dict[str, int], g: str, n: int) -> None:
    if sizes[g] != n:
        raise LandscapeError(
            f"fx node {node.name!r} expects {n} features but its input has {sizes[g]} units "
            f"(group {g!r}); the model's graph is not understood by permutation alignment."
        )


def _check_blocks(node: torch.fx.Node, sizes: dict[str, int], g: str, n: int) -> None:
    if n % sizes[g]:
        raise LandscapeError(
            f"fx node {node.name!r} takes {n} flattened features, not a multiple of the "
            f"{sizes[g]} channels of group {g!r}; flatten must follow a channel dimension."
        )


# ---------------------------------------------------------------------- permuting


def _unit_index(perm: Tensor, block: int) -> Tensor:
    if block == 1:
        return perm
    return (perm[:, None] * block + torch.arange(block, device=perm.device)).reshape(-1)


def _permute(t: Tensor, entries: Sequence[AxisSpec], perms: dict[str, Tensor],
             skip_axis: int | None = None) -> Tensor:
    for axis, g, block in entries:
        if axis != skip_axis:
            t = t.index_select(axis, _unit_index(perms[g].to(t.device), block))
    return t


def apply_permutation(state_dict: dict[str, Tensor], spec: PermutationSpec,
                      perms: dict[str, Tensor | Sequence[int]]) -> dict[str, Tensor]:
    """A new state dict with the hidden units permuted: unit i becomes old unit perms[g][i].

    The network loaded with the result computes the same function as the original (up to
    floating-point summation order). Tensors not in `spec.axes` are copied unchanged.

    Raises:
        LandscapeError: a group is missing from `perms`, or a permutation is not one.
    """
    p = _check_perms(spec, perms)
    return {k: _permute(v.detach(), spec.axes[k], p).clone() if k in spec.axes
            else v.detach().clone() for k, v in state_dict.items()}


def random_permutation(spec: PermutationSpec, seed: int = 0) -> dict[str, Tensor]:
    """A uniformly random permutation for every group (its own `torch.Generator`)."""
    gen = torch.Generator().manual_seed(seed)
    return {g: torch.randperm(n, generator=gen) for g, n in spec.groups.items()}


def _check_perms(spec: PermutationSpec, perms: dict[str, Any]) -> dict[str, Tensor]:
    out = {}
    for g, n in spec.groups.items():
        if g not in perms:
            raise LandscapeError(f"no permutation for group {g!r}; give one for each of "
                                 f"{list(spec.groups)}.")
        p = torch.as_tensor(perms[g], dtype=torch.long)
        if p.shape != (n,) or not torch.equal(p.sort().values, torch.arange(n)):
            raise LandscapeError(f"perms[{g!r}] must be a permutation of range({n}).")
        out[g] = p
    return out


# ---------------------------------------------------------------------- weight matching


def align_weights(model_a: nn.Module, model_b: nn.Module, *, max_iter: int = 100,
                  seed: int = 0) -> AlignResult:
    """Permute the hidden units of `model_b` to match `model_a` by weight matching.

    Maximizes sum over tensors t of <W_a[t], P(W_b[t])> over one permutation per group by
    coordinate descent, each step a linear assignment (Ainsworth et al. 2023, algorithm 2; see
    the module docstring). The groups come from `permutation_spec(model_a)`. Only parameters
    enter the objective; buffers (BatchNorm running statistics) are permuted with them.

    Args:
        model_a: the reference network (not changed).
        model_b: the network to permute, of the same architecture (not changed: the result holds
            a permuted copy of its state dict).
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
    spec = permutation_spec(model_a)
    params = {n for n, _ in model_a.named_parameters()}
    members = {g: [(k, a, b) for k, a, b in spec.members(g) if k in params] for g in spec.groups}
    perms = {g: torch.arange(n) for g, n in spec.groups.items()}
    names = list(spec.groups)
    gen = torch.Generator().manual_seed(seed)

    def objective() -> float:
        return float(sum(
            (sd_a[k].double() * _permute(sd_b[k], spec.axes[k], perms).double()).sum()
            for k in spec.axes if k in params))

    trace = [objective()]
    converged = False
    n_iter = 0
    for _ in range(max_iter):
        n_iter += 1
        for i in torch.randperm(len(names), generator=gen).tolist():
            g = names[i]
            n = spec.groups[g]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for k, axis, _ in members[g]:
                wa = sd_a[k].double().movedim(axis, 0).reshape(n, -1)
                wb = _permute(sd_b[k], spec.axes[k], perms, skip_axis=axis)
                wb = wb.double().movedim(axis, 0).reshape(n, -1)
                cost += wa.cpu() @ wb.cpu().T
            c = cost.numpy()
            _, cols = linear_sum_assignment(c, maximize=True)
            # keep the current permutation unless the new one is strictly better
            if c[np.arange(n), cols].sum() > c[np.arange(n), perms[g].numpy()].sum():
                perms[g] = torch.as_tensor(cols, dtype=torch.long)
        trace.append(objective())
        if trace[-1] - trace[-2] <= 1e-12 * max(1.0, abs(trace[-2])):
            converged = True
            break
    aligned = {k: _permute(v, spec.axes[k], perms).clone() if k in spec.axes else v.clone()
               for k, v in sd_b.items()}
    tensors = {g: [f"{k}:{a}" for k, a, _ in spec.members(g)] for g in spec.groups}
    return AlignResult(
        state_dict=aligned, perms={g: p.tolist() for g, p in perms.items()},
        group_sizes=dict(spec.groups), tensors=tensors, objective=trace, n_iter=n_iter,
        converged=converged, seed=seed, seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------- barriers


def aligned_barrier(probe: Probe, model_b: nn.Module, alphas: Sequence[float] | None = None,
                    *, max_iter: int = 100, seed: int = 0, buffers: str = "interpolate",
                    bn_data: Any = None, batch_size: int = 256) -> AlignedBarrierResult:
    """Loss and error barriers between the probe's model (A) and `model_b`, raw and aligned.

    Along f(a) = L((1 - a) w_A + a w_B) for each a in `alphas` (0 and 1 added), the barrier is
    max over a in [0, 1] of f(a) - ((1 - a) f(0) + a f(1)) (Frankle et al. 2020; Entezari et al.
    2022), once with w_B as given and once with w_B permuted by `align_weights` (Ainsworth et al.
    2023). Parameters the probe does not probe stay at model A's values.

    Args:
        probe: a `Probe` of model A and the data the barrier is measured on.
        model_b: the second network, same architecture (not changed).
        alphas: interpolation coefficients; None means 21 points evenly spaced on [0, 1].
            Points outside [0, 1] are evaluated but do not enter the barrier.
        max_iter, seed: passed to `align_weights`.
        buffers: what BatchNorm running statistics (floating-point buffers) are at each a.
            "interpolate": the same path (1 - a) b_A + a b_B, so f(1) is model B itself (cheap,
            but the interpolated network's true statistics differ: its activations shrink,
            "variance collapse", Jordan et al. 2023, and the barrier is overstated);
            "recompute": reset and re-estimated at each a (`landscape.batchnorm`: only the
            BatchNorm layers in train mode; one extra pass per point; what Ainsworth et al.
            2023 do for BatchNorm networks) on `bn_data`, or on the probe's data when it is
            None;
            "keep": model A's all along. All buffers are restored bitwise afterwards.
        bn_data: for "recompute", other inputs than the probe's to estimate the statistics on
            (typically training data when the barrier is measured on test data): an
            `(inputs, targets)` tensor pair, an inputs tensor (both split into batches of
            `batch_size`), or an iterable of batches whose first element is the inputs.
        batch_size: batch size when `bn_data` is a tensor.

    Returns:
        `AlignedBarrierResult` with the raw and the aligned `BarrierCurve`.

    Raises:
        LandscapeError: a bad option, architectures differ, an unsupported operation.
    """
    if buffers not in BUFFERS:
        raise LandscapeError(f"buffers must be one of {BUFFERS}; got {buffers!r}.")
    if bn_data is not None and buffers != "recompute":
        raise LandscapeError("bn_data is only used with buffers='recompute' (the inputs to "
                             "re-estimate the BatchNorm statistics on); drop it or pass "
                             "buffers='recompute'.")
    alphas = np.linspace(0.0, 1.0, 21) if alphas is None else np.asarray(alphas, dtype=float)
    if alphas.ndim != 1 or not np.all(np.isfinite(alphas)):
        raise LandscapeError("alphas must be a 1-D sequence of finite numbers.")
    alphas = np.unique(np.concatenate([alphas, [0.0, 1.0]]))
    start = time.perf_counter()
    meter = probe.meter()
    alignment = align_weights(probe.model, model_b, max_iter=max_iter, seed=seed)
    raw_sd = {k: v.detach() for k, v in model_b.state_dict().items()}
    bn_batches = None if bn_data is None else batchnorm.input_batches(bn_data, batch_size)
    curves = [_curve(probe, sd, alphas, buffers, bn_batches)
              for sd in (raw_sd, alignment.state_dict)]
    return AlignedBarrierResult(
        raw=curves[0], aligned=curves[1], alignment=alignment, buffers=buffers,
        n_forward=meter.cost().n_forward, seconds=time.perf_counter() - start,
    )


def _curve(probe: Probe, sd_b: dict[str, Tensor], alphas: np.ndarray, buffers: str,
           bn_batches: list[Any] | None) -> BarrierCurve:
    """The interpolation curve to `sd_b` (`landscape.interpolate`)."""
    line = interpolate(probe, sd_b, alphas, buffers=buffers, bn_data=bn_batches)
    error = None if line.accuracy is None else (1.0 - line.accuracy).tolist()
    return BarrierCurve(
        alphas=line.alphas.tolist(), loss=line.loss.tolist(), error=error,
        loss_barrier=line.barrier, loss_barrier_alpha=line.barrier_alpha,
        error_barrier=line.error_barrier, error_barrier_alpha=line.error_barrier_alpha,
        distance=line.distance, cosine=line.cosine,
    )
