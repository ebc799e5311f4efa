"""`BatchPass`: the one internal interface between the `Probe` and the engines that pass over its
data (the Hessian-vector product engines of `hvp`, the point evaluation of `_points`, the vmap
path of `_batched`, the distributed helpers).

A `BatchPass` holds the model, the probed parameters, the loss, the data (`ProbeData`), the
process group (`Comm`) and the cost counters, and offers what a pass needs:

* `session(delta)`: the guard around every measurement: first use checks the data (non-empty,
  finite, deterministic), the model is put in eval mode and (optionally) its parameters moved
  to w + delta, and both are restored on exit, bitwise, even when an exception flies;
* `batches()` (the user's batches, cached on the device when they fit) and `eval_batches()`
  (for no-grad evaluations: the cache merged into large chunks when `rebatch` allows it);
* `compute(batch)`: (mean loss, number of samples, number correct or None) of one batch;
* `n_samples(batch)`, `split(flat)`, `flat(tensors)`, `check_vector(v, what)`;
* `comm.reduce(...)` for the sums, `counts` for the cost (`Meter` reads them).

Engines receive a `BatchPass` and nothing else of the Probe; the Probe's public methods are
built on it. Conventions as in `landscape.probe`.
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

from ._model_prep import ParamInfo, recurrent_safe
from .distributed import Comm
from .errors import LandscapeError
from .loss_reduction import check_mean_over_batch
from .probe_data import ProbeData, call_model, first_tensor, merge_batches, nbytes, unpack

# activations of one no-grad evaluation chunk (merged batches): larger chunks gain nothing on a
# CPU; on a GPU the caching allocator keeps them
EVAL_CHUNK_BYTES = 256 * 2**20
EVAL_CHUNK_BYTES_CUDA = 2 * 2**30


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

    def __init__(self, counts: dict[str, int]):
        self._counts = counts
        self._start = dict(counts)
        self._t0 = time.perf_counter()

    def cost(self) -> Cost:
        now = self._counts
        diff = {k: now[k] - self._start[k] for k in now}
        return Cost(**diff, seconds=time.perf_counter() - self._t0)


class LossModule(nn.Module):
    """Wraps model + loss so that `torch.func.functional_call` can swap the probed parameters
    (`model.*` names)."""

    def __init__(self, model: nn.Module, compute: Callable[[Any], tuple[Tensor, Any, Any]]):
        super().__init__()
        self.model = model
        self.compute = compute

    def forward(self, batch: Any) -> Tensor:
        return self.compute(batch)[0]


@dataclass
class BatchPass:
    """The model, probed parameters, loss and data of a Probe, and one pass's operations."""

    model: nn.Module
    params: list[nn.Parameter]
    param_names: list[str]
    param_info: list[ParamInfo]
    loss_fn: Callable[..., Tensor]
    batch_loss: Callable[[nn.Module, Any], Tensor] | None
    n_samples_fn: Callable[[Any], int] | None
    data: ProbeData
    comm: Comm
    check_data: bool = True
    rebatch: bool = True
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: {
        "n_forward": 0, "n_gradient": 0, "n_hvp": 0, "n_batch_forward": 0})
    total_samples: int | None = None  # over all ranks, known after the first pass

    def __post_init__(self) -> None:
        first = self.params[0]
        self.device: torch.device = first.device
        self.dtype: torch.dtype = first.dtype
        self.num_params = sum(p.numel() for p in self.params)
        # loss sums as Python floats on CPU (no sync to save, cheaper than tensor ops); on a
        # GPU as device tensors, with one host transfer per evaluation
        self.host_sums = self.device.type == "cpu"
        self.loss_module = LossModule(self.model, self.compute)

    # ------------------------------------------------------------------ batches

    def batches(self) -> Iterable[Any]:
        """This rank's batches, in order (the device cache when it was filled)."""
        return self.data.batches()

    def compute(self, batch: Any) -> tuple[Tensor, int, Tensor | None]:
        """(mean loss, n samples, n correct or None) of one batch at the current parameters."""
        self.counts["n_batch_forward"] += 1
        n_b = self.n_samples(batch)
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

    def n_samples(self, batch: Any) -> int:
        """The number of samples of one batch (`n_samples_fn`, else its first dimension)."""
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

    def eval_batches(self) -> Iterable[Any]:
        """The batches of a no-grad evaluation: the cache merged into large chunks (built once)
        when `rebatch` allows it, else the user's batches."""
        data = self.data
        if (not self.rebatch or self.batch_loss is not None or self.n_samples_fn is not None
                or data.cache is None or len(data.cache) < 2
                or 2 * data.local_bytes > data.cache_bytes):
            return data.batches()
        if data.chunks is None:
            largest = max(self.n_samples(b) for b in data.cache)
            per_sample = self.activation_bytes() / max(largest, 1)
            budget = EVAL_CHUNK_BYTES_CUDA if self.device.type == "cuda" else EVAL_CHUNK_BYTES
            max_samples = max(largest, int(budget // max(per_sample, 1.0)))
            data.chunks = merge_batches(data.cache, max_samples, self.n_samples) or data.cache
        return data.chunks

    def activation_bytes(self, evaluation: bool = False) -> int:
        """Sum of the leaf modules' output bytes for the largest cached batch (with
        `evaluation`, the largest batch of a no-grad evaluation, merged or not), in eval mode
        without gradients (what one inference of that batch keeps alive, at most)."""
        self.prepare()  # the cache is filled on first use (a sub-probe's, say)
        data = self.data
        if data.cache is None or not data.cache:
            return 2**62  # data streamed from the loader
        batches = list(self.eval_batches()) if evaluation else data.cache
        batch = max(batches, key=self.n_samples)
        total = 0

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            nonlocal total
            if isinstance(out, Tensor):
                total += out.numel() * out.element_size()

        leaves = [m for m in self.model.modules() if not list(m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            with _eval_mode(self.model), torch.no_grad():
                self.compute(batch)
            self.counts["n_batch_forward"] -= 1  # a measurement, not an evaluation
        finally:
            for h in handles:
                h.remove()
        return total

    def sample_batches(self) -> tuple[list[tuple[Any, int]], list[int], int]:
        """This rank's (batch, n samples), the global index of each batch's first sample, and
        the global number of samples."""
        self.prepare()
        out = [(b, self.n_samples(b)) for b in self.batches()]
        starts, total = self.comm.global_starts([n for _, n in out])
        return out, starts, total

    # ------------------------------------------------------------------ vectors

    def check_vector(self, v: Any, what: str) -> Tensor:
        """`v` as a flat detached vector on the device; raises unless it is a tensor of
        `num_params` entries in the parameters' dtype."""
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

    def check_out(self, out: Any, v: Tensor) -> Tensor:
        """`out` (to be written into) as a flat vector; raises unless it is a contiguous
        vector on the device, in the parameters' dtype, of `num_params` entries, and not v."""
        flat = self.check_vector(out, "out")
        if flat.data_ptr() == v.data_ptr() or flat.data_ptr() != out.data_ptr() \
                or not flat.is_contiguous():
            raise LandscapeError("probe.hvp: out must be a contiguous vector on the probe's "
                                 f"device ({self.device}), not v itself.")
        return flat

    def split(self, flat: Tensor) -> list[Tensor]:
        """Views of a flat vector shaped like the probed parameters."""
        return [flat[i.start : i.stop].view(i.shape) for i in self.param_info]

    def flat(self, tensors: Sequence[Tensor | None], out: Tensor | None = None) -> Tensor:
        """One flat vector from per-parameter tensors (None: zeros), written into `out` when
        given (a flat vector of num_params elements: no new vector is allocated)."""
        return torch.cat([
            (t if t is not None else torch.zeros_like(p)).reshape(-1)
            for t, p in zip(tensors, self.params)
        ], out=out)

    # ------------------------------------------------------------------ the guard

    @contextlib.contextmanager
    def session(self, delta: Tensor | None) -> Iterator[None]:
        """Eval mode and (optionally) parameters at w + delta; both restored on exit."""
        if delta is not None:
            delta = self.check_vector(delta, "delta")
        self.prepare()
        backup = None
        try:
            with _eval_mode(self.model):
                if delta is not None:
                    with torch.no_grad():
                        backup = [p.detach().clone() for p in self.params]
                        for p, d in zip(self.params, self.split(delta)):
                            p.add_(d)
                with recurrent_safe(self.model, self.device):
                    yield
        finally:
            if backup is not None:
                with torch.no_grad():
                    copy_all(self.params, backup)

    def prepare(self) -> None:
        """First use: fill the device cache, check the data is non-empty, finite, deterministic.

        Distributed: each rank passes over its own batches; the sums are all-reduced before
        every check, so all ranks agree and raise the same error.
        """
        data = self.data
        if data.checked:
            return
        with _eval_mode(self.model), torch.no_grad():
            cache, used, loss0, n, n_local, n_batches = self._first_pass()
            if self.check_data:
                self._second_pass(loss0, n)
        data.cache = cache
        data.checked = True
        data.n_local = n_local
        data.n_batches = n_batches
        data.local_bytes = used
        self.total_samples = n

    def _sums(self, batches: Iterable[Any], keep: list[Any] | None = None
              ) -> tuple[float, int, int, int, list[Any] | None, Exception | None]:
        """(loss sum, samples, batches, bytes, the batches kept within the cache budget or None,
        the error raised) over `batches`; the error is raised by the caller's reduce."""
        loss_sum, n, n_batches, used, error = 0.0, 0, 0, 0, None
        try:
            for batch in batches:
                if n_batches == 0 and keep is not None and self.batch_loss is None:
                    check_mean_over_batch(self.model, self.loss_fn, batch)  # first pass only
                loss, n_b, _ = self.compute(batch)
                loss_sum += float(loss.double()) * n_b
                n += n_b
                n_batches += 1
                used += nbytes(batch)
                if keep is not None:
                    if used <= self.data.cache_bytes:
                        keep.append(batch)
                    else:
                        keep = None
        except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
            error = e
        return loss_sum, n, n_batches, used, keep, error

    def _first_pass(self) -> tuple[list[Any] | None, int, float, int, int, int]:
        loss_sum, n_local, batches_local, used, cache, error = self._sums(self.data.raw(), [])
        loss_sum, n, n_batches = self.comm.reduce([loss_sum, n_local, batches_local],
                                                  error=error)
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
        return cache, used, loss0, n, n_local, batches_local

    def _second_pass(self, loss0: float, n: int) -> None:
        loss_sum2, n2, _, _, _, error = self._sums(self.data.raw())
        loss_sum2, n2 = self.comm.reduce([loss_sum2, n2], error=error)
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


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode; every submodule's own mode restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def add_all(dst: Sequence[Tensor], src: Sequence[Tensor | None], alpha: float) -> None:
    """dst[i] += alpha * src[i] for the src that are not None, without a flat temporary."""
    pairs = [(d, t) for d, t in zip(dst, src) if t is not None]
    if pairs:
        torch._foreach_add_([d for d, _ in pairs], [t for _, t in pairs], alpha=alpha)


def copy_all(dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
    """dst[i].copy_(src[i]) for all i, in one multi-tensor call where torch has it."""
    foreach = getattr(torch, "_foreach_copy_", None)
    if foreach is not None:
        foreach(list(dst), list(src))
    else:  # pragma: no cover - older torch
        for d, s in zip(dst, src):
            d.copy_(s)
