"""Wrapped models under 2 gloo ranks: a DDP-wrapped model is measured through the module it
wraps (equal to one process's values). FSDP2 models: tests/test_sharded.py."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers.distributed import run_on_ranks
from helpers.models import tiny_data, tiny_mlp

from landscape import Probe, hessian_eigenvalues, hessian_trace

pytestmark = pytest.mark.slow  # the whole module: see `make test-fast`

def _single() -> dict:
    x, y = tiny_data(37)
    return _measure(Probe(tiny_mlp(), (x, y), batch_size=5))


def _measure(probe: Probe) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        v = torch.randn(probe.num_params, dtype=probe.dtype,
                        generator=torch.Generator().manual_seed(4))
        return {
            "names": list(probe.param_names),
            "hvp": probe.hvp(v),
            "eig": hessian_eigenvalues(probe, k=2, tol=1e-8).eigenvalues,
            "trace": hessian_trace(probe, method="hutchinson", n_hvp=20, seed=1).estimate,
            "method": probe.hvp_method_used,
        }


def _ddp_rank(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    x, y = tiny_data(37)
    model = DistributedDataParallel(tiny_mlp())
    out = _measure(Probe(model, (x, y), batch_size=5))
    out["distributed"] = True
    torch.distributed.barrier()
    return out


@pytest.fixture(scope="module")
def single():
    return _single()


def test_ddp_wrapped_model_is_measured_through_its_module(single):
    ranks = run_on_ranks(_ddp_rank, world_size=2, timeout=300)
    for got in ranks:
        assert got["names"] == single["names"]  # the wrapped module's names: no "module."
        torch.testing.assert_close(got["hvp"], single["hvp"], rtol=1e-6, atol=1e-10)
        np.testing.assert_allclose(got["eig"], single["eig"], rtol=1e-6)
        assert got["trace"] == pytest.approx(single["trace"], rel=1e-6)
        assert got["method"] == single["method"]

