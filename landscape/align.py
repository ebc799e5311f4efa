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

Which tensor axes share a permutation is a `PermutationSpec` (`landscape.permspec`): derived
from the model's `torch.fx` graph run once on an example input (`permutation_spec`), or given by
hand for any model. Besides MLPs, CNNs and ResNets this covers transformers (one residual-stream
permutation shared by the embeddings, every block's input and output projections and every
LayerNorm/RMSNorm; one per MLP hidden layer; attention heads permuted as whole heads, with the
query/key dimensions and the value/output dimensions permuted within each head; tied embeddings
one tensor; positional embeddings, class tokens and biases following), modern convnets
(depthwise convolutions, channels-last LayerNorm through `permute`, layer scale,
squeeze-excitation) and recurrent networks (an `nn.Embedding` first layer, LSTM/GRU hidden units
with their gates). See docs/guides/alignment.md.

References:
    Ainsworth, Hayase, Srinivasa, Git Re-Basin: Merging Models modulo Permutation Symmetries
    (ICLR 2023).
    Entezari, Sedghi, Saukh, Neyshabur, The Role of Permutation Invariance in Linear Mode
    Connectivity of Neural Networks (ICLR 2022).
    Frankle, Dziugaite, Roy, Carbin, Linear Mode Connectivity and the Lottery Ticket Hypothesis
    (ICML 2020).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from . import batchnorm
from ._results import to_jsonable
from ._structure import InputMismatch, derive_spec
from ._validate import OneOf, validate_params
from .errors import LandscapeError
from .permspec import (
    PermutationSpec,
    apply_permutation,
    axis_index,
    identity_permutation,
    permute_tensor,
    random_permutation,
)
from .probe import Probe
from .probe_data import unpack
from .surface import barrier, interpolate  # noqa: F401 - barrier: importable from here too

BUFFERS = ("interpolate", "recompute", "keep")
__all__ = ["AlignResult", "AlignedBarrierResult", "BarrierCurve", "PermutationSpec",
           "align_weights", "aligned_barrier", "apply_permutation", "barrier", "example_input",
           "permutation_spec", "random_permutation"]


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


def permutation_spec(model: nn.Module, example_input: Any = None) -> PermutationSpec:
    """The permutation structure of `model`: its groups of hidden units and the axes each permutes.

    In order of precedence:

    1. a `torch.compile`d model is replaced by the module it wraps (`_orig_mod`); the spec's
       keys keep the `_orig_mod.` prefix of the compiled model's state dict;
    2. a model with a method `permutation_spec()` returning a `PermutationSpec` gives its own
       (for models whose code cannot be traced; see docs/guides/alignment.md);
    3. otherwise the spec is derived from the graph of a copy of the model, run once on
       `example_input` for the shapes: `torch.fx`, else `transformers`' fx tracer (Hugging Face
       models, transformers 4), else `torch.export` (its ATen operators read the same way;
       Hugging Face models are exported without their key/value cache). Operations not listed
       below are accepted when none of their inputs has a permutable dimension. Understood:
       Linear, Conv (plain or depthwise), Embedding, LSTM/GRU/RNN (gates permute together),
       LayerNorm/RMSNorm/BatchNorm/GroupNorm (1 or per-channel groups), elementwise operations
       with broadcasting (residual additions, layer scale, gating as in squeeze-excitation),
       reductions, softmax, reshapes and permutes (channels-last LayerNorm, attention heads),
       split/cat (fused q|k|v, class tokens), matmul and `scaled_dot_product_attention`,
       slicing of fixed dimensions.

    Args:
        model: the network (not changed).
        example_input: one batch of the model's inputs (a tensor, a tuple of positional inputs
            or a dict of keyword inputs); a few samples are enough. None: guessed from the first
            layer when it is a Linear (float features), an Embedding (token ids) or a
            convolution (square inputs of 8, 16, 28, 32, 64 or 224 pixels tried in turn), else
            an error asks for it.

    Returns:
        The `PermutationSpec`.

    Raises:
        LandscapeError: the model cannot be traced, or uses an operation whose effect on the
            hidden units is not known (the message names it and points at the hand-given spec).
    """
    inner = getattr(model, "_orig_mod", None)
    if isinstance(inner, nn.Module):  # torch.compile's OptimizedModule
        spec = permutation_spec(inner, example_input)
        return PermutationSpec(spec.groups, {f"_orig_mod.{k}": v for k, v in spec.axes.items()},
                               spec.nested)
    own = getattr(model, "permutation_spec", None)
    if callable(own):
        spec = own()
        if not isinstance(spec, PermutationSpec):
            raise LandscapeError(f"{type(model).__name__}.permutation_spec() must return a "
                                 f"landscape.PermutationSpec; got {type(spec).__name__}.")
        spec.check(model.state_dict())
        return spec
    guesses = [example_input] if example_input is not None else _guess_inputs(model)
    for guess in guesses:
        try:
            spec = derive_spec(model, guess)
        except InputMismatch:
            if example_input is not None:
                raise
            continue
        spec.check(model.state_dict())
        return spec
    raise LandscapeError(
        f"permutation alignment runs {type(model).__name__} once to read its shapes: pass "
        "example_input= (one batch of its inputs, a few samples are enough). aligned_barrier "
        "and compare take it from the probe's data."
    )


def _guess_inputs(model: nn.Module) -> list[Tensor]:
    """Inputs to try when none is given, from the first Linear, Embedding or convolution in
    `model.modules()`: features, token ids, or channels at a few square sizes (8 to 224)."""
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if isinstance(mod, nn.Linear):
            return [torch.zeros(2, mod.in_features, dtype=w.dtype, device=w.device)]
        if isinstance(mod, nn.Embedding):
            return [torch.zeros(2, 4, dtype=torch.long, device=w.device)]
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dims = w.ndim - 2
            return [torch.zeros(2, mod.in_channels, *[size] * dims, dtype=w.dtype,
                                device=w.device) for size in (8, 16, 28, 32, 64, 224)]
    return []


def example_input(probe: Probe) -> Any:
    """The model inputs of the probe's first batch (captured at the model's forward call when
    the probe computes its own loss with `batch_loss`); the forward itself is not run."""
    batch = next(iter(probe._data.batches()))
    if probe.batch_loss is None:
        return unpack(batch)[0]

    class _Captured(Exception):
        pass

    def grab(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        raise _Captured(args, kwargs)

    handle = probe.model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            probe.batch_loss(probe.model, batch)
    except _Captured as c:
        args, kwargs = c.args
        return kwargs if kwargs and not args else args if len(args) != 1 or kwargs else args[0]
    finally:
        handle.remove()
    raise LandscapeError("the probe's batch_loss never calls the model: pass example_input=.")


# ---------------------------------------------------------------------- weight matching


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


# ---------------------------------------------------------------------- barriers


@validate_params(buffers=OneOf(BUFFERS))
def aligned_barrier(probe: Probe, model_b: nn.Module, alphas: Sequence[float] | None = None,
                    *, max_iter: int = 100, seed: int = 0, buffers: str = "interpolate",
                    bn_data: Any = None, batch_size: int = 256,
                    spec: PermutationSpec | None = None) -> AlignedBarrierResult:
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
        spec: the permutation structure (`PermutationSpec`); None: derived from model A, run on
            the inputs of the probe's first batch (`permutation_spec`).

    Returns:
        `AlignedBarrierResult` with the raw and the aligned `BarrierCurve`.

    Raises:
        LandscapeError: a bad option, architectures differ, an unsupported operation.
    """
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
    alignment = align_weights(
        probe.model, model_b, spec=spec, max_iter=max_iter, seed=seed,
        example_input=None if spec is not None else example_input(probe))
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
