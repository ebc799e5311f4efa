"""Estimators and surfaces under 2 gloo ranks equal the single-process values.

One spawn of two ranks computes everything; the tests compare each rank's numbers with the same
measurements made here in one process (float64, 1e-8 relative). The Lanczos iteration count and
every estimator's HVP count must agree too: the stopping tests see the same reduced numbers.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from helpers.distributed import assert_close as _close
from helpers.distributed import run_on_ranks
from helpers.models import tiny_data, tiny_mlp
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from landscape import (
    LandscapeError,
    Probe,
    first_order_flatness,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    interpolate,
    loss_line,
    loss_surface,
    sharpness,
)
from landscape.storage import read

pytestmark = pytest.mark.slow  # the whole module: see `make test-fast`

WORLD = 2
XS, YS = np.linspace(-1.0, 1.0, 3), np.linspace(-0.5, 1.5, 4)  # 12 points: 6 per rank


def _probe(**kw) -> Probe:
    x, y = tiny_data(37)
    return Probe(tiny_mlp(), [(x[s : s + 5], y[s : s + 5]) for s in range(0, 37, 5)], **kw)


def _dirs(probe: Probe) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return tuple(0.3 * torch.randn(probe.num_params, generator=gen, dtype=torch.float64)
                 for _ in range(2))


def _estimators() -> dict:
    probe = _probe()
    eig = hessian_eigenvalues(probe, k=3, seed=2)
    tr = hessian_trace(probe, n_hvp=30, method="hutch++", seed=1)
    dens = hessian_density(probe, n_vectors=2, n_steps=15, grid=50, seed=3)
    worst = sharpness(probe, 0.05, kind="worst", steps=4, seed=4)
    avg = sharpness(probe, 0.05, kind="average", n_samples=8, seed=4)
    flat = first_order_flatness(probe, 0.05, steps=4, seed=4)
    return {
        "eig": (torch.as_tensor(eig.eigenvalues), eig.n_hvp, eig.converged),
        "trace": (tr.estimate, tr.stderr, tr.n_hvp),
        "density": (torch.as_tensor(dens.density), torch.as_tensor(dens.nodes).reshape(-1),
                    dens.n_hvp),
        "worst": (worst.value, worst.perturbed_loss, worst.n_forward),
        "average": (avg.value, avg.stderr),
        "flatness": (flat.value, flat.n_hvp),
    }


def _surfaces(out_dir: str | None) -> dict:
    probe = _probe()
    dx, dy = _dirs(probe)
    probe.loss()  # first use (the data checks) outside the counts below
    out = {}
    for shard in ("points", "data"):
        meter = probe.meter()
        s = loss_surface(probe, dx, dy, XS, YS, shard=shard)
        out[shard] = (torch.as_tensor(s.loss), torch.as_tensor(s.accuracy),
                      meter.cost().n_batch_forward)
    sub = loss_surface(probe, dx, dy, XS, YS, max_samples=16, seed=2)
    out["subsets"] = (torch.as_tensor(sub.loss), torch.as_tensor(sub.loss_stderr))
    out["line"] = torch.as_tensor(loss_line(probe, dx, XS, shard="data").loss)
    small_cache = _probe(cache_bytes=1)  # the data does not fit: auto falls back to data
    meter = small_cache.meter()
    out["small_cache"] = (torch.as_tensor(loss_line(small_cache, dx, XS).loss),
                          meter.cost().n_batch_forward)
    out["interpolate"] = _interpolation()
    if out_dir is not None:
        out["resume"] = _resume(probe, dx, dy, out_dir)
    return out


def _bn_mlp(seed: int) -> torch.nn.Module:
    mlp = tiny_mlp(seed)
    bn = torch.nn.BatchNorm1d(6).double()
    bn.running_mean.fill_(0.1 * seed)
    bn.running_var.fill_(1.0 + seed)
    return torch.nn.Sequential(mlp[0], bn, mlp[1], mlp[2])


def _interpolation() -> tuple:
    """Interpolation to another checkpoint, BatchNorm statistics moving along the path, and
    re-estimated at each point with every rank holding its share of the batches."""
    x, y = tiny_data(37)
    probe = Probe(_bn_mlp(0), (x, y), batch_size=5)
    line = interpolate(probe, _bn_mlp(1).state_dict(), np.linspace(-0.5, 1.5, 5))
    recomputed = interpolate(probe, _bn_mlp(1).state_dict(), np.linspace(-0.5, 1.5, 5),
                             buffers="recompute", shard="data")
    return torch.as_tensor(line.loss), line.barrier, torch.as_tensor(recomputed.loss)


def _resume(probe: Probe, dx, dy, out_dir: str) -> tuple:
    """A full run writes the file; rank 0 erases 5 points; a rerun computes only those 5."""
    path = f"{out_dir}/surface.npz"
    first = loss_surface(probe, dx, dy, XS, YS, out=path)
    if probe.rank == 0:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        arrays["done"].reshape(-1)[[0, 3, 4, 7, 11]] = False
        arrays["loss"].reshape(-1)[[0, 3, 4, 7, 11]] = np.nan
        np.savez(path, **arrays)
    torch.distributed.barrier()
    meter = probe.meter()
    again = loss_surface(probe, dx, dy, XS, YS, out=path)
    stored = read(path)
    return (torch.as_tensor(first.loss), torch.as_tensor(again.loss),
            torch.as_tensor(stored["loss"]), bool(stored["done"].all()), meter.cost().n_forward)


def _sampler_loader(rank: int | None) -> dict:
    """A DistributedSampler loader: ranks hold only their share, so points sharding is refused."""
    x, y = tiny_data(36)
    ds = TensorDataset(x, y)
    sampler = None if rank is None else DistributedSampler(ds, WORLD, rank, shuffle=False)
    probe = Probe(tiny_mlp(), DataLoader(ds, batch_size=4, sampler=sampler))
    dx, _ = _dirs(probe)
    out = {"auto": torch.as_tensor(loss_line(probe, dx, XS).loss)}
    try:
        loss_line(probe, dx, XS, shard="points")
        out["points"] = None
    except LandscapeError as e:
        out["points"] = str(e)
    return out


def _failing_point() -> tuple[str, bool]:
    """A loss that raises far along the line: only rank 1 evaluates that point."""
    x, y = tiny_data(12)
    model = tiny_mlp()
    before = [p.detach().clone() for p in model.parameters()]

    def batch_loss(m, batch):
        if next(m.parameters()).abs().max() > 10:
            raise RuntimeError("exploded")
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])

    probe = Probe(model, (x, y), batch_loss=batch_loss, batch_size=4)
    try:
        loss_line(probe, torch.ones(probe.num_params, dtype=torch.float64), [0.0, 100.0],
                  shard="points")
        message = ""
    except Exception as e:  # noqa: BLE001 - the message is the result
        message = f"{type(e).__name__}: {e}"
    return message, all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _on_rank(rank: int, world_size: int, out_dir: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"estimators": _estimators(), "surfaces": _surfaces(out_dir),
                "sampler": _sampler_loader(rank), "failing": _failing_point()}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("dist-surface"))
    return run_on_ranks(_on_rank, out_dir, world_size=WORLD, timeout=240)


@pytest.fixture(scope="module")
def single():
    return {"estimators": _estimators(), "surfaces": _surfaces(None),
            "sampler": _sampler_loader(None)}


@pytest.mark.parametrize("name", ["eig", "trace", "density", "worst", "average", "flatness"])
def test_estimators_equal_the_single_process_values(ranks, single, name):
    ref = single["estimators"][name]
    for res in ranks:
        _close(res["estimators"][name], ref)


@pytest.mark.parametrize("name", ["points", "data", "subsets", "line", "interpolate"])
def test_surfaces_equal_the_single_process_values(ranks, single, name):
    ref = single["surfaces"][name]
    for res in ranks:
        got = res["surfaces"][name]
        if name in ("points", "data"):
            _close(got[:2], ref[:2])
        else:
            _close(got, ref)


def test_each_rank_runs_about_half_the_surface_forwards(ranks, single):
    """No-grad evaluations merge each probe's cached batches into one chunk (rebatch), so a
    point costs one forward per process that evaluates it."""
    total = single["surfaces"]["points"][2]  # 12 points x 1 merged chunk of the 8 batches
    n_batches = 8
    assert total == 12
    for res in ranks:
        # points: 6 points on all the data, plus one pass over the 8 batches to cache it
        assert res["surfaces"]["points"][2] == 6 + n_batches
        # data: 12 points on the rank's 4 batches, merged into one chunk
        assert res["surfaces"]["data"][2] == 12


def test_auto_falls_back_to_data_sharding_when_the_data_does_not_fit(ranks, single):
    ref_loss, ref_count = single["surfaces"]["small_cache"]
    assert ref_count == 2 * 8 + 3 * 8  # first use: two checking passes, then 3 points, uncached
    for res in ranks:
        loss, count = res["surfaces"]["small_cache"]
        _close(loss, ref_loss)
        assert count == ref_count // WORLD


def test_resume_under_two_ranks(ranks):
    for res in ranks:
        first, again, stored, done, n_forward = res["surfaces"]["resume"]
        assert done
        _close(again, first)
        _close(stored, first)
    # only the 5 erased points are evaluated: rank 0 takes 3 of them, rank 1 takes 2
    assert [res["surfaces"]["resume"][4] for res in ranks] == [math.ceil(5 / WORLD), 5 // WORLD]


def test_distributed_sampler_uses_data_sharding_and_refuses_points(ranks, single):
    for res in ranks:
        _close(res["sampler"]["auto"], single["sampler"]["auto"])
        assert "shard='points' needs all the data on every rank" in res["sampler"]["points"]
    assert single["sampler"]["points"] is None  # one process: nothing to shard


def test_shard_option_is_checked():
    probe = _probe()
    with pytest.raises(LandscapeError, match="shard must be one of"):
        loss_line(probe, _dirs(probe)[0], XS, shard="rows")


def test_a_point_failing_on_one_rank_raises_on_every_rank(ranks):
    (first, kept0), (second, kept1) = (res["failing"] for res in ranks)
    assert second == "RuntimeError: exploded"
    assert first == "LandscapeError: rank 1 of 2 failed (RuntimeError): exploded"
    assert kept0 and kept1  # the model is restored on both ranks
