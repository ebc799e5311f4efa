"""`CurvatureMonitor`: curvature measured every few steps of a training loop, logged live."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_int, check_positive
from ..distributed import resolve_comm
from ..errors import LandscapeError
from ..measures.registry import MONITOR_REGISTRY
from ..probe import Probe
from .guard import rng_untouched, untouched
from .loggers import make_loggers
from .measures import MeasureContext, Settings
from .optimizers import unwrap

DEFAULT_MEASURES = ("top_eigenvalue", "eos_ratio", "gradient_norm")


class CurvatureMonitor:
    """Measure the loss curvature every `every` steps of training and log it.

    Call `monitor.step(step)` after each optimizer step; at steps divisible by `every` it
    measures on the fixed measurement set `data` (never the training batches, so the numbers
    of different steps compare) and returns the row, else returns None at no cost. Cheap by
    default: a scheduled measurement is skipped (and listed in `skipped`) when it would take
    the time spent measuring above `budget` (5%) of the training time so far, counting the
    next measurement as long as the last; `budget=None` measures at every scheduled step. The
    measures are defined in `landscape.monitor.measures` (top Hessian eigenvalue by Lanczos
    warm-started from the previous top eigenvector, Hutch++ trace, gradient norm, loss, the
    edge-of-stability ratio, Adam's preconditioned sharpness, the curvature along the last
    update).

    Training is left exactly as it was: parameters, buffers, `.grad`, train/eval modes, the
    optimizer state and every random number generator (torch CPU and CUDA, numpy, `random`)
    are the same after a measurement as before, so a run with the monitor gives bitwise the
    same weights as one without.

    Args:
        model: the network being trained (measured in eval mode, its mode restored).
        data: the fixed measurement set: an `(inputs, targets)` pair of tensors, a list of
            batches, or a `DataLoader`, which is drawn once here (with the RNGs restored after)
            and its batches kept. A one-shot iterator (the training iterator) is refused.
        loss_fn: `loss_fn(outputs, targets)`, the mean over a batch (default cross-entropy).
        batch_loss: `batch_loss(model, batch) -> mean loss`, for dict batches or models that
            compute their own loss (replaces `loss_fn`).
        every: measure when `step % every == 0`.
        measures: names in the shared registry's `landscape.measures.MONITOR_REGISTRY` (also
            `landscape.monitor.MEASURES`). The default's "eos_ratio" is left out
            when `optimizer` is None; asked for explicitly it needs an optimizer.
        optimizer: the training optimizer (read only): lr and momentum for "eos_ratio", Adam's
            state for "preconditioned_sharpness", its steps for "update_curvature". A measure
            the optimizer does not support raises here, not at step 5,000.
        log_dir: folder of `curvature.jsonl` (rows appended) and of the "csv" and
            "tensorboard" loggers. None: rows are only returned and kept in `rows`.
        loggers: any of "jsonl", "csv", "tensorboard" (a `SummaryWriter` on `log_dir`, or pass
            your own writer), "wandb" (the active run), or callables `fn(scalars, step)`.
            Loggers other than the files get the values as `curvature/<key>`. Distributed,
            only rank 0 logs to files, TensorBoard and wandb; callables run on every rank.
        seed: seeds the random start vectors (Lanczos' first one, Hutch++'s).
        tol: relative residual tolerance of Lanczos.
        max_iter: most Hessian-vector products of one Lanczos run.
        n_hvp: products of the Hutch++ trace.
        max_basis: Lanczos basis size before a restart (memory: max_basis + 1 parameter-sized
            vectors during a measurement, plus one kept per warm-started measure between them).
        budget: the most time spent measuring, as a fraction of the training time (wall clock
            between `step()` calls outside measurements); None: no limit, every scheduled
            step is measured. The first scheduled step always is.
        probe_options: more keyword arguments of `landscape.Probe` (params=, dtype=, ...).

    Raises:
        LandscapeError: an unknown measure or logger, a measure the optimizer does not support,
            a file logger without `log_dir`, "wandb" without an active run, bad data.

    Example:
        >>> import torch
        >>> from landscape.monitor import CurvatureMonitor
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
        ...                             torch.nn.Linear(8, 3))
        >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> monitor = CurvatureMonitor(model, (x, y), every=10, optimizer=opt, budget=None)
        >>> for step in range(1, 21):
        ...     opt.zero_grad()
        ...     torch.nn.functional.cross_entropy(model(x), y).backward()
        ...     opt.step()
        ...     row = monitor.step(step)
        >>> [r["step"] for r in monitor.rows] == [10, 20]
        True
        >>> 0 < row["eos_ratio"] < 1  # the last row: sharpness x lr / 2, below the edge
        True
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        loss_fn: Callable[[Any, Any], Tensor] | None = None,
        *,
        batch_loss: Callable[[nn.Module, Any], Tensor] | None = None,
        every: int = 100,
        measures: Sequence[str] = DEFAULT_MEASURES,
        optimizer: Any = None,
        log_dir: str | os.PathLike | None = None,
        loggers: Sequence[Any] = ("jsonl",),
        seed: int = 0,
        tol: float = 1e-3,
        max_iter: int = 100,
        n_hvp: int = 30,
        max_basis: int = 20,
        budget: float | None = 0.05,
        probe_options: dict[str, Any] | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise LandscapeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
        check_int("every", every)
        check_positive("tol", tol)
        check_int("max_iter", max_iter)
        check_int("n_hvp", n_hvp, minimum=3)
        check_int("max_basis", max_basis, minimum=3)
        if budget is not None:
            check_positive("budget", budget)
        self.budget = budget
        self.model = model
        self.optimizer = unwrap(optimizer)
        self.measures = self._resolve(measures, self.optimizer)
        self.every = every
        self.loss_fn = loss_fn
        self.batch_loss = batch_loss
        self.settings = Settings(tol=tol, max_iter=max_iter, n_hvp=n_hvp, max_basis=max_basis,
                                 seed=seed)
        self.probe_options = dict(probe_options or {})
        self.data = _fixed(data)
        self._comm = resolve_comm(self.probe_options.get("distributed", "auto"), _device(model))
        self._loggers = make_loggers(loggers, log_dir, self._comm.rank)
        self.log_dir = log_dir
        self.rows: list[dict[str, Any]] = []
        self._warm: dict[str, Tensor] = {}
        self._hooks: list[Any] = []
        self._snapshot: dict[str, Tensor] | None = None
        self._steps_since_snapshot = 0
        self._armed = False
        self._started: float | None = None  # wall clock of the first step() call
        self._spent = 0.0  # seconds spent measuring in step()
        self._last_cost = 0.0
        self.skipped: list[int] = []  # scheduled steps skipped to keep within the budget
        if "update_curvature" in self.measures:
            self._hooks = [self.optimizer.register_step_pre_hook(self._before_step),
                           self.optimizer.register_step_post_hook(self._after_step)]

    # ------------------------------------------------------------------ public

    def should_measure(self, step: int) -> bool:
        """True when `step` is on the schedule: step % every == 0."""
        return step % self.every == 0

    def step(self, step: int) -> dict[str, Any] | None:
        """Measure and log when `step % every == 0` (and the budget allows) and return the row;
        else return None.

        Call it once per optimizer step, after the step, with the training step count.
        """
        if isinstance(step, bool) or not isinstance(step, int):
            raise LandscapeError(f"step must be an int (the training step); got {step!r}.")
        now = time.perf_counter()
        if self._started is None:
            self._started = now
        # the update of the step before a measurement is copied by the optimizer hook
        self._armed = bool(self._hooks) and self.should_measure(step + 1)
        if not self.should_measure(step):
            return None
        if not self._affordable(now):
            self.skipped.append(step)
            return None
        row = self.measure(step)
        self._last_cost = time.perf_counter() - now
        self._spent += self._last_cost
        return row

    def _affordable(self, now: float) -> bool:
        """Within the budget: the measuring time so far plus one more measurement (as long as
        the last) at most `budget` times the training time so far. The first always is.
        Distributed, the ranks measure when any of them may (their collectives must match)."""
        if self.budget is None:
            return True
        training = now - self._started - self._spent
        ok = self._spent + self._last_cost <= self.budget * training or not self.rows
        if self._comm.active:
            ok = self._comm.reduce([1.0 if ok else 0.0])[0] > 0
        return ok

    def measure(self, step: int) -> dict[str, Any]:
        """Measure now, whatever the step; log and return the row (`step`, the measures'
        entries, `n_hvp`: products spent, `seconds`: wall time)."""
        t0 = time.perf_counter()
        with untouched(self.model):
            probe = Probe(self.model, self.data, self.loss_fn, batch_loss=self.batch_loss,
                          check_data=False, **self.probe_options)
            meter = probe.meter()
            ctx = MeasureContext(probe, self.optimizer, self.settings, self._warm,
                                 self._last_update(probe))
            row: dict[str, Any] = {"step": step}
            for name in self.measures:
                row.update(MONITOR_REGISTRY[name].run(ctx))
            row["n_hvp"] = meter.cost().n_hvp
            del ctx, probe  # the probe's kept gradient graphs go before training resumes
        row["seconds"] = time.perf_counter() - t0
        for log in self._loggers:
            log(row, step)
        self.rows.append(row)
        return row

    def close(self) -> None:
        """Remove the optimizer hooks (of "update_curvature") and drop the kept vectors."""
        for h in self._hooks:
            h.remove()
        self._hooks, self._snapshot = [], None
        self._warm.clear()

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _resolve(measures: Sequence[str], optimizer: Any) -> tuple[str, ...]:
        default = measures is DEFAULT_MEASURES
        if isinstance(measures, str):
            measures = (measures,)
        measures = tuple(dict.fromkeys(measures))
        unknown = [m for m in measures if m not in MONITOR_REGISTRY]
        if unknown or not measures:
            raise LandscapeError(f"measures must be among {tuple(MONITOR_REGISTRY)}; got "
                                 f"{list(measures)}.")
        if default and optimizer is None:
            measures = tuple(m for m in measures if m != "eos_ratio")
        for name in measures:
            check = MONITOR_REGISTRY[name].requires
            if check is not None:
                check(optimizer)
        return measures

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._armed:
            return
        with torch.no_grad():
            params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
            if self._snapshot is None or self._snapshot.keys() != params.keys():
                self._snapshot = {n: p.detach().clone() for n, p in params.items()}
            else:
                for n, p in params.items():
                    self._snapshot[n].copy_(p)
        self._steps_since_snapshot = 0
        self._armed = False

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._steps_since_snapshot += 1

    def _last_update(self, probe: Probe) -> Tensor | None:
        """w now minus w before the last optimizer step, over the probed parameters; None
        unless exactly one step followed the copy."""
        snap = self._snapshot
        if snap is None or self._steps_since_snapshot != 1:
            return None
        if any(n not in snap for n in probe.param_names):
            return None
        now = dict(zip(probe.param_names, probe.params))
        return torch.cat([(now[n].detach() - snap[n]).reshape(-1) for n in probe.param_names])


def _device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _fixed(data: Any) -> Any:
    """The measurement set: a pair or list as given; any other re-iterable (a DataLoader)
    drawn once into a list with the RNGs restored; a one-shot iterator refused."""
    if isinstance(data, (tuple, list)):
        return data
    if not hasattr(data, "__iter__"):
        raise LandscapeError(
            f"data of type {type(data).__name__} is not iterable; pass an (inputs, targets) "
            "pair, a list of batches or a DataLoader (drawn once)."
        )
    if hasattr(data, "__next__"):
        raise LandscapeError(
            "data is a one-shot iterator (the training iterator?); the monitor needs a fixed "
            "measurement set: an (inputs, targets) pair, a list of batches or a DataLoader, "
            "which it draws once."
        )
    with rng_untouched():  # a shuffling loader draws its seed from the global generator
        batches = list(data)
    if not batches:
        raise LandscapeError("data yielded no batches; pass a non-empty measurement set.")
    return batches


