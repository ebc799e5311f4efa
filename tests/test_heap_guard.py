"""The heap guard: free heap pages given back while an estimator call grows resident memory.

Resident memory during a call exceeded the tensors alive by 1-3 parameter-sized vectors on
ConvNeXt-T and ResNet-50 (issue 19, point 6): pages of the C heap that freed tensors left stay
resident. `hvp_memory.HeapGuard` gives them back whenever resident memory grows by its step.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from torch import nn

from landscape import Probe, hessian_density, hessian_eigenvalues, hessian_trace, hvp_memory

MB = 2**20


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _holes_then_growth() -> tuple[int, int]:
    """Resident bytes before and after: 96 MB of 64 kB tensors (from the heap: below glibc's
    mapping threshold), 15 of every 16 freed (holes the kept ones pin inside the heap), then
    a 64 MB tensor (separately mapped) written, so resident memory grows."""
    before = _resident()
    small = [torch.ones(16 * 1024) for _ in range(1536)]
    kept = small[::16]
    del small
    big = torch.ones(16 * MB)
    time.sleep(0.2)  # a few of the guard's readings
    after = _resident()
    del big, kept
    return before, after


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or hvp_memory._TRIM is None,
                    reason="needs /proc/self/statm and glibc")
def test_the_guard_gives_back_the_free_pages_of_the_heap():
    hvp_memory.release_free_heap()
    with hvp_memory.heap_guarded(MB) as guard:  # step: MIN_RELEASE_BYTES (16 MB)
        before, after = _holes_then_growth()
    assert guard is not None and guard.releases >= 1
    # alive: 64 MB + 6 MB kept; the 90 MB of holes were given back
    assert after - before < 64 * MB + 6 * MB + 24 * MB, (after - before) / MB
    hvp_memory.release_free_heap()
    before, after = _holes_then_growth()  # without the guard the holes stay resident
    assert after - before > 64 * MB + 6 * MB + 60 * MB, (after - before) / MB
    hvp_memory.release_free_heap()


def test_the_guard_thread_runs_only_inside_the_block():
    with hvp_memory.heap_guarded(MB) as guard:
        running = [t.name for t in threading.enumerate()]
        with hvp_memory.heap_guarded(MB) as inner:  # one guard at a time
            assert inner is None
    assert all(t.name != "landscape-heap-guard" for t in threading.enumerate())
    if guard is not None and guard._thread is None and hvp_memory._TRIM is not None:
        assert "landscape-heap-guard" in running
    with hvp_memory.heap_guarded(MB, enabled=False) as off:  # a CUDA probe
        assert off is None


@pytest.mark.parametrize("estimator", [
    lambda p: hessian_eigenvalues(p, k=1, seed=0),
    lambda p: hessian_trace(p, n_hvp=6, seed=0),
    lambda p: hessian_density(p, n_vectors=1, n_steps=5, seed=0),
])
def test_curvature_estimators_run_under_one_guard(monkeypatch, estimator):
    started = []
    real_start = hvp_memory.HeapGuard.start
    monkeypatch.setattr(hvp_memory.HeapGuard, "start",
                        lambda self: started.append(self.step) or real_start(self))
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    x, y = torch.randn(32, 5, generator=g), torch.randint(0, 2, (32,), generator=g)
    probe = Probe(model, (x, y), batch_size=16)
    estimator(probe)
    assert started == [hvp_memory.MIN_RELEASE_BYTES]  # one guard, a step of at least 16 MB
    estimator(probe.restricted(["0.weight"]))  # a block of the Hessian: guarded as well
    assert len(started) == 2


def test_the_default_basis_leaves_room_for_the_guards_slack(monkeypatch):
    """A large model's default basis is what is left of 12 vectors after the product's and the
    heap guard's step of free pages (on CPU): with 4.7 vectors held, 6 stored, not 7."""
    from landscape.curvature import _basis, lanczos

    monkeypatch.setattr(_basis, "DEFAULT_BYTES", 1000)  # as if the model were large
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    probe = Probe(model, (torch.randn(8, 5), torch.randint(0, 2, (8,))), batch_size=8)
    slack = hvp_memory.heap_slack(probe)
    assert slack == (0.5 if hvp_memory._TRIM is not None else 0.0)
    _, stored = lanczos._plan(probe, 1, True, None, None, held=4.7)
    assert stored == int(_basis.TOTAL_VECTORS - 4.7 - slack) == (6 if slack else 7)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or hvp_memory._TRIM is None,
                    reason="needs /proc/self/statm and glibc")
def test_the_guard_releases_only_a_step_above_where_the_last_release_left_memory(monkeypatch):
    """Memory that falls and rises again below the mark is left alone (a release there would
    not lower the peak); only a rise of a step above the last release's level releases."""
    guard = hvp_memory.HeapGuard(20 * MB, interval=0.0)
    # the start, then each reading (and the reading right after each release), in MB
    readings = iter([100, 130, 100, 85, 115, 100, 119, 125, 110])
    releases = []

    def resident(fd):
        value = next(readings, None)
        if value is None:
            guard._stop.set()
            return 0
        return value * MB

    monkeypatch.setattr(hvp_memory, "_resident_bytes", resident)
    monkeypatch.setattr(hvp_memory, "release_free_heap", lambda: releases.append(1) or True)
    guard._run()
    # 130 > 100 + 20: released (to 100); 85, 115, 119: not above 120 (a mark lowered to
    # 85 would release at 115); 125: released
    assert len(releases) == guard.releases == 2
