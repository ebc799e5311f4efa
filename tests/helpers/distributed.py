"""Run a function on several gloo ranks on CPU and collect what each rank returns.

`run_on_ranks(fn, *args, world_size=2)` spawns `world_size` processes, joins them into one gloo
process group (a FileStore in a fresh temporary directory: no TCP port to find), calls
`fn(rank, world_size, *args)` on each and returns the list of results, by rank. A rank that raises
makes the call raise with every failing rank's traceback; a rank that hangs in a collective runs
into the group's `timeout` (gloo raises), and the whole call is bounded by `timeout` seconds, after
which the spawned processes are killed. `fn` must be importable (a module-level function) and its
result picklable; tensors are copied (plain pickle), not shared.
"""

from __future__ import annotations

import os
import pickle
import queue as queue_module
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp


def _worker(rank: int, world_size: int, init_file: str, fn: Callable[..., Any],
            args: tuple[Any, ...], results: Any, timeout: float) -> None:
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout))
        out = (rank, True, pickle.dumps(fn(rank, world_size, *args)))
    except BaseException:  # noqa: BLE001 - reported to the parent
        out = (rank, False, traceback.format_exc())
    results.put(out)
    if dist.is_initialized():
        dist.destroy_process_group()


def run_on_ranks(fn: Callable[..., Any], *args: Any, world_size: int = 2,
                 timeout: float = 120.0, collective_timeout: float = 30.0) -> list[Any]:
    """`[fn(0, world_size, *args), ..., fn(world_size - 1, world_size, *args)]`, one process each.

    Raises:
        RuntimeError: a rank raised (the message holds every failing rank's traceback).
        TimeoutError: not every rank reported within `timeout` seconds.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    tmp = tempfile.mkdtemp(prefix="landscape-dist-")
    init_file = os.path.join(tmp, "store")
    procs = [
        ctx.Process(target=_worker, daemon=True,
                    args=(r, world_size, init_file, fn, args, results, collective_timeout))
        for r in range(world_size)
    ]
    try:
        for p in procs:
            p.start()
        got: dict[int, tuple[bool, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(got) < world_size:
            try:
                rank, ok, value = results.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue_module.Empty:
                missing = sorted(set(range(world_size)) - set(got))
                raise TimeoutError(f"ranks {missing} did not finish in {timeout} s") from None
            got[rank] = (ok, value)
        failed = {r: v for r, (ok, v) in got.items() if not ok}
        if failed:
            raise RuntimeError("\n".join(f"rank {r} raised:\n{tb}" for r, tb in failed.items()))
        return [pickle.loads(got[r][1]) for r in range(world_size)]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        shutil.rmtree(tmp, ignore_errors=True)


def assert_close(a: Any, b: Any, rtol: float = 1e-8) -> None:
    """`a` equals the reference `b` to `rtol` (nested lists/tuples, tensors with NaN in the same
    places, exact ints and bools, floats)."""
    if isinstance(b, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_close(x, y, rtol)
    elif isinstance(b, torch.Tensor):
        assert a.shape == b.shape
        assert torch.equal(a.isnan(), b.isnan())
        a, b = a.nan_to_num(), b.nan_to_num()
        assert (a - b).norm() <= rtol * b.norm() + 1e-14, ((a - b).norm(), b.norm())
    elif isinstance(b, (bool, int)):
        assert a == b
    else:
        assert a == pytest.approx(b, rel=rtol, abs=1e-14)
