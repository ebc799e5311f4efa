"""The CLI under torchrun: 2 gloo ranks write the reports one process writes (float32, 1e-6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape.data import digits_loaders, digits_mlp
from landscape.data.training import train

pytestmark = pytest.mark.slow  # the whole module: see `make test-fast`

MEASURES = "hessian_eigenvalues,hessian_trace"
ROOT = Path(__file__).resolve().parents[1]  # this checkout's landscape, also in the subprocesses


def cli(*args: str, cwd: Path, ranks: int = 1) -> subprocess.CompletedProcess:
    launch = [] if ranks == 1 else ["-m", "torch.distributed.run", "--standalone",
                                    f"--nproc_per_node={ranks}"]
    return subprocess.run([sys.executable, *launch, "-m", "landscape.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist-cli")
    loader, _ = digits_loaders(batch_size=64)
    model = train(digits_mlp(seed=0), loader, epochs=1, lr=0.05, seed=0)
    torch.save(model.state_dict(), root / "mlp.pt")
    return root


@pytest.mark.parametrize("command", ["audit", "plot"])
def test_torchrun_cli_matches_one_process(workdir, command):
    if command == "audit":
        args = ["audit", "--model", "digits_mlp", "--checkpoint", "mlp.pt", "--budget", "quick",
                "--measures", MEASURES, "--no-progress"]
    else:
        args = ["plot", "--model", "digits_mlp", "--checkpoint", "mlp.pt", "--kind", "1d",
                "--points", "5", "--no-progress"]
    runs = {}
    for ranks in (1, 2):
        out = workdir / f"{command}{ranks}"
        proc = cli(*args, "--out", out, cwd=workdir, ranks=ranks)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[ranks] = (proc, out)
    (one, out1), (two, out2) = runs[1], runs[2]
    if command == "plot":  # only rank 0 prints
        assert two.stdout.replace(str(out2), str(out1)) == one.stdout
    if command == "audit":
        assert two.stdout.count("Audit of mlp.pt") == 1  # only rank 0 prints
        ref = json.loads((out1 / "report.json").read_text())["measures"]
        got = json.loads((out2 / "report.json").read_text())["measures"]
        for key in ("loss", "hessian_eigenvalues", "hessian_trace"):
            assert got[key]["value"] == pytest.approx(ref[key]["value"], rel=1e-6), key
        assert got["hessian_trace"]["stderr"] == pytest.approx(ref["hessian_trace"]["stderr"],
                                                              rel=1e-5)
        assert got["hessian_eigenvalues"]["cost"]["n_hvp"] == \
            ref["hessian_eigenvalues"]["cost"]["n_hvp"]
    else:
        ref = json.loads((out1 / "1d.json").read_text())
        got = json.loads((out2 / "1d.json").read_text())
        np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-6)
        assert sorted(p.name for p in out2.iterdir()) == sorted(p.name for p in out1.iterdir())


def test_track_is_refused_under_torchrun(workdir):
    proc = cli("track", "mlp.pt", "--model", "digits_mlp", "--out", workdir / "t", cwd=workdir,
               ranks=2)
    assert proc.returncode != 0  # torchrun exits 1 when its ranks exit 2
    assert "track runs in one process; launch it without torchrun" in proc.stderr
