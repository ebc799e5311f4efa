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
from ._model_prep import prepare_model
from .distributed import Comm, full_source, resolve_comm
from .errors import LandscapeError
from .hvp import HVP_METHODS, HvpEngine, recurrent_safe, twice_differentiable
from .probe_data import (
    ProbeData,
    call_model,
    default_budget,
    first_tensor,
    gather_samples,
    merge_batches,
    nbytes,
    to_device,
    unpack,
)

LossFn = Callable[[Any, Any], Tensor]
BatchLossFn = Callable[[nn.Module, Any], Tensor]
ParamSelection = Sequence[str] | Callable[[str, nn.Parameter], bool] | None

# activations of one no-grad evaluation chunk (merged batches): larger chunks gain nothing on a
# CPU; on a GPU the caching allocator keeps them
_EVAL_CHUNK_BYTES = 256 * 2**20
_EVAL_CHUNK_BYTES_CUDA = 2 * 2**30


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
            `(inputs, targets)` pair of tensors (split into batches of `batch_size`; with
            `batch_loss`, only a tuple is taken as a pair, so a list of two token tensors is
            two batches). A batch is
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
        rebatch: for evaluations without gradients (losses, surfaces, interpolations), merge the
            cached batches into chunks whose activations take at most 256 MiB (2 GiB on CUDA),
            when a copy of the data fits beside the cache within `cache_bytes`, so small
            loader batches cost no more than one large one. Only with `loss_fn` (a per-sample
            mean, so the result is the same to float rounding) and without `n_samples_fn`; a
            `batch_loss` always gets the user's batches, since its value may depend on the
            batch. Gradients and Hessian-vector
            products always use the user's batches (their memory grows with the batch).
        dtype: None (default): measure in the model's own dtype. torch.float32 (or float64):
            measure a copy of the model converted to it when its dtype differs, never changing
            the model; costs 4 (8) bytes per parameter and buffer beside the model, and the
            measurement's vectors are in that dtype. Curvature, sharpness and flatness refuse
            bf16 and fp16 probes (rounding noise): pass dtype=torch.float32 for those models.
            Losses, lines and surfaces may stay in low precision.

    A model compiled with `torch.compile(model)` is measured through its original module
    (`model._orig_mod`, which shares the parameters and buffers, so the values are the same and
    `probe.model` is that module): a compiled graph cannot be differentiated twice. A model
    compiled in place (`model.compile()`) or holding compiled submodules is refused.

    Raises:
        LandscapeError: no trainable parameters, an unknown parameter name, a bad option, a
            model compiled in place or with compiled submodules.
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
        dtype: torch.dtype | None = None,
        rebatch: bool = True,
    ):
        if not isinstance(model, nn.Module):
            raise LandscapeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
        model = prepare_model(model, dtype)  # torch.compile unwrapped; a copy in `dtype` if asked
        if hvp_method not in HVP_METHODS:
            raise LandscapeError(f"hvp_method must be one of {HVP_METHODS}; got {hvp_method!r}.")
        if batch_size < 1:
            raise LandscapeError(f"batch_size must be positive; got {batch_size}.")
        self.model = model
        self.loss_fn = loss_fn if loss_fn is not None else nn.functional.cross_entropy
        self.batch_loss = batch_loss
        self.n_samples_fn = n_samples_fn
        self.check_data = check_data
        if not isinstance(rebatch, bool):
            raise LandscapeError(f"rebatch must be True or False; got {rebatch!r}.")
        self.rebatch = rebatch
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
        budget = cache_bytes if cache_bytes is not None else default_budget(self.device)
        self.graph_bytes = graph_bytes if graph_bytes is not None else budget
        self._comm = resolve_comm(distributed, self.device)
        self._data = ProbeData(data, batch_size, self.device, self.dtype, budget, self._comm,
                               pairs=batch_loss is None)
        self._counts = {"n_forward": 0, "n_gradient": 0, "n_hvp": 0, "n_batch_forward": 0}
        self._hvp = HvpEngine(self)
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
        return self._hvp.chosen if self.hvp_method == "auto" else self.hvp_method

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
        with self._session(delta), torch.inference_mode():
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
            to_device(x, self.device, self.dtype) for x in batchnorm_inputs]
        with self._session(None), torch.inference_mode(), \
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
            plan = None
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
                    if plan:
                        yield self._evaluate_plan(plan)
                        continue
                    # the first point with every check; later points may take the short path
                    yield self._evaluate_here()
                    plan = self._eval_plan()
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
                    call_model(self.model, batch)
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
            views = self._split(total)
            loss_sum, n, error = 0.0, 0, None
            try:
                for batch in self._data.batches():
                    loss, n_b, _ = self._compute_batch(batch)
                    grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                    _add_all(views, grads, n_b)
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
        with self._session(delta), twice_differentiable():
            out, n, error = None, 0, None
            try:  # no placeholder output while the product runs: one vector less at the peak
                out, n = self._hvp.product(v, at_checkpoint=delta is None)
            except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
                error = e
            if out is None:
                out = torch.zeros_like(v)
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
        with self._session(delta), twice_differentiable():
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
                    hv.add_(self._hvp.vjp_of_grads(grads, vec), alpha=n_b / n)
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
        with self._session(delta), twice_differentiable():
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
        return self._clone(data=gather_samples(batches, starts, chosen), check_data=False)

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
            self._clone(data=gather_samples(batches, starts, torch.arange(s, min(s + m, total))),
                        check_data=False)
            for s in range(0, total, m)
        ]

    def partition(self, n_parts: int, seed: int = 0) -> list[Probe]:
        """Probes over `n_parts` disjoint random parts of the samples that together hold all of
        them: the global sample indices are shuffled by `torch.randperm(n_samples)` from a
        generator seeded with `seed`, cut into `n_parts` consecutive pieces whose sizes differ
        by at most one (the first `n_samples % n_parts` pieces one larger, as
        `numpy.array_split`), and each piece sorted. Distributed: as `sample_groups`."""
        batches, starts, total = self._sample_batches()
        if not 1 <= n_parts <= total:
            raise LandscapeError(
                f"n_parts must be in [1, {total}] (the number of samples); got {n_parts}.")
        order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
        return [self._clone(data=gather_samples(batches, starts, piece.sort().values),
                            check_data=False)
                for piece in torch.tensor_split(order, n_parts)]

    # ------------------------------------------------------------------ internals: passes

    def _ggn_vp_sum(self, vs: list[Tensor], total: Tensor) -> int:
        """Add sum over this rank's batches of n_b G_b v into `total`; return the sample count."""
        n = 0
        for batch in self._data.batches():
            inputs, targets = unpack(batch)
            outputs = call_model(self.model, inputs)
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
            n_samples_fn=self.n_samples_fn, rebatch=self.rebatch,
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
            inputs, targets = unpack(batch)
            outputs = call_model(self.model, inputs)
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
            for batch in self._eval_batches():
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

    def _eval_plan(self) -> list[tuple[Any, Any, int, bool]] | None:
        """(inputs, targets, n samples, targets are class labels) per evaluation batch, for
        `_evaluate_plan`; None where the short path does not apply (a batch loss, a device
        without host sums, a distributed probe, a custom sample count)."""
        if (self.batch_loss is not None or not self._host_sums or self._comm.active
                or self.n_samples_fn is not None):
            return None
        plan = []
        for batch in self._eval_batches():
            inputs, targets = unpack(batch)
            labels = (isinstance(targets, Tensor) and targets.ndim == 1
                      and not targets.is_floating_point())
            plan.append((inputs, targets, self._batch_n_samples(batch), labels))
        return plan

    def _evaluate_plan(self, plan: list[tuple[Any, Any, int, bool]]) -> Evaluation:
        """`_evaluate_here` on a CPU, in one process, with `loss_fn`: the same sums with the
        batch checks done once (by the first point), so a small model's points cost little more
        than their forward passes."""
        model, loss_fn = self.model, self.loss_fn
        loss_sum, correct, n, has_acc = 0.0, 0, 0, True
        for inputs, targets, n_b, labels in plan:
            outputs = call_model(model, inputs)
            loss_sum += loss_fn(outputs, targets).item() * n_b
            if labels and isinstance(outputs, Tensor) and outputs.ndim == 2:
                correct += int((outputs.max(1).indices == targets).sum())
            else:
                has_acc = False
            n += n_b
        self._counts["n_batch_forward"] += len(plan)
        self._counts["n_forward"] += 1
        return Evaluation(loss_sum / n, correct / n if has_acc else None, n)

    def _eval_batches(self) -> Iterable[Any]:
        """The batches of a no-grad evaluation: the cache merged into large chunks (built once)
        when `rebatch` allows it, else the user's batches."""
        data = self._data
        if (not self.rebatch or self.batch_loss is not None or self.n_samples_fn is not None
                or data.cache is None or len(data.cache) < 2
                or 2 * data.local_bytes > data.cache_bytes):
            return data.batches()
        if data.chunks is None:
            largest = max(self._batch_n_samples(b) for b in data.cache)
            per_sample = self._activation_bytes() / max(largest, 1)
            budget = _EVAL_CHUNK_BYTES_CUDA if self.device.type == "cuda" else _EVAL_CHUNK_BYTES
            max_samples = max(largest, int(budget // max(per_sample, 1.0)))
            data.chunks = merge_batches(data.cache, max_samples, self._batch_n_samples) \
                or data.cache
        return data.chunks

    def _activation_bytes(self, evaluation: bool = False) -> int:
        """Sum of the leaf modules' output bytes for the largest cached batch (with
        `evaluation`, the largest batch of a no-grad evaluation, merged or not), in eval mode
        without gradients (what one inference of that batch keeps alive, at most)."""
        data = self._data
        if data.cache is None or not data.cache:
            return 2**62  # data streamed from the loader
        batches = list(self._eval_batches()) if evaluation else data.cache
        batch = max(batches, key=self._batch_n_samples)
        total = 0

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            nonlocal total
            if isinstance(out, Tensor):
                total += out.numel() * out.element_size()

        leaves = [m for m in self.model.modules() if not list(m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        modes = [(m, m.training) for m in self.model.modules()]
        try:
            self.model.eval()
            with torch.no_grad():
                self._compute_batch(batch)
            self._counts["n_batch_forward"] -= 1  # a measurement, not an evaluation
        finally:
            for h in handles:
                h.remove()
            for m, mode in modes:
                m.training = mode
        return total

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
            with recurrent_safe(self.model, self.device):
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
                        used += nbytes(batch)
                        if cache is not None:
                            if used <= data.cache_bytes:
                                cache.append(batch)
                            else:
                                cache = None
                except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
                    error = e
                n_local, n_batches_local = n, n_batches
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
        data.n_batches = n_batches_local
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
            inputs, targets = unpack(batch)
            first = first_tensor(targets)
            if first is None or first.ndim == 0:
                first = first_tensor(inputs)
        else:
            first = first_tensor(batch)
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


def _add_all(dst: Sequence[Tensor], src: Sequence[Tensor | None], alpha: float) -> None:
    """dst[i] += alpha * src[i] for the src that are not None, without a flat temporary."""
    pairs = [(d, t) for d, t in zip(dst, src) if t is not None]
    if pairs:
        torch._foreach_add_([d for d, _ in pairs], [t for _, t in pairs], alpha=alpha)


def _copy_all(dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
    """dst[i].copy_(src[i]) for all i, in one multi-tensor call where torch has it."""
    foreach = getattr(torch, "_foreach_copy_", None)
    if foreach is not None:
        foreach(list(dst), list(src))
    else:  # pragma: no cover - older torch
        for d, s in zip(dst, src):
            d.copy_(s)
