"""Intrinsic dimension of an objective landscape (Li et al. 2018): training in random subspaces.

The network's n parameters are restricted to a random affine subspace of dimension d,

    w = w0 + P theta,    theta in R^d (starts at 0),  P in R^(n x d) fixed and random,

and only theta is trained. The intrinsic dimension d_int90 is the smallest d (of those tried)
whose trained subspace reaches 90% of the full model's performance:

* metric "accuracy": accuracy_d >= 0.9 * accuracy_full (Li et al.'s definition);
* metric "loss" (regression, no accuracy): the loss recovers 90% of the full model's decrease,
  loss_d <= loss_0 - 0.9 (loss_0 - loss_full), with loss_0 the loss at w0.

Performance is measured on `eval_data` after `epochs` passes over `train_data`. The full model's
performance (the baseline) is the same training with P = I (all n parameters), unless given.

Projections (the columns of P have unit l2 norm, so ||P theta|| ~ ||theta|| for d << n):

* "dense": i.i.d. Gaussian entries, columns normalized. Memory n d.
* "sparse": very sparse random projection (Li, Hastie, Church 2006, as Li et al. 2018 use for
  large n): entries +1 or -1 with probability 1 / (2 sqrt(n)) each, else 0, columns normalized.
  Memory about d sqrt(n) nonzeros. Generated in column chunks (at most 2^22 dense entries at a
  time).
* "auto": dense while n d <= 2^25 entries, else sparse.

P is drawn from `torch.Generator`s seeded from `seed` (per block of columns, so P for d is the
first d columns of P for any larger d: the subspaces are nested and each d is reproducible
alone), and the mini-batch order from another generator seeded with `seed`. The user's model is
never modified: training goes through `torch.func.functional_call` with the parameters
w0 + P theta and copies of the buffers (BatchNorm statistics update the copies).

References:
    Li, Farkhoor, Liu, Yosinski, Measuring the Intrinsic Dimension of Objective Landscapes
    (ICLR 2018).
    Li, Hastie, Church, Very Sparse Random Projections (KDD 2006).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from ._results import to_jsonable
from ._validate import OneOf, validate_params
from .errors import LandscapeError

PROJECTIONS = ("auto", "dense", "sparse")
METRICS = ("accuracy", "loss")
OPTIMIZERS = ("adam", "sgd")
DENSE_MAX_ENTRIES = 2**25  # "auto" switches to the sparse projection above this many entries
CHUNK_ENTRIES = 2**22  # dense entries generated at a time
COLUMN_BLOCK = 64  # columns drawn from one generator

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class IntrinsicDimResult:
    """Performance after training in random subspaces of increasing dimension d.

    Attributes:
        dims: the subspace dimensions d, ascending.
        loss: evaluation loss after training in each subspace (mean over the eval samples).
        accuracy: evaluation accuracy for each d (None when the task has no accuracy).
        projection: the projection used for each d ("dense" or "sparse").
        metric: "accuracy" or "loss"; threshold: the fraction of performance to reach (0.9).
        target: the performance that counts as reached: threshold * baseline (accuracy), or
            initial_loss - threshold (initial_loss - baseline) (loss).
        d_int90: the smallest d in `dims` reaching `target` (named after the default
            threshold 0.9); None when none does (try larger d).
        baseline: the full model's performance on `metric`; baseline_given: True when passed
            in, else measured by training all parameters with the same settings.
        baseline_loss, baseline_accuracy: the measured full model's loss and accuracy (None
            when the baseline was given).
        initial_loss, initial_accuracy: at w0 (theta = 0).
        n_params: n, the number of trained parameters.
        seed: the seed of the projections and the batch order.
        settings: epochs, lr, optimizer, momentum, batch_size.
        seconds: wall-clock time in all; seconds_per_dim: for each d (baseline excluded).
    """

    dims: list[int]
    loss: list[float]
    accuracy: list[float] | None
    projection: list[str]
    metric: str
    threshold: float
    target: float
    d_int90: int | None
    baseline: float
    baseline_given: bool
    baseline_loss: float | None
    baseline_accuracy: float | None
    initial_loss: float
    initial_accuracy: float | None
    n_params: int
    seed: int
    settings: dict[str, Any]
    seconds: float
    seconds_per_dim: list[float]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


@validate_params(projection=OneOf(PROJECTIONS), metric=OneOf(METRICS),
                 optimizer=OneOf(OPTIMIZERS))
def intrinsic_dimension(
    model_fn: nn.Module | Callable[[], nn.Module],
    train_data: Any,
    eval_data: Any,
    dims: Sequence[int],
    *,
    epochs: int = 10,
    lr: float = 0.01,
    seed: int = 0,
    baseline: float | None = None,
    loss_fn: LossFn | None = None,
    optimizer: str = "adam",
    momentum: float = 0.0,
    batch_size: int = 128,
    projection: str = "auto",
    metric: str = "accuracy",
    threshold: float = 0.9,
    progress: bool = False,
) -> IntrinsicDimResult:
    """Train in random d-dimensional subspaces w = w0 + P theta and find d_int90.

    See the module docstring for the formulas and the projections (Li et al. 2018).

    Args:
        model_fn: the network at its initialization w0, or a function returning it. It is
            never modified (training uses `torch.func.functional_call`); all its trainable
            parameters are in w.
        train_data: an `(inputs, targets)` tensor pair (shuffled into batches of `batch_size`
            each epoch, seeded) or any re-iterable of `(inputs, targets)` batches (a
            `DataLoader`, a list), used as it comes.
        eval_data: the same forms; performance is measured on it (eval mode).
        dims: subspace dimensions to try, each between 1 and n.
        epochs: passes over `train_data` for each d (and for the baseline).
        lr: learning rate of the optimizer on theta (and on w for the baseline).
        seed: seed of the projections and of the batch order.
        baseline: the full model's performance on `metric` (an accuracy, or a loss); None
            means measure it by training all n parameters with the same settings.
        loss_fn: `loss_fn(outputs, targets)`, the mean over the batch; None: cross-entropy.
        optimizer: "adam" or "sgd".
        momentum: heavy-ball momentum of "sgd" (0: plain gradient descent).
        batch_size: batch size for a tensor pair.
        projection: "auto", "dense" or "sparse".
        metric: "accuracy" (classification) or "loss".
        threshold: fraction of the baseline performance that counts as reached, in (0, 1].
        progress: show a progress bar over the dims.

    Returns:
        `IntrinsicDimResult` with the curve (loss, accuracy per d) and d_int90.

    Raises:
        LandscapeError: bad options, dims out of range, metric "accuracy" without accuracy.

    Example:
        >>> import torch
        >>> x = 3 * torch.eye(4, 9, dtype=torch.float64)    # 4 independent constraints
        >>> y = torch.ones(4, 1, dtype=torch.float64)
        >>> model = torch.nn.Linear(9, 1, bias=False).double()
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> res = intrinsic_dimension(model, (x, y), (x, y), [2, 8], epochs=300, lr=0.05,
        ...                           momentum=0.8, loss_fn=torch.nn.functional.mse_loss,
        ...                           metric="loss", optimizer="sgd", baseline=0.0)
        >>> res.loss[0] > 1e-2, res.loss[1] < 1e-6
        (True, True)
    """
    start = time.perf_counter()
    if epochs < 1:
        raise LandscapeError(f"epochs must be at least 1; got {epochs}.")
    if not lr > 0:
        raise LandscapeError(f"lr must be positive; got {lr}.")
    if not 0 < threshold <= 1:
        raise LandscapeError(f"threshold must be in (0, 1]; got {threshold}.")
    if not 0 <= momentum < 1:
        raise LandscapeError(f"momentum must be in [0, 1); got {momentum}.")
    if batch_size < 1:
        raise LandscapeError(f"batch_size must be positive; got {batch_size}.")
    model = model_fn if isinstance(model_fn, nn.Module) else model_fn()
    if not isinstance(model, nn.Module):
        raise LandscapeError("model_fn must be an nn.Module or a function returning one.")
    space = _Subspace(model, loss_fn or nn.functional.cross_entropy)
    n = space.n
    dims = sorted({int(d) for d in dims})
    if not dims or dims[0] < 1 or dims[-1] > n:
        raise LandscapeError(
            f"dims must be integers between 1 and the number of parameters n={n}; got {dims}."
        )
    train_batches = _Batches(train_data, batch_size, seed, space.device, space.dtype)
    eval_batches = _Batches(eval_data, batch_size, None, space.device, space.dtype)
    settings = dict(epochs=epochs, lr=lr, optimizer=optimizer, momentum=momentum,
                    batch_size=batch_size)

    def run(apply: Callable[[Tensor], Tensor], d: int) -> tuple[float, float | None]:
        w, buffers = space.train(apply, d, train_batches, epochs, lr, optimizer, momentum, seed)
        return space.evaluate(w, buffers, eval_batches)

    initial_loss, initial_acc = space.evaluate(space.w0, space.buffers0, eval_batches)
    if metric == "accuracy" and initial_acc is None:
        raise LandscapeError(
            "metric='accuracy' needs classification outputs (N, classes) and integer targets "
            "(N,); use metric='loss' for other tasks."
        )
    baseline_loss = baseline_acc = None
    if baseline is None:
        baseline_loss, baseline_acc = run(lambda t: t, n)
        baseline = baseline_acc if metric == "accuracy" else baseline_loss
    if metric == "accuracy":
        target = threshold * baseline
    else:
        target = initial_loss - threshold * (initial_loss - baseline)

    losses, accs, kinds, seconds = [], [], [], []
    for d in tqdm(dims, disable=not progress, desc="intrinsic dimension"):
        t0 = time.perf_counter()
        kind = projection if projection != "auto" else (
            "dense" if n * d <= DENSE_MAX_ENTRIES else "sparse")
        P = random_projection(n, d, kind=kind, seed=seed, dtype=space.dtype, device=space.device)
        if kind == "dense":
            loss, acc = run(lambda t, P=P: P @ t, d)
        else:
            loss, acc = run(lambda t, P=P: torch.sparse.mm(P, t[:, None])[:, 0], d)
        losses.append(loss)
        accs.append(acc)
        kinds.append(kind)
        seconds.append(time.perf_counter() - t0)

    reached = [a >= target for a in accs] if metric == "accuracy" else [
        loss <= target for loss in losses]
    d_int = next((d for d, ok in zip(dims, reached) if ok), None)
    return IntrinsicDimResult(
        dims=dims, loss=losses, accuracy=None if initial_acc is None else accs,
        projection=kinds, metric=metric, threshold=threshold, target=float(target),
        d_int90=d_int, baseline=float(baseline), baseline_given=baseline_loss is None,
        baseline_loss=baseline_loss, baseline_accuracy=baseline_acc, initial_loss=initial_loss,
        initial_accuracy=initial_acc, n_params=n, seed=seed, settings=settings,
        seconds=time.perf_counter() - start, seconds_per_dim=seconds,
    )


def random_projection(n: int, d: int, *, kind: str = "dense", seed: int = 0,
                      dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> Tensor:
    """A random n x d projection with unit-norm columns ("dense" Gaussian or "sparse").

    Sparse: entries +-1 with probability 1 / (2 sqrt(n)) each (Li, Hastie, Church 2006),
    returned as a sparse COO tensor; a column that happens to be all zero stays zero. Generated
    in blocks of at most 64 columns (and 2^22 dense entries), each from its own generator seeded
    from (`seed`, block index), so the first d columns do not depend on how many more are drawn:
    the subspaces for increasing d are nested.
    """
    if kind not in ("dense", "sparse"):
        raise LandscapeError(f"kind must be 'dense' or 'sparse'; got {kind!r}.")
    width = max(1, min(COLUMN_BLOCK, CHUNK_ENTRIES // max(n, 1)))
    parts = []
    for b in range(math.ceil(d / width)):
        # each block of columns has its own generator: P for d is the first d columns of P for
        # any larger d (nested subspaces), whatever the chunking
        gen = torch.Generator().manual_seed(hash((seed, b)) & (2**63 - 1))
        c = min(width, d - b * width)
        if kind == "dense":
            block = torch.randn(n, width, generator=gen, dtype=torch.float64)[:, :c]
        else:
            s = math.sqrt(n)
            u = torch.rand(n, width, generator=gen, dtype=torch.float64)[:, :c]
            block = (u < 0.5 / s).double() - (u > 1 - 0.5 / s).double()
        block = block / block.norm(dim=0).clamp_min(1e-300)
        block = block.to(dtype=dtype, device=device)
        parts.append(block if kind == "dense" else block.to_sparse())
    return torch.cat(parts, dim=1).coalesce() if kind == "sparse" else torch.cat(parts, dim=1)


class _Batches:
    """Re-iterable batches: a tensor pair (shuffled each epoch when seeded) or the user's."""

    def __init__(self, data: Any, batch_size: int, seed: int | None, device: torch.device,
                 dtype: torch.dtype):
        self.pair = (isinstance(data, (tuple, list)) and len(data) == 2
                     and all(isinstance(t, Tensor) for t in data))
        if self.pair and len(data[0]) != len(data[1]):
            raise LandscapeError(
                f"inputs and targets differ in length ({len(data[0])} vs {len(data[1])})."
            )
        self.data, self.batch_size, self.device, self.dtype = data, batch_size, device, dtype
        self.gen = None if seed is None else torch.Generator().manual_seed(seed)

    def reset(self, seed: int) -> None:
        if self.gen is not None:
            self.gen.manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.pair:
            inputs, targets = self.data
            order = (torch.arange(len(inputs)) if self.gen is None
                     else torch.randperm(len(inputs), generator=self.gen))
            batches: Iterable = ((inputs[i], targets[i]) for i in order.split(self.batch_size))
        else:
            batches = self.data
        for batch in batches:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise LandscapeError("each batch must be an (inputs, targets) pair.")
            x, y = (t.to(self.device, self.dtype if t.is_floating_point() else t.dtype)
                    for t in batch)
            yield x, y


class _Subspace:
    """The model's trainable parameters as one flat vector w0, trained through functional_call."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise LandscapeError("the model has no trainable parameters.")
        self.model, self.loss_fn = model, loss_fn
        self.names = [k for k, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.w0 = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()
        self.n = self.w0.numel()
        self.dtype, self.device = self.w0.dtype, self.w0.device
        self.buffers0 = {k: b.detach().clone() for k, b in model.named_buffers()}

    def _call(self, w: Tensor, buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        params = {k: t.view(s) for k, t, s in zip(self.names, w.split(self.sizes), self.shapes)}
        return functional_call(self.model, {**params, **buffers}, (x,))

    def train(self, apply: Callable[[Tensor], Tensor], d: int, batches: _Batches, epochs: int,
              lr: float, optimizer: str, momentum: float,
              seed: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Train theta in R^d from 0; return w0 + apply(theta) and the updated buffer copies."""
        theta = torch.zeros(d, dtype=self.dtype, device=self.device, requires_grad=True)
        opt = (torch.optim.Adam([theta], lr=lr) if optimizer == "adam"
               else torch.optim.SGD([theta], lr=lr, momentum=momentum))
        buffers = {k: b.clone() for k, b in self.buffers0.items()}
        batches.reset(seed)
        with _mode(self.model, True), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout, inside the forked RNG only
            for _ in range(epochs):
                for x, y in batches:
                    opt.zero_grad(set_to_none=True)
                    loss = self.loss_fn(self._call(self.w0 + apply(theta), buffers, x), y)
                    loss.backward()
                    opt.step()
        with torch.no_grad():
            return self.w0 + apply(theta.detach()), buffers

    @torch.no_grad()
    def evaluate(self, w: Tensor, buffers: dict[str, Tensor],
                 batches: _Batches) -> tuple[float, float | None]:
        """(mean loss, accuracy or None) over all samples, each batch weighted by its size."""
        loss_sum, correct, n, has_acc = 0.0, 0, 0, True
        with _mode(self.model, False):
            for x, y in batches:
                out = self._call(w, buffers, x)
                n_b = len(y)
                loss_sum += float(self.loss_fn(out, y)) * n_b
                n += n_b
                if out.ndim == 2 and y.ndim == 1 and not y.is_floating_point():
                    correct += int((out.argmax(1) == y).sum())
                else:
                    has_acc = False
        if n == 0:
            raise LandscapeError("eval_data is empty.")
        return loss_sum / n, (correct / n if has_acc else None)


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Every module in train (or eval) mode inside the block; the original modes restored."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.train(training)
        yield
    finally:
        for m, mode in modes:
            m.training = mode
