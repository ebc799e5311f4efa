"""FSDP2 models measured sharded (`landscape.sharded`): 2 gloo ranks under torchrun, each holding
its shards of a tiny float64 model (uneven rows and an empty shard), give the top eigenvalues,
Hutch++ and Hutchinson traces and SLQ density of one process on the unsharded model to 1e-6
(their vectors drawn so that the ranks' shards together are one process's vectors), leave the
model and its gradients unchanged, and refuse what they cannot measure with a LandscapeError."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.fsdp_ranks import data, measure, model

from landscape import Probe

pytestmark = pytest.mark.slow  # the whole module: see `make test-fast`

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().parent / "helpers" / "fsdp_ranks.py"


def torchrun(script: Path, *args: str) -> str:
    """The stdout of `script` run by 2 gloo ranks under torchrun (killed after 240 s)."""
    launch = subprocess.Popen(  # its own session: the ranks are killed with it on a timeout
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    try:
        out, err = launch.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(launch.pid, signal.SIGKILL)
        launch.communicate()
        raise
    assert launch.returncode == 0, err[-4000:]
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("fsdp") / "rank"
    torchrun(SCRIPT, str(out))
    return [json.loads(Path(f"{out}.{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def single() -> dict:
    probe = Probe(model(), data(), loss_fn=torch.nn.functional.mse_loss, batch_size=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return measure(probe)


def test_sharded_results_equal_one_process(ranks, single):
    for got in ranks:
        assert got["method"] == "finite_difference"
        assert got["eig_converged"]
        np.testing.assert_allclose(got["eigenvalues"], single["eigenvalues"], rtol=1e-6)
        np.testing.assert_allclose(got["hutchpp"], single["hutchpp"], rtol=1e-6)
        np.testing.assert_allclose(got["hutchinson"], single["hutchinson"], rtol=1e-6)
        scale = max(abs(x) for x in single["density_nodes"])
        np.testing.assert_allclose(got["density_nodes"], single["density_nodes"], rtol=1e-6,
                                   atol=1e-6 * scale)
        np.testing.assert_allclose(got["density_weights"], single["density_weights"],
                                   rtol=1e-6, atol=1e-9)
        assert got["density_trace"] == pytest.approx(single["density_trace"], rel=1e-6)
        assert got["loss"] == pytest.approx(single["loss"], rel=1e-12)
        for name in ("flatness", "sharpness", "average_sharpness", "linf_sharpness"):
            np.testing.assert_allclose(got[name], single[name], rtol=1e-6, err_msg=name)
    assert ranks[0]["eigenvalues"] == ranks[1]["eigenvalues"]  # every rank the same numbers


def test_vectors_are_sharded_like_the_parameters(ranks, single):
    # Linear(5, 7) rows split 4/3, Linear(7, 1) 1/0: rank 1 holds no element of the last layer
    assert [got["num_params"] for got in ranks] == [32, 18]
    pieces = sorted(tuple(p) for got in ranks for p in got["layout"])
    covered = [i for a, b in pieces for i in range(a, b)]
    assert covered == list(range(single["num_params"]))


def test_model_and_gradients_unchanged(ranks):
    for got in ranks:
        assert got["unchanged"] and got["training"]


def test_refuses_what_it_cannot_measure(ranks):
    expected = {
        "exact_method": "double backward", "uneven_batches": "different numbers of batches",
        "hvp_outside": "probe.vectors()", "unsupported_estimator": "probe.vectors()",
        "blocks": "not available on a model sharded", "xtrace": "xtrace",
        "shard_dim_1": "Shard(0)", "dtensor_without_fsdp": "only when FSDP2 shards them",
    }
    for got in ranks:
        for case, words in expected.items():
            assert words in got["refusals"][case], (case, got["refusals"][case])


def test_the_guide_example_runs_under_torchrun_and_matches_one_process(tmp_path):
    text = (ROOT / "docs" / "guides" / "any-model.md").read_text()
    code = re.search(r"```python\n(# not run: needs torchrun \(tests/test_sharded.py.*?)```",
                     text, re.S).group(1)
    script = tmp_path / "sharded_probe.py"
    script.write_text(code)
    # the ranks' lines (torchrun may interleave them): rank r, then what it measured
    lines = sorted(re.findall(r"rank (\d): (.*?density mean -?[\d.]+)", torchrun(script)))
    assert [r for r, _ in lines] == ["0", "1"] and lines[0][1] == lines[1][1]
    # one process, the model unsharded: the numbers the ranks printed
    from landscape import hessian_density, hessian_eigenvalues, hessian_trace
    from landscape.data import digits_mlp, digits_tensors

    model = digits_mlp(seed=0, activation=torch.nn.Tanh).double()
    probe = Probe(model, digits_tensors(dtype=torch.float64), batch_size=240)
    top = hessian_eigenvalues(probe, k=2).eigenvalues
    trace = hessian_trace(probe, n_hvp=30, seed=0)
    mean = hessian_density(probe, n_vectors=2, n_steps=20, seed=0).mean
    numbers = [float(t) for t in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", lines[0][1])]
    np.testing.assert_allclose(numbers, [*top, trace.estimate, trace.stderr, mean],
                               rtol=1e-5, atol=1e-4)
