"""The Probe under torch.distributed: 2 gloo ranks on CPU give the single-process values.

One spawn of two ranks computes everything (spawning costs seconds); the tests compare each
rank's numbers with the same measurements made here in one process (float64, 1e-8 relative).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers.distributed import assert_close as _close
from helpers.distributed import run_on_ranks
from helpers.models import tiny_data, tiny_mlp
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from landscape import LandscapeError, Probe
from landscape.data import digits_cnn, digits_tensors

pytestmark = pytest.mark.slow  # the whole module: see `make test-fast`

HVP_METHODS = ("auto", "cached_graph", "double_backward", "forward_over_reverse")
WORLD = 2


def _mlp():
    model = tiny_mlp()
    x, y = tiny_data(37)
    return model, [(x[s : s + 5], y[s : s + 5]) for s in range(0, 37, 5)]  # 8 batches, last 2


def _cnn():
    model = digits_cnn(channels=4, seed=0).double()
    x, y = digits_tensors("train", image=True, dtype=torch.float64)
    x, y = x[:90], y[:90]
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        model.train()
        model(x)
        model.eval()
    return model, (x, y)


def _measure(model, data, **kw) -> dict:
    """Every Probe measurement, as plain tensors and floats."""
    def make(**extra):
        # rebatch=False: the forward counts below check the sharding of the user's batches
        return Probe(model, data, batch_size=16, rebatch=False, **kw, **extra)

    probe = make()
    v = torch.randn(probe.num_params, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    meter = probe.meter()
    ev = probe.evaluate()
    n_batch_forward = meter.cost().n_batch_forward
    loss, g, hg = probe.gradient_and_hvp()
    first = probe.param_names[0].rpartition(".")[0]
    out = {
        "world_size": probe.world_size, "rank": probe.rank,
        "is_distributed": probe.is_distributed, "n_samples": probe.n_samples,
        "loss": ev.loss, "accuracy": ev.accuracy, "n_batch_forward": n_batch_forward,
        "gradient": probe.gradient(), "loss_g": loss, "g": g, "hg": hg,
        "hv_given": probe.gradient_and_hvp(v)[2],
        "hvp_delta": probe.hvp(v, delta=0.01 * v),
        "ggn": probe.ggn_vp(v),
        "points": [e.loss for e in probe.evaluate_points([v], [(0.0,), (0.01,), (-0.02,)])],
        "subset": probe.subset(11, seed=3).evaluate().loss,
        "groups": [p.loss() for p in probe.sample_groups(10)],
        "restricted": probe.restricted(first).hvp(v[: probe.restricted(first).num_params]),
    }
    for method in HVP_METHODS:
        out[f"hvp_{method}"] = make(hvp_method=method).hvp(v)
    return out


def _loaders(rank: int | None) -> dict:
    """Loaders: a DistributedSampler one (ranks keep their own), a shuffled one, one batch."""
    x, y = tiny_data(36)
    ds = TensorDataset(x, y)
    if rank is None:
        sampled = DataLoader(ds, batch_size=4)
    else:
        sampled = DataLoader(ds, batch_size=4,
                             sampler=DistributedSampler(ds, WORLD, rank, shuffle=True, seed=1))
    out = {}
    for name, data in [("sampler", sampled), ("shuffled", DataLoader(ds, 5, shuffle=True)),
                       ("one_batch", [(x, y)])]:
        probe = Probe(tiny_mlp(), data)
        out[name] = (probe.loss(), probe.gradient(), probe.hvp(probe.gradient()),
                     probe.n_samples)
    return out


def _errors() -> dict:
    """The message each rank raises on bad data (only rank 1's share is bad, or all is empty)."""
    model, batches = _mlp()
    bad_value = list(batches)
    bad_value[3] = (torch.full_like(batches[3][0], math.nan), batches[3][1])  # rank 1's batch
    bad_shape = list(batches)
    bad_shape[5] = (batches[5][0],)  # cannot be unpacked: rank 1's batch
    out = {}
    for name, data in [("nan", bad_value), ("unpack", bad_shape), ("empty", [])]:
        try:
            Probe(model, data).loss()
            out[name] = None
        except LandscapeError as e:
            out[name] = str(e)
    return out


def _on_rank(rank: int, world_size: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"mlp": _measure(*_mlp()), "cnn": _measure(*_cnn()),
                "loaders": _loaders(rank), "errors": _errors()}


@pytest.fixture(scope="module")
def ranks():
    return run_on_ranks(_on_rank, world_size=WORLD, timeout=240)


@pytest.fixture(scope="module")
def single():
    return {"mlp": _measure(*_mlp()), "cnn": _measure(*_cnn()), "loaders": _loaders(None)}


QUANTITIES = ["loss", "accuracy", "gradient", "loss_g", "g", "hg", "hv_given", "hvp_delta", "ggn",
              "points", "subset", "groups", "restricted", *[f"hvp_{m}" for m in HVP_METHODS]]


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_every_rank_returns_the_single_process_values(ranks, single, model):
    ref = single[model]
    assert not ref["is_distributed"] and ref["world_size"] == 1
    for rank, res in enumerate(ranks):
        got = res[model]
        assert (got["rank"], got["world_size"], got["is_distributed"]) == (rank, WORLD, True)
        assert got["n_samples"] == ref["n_samples"]
        for name in QUANTITIES:
            _close(got[name], ref[name])


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_each_rank_runs_about_half_the_batch_forwards(ranks, single, model):
    counts = [res[model]["n_batch_forward"] for res in ranks]
    total = single[model]["n_batch_forward"]
    assert sum(counts) == total
    assert max(counts) == math.ceil(total / WORLD)


def test_loaders_distributed_sampler_shuffled_and_fewer_batches_than_ranks(ranks, single):
    ref = single["loaders"]
    for res in ranks:
        for name in ("sampler", "shuffled", "one_batch"):
            loss, g, hg, n = res["loaders"][name]
            assert n == ref[name][3] == 36
            _close([loss, g, hg], list(ref[name][:3]))


def test_bad_data_raises_on_every_rank(ranks):
    first, second = (res["errors"] for res in ranks)
    for e in (first["nan"], second["nan"]):
        assert e is not None and "not finite" in e
    assert first["nan"] == second["nan"]
    assert "cannot unpack" in second["unpack"]
    assert first["unpack"].startswith("rank 1 of 2 failed (LandscapeError): cannot unpack")
    assert first["empty"] == second["empty"] and "data is empty" in first["empty"]


def test_distributed_option_is_checked():
    model, batches = _mlp()
    assert not Probe(model, batches).is_distributed
    with pytest.raises(LandscapeError, match="torch.distributed is not initialized"):
        Probe(model, batches, distributed=True)
    with pytest.raises(LandscapeError, match="distributed must be one of"):
        Probe(model, batches, distributed="yes")
