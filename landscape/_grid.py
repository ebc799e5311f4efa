"""The grid engine: the loss at every point of a line, a plane or an interpolation path.

`run_grid` owns the points of a grid (`coords`: one array per axis, points in row-major order),
the settings and their hash (what a stored file must match), the resume file (`GridStore`:
points already in `out` are not evaluated again; the file is flushed as points finish and when
the run ends or raises), the subsets of `max_samples=` (8 groups, their spread as the standard
error), the split over ranks (`grid_plan`: every point on every rank's share of the data, or
each rank its own points on all the data), and the chunking of points under vmap
(`_batched`, falling back to the exact per-point loop). `landscape.surface` (`loss_line`,
`loss_surface`, `interpolate`, PCA planes) are thin callers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._batched import chunk_size, evaluate_chunk
from ._validate import OneOf
from .distributed import SHARD_OPTIONS, Comm, full_source
from .errors import LandscapeError
from .probe import Probe
from .storage import GridStore

N_GROUPS = 8  # independent subsets per point with max_samples=


def run_grid(probe: Probe, vectors: list[Tensor], coords: dict[str, np.ndarray], kind: str,
              metas: list[dict[str, Any]], out: str | os.PathLike | None,
              max_samples: int | None, seed: int, progress: bool,
              extra: dict[str, Any], shard: str = "auto", buffers: Any = None, *,
              batched: bool | None = None, autocast: bool = False) -> GridStore:
    """Evaluate every missing grid point into a GridStore (file-backed when `out` is given);
    `buffers` is the buffers plan of `_buffer_kwargs`."""
    if batched not in (None, True, False):
        raise LandscapeError(f"batched must be True, False or None (auto); got {batched!r}.")
    if autocast not in (True, False):
        raise LandscapeError(f"autocast must be True or False; got {autocast!r}.")
    if autocast:  # approximate values: part of the settings and of the file's hash
        extra = {**extra, "autocast": "bfloat16"}
    mode, evaluator = grid_plan(probe, shard, int(np.prod([len(c) for c in coords.values()])))
    total = probe.n_samples
    groups: list[Probe] | None = None
    n_used = total
    if max_samples is not None:
        if not isinstance(max_samples, int) or max_samples < N_GROUPS:
            raise LandscapeError(
                f"max_samples must be an integer >= {N_GROUPS} (it is split into {N_GROUPS} "
                f"subsets for the standard error); got {max_samples!r}."
            )
        m = min(max_samples // N_GROUPS, total)
        gen = torch.Generator().manual_seed(int(seed))
        seeds = torch.randint(0, 2**31 - 1, (N_GROUPS,), generator=gen).tolist()
        groups = [evaluator.subset(m, seed=s) for s in seeds]
        n_used = m * N_GROUPS
    settings = {
        "kind": kind, "format": 1,
        **{k: v.tolist() for k, v in coords.items()},
        "directions": metas, "direction_sha256": [_sha(v) for v in vectors],
        "checkpoint_sha256": _sha(probe.flat_params()), "num_params": probe.num_params,
        "param_names_sha256": hashlib.sha256("\n".join(probe.param_names).encode()).hexdigest(),
        "n_samples": n_used, "data_n_samples": total, "max_samples": max_samples,
        "seed": int(seed) if max_samples is not None else 0, **extra,
    }
    comm = probe.batch_pass.comm
    store = GridStore(out, coords, settings, comm=comm)
    axes = list(coords.values())
    points = [(idx, tuple(float(ax[k]) for ax, k in zip(axes, idx)))
              for idx in np.ndindex(*store.loss.shape) if not store.done[idx]]
    bar = _progress(len(points), progress and comm.rank == 0)
    chunk = 1 if mode != "alone" or isinstance(buffers, Recompute) else _chunk(
        probe if groups is None else groups[0], len(points), batched)
    try:
        with _autocast(probe, autocast):
            if mode == "points":
                _by_points(evaluator, groups, vectors, points, store, bar, comm, buffers)
            elif groups is None:
                _exact(probe, vectors, points, store, bar, buffers, chunk)
            else:
                _grouped(groups, vectors, points, store, bar, buffers, chunk=chunk)
    except BaseException:
        bar.close()
        store.flush()  # keep what was computed
        raise
    bar.close()
    error = None
    try:
        store.flush()
    except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
        error = e
    comm.reduce([], error=error)  # on return the file is complete, on every rank
    return store


@dataclass(frozen=True)
class Recompute:
    """The buffers plan that re-estimates BatchNorm statistics at every point, on the probe's
    data (`inputs` None) or on these batches of model inputs."""

    inputs: list[Any] | None = None


def buffer_ends(probe: Probe, other: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The floating-point buffers of the probe's model and of `other`, by name."""
    from .checkpoint import read_state_dict

    state = read_state_dict(other)
    own = {n: b.detach().clone() for n, b in probe.model.named_buffers() if b.is_floating_point()}
    missing = [n for n in own if n not in state]
    if missing:
        raise LandscapeError(
            f"the other checkpoint lacks the buffers {missing[:10]} (BatchNorm statistics?); "
            "save it with its buffers (model.state_dict()) or pass buffers='keep'."
        )
    return own, {n: state[n] for n in own}


def _buffer_kwargs(plan: Any) -> dict[str, Any]:
    """`Probe.evaluate_points` arguments for a buffers plan: None (the model's buffers as they
    are), `(start, end)` dicts to interpolate along the first coordinate, or a `Recompute`."""
    if isinstance(plan, Recompute):
        return {"recompute_batchnorm": True, "batchnorm_inputs": plan.inputs}
    return {"buffer_ends": plan}


def _chunk(probe: Probe, n_points: int, batched: bool | None) -> int:
    """Points per vmap call: 1 (the per-point loop) unless batching is asked for or, by default,
    on CUDA; then as many as the memory budget allows (`_batched.chunk_size`)."""
    if batched is False or (batched is None and probe.device.type != "cuda"):
        return 1
    return chunk_size(probe, n_points)


def _autocast(probe: Probe, enabled: bool) -> Any:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=probe.device.type, dtype=torch.bfloat16)


def _store_value(store: GridStore, idx: Any, ev: Any) -> None:
    if np.isfinite(ev.loss):
        store.set(idx, ev.loss, ev.accuracy)
    else:
        store.set(idx, np.nan, None)


def _exact(probe: Probe, vectors: list[Tensor], points: list, store: GridStore, bar: Any,
           buffer_ends: Any = None, chunk: int = 1) -> None:
    """Every point on all the data: chunks of points under vmap while that works (chunk > 1),
    then the per-point loop for whatever is left."""
    done = 0
    while chunk > 1 and done < len(points):
        part = points[done:done + chunk]
        try:
            evs = evaluate_chunk(probe, vectors, [c for _, c in part], buffer_ends)
        except Exception:  # noqa: BLE001 - not vmap-able: the loop below is exact and re-raises
            break
        for (idx, _), ev in zip(part, evs):
            _store_value(store, idx, ev)
            bar.update()
        done += len(part)
    points = points[done:]
    if not points:
        return
    gen = probe.evaluate_points(vectors, (c for _, c in points), **_buffer_kwargs(buffer_ends))
    try:
        for idx, _ in points:
            _store_value(store, idx, next(gen))
            bar.update()
    finally:
        gen.close()


def _grouped(groups: list[Probe], vectors: list[Tensor], points: list, store: GridStore,
             bar: Any, buffer_ends: Any = None, chunk: int = 1) -> None:
    """`max_samples=`: each chunk of points on every group (under vmap when chunk > 1 and it
    works, else the loop, 32 points per call)."""
    step = chunk if chunk > 1 else 32
    vmap_ok = chunk > 1
    for s in range(0, len(points), step):
        part = points[s:s + step]
        coords = [c for _, c in part]
        values = None
        if vmap_ok:
            try:
                values = _group_values(groups, vectors, coords, buffer_ends, batched=True)
            except Exception:  # noqa: BLE001 - not vmap-able: the loop is exact and re-raises
                vmap_ok = False
        if values is None:
            values = _group_values(groups, vectors, coords, buffer_ends)
        for (idx, _), value in zip(part, values):
            store.set(idx, *value)
            bar.update()


_Value = tuple[float, float | None, float | None]  # loss, accuracy, stderr


def _group_values(groups: list[Probe], vectors: list[Tensor],
                  coords: list[tuple[float, ...]], buffer_ends: Any = None,
                  batched: bool = False) -> list[_Value]:
    """(mean loss, mean accuracy, stderr) over the groups at each point; NaN when not finite."""
    if batched:
        evs = [evaluate_chunk(g, vectors, coords, buffer_ends) for g in groups]
    else:
        evs = [list(g.evaluate_points(vectors, coords, **_buffer_kwargs(buffer_ends)))
               for g in groups]
    out = []
    for k in range(len(coords)):
        losses = np.array([e[k].loss for e in evs], dtype=np.float64)
        if not np.all(np.isfinite(losses)):
            out.append((np.nan, None, None))
            continue
        accs = [e[k].accuracy for e in evs]
        acc = None if accs[0] is None else float(np.mean(accs))
        out.append((float(losses.mean()), acc, float(losses.std(ddof=1) / np.sqrt(len(losses)))))
    return out


def _by_points(evaluator: Probe, groups: list[Probe] | None, vectors: list[Tensor],
               points: list, store: GridStore, bar: Any, comm: Any,
               buffer_ends: Any = None) -> None:
    """Points sharding: rank r evaluates points r, r + W, ... on all the data (`evaluator` is
    not distributed); after each round of W points the ranks all-gather the finished values
    (flat index, loss, accuracy, stderr, failed flag), so every rank's store holds the grid and
    a rank that raised makes every rank raise."""
    world, shape = comm.world_size, store.loss.shape
    mine = points[comm.rank::world]
    gen = None if groups is not None else evaluator.evaluate_points(
        vectors, (c for _, c in mine), **_buffer_kwargs(buffer_ends))
    try:
        for k in range(-(-len(points) // world)):
            row, error = [-1.0, np.nan, np.nan, np.nan, 0.0], None
            if k < len(mine):
                idx, c = mine[k]
                try:
                    if gen is not None:
                        ev = next(gen)
                        value = (ev.loss, ev.accuracy, None)
                    else:
                        value = _group_values(groups, vectors, [c],  # type: ignore[arg-type]
                                              buffer_ends)[0]
                    row = [float(np.ravel_multi_index(idx, shape)),
                           *(np.nan if v is None else float(v) for v in value), 0.0]
                except Exception as e:  # noqa: BLE001 - raised on every rank below
                    row[4], error = 1.0, e
            rows = comm.gather_rows(torch.tensor([row], dtype=torch.float64)).numpy()
            comm.raise_if_any(bool(rows[:, 4].any()), error)
            for flat, loss, acc, se, _ in rows[rows[:, 0] >= 0]:
                idx = np.unravel_index(int(flat), shape)
                if np.isfinite(loss):
                    store.set(idx, float(loss), None if np.isnan(acc) else float(acc),
                              None if np.isnan(se) else float(se))
                else:
                    store.set(idx, np.nan, None, None)
                bar.update()
    finally:
        if gen is not None:
            gen.close()


def grid_plan(probe: Any, shard: str, n_points: int) -> tuple[str, Any]:
    """How a grid of `n_points` loss evaluations is spread over the probe's ranks.

    Returns `(mode, evaluator)`: "alone" (not distributed: the probe), "data" (every point on
    the distributed probe: each rank its share of the batches, one all-reduce per point) or
    "points" (each rank evaluates its own points on all the data with `probe.alone()`, a
    non-distributed view of the same model and data). `shard="auto"` takes "points" when every
    rank can see all the data (not a `DistributedSampler` loader), the whole data set fits in
    every rank's device cache (`cache_bytes`), and there are at least as many points as ranks;
    otherwise "data". Collective: every rank must call it; all ranks get the same mode.
    """
    OneOf(SHARD_OPTIONS)("shard", shard)
    comm: Comm = probe.batch_pass.comm
    if not comm.active:
        return "alone", probe
    if shard == "data":
        return "data", probe
    probe.n_samples  # noqa: B018 - first use (collective): the share's bytes are known after
    data = probe.batch_pass.data
    blind = data.given is None or full_source(data.given, comm) is None
    n_blind, total_bytes = comm.reduce([float(blind), float(data.local_bytes)])
    if n_blind:
        if shard == "points":
            raise LandscapeError(
                "shard='points' needs all the data on every rank, but the probe holds only this "
                "rank's share (a DistributedSampler loader); pass the plain loader, or "
                "shard='data'."
            )
        return "data", probe
    if shard == "auto":
        (n_small,) = comm.reduce([float(total_bytes > data.cache_bytes)])
        if n_small or n_points < comm.world_size:
            return "data", probe
    twin, error = None, None
    try:
        twin = probe.alone()
        twin.n_samples  # noqa: B018 - this rank's pass over all the data
    except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
        error = e
    comm.reduce([], error=error)
    return "points", twin


def _sha(v: Tensor) -> str:
    raw = v.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(raw).hexdigest()


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="pt", desc="landscape")
