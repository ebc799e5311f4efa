"""Silent wrong numbers refused, and nothing lost: a summed loss is refused, `compare` re-estimates
BatchNorm statistics on its own and says so, an interrupted audit resumes, figures are written
atomically."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from torch import nn

from landscape import LandscapeError, Probe, audit, compare
from landscape.data import digits_cnn, digits_mlp, digits_tensors


@pytest.fixture(scope="module")
def digits():
    x, y = digits_tensors("train")
    return x[:120], y[:120]


@pytest.mark.parametrize("loss_fn", [
    nn.CrossEntropyLoss(reduction="sum"),
    functools.partial(nn.functional.cross_entropy, reduction="sum"),
    lambda out, y: nn.functional.cross_entropy(out, y, reduction="sum"),
    nn.CrossEntropyLoss(reduction="none"),
], ids=["module", "partial", "plain-function", "none"])
def test_a_summed_loss_is_refused_with_the_fix(digits, loss_fn):
    with pytest.raises(LandscapeError, match="reduction='mean'"):
        Probe(digits_mlp(hidden=8, seed=0), digits, loss_fn).loss()


@pytest.mark.parametrize("loss_fn", [None, nn.CrossEntropyLoss(),
                                     lambda out, y: nn.functional.cross_entropy(out, y)])
def test_a_mean_loss_is_accepted(digits, loss_fn):
    probe = Probe(digits_mlp(hidden=8, seed=0), digits, loss_fn)
    reference = Probe(digits_mlp(hidden=8, seed=0), digits).loss()
    assert probe.loss() == pytest.approx(reference, rel=1e-6)


def test_compare_recomputes_batchnorm_statistics_by_default_and_says_so(tmp_path):
    x, y = digits_tensors("train", image=True)
    data = (x[:64], y[:64])
    probes = {f"m{s}": Probe(digits_cnn(seed=s).eval(), data) for s in (0, 1)}
    result = compare(probes, measures=["loss_line"], interpolation_points=3, align=False)
    assert result.buffers == "recompute"
    assert "BatchNorm" in result.buffers_reason
    assert "(recompute, chosen automatically" in result.to_markdown()
    assert result.to_dict()["buffers"] == "recompute"
    xm, ym = digits_tensors("train")
    plain = {f"m{s}": Probe(digits_mlp(hidden=8, seed=s), (xm[:64], ym[:64])) for s in (0, 1)}
    assert compare(plain, measures=["loss_line"], interpolation_points=3,
                   align=False).buffers == "interpolate"


class Interrupted(Exception):
    """Stands for an interruption between two measures (BaseException would end pytest)."""


def test_an_interrupted_audit_keeps_its_measures_and_resumes(digits, tmp_path, monkeypatch):
    import landscape.curvature as curvature

    measures = ["hessian_eigenvalues", "hessian_trace", "loss_line"]
    probe = Probe(digits_mlp(hidden=8, seed=0), digits)
    partial = tmp_path / "audit.partial.json"
    real_trace = curvature.hessian_trace

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(curvature, "hessian_trace", broken)
    with pytest.raises(KeyboardInterrupt):
        audit(probe, budget="quick", measures=measures, resume=partial)
    kept = json.loads(partial.read_text())["measures"]
    assert list(kept) == ["hessian_eigenvalues"]

    monkeypatch.setattr(curvature, "hessian_trace", real_trace)
    said = []
    resumed = audit(probe, budget="quick", measures=measures, resume=partial, log=said.append)
    assert any(line.startswith("hessian_eigenvalues: taken from") for line in said)
    assert "measuring hessian_eigenvalues ..." not in said
    assert "measuring hessian_trace ..." in said
    fresh = audit(probe, budget="quick", measures=measures)
    for name in measures:
        assert resumed.measures[name].value == pytest.approx(fresh.measures[name].value,
                                                             rel=1e-9), name
    # another seed is another audit: nothing is taken from the file
    said.clear()
    audit(probe, budget="quick", seed=1, measures=["hessian_eigenvalues"], resume=partial,
          log=said.append)
    assert "measuring hessian_eigenvalues ..." in said


def test_a_resumed_audit_still_draws_its_figures(digits, tmp_path):
    probe = Probe(digits_mlp(hidden=8, seed=0), digits)
    partial = tmp_path / "p.json"
    audit(probe, budget="quick", measures=["loss_line", "hessian_density"], resume=partial)
    again = audit(probe, budget="quick", measures=["loss_line", "hessian_density"],
                  resume=partial, log=lambda _l: None)
    written = {p.name for p in again.write(tmp_path / "out")}
    assert {"loss_line.png", "hessian_density.png"} <= written


def test_figures_are_written_through_a_temporary_file(tmp_path, monkeypatch):
    """An interruption while saving leaves the previous file whole and no temporary behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from landscape.plot import save_figure

    fig = plt.figure()
    (first,) = save_figure(fig, tmp_path / "fig", formats=("png",))
    before = first.read_bytes()

    def interrupted(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(type(fig), "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, tmp_path / "fig", formats=("png",))
    assert first.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]
    plt.close(fig)


def test_the_model_is_left_unchanged_by_the_reduction_check(digits, snapshot):
    model = digits_cnn(seed=0).train()  # BatchNorm in training mode: its statistics must stay
    x, y = digits_tensors("train", image=True)
    before = snapshot(model)
    Probe(model, (x[:50], y[:50]), nn.CrossEntropyLoss()).loss()
    before.assert_unchanged()
    assert torch.is_grad_enabled()
