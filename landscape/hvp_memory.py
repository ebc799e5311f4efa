"""The memory a Hessian-vector product holds, in parameter-sized vectors beyond a plain gradient's.

An estimator's peak memory is its stored vectors plus what one product holds while it runs. This
module counts the product's part as the difference between its peak and the peak P of a plain
`probe.gradient()`, from what the probe measured on its first product:

* G: the distinct storage autograd saves for the gradient graph (`landscape.hvp.SavedStorage`),
  and A: the part of it the forward pass saves (one batch, the largest);
* W: the peak of the tensor storage created *during* the backward pass through that graph
  (`PeakNew`, a dispatch mode that sees every tensor autograd makes: the gradients flowing back
  through the activations, a recurrent layer's per-step weight gradients, the per-parameter
  product and its flat copy);
* P: under "auto" with `check_hvp`, the peak of the storage made by the self-check's
  finite-difference product less one vector (that product holds its sum and a copy of w where a
  gradient holds its sum: `landscape.hvp_choice`); without the check, 2 vectors (the flat
  gradient and one batch's per-parameter gradients) + A.

Then, in vectors, one product holds beyond a gradient's peak:

* "cached_graph": G + W - P (the kept graph stays alive between products); where the graph is
  built again inside the call, max(G + W, B) - P, B the peak storage made while building it;
* "double_backward" and "forward_over_reverse": the sum of the batches' products (1), one
  batch's gradient kept with its graph (1) and G_b + W: 2 + G_b + W - P, G_b = G / batches;
* "finite_difference": the product's sum (1), the saved copy of w (1) and one batch's gradient
  (1) with its activations, against a gradient's sum and the same: 1 vector; 2 once the step
  has been shortened, since a product may then be made again at half its step while the first
  is kept (`hvp_choice.Products` verifies the step by halving it).

Before anything is measured, W counts 2 vectors and G, A nothing. Memory the allocator keeps
after a free is not in these counts: resident memory also holds the heap pages glibc keeps
after a free, how many depending on the process's history (glibc raises its threshold for
serving a request from fresh mapped memory to the largest block freed so far, up to 32 MB):
1-3 vectors at 23M-28M parameters. So a curvature estimator on a CPU probe runs under a
`HeapGuard`, a thread that gives the heap's free pages back whenever resident memory grows by
half a vector, and resident memory stays within about half a vector of these counts
(`heap_slack`, which the default Lanczos basis leaves room for).
`tests/curvature/test_peak_memory.py` checks them against the tensors actually alive, and
`scripts/bench_scale.py` against resident memory at 14M-124M parameters.

The heap's free pages are given back where they would pile up: building a graph for double
backward through a recurrent model fragments the heap (`HeapRelease`), and a dropped graph or
a finite-difference product after it would leave pages resident in the holes;
`release_free_heap` is called there (glibc's `malloc_trim(0)`; no allocator setting changes).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

if TYPE_CHECKING:  # pragma: no cover
    from .probe import Probe

FINITE_DIFFERENCE_WORK = 1.0  # vectors of a finite-difference product (see above)
UNMEASURED_WORK = 2.0  # W, in vectors, before it is measured: the product and its flat copy
RELEASE_STEP = 0.5  # `HeapRelease`: give free heap pages back after this many vectors of growth
GUARD_STEP = 0.5  # `HeapGuard`: ... and the same during a whole estimator call
GUARD_INTERVAL = 2e-3  # seconds between its reads of resident memory
MIN_RELEASE_BYTES = 16 * 2**20  # ... and never more often than every 16 MiB


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None (another C library, another system)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_free_heap() -> bool:
    """Give the free pages inside the C heap back to the operating system (glibc's
    `malloc_trim(0)`); False where there is no such call. Changes no allocator setting: the
    freed address ranges stay the allocator's, and a later allocation there faults its pages
    in again."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


def _resident_bytes(fd: int) -> int:
    """Resident memory of this process (/proc/self/statm, opened as `fd`), bytes."""
    return int(os.pread(fd, 128, 0).split()[1]) * os.sysconf("SC_PAGE_SIZE")


class HeapRelease:
    """Keeps the heap's free pages from piling up while a gradient graph is built.

    Building a graph for double backward (`create_graph=True`) through a recurrent model
    makes, at every unrolled step, a weight-sized temporary (the step's weight gradient, 4 MB
    for a 512-wide LSTM) and a few small tensors that the kept graph saves. glibc's malloc puts
    the small ones into the hole the previous step's temporary left, so that hole no longer
    fits the next temporary, which is taken from fresh memory at the top of the heap: the heap
    grows by one temporary a step while what is alive grows by the small tensors (a 2 x 512
    LSTM over 2 x 33 steps: 13 vectors of heap for 2.5 alive). Freed pages inside the heap are
    not returned to the system on their own, so resident memory grows with it. `check()`
    (called for every tensor the graph saves, from `SavedStorage`'s pack hook; one read of
    /proc/self/statm) gives them back with `release_free_heap()` whenever resident memory has
    grown by `step` bytes since the last release, so resident memory stays within `step` of
    what is alive. The allocator's settings are not changed. No-op without /proc or glibc."""

    def __init__(self, step: int) -> None:
        self.step = max(int(step), MIN_RELEASE_BYTES)
        self.releases = 0
        self._fd: int | None = None
        self._mark = 0
        if _TRIM is not None:
            with contextlib.suppress(OSError):
                self._fd = os.open("/proc/self/statm", os.O_RDONLY)
                self._mark = _resident_bytes(self._fd)

    def check(self) -> None:
        """Release the heap's free pages if resident memory grew by `step` since the last."""
        if self._fd is None:
            return
        if _resident_bytes(self._fd) > self._mark + self.step:
            release_free_heap()
            self.releases += 1
            self._mark = _resident_bytes(self._fd)

    def close(self, release: bool = True) -> None:
        """Close the file, with `release` after a last `release_free_heap()`."""
        if self._fd is not None:
            if release:
                release_free_heap()
            os.close(self._fd)
            self._fd = None


class HeapGuard:
    """A thread that keeps the heap's free pages from staying resident during a call.

    A product's backward pass makes and frees a few hundred tensors (the per-parameter
    products, the gradients flowing back through the activations) below glibc's threshold for
    separately mapped blocks, so they come from the heap. Where they land depends on the holes
    earlier frees left; pages the heap touched once stay resident after their tensors are
    freed. So resident memory during a call exceeds the tensors alive by a history-dependent
    amount: 1-3 vectors on ConvNeXt-T and ResNet-50, enough to take ResNet-50's top-1 from the
    11.4 vectors counted beyond a gradient's peak to 13.1 resident.

    Between `start()` and `stop()` a daemon thread reads resident memory (/proc/self/statm)
    every `interval` seconds and calls `release_free_heap()` whenever it is `step` bytes above
    what it was right after the last release (at the start, before any), so the call's peak
    of resident memory stays within about `step` of its peak of what is alive (`heap_slack`).
    Memory that rises and falls below that mark, such as the temporaries of products repeated
    at the same level, is left alone: a release there would not lower the peak, and the pages
    it gave back would be faulted in again (on the LSTM of the scale benchmark, lowering the
    mark as memory fell cost 800 releases and 11% of the call's time). Changes no allocator
    setting; a no-op without /proc or glibc.
    `releases` counts the releases (once stopped). It applies `HeapRelease`'s rule on a clock
    instead of at the graph build's saved tensors, so it needs no hook in the computation: it
    covers whatever the call runs."""

    def __init__(self, step: int, interval: float = GUARD_INTERVAL) -> None:
        self.step = max(int(step), MIN_RELEASE_BYTES)
        self.interval = interval
        self.releases = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> HeapGuard:
        if _TRIM is not None and os.path.exists("/proc/self/statm"):
            self._thread = threading.Thread(target=self._run, name="landscape-heap-guard",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        release = HeapRelease(self.step)  # the same rule, checked on a clock, not at hooks
        try:
            while not self._stop.wait(self.interval):
                release.check()
        finally:
            self.releases = release.releases
            release.close(release=False)


_guard_depth = [0]  # guards running (an estimator inside another's call starts none)


@contextlib.contextmanager
def heap_guarded(vector_bytes: int, enabled: bool = True) -> Iterator[HeapGuard | None]:
    """A started `HeapGuard` with a step of GUARD_STEP vectors of `vector_bytes` inside the
    block, stopped on exit; None when not `enabled` (a CUDA probe, or a guard already running
    around this one)."""
    if not enabled or _guard_depth[0] > 0:
        yield None
        return
    guard = HeapGuard(int(GUARD_STEP * vector_bytes)).start()
    _guard_depth[0] += 1
    try:
        yield guard
    finally:
        _guard_depth[0] -= 1
        guard.stop()


def heap_slack(probe: Probe) -> float:
    """Vectors of free heap pages resident memory may hold beyond the counted tensors during
    a curvature estimator's call: the `HeapGuard`'s step (GUARD_STEP) on a CPU probe, where
    one runs; 0 on CUDA, where tensors are not on the heap."""
    return GUARD_STEP if probe.device.type == "cpu" and _TRIM is not None else 0.0


@contextlib.contextmanager
def heap_released(vector_bytes: int, enabled: bool = True, last: bool = True
                  ) -> Iterator[HeapRelease | None]:
    """A `HeapRelease` with a step of RELEASE_STEP vectors of `vector_bytes` inside the block,
    closed on exit (with a last release if `last`); None when not `enabled` (a CUDA probe:
    its tensors are not on the heap)."""
    if not enabled:
        yield None
        return
    release = HeapRelease(RELEASE_STEP * vector_bytes)
    try:
        yield release
    finally:
        release.close(last)


class PeakNew(TorchDispatchMode):
    """`peak`: the largest total of tensor storage created inside the block and still alive
    (each storage counted once, from its first appearance as an operation's output that is not
    one of the operation's inputs, until a finalizer on it runs when it is freed). `seconds`:
    the time its own bookkeeping took, to subtract from a timing of the block.

    It runs without torch's default wrapper of a dispatch mode's handler (`_should_skip_dynamo`
    False): that wrapper, which keeps torch.compile out of the handler, imports torch._dynamo on
    first use (about 1 s of CPU, once a process) and adds a call to every operation; the handler
    compiles nothing, and a probe runs a compiled model through its uncompiled original
    (`landscape._model_prep`)."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = self.total = 0
        self.seconds = 0.0
        self._seen: set[int] = set()

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.total -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        t0 = time.perf_counter()
        inputs = {_address(t) for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            key = _address(t)
            if key and key not in inputs and key not in self._seen:
                storage = t.untyped_storage()
                self._seen.add(key)
                self.total += storage.nbytes()
                weakref.finalize(storage, self._free, key, storage.nbytes())
        self.peak = max(self.peak, self.total)
        self.seconds += time.perf_counter() - t0
        return out


def warm_up() -> None:
    """Pay any one-time cost of a process's first dispatch mode outside a timed region."""
    with PeakNew():
        torch.zeros(1).add_(1)


def _tensors(tree) -> Iterator[Tensor]:
    """The tensors in an operation's arguments or outputs (nested tuples, lists and dicts;
    a lighter walk than torch's pytree, which this handler runs on every operation)."""
    if isinstance(tree, Tensor):
        yield tree
    elif isinstance(tree, (tuple, list)):
        for x in tree:
            yield from _tensors(x)
    elif isinstance(tree, dict):
        for x in tree.values():
            yield from _tensors(x)


def _address(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


def product_vectors(probe: Probe, rebuilt: bool = False) -> float:
    """Parameter-sized vectors one product of `probe` holds at its peak beyond a plain
    gradient's peak, by the method it uses now (see the module). `rebuilt`: the kept graph is
    built again inside the call (after finite-difference products): B, the peak of the storage
    made while building it, counts where it exceeds G + W."""
    method = probe.hvp_method_used
    if method == "finite_difference":  # a shortened step: products may be made twice (halving)
        halving = probe.products.fd.length_cap < float("inf")
        return FINITE_DIFFERENCE_WORK + (1.0 if halving else 0.0)
    engine = probe.products.engine
    vector = probe.num_params * probe.dtype.itemsize
    graph = (engine.graph_bytes_measured or 0) / vector
    work = UNMEASURED_WORK if engine.work_bytes is None else engine.work_bytes / vector
    gradient = probe.products.gradient_bytes
    peak = 2 + (engine.activation_bytes or 0) / vector if gradient is None else gradient / vector
    if method == "cached_graph":
        build = (engine.build_bytes or 0) / vector if rebuilt else 0.0
        return max(graph + work, build) - peak
    return 2 + graph / max(probe.batch_pass.data.n_batches, 1) + work - peak
