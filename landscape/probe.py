"""The Probe: the one object that touches the model, the data and the loss.

Every estimator in `landscape` asks a `Probe` for losses, gradients and Hessian-vector products,
at the checkpoint w or at a displaced point w + delta, and never iterates data itself.

Conventions (docs/measures.md, "Notation and conventions"):

* L(w) is the mean loss over *all samples*: each batch's mean loss is weighted by its number of
  samples, the sums are added up and divided once, so a short last batch is not over-weighted.
* Flat vectors (gradients, directions, Hessian-vector products) have length `num_params` and
  follow `model.named_parameters()` order of the probed parameters; `param_info` gives the
  slice of each parameter.
* Measurements run in eval mode (normalization layers use running statistics; dropout off). The
  mode of every submodule is restored afterwards; buffers are never updated.
* The model is never changed: displaced points are written into the parameters in place and the
  saved originals are copied back bitwise in a `finally`, even when an exception flies;
  gradients come from `torch.autograd.grad`, so `.grad` is never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import batchnorm
from .distributed import Comm, full_source, resolve_comm, shard_source
from .errors import LandscapeError

LossFn = Callable[[Any, Any], Tensor]
BatchLossFn = Callable[[nn.Module, Any], Tensor]
ParamSelection = Sequence[str] | Callable[[str, nn.Parameter], bool] | None

HVP_METHODS = ("auto", "cached_graph", "double_backward", "forward_over_reverse")
_DEFAULT_CPU_BUDGET = 2 * 2**30  # bytes for the data cache and for kept gradient graphs


@dataclass(frozen=True)
class ParamInfo:
    """Where one probed parameter lives in the flat vector: `flat[start:stop]`."""

    name: str
    shape: tuple[int, ...]
    start: int
    stop: int

    @property
    def numel(self) -> int:
        return self.stop - self.start

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def layer(self) -> str:
        """The owning module's name (`"fc1"` for `"fc1.weight"`; `""` at the top level)."""
        return self.name.rpartition(".")[0]


@dataclass(frozen=True)
class Cost:
    """What a computation spent.

    `n_forward`: loss evaluations over all data; `n_gradient`: full-data gradients (each includes
    its forward pass); `n_hvp`: full-data Hessian (or GGN) vector products; `n_batch_forward`:
    forward passes of single batches, all kinds together; `seconds`: wall-clock time.
    """

    n_forward: int = 0
    n_gradient: int = 0
    n_hvp: int = 0
    n_batch_forward: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Evaluation:
    """Loss (sample-weighted mean) and, for classification, accuracy (fraction in [0, 1])."""

    loss: float
    accuracy: float | None
    n_samples: int


class Meter:
    """Measures the cost of the probe calls made between its creation and `cost()`."""

    def __init__(self, probe: Probe):
        self._probe = probe
        self._start = dict(probe._counts)
        self._t0 = time.perf_counter()

    def cost(self) -> Cost:
        now = self._probe._counts
        diff = {k: now[k] - self._start[k] for k in now}
        return Cost(**diff, seconds=time.perf_counter() - self._t0)


class _Data:
    """The probe's data: the user's source, a device cache, and the first-use checks."""

    def __init__(self, data: Any, batch_size: int, device: torch.device, dtype: torch.dtype,
                 cache_bytes: int, comm: Comm):
        self.given: Iterable[Any] | None = _as_reiterable(data, batch_size)  # None: a share
        self.source = shard_source(self.given, comm)
        self.device = device
        self.dtype = dtype
        self.cache_bytes = cache_bytes
        self.cache: list[Any] | None = None
        self.checked = False
        self.n_local = 0  # samples in this rank's share (all samples when not distributed)
        self.local_bytes = 0  # bytes of this rank's batches on the device

    def raw(self) -> Iterator[Any]:
        for batch in self.source:
            yield _to_device(batch, self.device, self.dtype)

    def batches(self) -> Iterator[Any]:
        if self.cache is not None:
            yield from self.cache
        else:
            yield from self.raw()


class _LossModule(nn.Module):
    """Wraps model + loss so that `torch.func.functional_call` can swap the probed parameters."""

    def __init__(self, model: nn.Module, compute: Callable[[Any], tuple[Tensor, Any]]):
        super().__init__()
        self.model = model
        self._compute = compute

    def forward(self, batch: Any) -> Tensor:
        return self._compute(batch)[0]


class Probe:
    """A model, its data and its loss: the one interface every estimator uses.

    Args:
        model: the network. Its device and dtype are used; it is never moved, changed or left
            in another mode.
        data: a `DataLoader`, any re-iterable of batches (a list works), or an
            `(inputs, targets)` pair of tensors (split into batches of `batch_size`). A batch is
            `(inputs, targets)` or, with `batch_loss`, anything (a dict, say). Floating-point
            tensors are cast to the model's dtype.
        loss_fn: `loss_fn(outputs, targets) -> scalar`, the *mean* over the batch. Defaults to
            cross-entropy. Ignored when `batch_loss` is given.
        batch_loss: `batch_loss(model, batch) -> scalar` mean loss of a batch, for models that
            compute their own loss (language models, dict batches).
        params: which parameters to probe: None (all trainable ones), a list of names or module
            prefixes (`"fc1"` selects `fc1.weight` and `fc1.bias`), or a predicate
            `(name, parameter) -> bool`. Frozen parameters (`requires_grad=False`) are left out.
        device: optional check: the device the model must be on. The probe never moves the model.
        batch_size: batch size when `data` is a tensor pair.
        check_data: on first use, evaluate the loss twice over the data and refuse data that is
            not deterministic between passes (random augmentation). Shuffling is accepted.
            Turn off for huge data sets to save one pass.
        cache_bytes: data batches are kept on the model's device when they fit in this many bytes
            (default 2 GiB on CPU, a quarter of free memory on CUDA), so repeated passes do not
            re-run the loader.
        hvp_method: "auto" (measure and pick), "cached_graph" (double backward on the gradient
            graph kept from the previous call; memory: all batches' graphs), "double_backward"
            (from scratch, one batch of activations) or "forward_over_reverse" (`torch.func`).
        graph_bytes: memory budget for the kept gradient graphs of "cached_graph" (default as
            `cache_bytes`).
        n_samples_fn: `n_samples_fn(batch) -> int` for batches whose sample count is not the
            first dimension of their first tensor.
        distributed: "auto" (default): when `torch.distributed` is initialized, shard the
            batches across the ranks (rank r takes batches i with i % world_size == r, or keeps
            its own with a `DistributedSampler` loader) and all-reduce every sum, so each rank
            returns the single-process value on all the data. False: ignore the process group.
            True: require it. A `ProcessGroup`: use that group instead of the default one.
            Every rank must then call the same methods in the same order.

    Raises:
        LandscapeError: no trainable parameters, an unknown parameter name, a bad option.
            Data problems (empty, not deterministic, non-finite loss, a batch that cannot be
            unpacked) are raised on first use.

    Example:
        >>> import torch
        >>> from landscape import Probe
        >>> model = torch.nn.Linear(3, 2)
        >>> x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
        >>> probe = Probe(model, (x, y))
        >>> probe.num_params
        8
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        loss_fn: LossFn | None = None,
        *,
        batch_loss: BatchLossFn | None = None,
        params: ParamSelection = None,
        device: torch.device | str | None = None,
        batch_size: int = 1024,
        check_data: bool = True,
        cache_bytes: int | None = None,
        hvp_method: str = "auto",
        graph_bytes: int | None = None,
        n_samples_fn: Callable[[Any], int] | None = None,
        distributed: bool | str | Any = "auto",
    ):
        if not isinstance(model, nn.Module):
            raise LandscapeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
        if hvp_method not in HVP_METHODS:
            raise LandscapeError(f"hvp_method must be one of {HVP_METHODS}; got {hvp_method!r}.")
        if batch_size < 1:
            raise LandscapeError(f"batch_size must be positive; got {batch_size}.")
        self.model = model
        self.loss_fn = loss_fn if loss_fn is not None else nn.functional.cross_entropy
        self.batch_loss = batch_loss
        self.n_samples_fn = n_samples_fn
        self.check_data = check_data
        self.hvp_method = hvp_method
        self._selection = params

        named = _select_params(model, params)
        self.param_names: list[str] = [n for n, _ in named]
        self.params: list[nn.Parameter] = [p for _, p in named]
        self.param_info: list[ParamInfo] = []
        start = 0
        for name, p in named:
            self.param_info.append(ParamInfo(name, tuple(p.shape), start, start + p.numel()))
            start += p.numel()
        self.num_params: int = start

        first = self.params[0]
        self.device: torch.device = first.device
        # loss sums as Python floats on CPU (no sync to save, cheaper than tensor ops); on a
        # GPU as device tensors, with one host transfer per evaluation
        self._host_sums = self.device.type == "cpu"
        self.dtype: torch.dtype = first.dtype
        if any(p.dtype != self.dtype for p in self.params):
            raise LandscapeError(
                "the probed parameters have mixed dtypes "
                f"({sorted({str(p.dtype) for p in self.params})}); convert the model to one dtype "
                "or select parameters of one dtype with params=."
            )
        if device is not None and torch.device(device) != self.device:
            # torch.device("cuda") != torch.device("cuda:0"): compare the type and index loosely.
            want = torch.device(device)
            if want.type != self.device.type or (
                want.index is not None and want.index != self.device.index
            ):
                raise LandscapeError(
                    f"the model is on {self.device} but device={want} was asked for; move the "
                    f"model first (model.to('{want}')): the probe never moves your model."
                )
        budget = cache_bytes if cache_bytes is not None else _default_budget(self.device)
        self.graph_bytes = graph_bytes if graph_bytes is not None else budget
        self._comm = resolve_comm(distributed, self.device)
        self._data = _Data(data, batch_size, self.device, self.dtype, budget, self._comm)
        self._counts = {"n_forward": 0, "n_gradient": 0, "n_hvp": 0, "n_batch_forward": 0}
        # (sum of n_b g_b with its graph, n samples, parameter versions), this rank's batches
        self._graph: tuple[Tensor, int, list[int]] | None = None
        self._chosen_hvp: str | None = None
        self._n_samples: int | None = None
        self._loss_module = _LossModule(model, self._compute_batch)

    # ------------------------------------------------------------------ public: structure

    @property
    def n_samples(self) -> int:
        """Number of samples in the data, over all ranks (known after the first pass)."""
        self._prepare()
        assert self._n_samples is not None
        return self._n_samples

    @property
    def world_size(self) -> int:
        """Number of ranks sharing the data (1 when not distributed)."""
        return self._comm.world_size

    @property
    def rank(self) -> int:
        """This process's rank in the probe's process group (0 when not distributed)."""
        return self._comm.rank

    @property
    def is_distributed(self) -> bool:
        """True when the batches are sharded and the sums all-reduced over a process group."""
        return self._comm.active

    @property
    def hvp_method_used(self) -> str | None:
        """The HVP method picked by "auto" (None before the first HVP)."""
        return self._chosen_hvp

    def flat_params(self) -> Tensor:
        """A detached copy of the probed parameters as one flat vector (the point w)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params]).clone()

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split a flat vector into views shaped like the probed parameters, keyed by name."""
        flat = self._check_vector(flat, "vector")
        return {i.name: flat[i.start : i.stop].view(i.shape) for i in self.param_info}

    def layers(self) -> dict[str, list[ParamInfo]]:
        """Probed parameters grouped by owning module, in order (`"fc1": [weight, bias]`)."""
        groups: dict[str, list[ParamInfo]] = {}
        for info in self.param_info:
            groups.setdefault(info.layer or info.name, []).append(info)
        return groups

    def restricted(self, params: ParamSelection) -> Probe:
        """A probe of the same model and data over a subset of the parameters.

        The data cache and first-use checks are shared; flat vectors of the new probe cover only
        the selected parameters (its Hessian is the corresponding block of this one's).
        """
        selected = _select_params(self.model, params)
        keep = set(self.param_names)
        outside = [n for n, _ in selected if n not in keep]
        if outside:
            raise LandscapeError(
                f"parameters {outside} are not probed by this probe; choose among "
                f"{self.param_names}."
            )
        names = [n for n, _ in selected]
        return self._clone(params=names)

    def meter(self) -> Meter:
        """Start measuring cost: `m = probe.meter(); ...; m.cost()`."""
        return Meter(self)

    # ------------------------------------------------------------------ public: measurements

    def loss(self, delta: Tensor | None = None) -> float:
        """L(w + delta): the sample-weighted mean loss over all data (delta None: at w).

        A non-finite loss at a displaced point is returned as is (NaN or inf), not raised.
        """
        return self.evaluate(delta).loss

    def evaluate(self, delta: Tensor | None = None) -> Evaluation:
        """Loss and (for classification) accuracy at w + delta, in one pass over the data."""
        with self._session(delta), torch.no_grad():
            return self._evaluate_here()

    def evaluate_points(
        self, directions: Sequence[Tensor], coords: Iterable[Sequence[float]],
        offset: Tensor | None = None,
        buffer_ends: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None,
        recompute_batchnorm: bool = False,
        batchnorm_inputs: Sequence[Any] | None = None,
    ) -> Iterator[Evaluation]:
        """Evaluate L(w + offset + sum_k c_k d_k) for each coordinate tuple c, lazily.

        The parameters are written in place for each point (no per-point allocation) and
        restored bitwise when the generator finishes, is closed, or raises.

        `buffer_ends=(start, end)` (dicts of buffer name -> tensor) also moves those buffers along
        the first coordinate, to (1 - c_0) start + c_0 end: interpolating BatchNorm statistics
        between two checkpoints. `recompute_batchnorm=True` instead re-estimates the BatchNorm
        running statistics at every point from the probe's data (`landscape.batchnorm`; one
        more forward pass per point, averaged over the ranks when distributed), or from
        `batchnorm_inputs` (batches of model inputs, the same on every rank) when given.
        Buffers are restored bitwise afterwards too.
        """
        dirs = [self._check_vector(d, "direction") for d in directions]
        base = None if offset is None else self._check_vector(offset, "offset")
        moving = self._buffer_path(buffer_ends)
        inputs = None if batchnorm_inputs is None else [
            _to_device(x, self.device, self.dtype) for x in batchnorm_inputs]
        with self._session(None), torch.no_grad(), \
                batchnorm.statistics_restored(self.model) as bn_layers:
            backup = [p.detach().clone() for p in self.params]
            buffer_backup = [b.detach().clone() for b, _, _ in moving]
            # One flat buffer: per point 1 + len(dirs) vector ops and one multi-tensor copy into
            # the parameters, instead of a Python loop over parameters.
            start = self._flat(backup)
            if base is not None:
                start.add_(base)
            point = torch.empty_like(start)
            views = self._split(point)
            try:
                for c in coords:
                    if len(c) != len(dirs):
                        raise LandscapeError(
                            f"each point needs {len(dirs)} coordinates; got {len(c)}."
                        )
                    if dirs:
                        torch.add(start, dirs[0], alpha=float(c[0]), out=point)
                        for ck, dk in zip(c[1:], dirs[1:]):
                            point.add_(dk, alpha=float(ck))
                    else:
                        point.copy_(start)
                    _copy_all(self.params, views)
                    for buf, lo, hi in moving:
                        torch.lerp(lo, hi, float(c[0]), out=buf)
                    if recompute_batchnorm and bn_layers:
                        self._reestimate_batchnorm(bn_layers, inputs)
                    yield self._evaluate_here()
            finally:
                _copy_all(self.params, backup)
                for (buf, _, _), b in zip(moving, buffer_backup):
                    buf.copy_(b)

    def _reestimate_batchnorm(self, layers: list[nn.Module], inputs: list[Any] | None) -> None:
        """BatchNorm running statistics re-estimated at the current parameters on this probe's
        data (distributed: each rank's batch means averaged over all ranks' batches), or on
        `inputs` (batches of model inputs)."""
        n_local, error = 0, None

        def run() -> None:
            nonlocal n_local
            for batch in self._data.batches() if inputs is None else inputs:
                if inputs is None:
                    self._compute_batch(batch)
                else:
                    _call_model(self.model, batch)
                n_local += 1

        try:
            batchnorm.reestimate(layers, run)
        except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
            error = e
        self._counts["n_forward"] += 1
        if not self._comm.active:
            if error is not None:
                raise error
            return
        stats = [b for m in layers for b in (m.running_mean, m.running_var)]
        for b in stats:
            b.mul_(n_local)
        counts = [m.num_batches_tracked for m in layers]
        (n_total,) = self._comm.reduce([n_local], tensors=stats + counts, error=error)
        for b in stats:
            b.div_(n_total)

    def _buffer_path(self, ends: tuple[dict[str, Tensor], dict[str, Tensor]] | None
                     ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """(buffer, start, end) for each floating-point buffer named in both ends."""
        if ends is None:
            return []
        start, end = ends
        out = []
        for name, buf in self.model.named_buffers():
            if name in start and name in end and buf.is_floating_point():
                a, b = start[name], end[name]
                if a.shape != buf.shape or b.shape != buf.shape:
                    raise LandscapeError(
                        f"buffer {name!r} has shape {tuple(buf.shape)} in the model but "
                        f"{tuple(a.shape)} / {tuple(b.shape)} at the interpolation ends."
                    )
                out.append((buf, a.to(buf), b.to(buf)))
        return out

    def gradient(self, delta: Tensor | None = None) -> Tensor:
        """grad L(w + delta) as a flat vector (zeros for parameters that do not reach the loss)."""
        return self.loss_and_gradient(delta)[1]

    def loss_and_gradient(self, delta: Tensor | None = None) -> tuple[float, Tensor]:
        """(L(w + delta), grad L(w + delta)) from one forward and backward pass over the data."""
        with self._session(delta):
            total = torch.zeros(self.num_params, device=self.device, dtype=self.dtype)
            loss_sum, n, error = 0.0, 0, None
            try:
                for batch in self._data.batches():
                    loss, n_b, _ = self._compute_batch(batch)
                    grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                    total.add_(self._flat(grads), alpha=n_b)
                    loss_sum += float(loss.detach()) * n_b
                    n += n_b
            except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
                error = e
            loss_sum, n = self._comm.reduce([loss_sum, n], [total], error)
            self._counts["n_gradient"] += 1
            return loss_sum / n, total.div_(n)

    def hvp(self, v: Tensor, delta: Tensor | None = None) -> Tensor:
        """H v with H the Hessian of L at w + delta (exact; flat vector in, flat vector out).

        At w the method is chosen on first use (`hvp_method="auto"`): the gradient graph is kept
        and reused when all batches' graphs fit `graph_bytes` (measured with saved-tensor hooks),
        otherwise the faster of double backward and forward-over-reverse, timed on one batch.
        """
        v = self._check_vector(v, "v")
        with self._session(delta), _twice_differentiable():
            method = self._pick_hvp_method(v, at_checkpoint=delta is None)
            out, n, error = torch.zeros_like(v), 0, None
            try:
                if method == "cached_graph":
                    out, n = self._hvp_cached(v)
                else:
                    out, n = self._hvp_batches(v, method)
            except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
                error = e
            (n,) = self._comm.reduce([n], [out], error)
            self._counts["n_hvp"] += 1
            return out.div_(n)

    def gradient_and_hvp(
        self, v: Tensor | None = None, delta: Tensor | None = None
    ) -> tuple[float, Tensor, Tensor]:
        """(L, g, H v) at w + delta in one double-backward pass; `v=None` means v = g.

        The step of first-order flatness (the gradient of ||g|| is H g / ||g||) needs exactly this.
        """
        if v is not None:
            v = self._check_vector(v, "v")
        with self._session(delta), _twice_differentiable():
            g_total = torch.zeros(self.num_params, device=self.device, dtype=self.dtype)
            loss_sum, n, graphs, error = 0.0, 0, [], None
            try:
                for batch in self._data.batches():
                    loss, n_b, _ = self._compute_batch(batch)
                    grads = torch.autograd.grad(loss, self.params, create_graph=True,
                                                allow_unused=True)
                    g_total.add_(self._flat(grads).detach(), alpha=n_b)
                    loss_sum += float(loss.detach()) * n_b
                    n += n_b
                    graphs.append((grads, n_b))
            except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
                error = e
            loss_sum, n = self._comm.reduce([loss_sum, n], [g_total], error)
            g_total.div_(n)
            vec = g_total if v is None else v
            hv = torch.zeros_like(g_total)
            try:
                for grads, n_b in graphs:
                    hv.add_(self._vjp_of_grads(grads, vec), alpha=n_b / n)
            except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
                error = e
            self._comm.reduce([], [hv], error)
            self._counts["n_gradient"] += 1
            self._counts["n_hvp"] += 1
            return loss_sum / n, g_total, hv

    def ggn_vp(self, v: Tensor, delta: Tensor | None = None) -> Tensor:
        """G v with G = mean over samples of J^T H_out J, the generalized Gauss-Newton matrix.

        J is the Jacobian of the model outputs with respect to the probed parameters, H_out the
        Hessian of the loss with respect to the outputs. G is positive semi-definite for convex
        losses (cross-entropy, MSE). Needs `(inputs, targets)` batches and `loss_fn`.
        """
        v = self._check_vector(v, "v")
        if self.batch_loss is not None:
            raise LandscapeError(
                "the Gauss-Newton matrix needs the model outputs and loss_fn separately; it is not "
                "available with batch_loss=. Use curvature='hessian' instead."
            )
        with self._session(delta), _twice_differentiable():
            total = torch.zeros_like(v)
            n, error = 0, None
            try:
                n = self._ggn_vp_sum(self._split(v), total)
            except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
                error = e
            (n,) = self._comm.reduce([n], [total], error)
            self._counts["n_hvp"] += 1
            return total.div_(n)

    def hessian_operator(self, curvature: str = "hessian"):
        """The Hessian (or GGN, `curvature="ggn"`) at w as a `scipy.sparse.linalg.LinearOperator`.

        It works on float64 numpy vectors, so `scipy.sparse.linalg.eigsh(op, k=3)` just works.
        Each matvec costs one HVP on the probe's device.
        """
        from scipy.sparse.linalg import LinearOperator

        if curvature not in ("hessian", "ggn"):
            raise LandscapeError(f"curvature must be 'hessian' or 'ggn'; got {curvature!r}.")
        product = self.hvp if curvature == "hessian" else self.ggn_vp

        def matvec(x):
            v = torch.as_tensor(x.reshape(-1), dtype=self.dtype, device=self.device)
            return product(v).detach().cpu().double().numpy()

        return LinearOperator((self.num_params, self.num_params), matvec=matvec, rmatvec=matvec,
                              dtype="float64")

    @contextlib.contextmanager
    def perturbed(self, delta: Tensor) -> Iterator[Probe]:
        """Within the block the model's parameters are w + delta (in eval mode); restored after.

        For code that must call the model itself (a custom metric). Probe methods called inside
        measure at the displaced point.
        """
        with self._session(self._check_vector(delta, "delta")):
            yield self

    def subset(self, n_samples: int, seed: int = 0) -> Probe:
        """A probe over `n_samples` samples drawn without replacement (a fixed subset).

        Distributed: the samples are drawn by global index (the same on every rank and as in one
        process); each rank keeps those in its own batches, and the sub-probe reduces as this one.
        """
        batches, starts, total = self._sample_batches()
        if not 1 <= n_samples <= total:
            raise LandscapeError(f"n_samples must be in [1, {total}]; got {n_samples}.")
        gen = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(total, generator=gen)[:n_samples].sort().values
        return self._clone(data=_gather_samples(batches, starts, chosen), check_data=False)

    def sample_groups(self, m: int) -> list[Probe]:
        """Probes over consecutive groups of `m` samples (the last may be smaller), for m-sharpness.

        Distributed: groups follow the global sample order; each group's probe spans the ranks
        (a rank holding none of its samples contributes zero to the sums), so every rank gets
        the same list of probes with the same values.
        """
        batches, starts, total = self._sample_batches()
        if not 1 <= m <= total:
            raise LandscapeError(f"m must be in [1, {total}] (the number of samples); got {m}.")
        return [
            self._clone(data=_gather_samples(batches, starts, torch.arange(s, min(s + m, total))),
                        check_data=False)
            for s in range(0, total, m)
        ]

    # ------------------------------------------------------------------ internals: passes

    def _ggn_vp_sum(self, vs: list[Tensor], total: Tensor) -> int:
        """Add sum over this rank's batches of n_b G_b v into `total`; return the sample count."""
        n = 0
        for batch in self._data.batches():
            inputs, targets = _unpack(batch)
            outputs = _call_model(self.model, inputs)
            self._counts["n_batch_forward"] += 1
            n_b = self._batch_n_samples(batch)
            # J v by the double-vjp trick: d/du <J^T u, v> = J v.
            u = torch.zeros_like(outputs, requires_grad=True)
            jtu = torch.autograd.grad(outputs, self.params, grad_outputs=u,
                                      create_graph=True, allow_unused=True)
            pairs = [(g, vi) for g, vi in zip(jtu, vs) if g is not None]
            if not pairs:
                n += n_b
                continue
            jv = torch.autograd.grad(sum((g * vi).sum() for g, vi in pairs), u)[0]
            out = outputs.detach().requires_grad_(True)
            loss = self.loss_fn(out, targets)
            dl = torch.autograd.grad(loss, out, create_graph=True)[0]
            if dl.requires_grad:
                h_jv = torch.autograd.grad(dl, out, grad_outputs=jv)[0]
            else:
                h_jv = torch.zeros_like(out)
            jt = torch.autograd.grad(outputs, self.params, grad_outputs=h_jv,
                                     allow_unused=True)
            total.add_(self._flat(jt), alpha=n_b)
            n += n_b
        return n

    def _clone(self, **overrides: Any) -> Probe:
        kwargs = dict(
            loss_fn=self.loss_fn, batch_loss=self.batch_loss, params=self.param_names,
            check_data=self.check_data, cache_bytes=self._data.cache_bytes,
            hvp_method=self.hvp_method, graph_bytes=self.graph_bytes,
            n_samples_fn=self.n_samples_fn,
        )
        data = overrides.pop("data", None)
        kwargs.update(overrides)
        # Gathered data is already this rank's share: no sharding, but the same process group.
        new = Probe(self.model, [] if data is None else data, distributed=False, **kwargs)
        new._comm = self._comm
        if data is not None and self._comm.active:
            new._data.given = None  # this rank's share of the samples, not all of them
        if data is None:  # share the data and the result of its checks
            self._prepare()
            new._data = self._data
            new._n_samples = self._n_samples
        return new

    def _compute_batch(self, batch: Any) -> tuple[Tensor, int, Tensor | None]:
        """(mean loss, n samples, n correct or None) of one batch at the current parameters."""
        self._counts["n_batch_forward"] += 1
        n_b = self._batch_n_samples(batch)
        correct = None
        if self.batch_loss is not None:
            loss = self.batch_loss(self.model, batch)
        else:
            inputs, targets = _unpack(batch)
            outputs = _call_model(self.model, inputs)
            loss = self.loss_fn(outputs, targets)
            if (isinstance(outputs, Tensor) and outputs.ndim == 2 and isinstance(targets, Tensor)
                    and targets.ndim == 1 and not targets.is_floating_point()):
                # max(1).indices is argmax (first maximum, NaN propagates) at 2/3 of its cost
                correct = (outputs.detach().max(1).indices == targets).sum()
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise LandscapeError(
                f"the loss must be a scalar tensor (the mean over the batch); got {shape}. "
                "Use reduction='mean' in loss_fn, or return loss.mean() from batch_loss."
            )
        return (loss if loss.ndim == 0 else loss.reshape(())), n_b, correct

    def _evaluate_here(self) -> Evaluation:
        """Loss and accuracy at the current parameters. The sums are Python floats on CPU and
        device tensors elsewhere, with one host transfer (a single `tolist()`) per call."""
        on_cpu = self._host_sums
        loss_sum: Tensor | float | None = None
        correct_sum: Tensor | int | None = None
        n, has_acc, error = 0, True, None
        try:
            for batch in self._data.batches():
                loss, n_b, correct = self._compute_batch(batch)
                if on_cpu:
                    term: Tensor | float = loss.item() * n_b
                else:
                    term = loss.double() * n_b
                loss_sum = term if loss_sum is None else loss_sum + term
                if correct is None:
                    has_acc = False
                elif has_acc:
                    c = int(correct) if on_cpu else correct
                    correct_sum = c if correct_sum is None else correct_sum + c
                n += n_b
        except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
            error = e
        if loss_sum is None:
            sums = [0.0, 0.0]
        elif on_cpu:
            sums = [float(loss_sum), float(correct_sum or 0)]
        elif not has_acc or correct_sum is None:
            sums = [float(loss_sum), 0.0]
        else:
            sums = torch.stack([loss_sum, correct_sum.double()]).tolist()
        total, n_correct, n, n_no_acc = self._comm.reduce(
            [sums[0], sums[1], n, 0.0 if has_acc else 1.0], error=error)
        n = int(n)
        self._counts["n_forward"] += 1
        if n == 0:
            raise LandscapeError("data is empty: the loader yielded no batches.")
        accuracy = n_correct / n if n_no_acc == 0 else None
        return Evaluation(total / n, accuracy, n)

    def _hvp_batches(self, v: Tensor, method: str) -> tuple[Tensor, int]:
        """(sum over this rank's batches of n_b H_b v, number of samples)."""
        total = torch.zeros_like(v)
        n = 0
        for batch in self._data.batches():
            hv, n_b = self._hvp_one_batch(batch, v, method)
            total.add_(hv, alpha=n_b)
            n += n_b
        return total, n

    def _hvp_one_batch(self, batch: Any, v: Tensor, method: str) -> tuple[Tensor, int]:
        if method == "forward_over_reverse":
            from torch.func import functional_call, grad, jvp

            primals = {"model." + n: p.detach() for n, p in zip(self.param_names, self.params)}
            tangents = {"model." + k: t for k, t in self.unflatten(v).items()}

            def loss_of(p):
                return functional_call(self._loss_module, p, (batch,))

            _, hv = jvp(grad(loss_of), (primals,), (tangents,))
            n_b = self._batch_n_samples(batch)
            return torch.cat([hv["model." + n].reshape(-1) for n in self.param_names]), n_b
        loss, n_b, _ = self._compute_batch(batch)
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        return self._vjp_of_grads(grads, v), n_b

    def _vjp_of_grads(self, grads: Sequence[Tensor | None], v: Tensor) -> Tensor:
        """d/dw <g(w), v> = H v, from a gradient computed with create_graph=True."""
        terms = [(g * vi).sum() for g, vi in zip(grads, self._split(v))
                 if g is not None and g.requires_grad]
        if not terms:  # the loss is at most linear in the probed parameters: H = 0
            return torch.zeros_like(v)
        out = torch.autograd.grad(sum(terms), self.params, retain_graph=True, allow_unused=True)
        return self._flat(out)

    def _hvp_cached(self, v: Tensor) -> tuple[Tensor, int]:
        """(sum over this rank's batches of n_b H_b v, number of samples), on the kept graph."""
        versions = [p._version for p in self.params]
        if self._graph is None or self._graph[2] != versions:
            self._graph = None
            self._graph = (*self._build_graph(), versions)
        flat_g, n = self._graph[0], self._graph[1]
        if not flat_g.requires_grad:
            return torch.zeros_like(v), n
        out = torch.autograd.grad(flat_g, self.params, grad_outputs=v, retain_graph=True,
                                  allow_unused=True)
        return self._flat(out), n

    def _build_graph(self) -> tuple[Tensor, int]:
        """(sum over this rank's batches of n_b g_b with the graph kept, number of samples)."""
        total = torch.zeros(self.num_params, device=self.device, dtype=self.dtype)
        n = 0
        for batch in self._data.batches():
            loss, n_b, _ = self._compute_batch(batch)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            total = total + self._flat(grads) * n_b
            n += n_b
        return total, n

    def _graph_bytes_estimate(self) -> int:
        """Bytes of tensors saved by autograd for all batches' gradient graphs (measured)."""
        saved = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal saved
            saved += t.numel() * t.element_size()
            return t

        batch = next(iter(self._data.batches()), None)
        if batch is None:  # a rank without batches keeps no graph
            return 0
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, n_b, _ = self._compute_batch(batch)
            torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        return int(saved * self._data.n_local / max(n_b, 1))

    def _pick_hvp_method(self, v: Tensor, at_checkpoint: bool) -> str:
        if self.hvp_method != "auto":
            if self.hvp_method == "cached_graph" and not at_checkpoint:
                return "double_backward"
            return self.hvp_method
        if self._chosen_hvp is None:
            # Every rank must pick the same method: the kept graph only if it fits on all ranks.
            fits, error = False, None
            try:
                fits = (self._data.cache is not None
                        and self._graph_bytes_estimate() <= self.graph_bytes)
            except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
                error = e
            (n_unfit,) = self._comm.reduce([0.0 if fits else 1.0], error=error)
            if n_unfit == 0:
                self._chosen_hvp = "cached_graph"
            else:
                self._chosen_hvp = self._fastest_uncached(v)
        if self._chosen_hvp == "cached_graph" and not at_checkpoint:
            return "double_backward"
        return self._chosen_hvp

    def _fastest_uncached(self, v: Tensor) -> str:
        """The faster of the uncached methods, timed on one batch (times summed over ranks)."""
        methods = ("double_backward", "forward_over_reverse")
        batch = next(iter(self._data.batches()), None)
        timings = dict.fromkeys(methods, 0.0)  # a rank without batches does not vote
        for method in methods if batch is not None else ():
            try:
                self._hvp_one_batch(batch, v, method)  # warm-up
                t0 = time.perf_counter()
                self._hvp_one_batch(batch, v, method)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                timings[method] = time.perf_counter() - t0
            except Exception:  # noqa: BLE001 - a method the model does not support is skipped
                timings[method] = math.inf
        summed = dict(zip(methods, self._comm.reduce(list(timings.values()))))
        usable = {m: t for m, t in summed.items() if math.isfinite(t)}
        return min(usable, key=usable.get) if usable else "double_backward"

    # ------------------------------------------------------------------ internals: safety

    @contextlib.contextmanager
    def _session(self, delta: Tensor | None) -> Iterator[None]:
        """Eval mode and (optionally) parameters at w + delta; both restored on exit."""
        if delta is not None:
            delta = self._check_vector(delta, "delta")
        self._prepare()
        modes = [(m, m.training) for m in self.model.modules()]
        backup = None
        try:
            self.model.eval()
            if delta is not None:
                with torch.no_grad():
                    backup = [p.detach().clone() for p in self.params]
                    for p, d in zip(self.params, self._split(delta)):
                        p.add_(d)
            yield
        finally:
            if backup is not None:
                with torch.no_grad():
                    for p, b in zip(self.params, backup):
                        p.copy_(b)
            for m, mode in modes:
                m.training = mode

    def _prepare(self) -> None:
        """First use: fill the device cache, check the data is non-empty, finite, deterministic.

        Distributed: each rank passes over its own batches; the sums are all-reduced before
        every check, so all ranks agree and raise the same error.
        """
        data = self._data
        if data.checked:
            return
        comm = self._comm
        modes = [(m, m.training) for m in self.model.modules()]
        try:
            self.model.eval()
            with torch.no_grad():
                cache: list[Any] | None = []
                used = 0
                loss_sum, n, n_batches, error = 0.0, 0, 0, None
                try:
                    for batch in data.raw():
                        loss, n_b, _ = self._compute_batch(batch)
                        loss_sum += float(loss.double()) * n_b
                        n += n_b
                        n_batches += 1
                        used += _nbytes(batch)
                        if cache is not None:
                            if used <= data.cache_bytes:
                                cache.append(batch)
                            else:
                                cache = None
                except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
                    error = e
                n_local = n
                loss_sum, n, n_batches = comm.reduce([loss_sum, n, n_batches], error=error)
                n = int(n)
                if n_batches == 0 or n == 0:
                    raise LandscapeError(
                        "data is empty: the loader yielded no batches (or only empty ones). "
                        "Pass a DataLoader, a list of batches, or an (inputs, targets) pair."
                    )
                loss0 = loss_sum / n
                if not math.isfinite(loss0):
                    raise LandscapeError(
                        f"the loss at the checkpoint is not finite ({loss0}); check the "
                        "checkpoint, the loss function and the inputs (NaN or inf in the data?)."
                    )
                if self.check_data:
                    loss_sum2, n2 = 0.0, 0
                    try:
                        for batch in data.raw():
                            loss, n_b, _ = self._compute_batch(batch)
                            loss_sum2 += float(loss.double()) * n_b
                            n2 += n_b
                    except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
                        error = e
                    loss_sum2, n2 = comm.reduce([loss_sum2, n2], error=error)
                    n2 = int(n2)
                    loss1 = loss_sum2 / max(n2, 1)
                    tol = (1e-9 if self.dtype == torch.float64 else 1e-4) * max(1.0, abs(loss0))
                    if n2 != n or not abs(loss1 - loss0) <= tol:
                        raise LandscapeError(
                            "data is not deterministic between two passes: the loss was "
                            f"{loss0:.8g} on {n} samples, then {loss1:.8g} on {n2} samples. "
                            "Random augmentation (or a sampler that draws a different subset) "
                            "makes every estimate wrong: use the evaluation transforms. "
                            "Shuffling is fine. To skip this check pass check_data=False."
                        )
        finally:
            for m, mode in modes:
                m.training = mode
        data.cache = cache
        data.checked = True
        data.n_local = n_local
        data.local_bytes = used
        self._n_samples = n

    # ------------------------------------------------------------------ internals: vectors

    def _check_vector(self, v: Any, what: str) -> Tensor:
        if not isinstance(v, Tensor):
            raise LandscapeError(f"{what} must be a torch.Tensor; got {type(v).__name__}.")
        if v.numel() != self.num_params:
            raise LandscapeError(
                f"{what} has {v.numel()} entries but the probe has num_params="
                f"{self.num_params}; build it with probe.num_params entries."
            )
        if v.dtype != self.dtype:
            raise LandscapeError(
                f"{what} has dtype {v.dtype} but the model's parameters are {self.dtype}; "
                f"convert it with .to({self.dtype})."
            )
        return v.detach().reshape(-1).to(self.device)

    def _split(self, flat: Tensor) -> list[Tensor]:
        return [flat[i.start : i.stop].view(i.shape) for i in self.param_info]

    def _flat(self, tensors: Sequence[Tensor | None]) -> Tensor:
        return torch.cat([
            (t if t is not None else torch.zeros_like(p)).reshape(-1)
            for t, p in zip(tensors, self.params)
        ])

    def _batch_n_samples(self, batch: Any) -> int:
        if self.n_samples_fn is not None:
            return int(self.n_samples_fn(batch))
        if self.batch_loss is None:
            inputs, targets = _unpack(batch)
            first = _first_tensor(targets)
            if first is None or first.ndim == 0:
                first = _first_tensor(inputs)
        else:
            first = _first_tensor(batch)
        if first is None or first.ndim == 0:
            raise LandscapeError(
                f"cannot count the samples of a batch of type {type(batch).__name__}: no tensor "
                "with a batch dimension; pass n_samples_fn=lambda batch: ... to the Probe."
            )
        return int(first.shape[0])

    def _sample_batches(self) -> tuple[list[tuple[Any, int]], list[int], int]:
        """This rank's (batch, n samples), the global index of each batch's first sample, and
        the global number of samples."""
        self._prepare()
        out = [(b, self._batch_n_samples(b)) for b in self._data.batches()]
        starts, total = self._comm.global_starts([n for _, n in out])
        return out, starts, total

    # ------------------------------------------------------------------ internals: distributed

    def _alone(self) -> Probe | None:
        """This rank alone over ALL the data (no reductions, the single-process batch order),
        sharing the model and the cost counters; the probe itself when not distributed; None
        when this rank cannot see all the data (a `DistributedSampler` loader, or a sub-probe
        over gathered samples). Kept for reuse. For work split by other means than the data
        (the points of a surface): every rank must call it (the data check is collective)."""
        if not self._comm.active:
            return self
        twin = getattr(self, "_alone_probe", None)
        if twin is None:
            self._prepare()
            full = None if self._data.given is None else full_source(self._data.given,
                                                                    self._comm)
            if full is None:
                return None
            twin = self._clone(data=full, check_data=False)
            twin._comm = Comm(False, None, self.device)
            twin._counts = self._counts
            self._alone_probe = twin
        return twin


# ---------------------------------------------------------------------- module helpers


def _twice_differentiable() -> contextlib.AbstractContextManager:
    """Use the math attention kernel: the fused ones (flash, memory-efficient) have no double
    backward, so Hessian-vector products through `scaled_dot_product_attention` would fail."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def _select_params(model: nn.Module, selection: ParamSelection) -> list[tuple[str, nn.Parameter]]:
    named = list(model.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    if not trainable:
        raise LandscapeError(
            "the model has no trainable parameters (all have requires_grad=False); unfreeze the "
            "ones to measure with p.requires_grad_(True)."
        )
    if selection is None:
        return trainable
    if callable(selection):
        chosen = [(n, p) for n, p in trainable if selection(n, p)]
        if not chosen:
            raise LandscapeError("the params= predicate selected no trainable parameter.")
        return chosen
    if isinstance(selection, str):
        selection = [selection]
    frozen = {n for n, p in named if not p.requires_grad}
    chosen_names: set[str] = set()
    for want in selection:
        hits = [n for n, _ in trainable if n == want or n.startswith(want + ".")]
        if not hits:
            if want in frozen:
                raise LandscapeError(
                    f"parameter {want!r} is frozen (requires_grad=False) and cannot be probed; "
                    "unfreeze it or leave it out."
                )
            raise LandscapeError(
                f"no trainable parameter is named {want!r} (or starts with {want + '.'!r}); "
                f"available: {[n for n, _ in trainable]}."
            )
        chosen_names.update(hits)
    return [(n, p) for n, p in trainable if n in chosen_names]


def _copy_all(dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
    """dst[i].copy_(src[i]) for all i, in one multi-tensor call where torch has it."""
    foreach = getattr(torch, "_foreach_copy_", None)
    if foreach is not None:
        foreach(list(dst), list(src))
    else:  # pragma: no cover - older torch
        for d, s in zip(dst, src):
            d.copy_(s)


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    return _DEFAULT_CPU_BUDGET


class _TensorPairBatches:
    def __init__(self, inputs: Tensor, targets: Tensor, batch_size: int):
        self.inputs, self.targets, self.batch_size = inputs, targets, batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for s in range(0, len(self.inputs), self.batch_size):
            yield self.inputs[s : s + self.batch_size], self.targets[s : s + self.batch_size]


def _as_reiterable(data: Any, batch_size: int) -> Iterable[Any]:
    if (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor)
            and isinstance(data[1], Tensor) and data[0].ndim > 0 and data[1].ndim > 0
            and len(data[0]) == len(data[1])):
        return _TensorPairBatches(data[0], data[1], batch_size)
    if isinstance(data, Tensor):
        raise LandscapeError(
            "data is a single tensor; pass an (inputs, targets) pair, a DataLoader, or a list "
            "of batches."
        )
    try:
        it = iter(data)
    except TypeError:
        raise LandscapeError(
            f"data of type {type(data).__name__} is not iterable; pass a DataLoader, a list of "
            "batches, or an (inputs, targets) pair of tensors."
        ) from None
    if it is data:
        raise LandscapeError(
            "data is a one-shot iterator (a generator?); the probe passes over the data many "
            "times. Pass a DataLoader or a list of batches."
        )
    return data


def _to_device(batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(batch, Tensor):
        if batch.is_floating_point():
            return batch.to(device=device, dtype=dtype)
        return batch.to(device=device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device, dtype) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [_to_device(v, device, dtype) for v in batch]
        return tuple(moved) if isinstance(batch, tuple) else moved
    return batch


def _unpack(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    kind = type(batch).__name__
    hint = f" with keys {sorted(batch)}" if isinstance(batch, dict) else ""
    raise LandscapeError(
        f"cannot unpack a batch of type {kind}{hint}: expected (inputs, targets). For dict "
        "batches or models that compute their own loss, pass "
        "batch_loss=lambda model, batch: ... (returning the mean loss) to the Probe."
    )


def _call_model(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for item in obj:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def _nbytes(obj: Any) -> int:
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _slice_samples(obj: Any, index: Tensor, n: int) -> Any:
    """Index every tensor whose first dimension is the batch dimension (length n)."""
    if isinstance(obj, Tensor) and obj.ndim > 0 and obj.shape[0] == n:
        return obj[index.to(obj.device)]
    if isinstance(obj, dict):
        return {k: _slice_samples(v, index, n) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [_slice_samples(v, index, n) for v in obj]
        return tuple(out) if isinstance(obj, tuple) else out
    return obj


def _gather_samples(batches: list[tuple[Any, int]], starts: list[int],
                    chosen: Tensor) -> list[Any]:
    """The batches restricted to the chosen global sample indices (sorted), batch by batch;
    `starts[i]` is the global index of the first sample of `batches[i]`."""
    out = []
    for (batch, n_b), start in zip(batches, starts):
        local = chosen[(chosen >= start) & (chosen < start + n_b)] - start
        if len(local):
            out.append(_slice_samples(batch, local, n_b))
    return out
