"""Hessian-vector product engines of the Probe, and how one is chosen.

Three exact ways to compute H v = d/dw <grad L(w), v> over the probe's batches:

* "cached_graph": the gradient graph of every batch is kept after the first product at the
  checkpoint, and each later product is one backward pass through it (about 1.2-1.5 gradients
  of time). Memory: the saved tensors of all batches' double-backward graphs.
* "double_backward": per batch, a gradient with `create_graph=True`, then a backward pass of
  <g, v> (about 2-3 gradients). Memory: one batch's graph.
* "forward_over_reverse": per batch, `torch.func.jvp` of `torch.func.grad` (about 3-4
  gradients on CPU; can win on some GPUs).

"auto" picks the method with the smallest measured time per product among those that fit the
probe's `graph_bytes` (`choose_method`). The first product at the checkpoint measures both
what the kept graph would hold and what each method costs, so choosing costs nothing extra:

* memory: the *distinct* storage saved for backward (saved-tensor hooks, each storage counted
  once by `untyped_storage().data_ptr()`, the model's own parameters and buffers left out, since
  they are resident anyway); counting saved-tensor references instead counts a tied embedding
  or a reused activation once per use (GPT-2: 2.4 GiB where 0.3 GiB is kept). The kept
  gradient's own values are freed (`release_values`): a backward pass needs its graph, not its
  values;
* time: the first product is timed in its two halves, building the gradient graph (a gradient
  with `create_graph=True`, t_build) and the backward pass through it (t_vjp): a cached-graph
  product costs t_vjp, a double-backward product t_build + t_vjp. Forward-over-reverse is timed
  on one batch when the data has many batches (there, four one-batch products cost little next
  to a full product).

When the graph turns out too large it is dropped and the product finishes batch by batch.

Each batch contributes n_b / n of its mean-loss Hessian; the engines return the sum over this
rank's batches of n_b H_b v and the number of samples, and the Probe reduces and divides.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from ._model_prep import cudnn_off_needed, recurrent_safe, twice_differentiable  # noqa: F401
from .batch_pass import BatchPass
from .hvp_memory import HeapRelease, PeakNew, heap_released, release_free_heap
from .probe_data import call_model, unpack

HVP_METHODS = ("auto", "cached_graph", "double_backward", "forward_over_reverse")
UNCACHED = ("double_backward", "forward_over_reverse")
# With at least this many batches "auto" times the two uncached methods on one batch (four
# one-batch products, a small fraction of one full product); with fewer, double backward.
MIN_BATCHES_TO_TIME = 8


class SavedStorage:
    """Adds up the bytes of the *distinct* storages autograd saves for backward inside
    `counting()`: a storage saved several times (a tied weight, views of one activation) is
    counted once, keyed by `untyped_storage().data_ptr()`, and storages in `exclude` (the
    model's parameters and buffers, resident anyway) are not counted. The saved tensors stay
    alive as long as their graph, so an address is not reused while the graph is counted."""

    def __init__(self, exclude: Sequence[Tensor] = (), release: HeapRelease | None = None
                 ) -> None:
        self.total = 0
        self._seen = {_storage_key(t) for t in exclude}
        self.release = release  # checked at every saved tensor (`hvp_memory.HeapRelease`)

    def add(self, t: Tensor) -> None:
        """Count `t`'s storage unless it was counted (or excluded) before."""
        key = _storage_key(t)
        if key[0] and key not in self._seen:
            self._seen.add(key)
            self.total += t.untyped_storage().nbytes()

    def holds(self, t: Tensor) -> bool:
        """Whether `t`'s storage was saved (or excluded)."""
        return _storage_key(t) in self._seen

    def _pack(self, t: Tensor) -> Tensor:
        self.add(t)
        if self.release is not None:
            self.release.check()
        # detached: a saved output packed as itself refers to its own grad_fn, a cycle that is
        # never freed (the graph's saved outputs would outlive it); autograd re-attaches the
        # saved tensor's history when it unpacks it, so double backward is unchanged
        return t.detach()

    def counting(self) -> contextlib.AbstractContextManager:
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)


def _storage_key(t: Tensor) -> tuple[int, str]:
    return t.untyped_storage().data_ptr(), str(t.device)


def release_values(grads: Sequence[Tensor | None], saved: SavedStorage) -> None:
    """Free the values of kept gradients that no backward step reads: a backward pass from a
    tensor needs its graph and its shape, not its values, so a kept gradient graph need not
    keep the gradient itself (one parameter-sized vector). A gradient whose storage autograd
    saved (an operation that reuses its output in its own backward) keeps its values."""
    for g in grads:
        if g is not None and g.requires_grad and not saved.holds(g):
            g.untyped_storage().resize_(0)


def choose_method(times: dict[str, float], fits: Sequence[str]) -> str:
    """The method with the smallest measured time per product among `fits` (the methods whose
    memory is within the budget); `times` maps methods to seconds (math.inf: failed or not
    measured). Falls back to "double_backward" when nothing usable was measured."""
    usable = {m: t for m, t in times.items() if m in fits and math.isfinite(t)}
    return min(usable, key=usable.get) if usable else "double_backward"


class HvpEngine:
    """Computes sum_b n_b H_b v over this rank's batches with the chosen method.

    State: the method chosen by "auto" (`chosen`), the seconds per product measured for the
    choice (`times`, by method), the bytes the kept graph was measured to hold
    (`graph_bytes_measured`: distinct saved storage, extrapolated to all batches; with
    `activation_bytes` and `work_bytes` for `landscape.hvp_memory`), and the
    kept gradient graph of "cached_graph" with the parameter versions it was built at (rebuilt
    when they change).
    """

    def __init__(self, passes: BatchPass, method: str, graph_bytes: int):
        self.passes = passes
        self.method = method
        self.graph_bytes = graph_bytes
        self.chosen: str | None = None
        self.times: dict[str, float] = {}
        self.graph_bytes_measured: int | None = None
        # measured on the first product (`landscape.hvp_memory`): the forward's saved storage
        # (one batch) and the peak of the storage made by a backward pass through the graph
        self.activation_bytes: int | None = None
        self.work_bytes: int | None = None
        self.build_bytes: int | None = None  # the peak storage made while building the graph
        self.meter_seconds = 0.0  # the time `work_bytes`'s measurement took (not the product's)
        # (the gradient of sum_b n_b * mean loss_b with its graph; n samples; param versions)
        self._graph: tuple[list[Tensor | None], int, list[int]] | None = None

    def product(self, v: Tensor, at_checkpoint: bool, out: Tensor | None = None
                ) -> tuple[Tensor, int]:
        """(sum over this rank's batches of n_b H_b v, number of samples); a product through
        the kept graph is written into `out` when given (other methods return a new vector)."""
        p = self.passes
        if self.method != "auto":
            method = self.method
            if method == "cached_graph" and not at_checkpoint:
                method = "double_backward"
            if method == "cached_graph":
                return self._cached(v, out)
            return self._batches(v, method)
        if self.chosen is None:
            if p.comm.active or p.data.cache is None:
                self.chosen = self._choose_collectively(v)
            elif at_checkpoint:
                return self._first_product(v)
            else:
                self.chosen = self._fastest_uncached(v)
        if self.chosen == "cached_graph":
            if at_checkpoint:
                return self._cached(v, out)
            return self._batches(v, "double_backward")
        return self._batches(v, self.chosen)

    def drop_graph(self) -> None:
        """Free the kept gradient graph (rebuilt by the next cached product that needs it), and
        give its pages back to the system (`hvp_memory.release_free_heap`)."""
        if self._graph is not None:
            self._graph = None
            if self.passes.device.type == "cpu":
                release_free_heap()

    @contextlib.contextmanager
    def _building(self) -> Iterator[SavedStorage]:
        """A `SavedStorage` (the model's parameters and buffers excluded) whose pack hook keeps
        the heap's free pages from piling up while a graph for double backward is built
        (`hvp_memory.HeapRelease`; CPU probes)."""
        p = self.passes
        vector = p.num_params * p.dtype.itemsize
        with heap_released(vector, p.device.type == "cpu") as release:
            yield SavedStorage([*p.model.parameters(), *p.model.buffers()], release)

    def vjp_of_grads(self, grads: Sequence[Tensor | None], v: Tensor,
                     out: Tensor | None = None) -> Tensor:
        """d/dw <g(w), v> = H v from gradients computed with create_graph=True: one parameter
        list's gradients, or several batches' lists one after another (their sum); written
        into `out` when given (a flat vector: no new parameter-sized vector is allocated)."""
        p = self.passes
        vs = p.split(v)
        pairs = [(g, vs[i % len(vs)]) for i, g in enumerate(grads)
                 if g is not None and g.requires_grad]
        if not pairs:  # the loss is at most linear in the probed parameters: H = 0
            return torch.zeros_like(v) if out is None else out.zero_()
        hv = torch.autograd.grad([g for g, _ in pairs], p.params,
                                 grad_outputs=[vi for _, vi in pairs], retain_graph=True,
                                 allow_unused=True)
        return p.flat(hv, out)

    def gradient_and_product(self, v: Tensor | None) -> tuple[float, Tensor, Tensor]:
        """(L, g, H v) in one double-backward pass over the batches (`v` None: v = g), reduced
        over the ranks; inside the caller's session."""
        p = self.passes
        g_total = torch.zeros(p.num_params, device=p.device, dtype=p.dtype)
        loss_sum, n, graphs, error = 0.0, 0, [], None
        try:
            for batch in p.batches():
                loss, n_b, _ = p.compute(batch)
                grads = torch.autograd.grad(loss, p.params, create_graph=True, allow_unused=True)
                g_total.add_(p.flat(grads).detach(), alpha=n_b)
                loss_sum += float(loss.detach()) * n_b
                n += n_b
                graphs.append((grads, n_b))
        except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
            error = e
        loss_sum, n = p.comm.reduce([loss_sum, n], [g_total], error)
        g_total.div_(n)
        vec = g_total if v is None else v
        hv = torch.zeros_like(g_total)
        try:
            for grads, n_b in graphs:
                hv.add_(self.vjp_of_grads(grads, vec), alpha=n_b / n)
        except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
            error = e
        p.comm.reduce([], [hv], error)
        p.counts["n_gradient"] += 1
        p.counts["n_hvp"] += 1
        return loss_sum / n, g_total, hv

    # ------------------------------------------------------------------ choosing

    def _first_product(self, v: Tensor) -> tuple[Tensor, int]:
        """The first product at the checkpoint under "auto": build the graph while measuring its
        distinct saved storage and the time to build it; if the extrapolated size exceeds the
        budget, drop it and finish this product (and all later ones) without a kept graph.
        Otherwise time the backward pass through it and keep it when a cached product is the
        fastest measured method (`choose_method`)."""
        p = self.passes
        data = p.data
        summed: list[Tensor | None] = [None] * len(p.params)
        n, t_build = 0, 0.0
        versions = [q._version for q in p.params]
        batches = iter(data.batches())
        meter = PeakNew()
        with self._building() as saved:
            for batch in batches:
                t0 = time.perf_counter()
                seconds = meter.seconds
                with saved.counting(), meter:
                    n += self._add_scaled_gradient(summed, batch, saved)
                t_build += self._since(t0) - (meter.seconds - seconds)  # less the meter's time
                self.build_bytes = meter.peak
                kept = saved.total * data.n_local / max(n, 1)
                if kept > self.graph_bytes:
                    # too large to keep: this product from the graphs built so far, the rest
                    # of the batches (and all later products) without a kept graph
                    total = self._measured_vjp(summed, v)
                    del summed
                    self.graph_bytes_measured = int(kept)
                    timed = data.n_batches >= MIN_BATCHES_TO_TIME
                    self.chosen = self._fastest_uncached(v) if timed else "double_backward"
                    rest, n_rest = self._batches(v, self.chosen, batches)
                    return total.add_(rest), n + n_rest
        self.graph_bytes_measured = int(kept) if n else 0
        t0 = time.perf_counter()
        out = self._measured_vjp(summed, v)
        t_vjp = self._since(t0) - self.meter_seconds
        times = {"cached_graph": t_vjp, "double_backward": t_build + t_vjp}
        if data.n_batches >= MIN_BATCHES_TO_TIME:
            one = self._time_uncached(v)
            if math.isfinite(one["double_backward"]) and one["double_backward"] > 0:
                ratio = one["forward_over_reverse"] / one["double_backward"]
                times["forward_over_reverse"] = times["double_backward"] * ratio
        self.times = times
        self.chosen = choose_method(times, fits=HVP_METHODS)
        if self.chosen == "cached_graph":
            release_values(summed, saved)
            self._graph = (summed, n, versions)
        return out, n

    def _choose_collectively(self, v: Tensor) -> str:
        """Distributed or streamed data: every rank must pick the same method, so the graph size
        is estimated on one batch up front and the verdicts reduced over the ranks."""
        p = self.passes
        fits, error = False, None
        try:
            fits = p.data.cache is not None and self._graph_bytes_estimate() <= self.graph_bytes
        except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
            error = e
        (n_unfit,) = p.comm.reduce([0.0 if fits else 1.0], error=error)
        if n_unfit == 0:
            return "cached_graph"
        if p.data.n_batches < MIN_BATCHES_TO_TIME:
            return "double_backward"
        return self._fastest_uncached(v)

    def _graph_bytes_estimate(self) -> int:
        """Bytes of the distinct storage saved by autograd for all batches' gradient graphs
        (one batch measured, scaled by samples)."""
        p = self.passes
        batch = next(iter(p.data.batches()), None)
        if batch is None:  # a rank without batches keeps no graph
            return 0
        with self._building() as saved, saved.counting():
            loss, n_b, _ = p.compute(batch)
            grads = torch.autograd.grad(loss, p.params, create_graph=True, allow_unused=True)
        del grads
        return int(saved.total * p.data.n_local / max(n_b, 1))

    def _time_uncached(self, v: Tensor) -> dict[str, float]:
        """Seconds of one product on this rank's first batch by each uncached method (after a
        warm-up; math.inf for a method the model does not support), summed over the ranks."""
        p = self.passes
        batch = next(iter(p.data.batches()), None)
        timings = dict.fromkeys(UNCACHED, 0.0)  # a rank without batches does not vote
        for method in UNCACHED if batch is not None else ():
            try:
                self._one_batch(batch, v, method)  # warm-up
                t0 = time.perf_counter()
                self._one_batch(batch, v, method)
                timings[method] = self._since(t0)
            except Exception:  # noqa: BLE001 - a method the model does not support is skipped
                timings[method] = math.inf
        return dict(zip(UNCACHED, p.comm.reduce(list(timings.values()))))

    def _fastest_uncached(self, v: Tensor) -> str:
        """The faster of the uncached methods, timed on one batch (times summed over ranks)."""
        self.times = self._time_uncached(v)
        return choose_method(self.times, fits=UNCACHED)

    def _since(self, t0: float) -> float:
        """Seconds since t0, after the device has finished its queued work."""
        if self.passes.device.type == "cuda":
            torch.cuda.synchronize(self.passes.device)
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ products

    def _add_scaled_gradient(self, summed: list[Tensor | None], batch: Any,
                             saved: SavedStorage | None = None) -> int:
        """summed[i] += the gradient of n_b * (mean loss of the batch), with its graph kept;
        returns n_b. The sum keeps one gradient (not one per batch): an addition saves
        nothing for backward. With the `saved` storage being counted, the forward's part of it
        is recorded (`activation_bytes`, the largest batch's)."""
        p = self.passes
        before = 0 if saved is None else saved.total
        loss, n_b, _ = p.compute(batch)
        if saved is not None:
            self.activation_bytes = max(self.activation_bytes or 0, saved.total - before)
        grads = torch.autograd.grad(loss * n_b, p.params, create_graph=True, allow_unused=True)
        for i, g in enumerate(grads):
            if g is not None:
                summed[i] = g if summed[i] is None else summed[i] + g
        return n_b

    def _cached(self, v: Tensor, out: Tensor | None = None) -> tuple[Tensor, int]:
        """One backward pass through the kept graphs of all batches (into `out` when given)."""
        p = self.passes
        versions = [q._version for q in p.params]
        if self._graph is None or self._graph[2] != versions:
            self._graph = None
            summed: list[Tensor | None] = [None] * len(p.params)
            n = 0
            with self._building() as saved, saved.counting():
                for batch in p.data.batches():
                    n += self._add_scaled_gradient(summed, batch, saved)
            release_values(summed, saved)
            self.graph_bytes_measured = saved.total
            self._graph = (summed, n, versions)
        grads, n = self._graph[0], self._graph[1]
        return self._measured_vjp(grads, v, out), n

    def _measured_vjp(self, grads: Sequence[Tensor | None], v: Tensor,
                      into: Tensor | None = None) -> Tensor:
        """`vjp_of_grads` (into `into` when given), measuring the peak of the storage it makes
        the first time (`work_bytes`, for `landscape.hvp_memory`)."""
        if self.work_bytes is not None:
            return self.vjp_of_grads(grads, v, into)
        with PeakNew() as meter:
            out = self.vjp_of_grads(grads, v, into)
        self.work_bytes, self.meter_seconds = meter.peak, meter.seconds
        return out

    def _batches(self, v: Tensor, method: str, batches: Any = None) -> tuple[Tensor, int]:
        """(sum over the batches of n_b H_b v, number of samples), one batch at a time."""
        p = self.passes
        total = torch.zeros_like(v)
        n = 0
        for batch in p.data.batches() if batches is None else batches:
            hv, n_b = self._one_batch(batch, v, method)
            total.add_(hv, alpha=n_b)
            n += n_b
            del hv  # not alive during the next batch's product
        return total, n

    def _one_batch(self, batch: Any, v: Tensor, method: str) -> tuple[Tensor, int]:
        p = self.passes
        if method == "forward_over_reverse":
            from torch.func import functional_call, grad, jvp

            primals = {"model." + n: q.detach() for n, q in zip(p.param_names, p.params)}
            tangents = {"model." + n: t for n, t in zip(p.param_names, p.split(v))}

            def loss_of(params):
                return functional_call(p.loss_module, params, (batch,))

            _, hv = jvp(grad(loss_of), (primals,), (tangents,))
            n_b = p.n_samples(batch)
            return torch.cat([hv["model." + n].reshape(-1) for n in p.param_names]), n_b
        if self.graph_bytes_measured is not None:
            with self._building() as saved, saved.counting():
                loss, n_b, _ = p.compute(batch)
                grads = torch.autograd.grad(loss, p.params, create_graph=True,
                                            allow_unused=True)
            return self._measured_vjp(grads, v), n_b
        # the first batch measures its graph (for `landscape.hvp_memory`)
        summed: list[Tensor | None] = [None] * len(p.params)
        with self._building() as saved, saved.counting():
            n_b = self._add_scaled_gradient(summed, batch, saved)
        self.graph_bytes_measured = int(saved.total * p.data.n_local / max(n_b, 1))
        return self._measured_vjp(summed, v).div_(n_b), n_b


def ggn_product_sum(bp: BatchPass, vs: list[Tensor], total: Tensor) -> int:
    """The GGN engine: add sum over this rank's batches of n_b G_b v into `total` (`vs`: v
    split by parameter); return the sample count."""
    n = 0
    for batch in bp.data.batches():
        inputs, targets = unpack(batch)
        outputs = call_model(bp.model, inputs)
        bp.counts["n_batch_forward"] += 1
        n_b = bp.n_samples(batch)
        # J v by the double-vjp trick: d/du <J^T u, v> = J v.
        u = torch.zeros_like(outputs, requires_grad=True)
        jtu = torch.autograd.grad(outputs, bp.params, grad_outputs=u,
                                  create_graph=True, allow_unused=True)
        pairs = [(g, vi) for g, vi in zip(jtu, vs) if g is not None]
        if not pairs:
            n += n_b
            continue
        jv = torch.autograd.grad(sum((g * vi).sum() for g, vi in pairs), u)[0]
        out = outputs.detach().requires_grad_(True)
        loss = bp.loss_fn(out, targets)
        dl = torch.autograd.grad(loss, out, create_graph=True)[0]
        if dl.requires_grad:
            h_jv = torch.autograd.grad(dl, out, grad_outputs=jv)[0]
        else:
            h_jv = torch.zeros_like(out)
        jt = torch.autograd.grad(outputs, bp.params, grad_outputs=h_jv,
                                 allow_unused=True)
        total.add_(bp.flat(jt), alpha=n_b)
        n += n_b
    return n
