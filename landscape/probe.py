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
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import _points
from ._model_prep import (
    ParamInfo,
    ParamSelection,
    check_placement,
    prepare_model,
    select_params,
    twice_differentiable,
)
from ._validate import OneOf
from .batch_pass import BatchPass, Cost, Evaluation, Meter, add_all
from .distributed import Comm, full_source, resolve_comm
from .errors import LandscapeError
from .hvp import HvpEngine, ggn_product_sum
from .hvp_choice import PRODUCT_METHODS, HvpCheck, Products
from .loss_reduction import check_reduction
from .probe_data import ProbeData, default_budget, gather_samples
from .scipy_operator import linear_operator
from .wrapped import is_fsdp2, refuse_dtensors, sharded_probe_class

__all__ = ["BatchLossFn", "Cost", "Evaluation", "LossFn", "Meter", "ParamInfo", "ParamSelection",
           "Probe"]

LossFn = Callable[[Any, Any], Tensor]
BatchLossFn = Callable[[nn.Module, Any], Tensor]

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
        params: which parameters to probe: None (all trainable ones), a list of names, module
            prefixes (`"fc1"` selects `fc1.weight` and `fc1.bias`) or glob patterns matched
            with `fnmatch` against the full names (`"h.*.attn.*"`; a pattern matching nothing
            is an error naming the closest names), or a predicate `(name, parameter) -> bool`.
            Frozen parameters (`requires_grad=False`) are left out.
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
            (from scratch, one batch of activations), "forward_over_reverse" (`torch.func`) or
            "finite_difference" (central difference of two gradients, for models without a
            usable double backward; `landscape.hvp_fd` states its step and error). "auto" falls
            back to "finite_difference", with a warning, when double backward raises or fails
            the self-check (`landscape.hvp_choice`).
        check_hvp: under "auto", check the first exact product against the finite difference
            on one random vector (one product and 2 gradients, on first use) and switch to
            finite differences, with a warning, when they disagree beyond its error bound
            (double backward silently wrong, as through a `once_differentiable` function).
            The outcome is `probe.hvp_check`.
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

    def __new__(cls, model: Any = None, *args: Any, **kwargs: Any) -> Probe:
        """An FSDP2 model gets a `landscape.sharded.ShardedProbe` (measured sharded)."""
        return super().__new__(sharded_probe_class() if cls is Probe and is_fsdp2(model) else cls)

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
        check_hvp: bool = True,
    ):
        if not isinstance(model, nn.Module):
            raise LandscapeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
        model = prepare_model(model, dtype)  # torch.compile unwrapped; a copy in `dtype` if asked
        OneOf(PRODUCT_METHODS)("hvp_method", hvp_method)
        if batch_size < 1:
            raise LandscapeError(f"batch_size must be positive; got {batch_size}.")
        self.model = model
        self.loss_fn = loss_fn if loss_fn is not None else nn.functional.cross_entropy
        if batch_loss is None:
            check_reduction(self.loss_fn)
        self.batch_loss = batch_loss
        self.n_samples_fn = n_samples_fn
        self.check_data = check_data
        if not isinstance(rebatch, bool):
            raise LandscapeError(f"rebatch must be True or False; got {rebatch!r}.")
        self.rebatch = rebatch
        self.hvp_method = hvp_method
        self.check_hvp = bool(check_hvp)
        self._selection = params

        named = select_params(model, params)
        self.param_names: list[str] = [n for n, _ in named]
        self.params: list[nn.Parameter] = self._measured(named)
        self.param_info: list[ParamInfo] = []
        start = 0
        for name, p in zip(self.param_names, self.params):
            self.param_info.append(ParamInfo(name, tuple(p.shape), start, start + p.numel()))
            start += p.numel()
        self.num_params: int = start

        self.device, self.dtype = check_placement(self.params, device)
        budget = cache_bytes if cache_bytes is not None else default_budget(self.device)
        self.graph_bytes = graph_bytes if graph_bytes is not None else budget
        comm = resolve_comm(distributed, self.device)
        data = ProbeData(data, batch_size, self.device, self.dtype, budget, comm,
                         pairs=batch_loss is None)
        #: The internal interface of the engines that pass over the data (`landscape.batch_pass`).
        self.batch_pass = BatchPass(
            model, self.params, self.param_names, self.param_info, self.loss_fn, batch_loss,
            n_samples_fn, data, comm, check_data=check_data, rebatch=rebatch)
        self._hvp = HvpEngine(self.batch_pass, hvp_method, self.graph_bytes)
        #: Internal: which Hessian-vector product is used (`landscape.hvp_choice`).
        self.products = Products(self.batch_pass, self._hvp, hvp_method, self.check_hvp)

    def _measured(self, named: list[tuple[str, nn.Parameter]]) -> list[nn.Parameter]:
        """The tensors the probe's flat vectors follow (`landscape.sharded`: local shards)."""
        refuse_dtensors(named)
        return [p for _, p in named]

    # ------------------------------------------------------------------ public: structure

    @property
    def n_samples(self) -> int:
        """Number of samples in the data, over all ranks (known after the first pass)."""
        self.batch_pass.prepare()
        assert self.batch_pass.total_samples is not None
        return self.batch_pass.total_samples

    @property
    def world_size(self) -> int:
        """Number of ranks sharing the data (1 when not distributed)."""
        return self.batch_pass.comm.world_size

    @property
    def rank(self) -> int:
        """This process's rank in the probe's process group (0 when not distributed)."""
        return self.batch_pass.comm.rank

    @property
    def is_distributed(self) -> bool:
        """True when the batches are sharded and the sums all-reduced over a process group."""
        return self.batch_pass.comm.active

    @property
    def hvp_method_used(self) -> str | None:
        """The HVP method picked by "auto" (None before the first HVP)."""
        if self.products.use_fd:
            return "finite_difference"
        return self._hvp.chosen if self.hvp_method == "auto" else self.hvp_method

    @property
    def hvp_check(self) -> HvpCheck | None:
        """The self-check of the first product under "auto" (None when it did not run)."""
        return self.products.check

    def flat_params(self) -> Tensor:
        """A detached copy of the probed parameters as one flat vector (the point w)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params]).clone()

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split a flat vector into views shaped like the probed parameters, keyed by name."""
        flat = self.batch_pass.check_vector(flat, "vector")
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
        selected = select_params(self.model, params)
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
        return Meter(self.batch_pass.counts)

    # ------------------------------------------------------------------ public: measurements

    def loss(self, delta: Tensor | None = None) -> float:
        """L(w + delta): the sample-weighted mean loss over all data (delta None: at w).

        A non-finite loss at a displaced point is returned as is (NaN or inf), not raised.
        """
        return self.evaluate(delta).loss

    def evaluate(self, delta: Tensor | None = None) -> Evaluation:
        """Loss and (for classification) accuracy at w + delta, in one pass over the data."""
        with self.batch_pass.session(delta), torch.inference_mode():
            return _points.evaluate_here(self.batch_pass)

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
        return _points.evaluate_points(self.batch_pass, directions, coords, offset, buffer_ends,
                                     recompute_batchnorm, batchnorm_inputs)

    def gradient(self, delta: Tensor | None = None) -> Tensor:
        """grad L(w + delta) as a flat vector (zeros for parameters that do not reach the loss)."""
        return self.loss_and_gradient(delta)[1]

    def loss_and_gradient(self, delta: Tensor | None = None) -> tuple[float, Tensor]:
        """(L(w + delta), grad L(w + delta)) from one forward and backward pass over the data."""
        with self.batch_pass.session(delta):
            total = torch.zeros(self.num_params, device=self.device, dtype=self.dtype)
            views = self.batch_pass.split(total)
            loss_sum, n, error = 0.0, 0, None
            try:
                for batch in self.batch_pass.data.batches():
                    loss, n_b, grads = self.products.fd.gradients.batch(batch)
                    add_all(views, grads, n_b)
                    loss_sum, n = loss_sum + float(loss.detach()) * n_b, n + n_b
                    del grads  # not alive during the next batch's: one vector less at the peak
            except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
                error = e
            loss_sum, n = self.batch_pass.comm.reduce([loss_sum, n], [total], error)
            self.batch_pass.counts["n_gradient"] += 1
            return loss_sum / n, total.div_(n)

    def hvp(self, v: Tensor, delta: Tensor | None = None, *, out: Tensor | None = None) -> Tensor:
        """H v with H the Hessian of L at w + delta (exact; flat vector in, flat vector out).

        At w the method is chosen on first use (`hvp_method="auto"`): the gradient graph is kept
        and reused when all batches' graphs fit `graph_bytes` (measured with saved-tensor hooks),
        otherwise the faster of double backward and forward-over-reverse, timed on one batch.
        `out`: a contiguous flat vector (not v) to write H v into (no new vector allocated).
        """
        v = self.batch_pass.check_vector(v, "v")
        out = None if out is None else self.batch_pass.check_out(out, v)
        with self.batch_pass.session(delta):
            result = self.products.hvp(v, at_checkpoint=delta is None, out=out)
            self.batch_pass.counts["n_hvp"] += 1
            same = out is None or result.data_ptr() == out.data_ptr()
            return result if same else out.copy_(result)

    def gradient_and_hvp(
        self, v: Tensor | None = None, delta: Tensor | None = None
    ) -> tuple[float, Tensor, Tensor]:
        """(L, g, H v) at w + delta in one double-backward pass; `v=None` means v = g.

        The step of first-order flatness (the gradient of ||g|| is H g / ||g||) needs exactly this.
        """
        if v is not None:
            v = self.batch_pass.check_vector(v, "v")
        with self.batch_pass.session(delta):
            self.products.settle(at_checkpoint=delta is None)
        if self.products.use_fd:  # one gradient, then the product by finite differences
            loss, g = self.loss_and_gradient(delta)
            return loss, g, self.hvp(g if v is None else v, delta)
        with self.batch_pass.session(delta), twice_differentiable():
            return self._hvp.gradient_and_product(v)

    def ggn_vp(self, v: Tensor, delta: Tensor | None = None) -> Tensor:
        """G v with G = mean over samples of J^T H_out J, the generalized Gauss-Newton matrix.

        J is the Jacobian of the model outputs with respect to the probed parameters, H_out the
        Hessian of the loss with respect to the outputs. G is positive semi-definite for convex
        losses (cross-entropy, MSE). Needs `(inputs, targets)` batches and `loss_fn`.
        """
        v = self.batch_pass.check_vector(v, "v")
        if self.batch_loss is not None:
            raise LandscapeError(
                "the Gauss-Newton matrix needs the model outputs and loss_fn separately; it is not "
                "available with batch_loss=. Use curvature='hessian' instead."
            )
        with self.batch_pass.session(delta):
            self.products.settle(at_checkpoint=delta is None)
        fd = self.products.use_fd
        exact = contextlib.nullcontext() if fd else twice_differentiable()
        with self.batch_pass.session(delta), exact:
            total = torch.zeros_like(v)
            n, error = 0, None
            try:
                if fd:
                    n = self.products.fd.ggn_sum(self.batch_pass.split(v), total)
                else:
                    n = ggn_product_sum(self.batch_pass, self.batch_pass.split(v), total)
            except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
                error = e
            (n,) = self.batch_pass.comm.reduce([n], [total], error)
            self.batch_pass.counts["n_hvp"] += 1
            return total.div_(n)

    def hessian_operator(self, curvature: str = "hessian"):
        """The Hessian (or GGN, `curvature="ggn"`) at w as a `scipy.sparse.linalg.LinearOperator`
        on float64 numpy vectors (`scipy.sparse.linalg.eigsh(op, k=3)` just works); each matvec
        costs one product on the probe's device (`landscape.scipy_operator`)."""
        return linear_operator(self, curvature)

    @contextlib.contextmanager
    def perturbed(self, delta: Tensor) -> Iterator[Probe]:
        """Within the block the model's parameters are w + delta (in eval mode); restored after.

        For code that must call the model itself (a custom metric). Probe methods called inside
        measure at the displaced point.
        """
        with self.batch_pass.session(self.batch_pass.check_vector(delta, "delta")):
            yield self

    def subset(self, n_samples: int, seed: int = 0) -> Probe:
        """A probe over `n_samples` samples drawn without replacement (a fixed subset).

        Distributed: the samples are drawn by global index (the same on every rank and as in one
        process); each rank keeps those in its own batches, and the sub-probe reduces as this one.
        """
        total = self.n_samples
        if not 1 <= n_samples <= total:
            raise LandscapeError(f"n_samples must be in [1, {total}]; got {n_samples}.")
        order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
        return self.sample_parts([order[:n_samples].sort().values])[0]

    def sample_groups(self, m: int) -> list[Probe]:
        """Probes over consecutive groups of `m` samples (the last may be smaller), for m-sharpness.

        Distributed: groups follow the global sample order; each group's probe spans the ranks
        (a rank holding none of its samples contributes zero to the sums), so every rank gets
        the same list of probes with the same values.
        """
        total = self.n_samples
        if not 1 <= m <= total:
            raise LandscapeError(f"m must be in [1, {total}] (the number of samples); got {m}.")
        return self.sample_parts([torch.arange(s, min(s + m, total)) for s in range(0, total, m)])

    def sample_parts(self, parts: Sequence[Tensor]) -> list[Probe]:
        """Probes over parts of the samples, each a sorted tensor of global sample indices."""
        b, starts, _ = self.batch_pass.sample_batches()
        return [self._clone(data=gather_samples(b, starts, i), check_data=False) for i in parts]

    def _clone(self, **overrides: Any) -> Probe:
        kwargs = dict(
            loss_fn=self.loss_fn, batch_loss=self.batch_loss, params=self.param_names,
            check_data=self.check_data, cache_bytes=self.batch_pass.data.cache_bytes,
            hvp_method=self.hvp_method, graph_bytes=self.graph_bytes,
            n_samples_fn=self.n_samples_fn, rebatch=self.rebatch, check_hvp=self.check_hvp,
        )
        data = overrides.pop("data", None)
        kwargs.update(overrides)
        # Gathered data is already this rank's share: no sharding, but the same process group.
        new = Probe(self.model, [] if data is None else data, distributed=False, **kwargs)
        new.batch_pass.comm = self.batch_pass.comm
        new.products.inherit(self.products)
        if data is not None and self.batch_pass.comm.active:
            new.batch_pass.data.given = None  # this rank's share of the samples, not all of them
        if data is None:  # share the data and the result of its checks
            self.batch_pass.prepare()
            new.batch_pass.data = self.batch_pass.data
            new.batch_pass.total_samples = self.batch_pass.total_samples
        return new

    # ------------------------------------------------------------------ internals: distributed

    def alone(self) -> Probe | None:
        """Internal (the grid engine's rank split): this rank alone over ALL the data (no
        reductions, the single-process batch order), sharing the model and the cost counters;
        the probe itself when not distributed; None when this rank cannot see all the data (a
        `DistributedSampler` loader, or a sub-probe over gathered samples). Kept for reuse.
        For work split by other means than the data (the points of a surface): every rank must
        call it (the data check is collective)."""
        if not self.batch_pass.comm.active:
            return self
        twin = getattr(self, "_alone_probe", None)
        if twin is None:
            self.batch_pass.prepare()
            given = self.batch_pass.data.given
            full = None if given is None else full_source(given, self.batch_pass.comm)
            if full is None:
                return None
            twin = self._clone(data=full, check_data=False)
            twin.batch_pass.comm = Comm(False, None, self.device)
            twin.batch_pass.counts = self.batch_pass.counts
            self._alone_probe = twin
        return twin

