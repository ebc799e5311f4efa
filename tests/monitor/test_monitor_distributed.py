"""The monitor under DDP on 2 gloo ranks: every rank measures its share of the measurement set
and gets the single-process values, the ranks agree on which steps the time budget skips (else
their collectives would hang), and only rank 0 writes the log."""

from __future__ import annotations

import pytest
import torch
from helpers.distributed import run_on_ranks
from helpers.models import tiny_data, tiny_mlp

from landscape import CurvatureMonitor
from landscape.monitor import read_rows

pytestmark = pytest.mark.slow  # the whole module: see `make test-fast`


def _train_rank(rank: int, world: int, log_dir: str) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    x, y = tiny_data(40)
    module = tiny_mlp()
    model = DistributedDataParallel(module)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    exact = CurvatureMonitor(module, (x, y), optimizer=opt, every=5, budget=None, tol=1e-8,
                             log_dir=log_dir, probe_options={"batch_size": 8})
    budgeted = CurvatureMonitor(module, (x, y), every=1, measures=("loss",))
    shard = slice(rank * 20, (rank + 1) * 20)  # each rank trains on its half
    for step in range(1, 16):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[shard]), y[shard]).backward()
        opt.step()
        exact.step(step)
        budgeted.step(step)
    torch.distributed.barrier()
    return {"rows": exact.rows, "budgeted": [r["step"] for r in budgeted.rows],
            "skipped": budgeted.skipped,
            "state": {k: v.clone() for k, v in module.state_dict().items()}}


def test_monitor_under_ddp_matches_one_process(tmp_path):
    ranks = run_on_ranks(_train_rank, str(tmp_path), world_size=2, timeout=300)
    a, b = ranks
    assert [r["step"] for r in a["rows"]] == [5, 10, 15]
    for ra, rb in zip(a["rows"], b["rows"]):
        assert ra["top_eigenvalue"] == pytest.approx(rb["top_eigenvalue"], rel=1e-10)
        assert ra["gradient_norm"] == pytest.approx(rb["gradient_norm"], rel=1e-10)
    assert a["budgeted"] == b["budgeted"] and a["skipped"] == b["skipped"]
    # one process, the final weights, all the data
    x, y = tiny_data(40)
    model = tiny_mlp()
    model.load_state_dict(a["state"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    alone = CurvatureMonitor(model, (x, y), optimizer=opt, tol=1e-8).measure(15)
    assert a["rows"][-1]["top_eigenvalue"] == pytest.approx(alone["top_eigenvalue"], rel=1e-7)
    assert a["rows"][-1]["gradient_norm"] == pytest.approx(alone["gradient_norm"], rel=1e-10)
    assert a["rows"][-1]["eos_ratio"] == pytest.approx(alone["eos_ratio"], rel=1e-7)
    assert [r["step"] for r in read_rows(tmp_path)] == [5, 10, 15]  # rank 0 alone wrote
