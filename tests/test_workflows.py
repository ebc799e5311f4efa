"""audit, compare and track from Python: fields, the optional measures, resume, safety."""

from __future__ import annotations

import json
import math

import pytest
import torch

from landscape import LandscapeError, Probe, audit, compare, track
from landscape.audit import DEFAULT_MEASURES, OPTIONAL_MEASURES
from landscape.data import digits_loaders, digits_mlp, digits_tensors
from landscape.data.training import train

pytestmark = pytest.mark.slow  # the whole module: see `make test-fast`

@pytest.fixture(scope="module")
def trained():
    loader, _ = digits_loaders(batch_size=64)
    return [train(digits_mlp(hidden=12, seed=s), loader, epochs=2, lr=0.05, seed=s)
            for s in (0, 1)]


@pytest.fixture(scope="module")
def data():
    x, y = digits_tensors("train")
    return x[:200], y[:200]


def test_audit_reports_every_default_measure_and_leaves_the_model(trained, data, snapshot):
    model = trained[0]
    snap = snapshot(model)
    report = audit(Probe(model, data), budget="quick", seed=3)
    assert set(DEFAULT_MEASURES) <= set(report.measures)
    assert not set(OPTIONAL_MEASURES) & set(report.measures)
    m = report.measures
    # consistency between measures: top eigenvalue >= the density mean; trace with error bars
    assert m["hessian_eigenvalues"].value >= m["hessian_density"].value
    assert m["hessian_trace"].stderr > 0 and m["sharpness_average_l2"].stderr > 0
    assert m["hessian_smallest_eigenvalue"].value <= m["hessian_eigenvalues"].value
    assert m["first_order_flatness"].value >= 0
    d = json.loads(report.to_json())
    assert d["measures"]["hessian_eigenvalues"]["cost"]["n_hvp"] > 0
    assert d["measures"]["hessian_trace"]["settings"]["seed"] == 3
    snap.assert_unchanged()
    again = audit(Probe(model, data), budget="quick", seed=3, measures=["hessian_trace"])
    assert again.measures["hessian_trace"].value == m["hessian_trace"].value


def test_audit_optional_measures_beyond_the_peers(trained, data):
    report = audit(Probe(trained[0], data), budget="quick",
                   measures=["hessian_eigenvalues", "hessian_trace", *OPTIONAL_MEASURES],
                   lr=0.1)  # trace_ratio needs the learning rate
    m = report.measures
    assert m["pac_bayes_flatness"].value > 0 and m["pac_bayes_flatness"].stderr > 0
    assert math.isfinite(m["local_entropy"].value) and m["local_entropy"].stderr > 0
    assert "quadratic_agreement" in m


def test_audit_rejects_bad_options(trained, data):
    probe = Probe(trained[0], data)
    with pytest.raises(LandscapeError, match="budget must be one of"):
        audit(probe, budget="huge")
    with pytest.raises(LandscapeError, match=r"unknown measures \['vibes'\]"):
        audit(probe, measures=["vibes"])


def test_compare_reports_raw_and_aligned_barriers(trained, data, snapshot):
    snaps = [snapshot(m) for m in trained]
    result = compare({"a": Probe(trained[0], data), "b": trained[1]}, data=data,
                     measures=["hessian_eigenvalues"])
    assert result.names == ["a", "b"]
    pair = result.pairs[0]
    assert pair.barrier > 0 and pair.aligned_barrier is not None
    assert pair.aligned_distance < pair.distance  # alignment brings the weights closer
    assert result.table()["hessian_eigenvalues"]["b"]["value"] > 0
    for snap in snaps:
        snap.assert_unchanged()
    same = compare({"a": Probe(trained[0], data), "a2": Probe(trained[0], data)},
                   measures=["hessian_eigenvalues"])
    p = same.pairs[0]
    assert p.barrier == pytest.approx(0, abs=1e-6) and p.distance == 0
    assert p.cosine == pytest.approx(1) and p.aligned_barrier == pytest.approx(0, abs=1e-6)
    with pytest.raises(LandscapeError, match="pass model_fn="):
        compare({"x": "some.pt"}, data=data)


def test_track_measures_in_order_and_resumes(tmp_path, trained, data):
    paths = []
    for step, model in zip((200, 100), trained):
        paths.append(tmp_path / f"ckpt_{step}.pt")
        torch.save(model.state_dict(), paths[-1])
    out = tmp_path / "track.json"
    result = track(tmp_path, model_fn=lambda: digits_mlp(hidden=12), data=data,
                   measures=["loss", "gradient_norm"], out=out)
    assert result.steps == [100, 200]  # sorted by the step in the file name
    assert result.column("loss")[0] == pytest.approx(Probe(trained[1], data).loss())
    calls = []
    again = track(tmp_path, model_fn=lambda: calls.append(1) or digits_mlp(hidden=12),
                  data=data, measures=["loss", "gradient_norm"], out=out)
    assert calls == [] and again.rows == result.rows
    with pytest.raises(LandscapeError, match="measures must be among"):
        track(tmp_path, model_fn=digits_mlp, data=data, measures=["vibes"])


class TinyTransformer(torch.nn.Module):
    """A language model with its own loss, dict batches, dropout, LayerNorm, attention, an unused
    and a frozen layer: what users bring."""

    def __init__(self, vocab: int = 20, width: int = 16):
        super().__init__()
        self.vocab = vocab
        self.emb = torch.nn.Embedding(vocab, width)
        self.layer = torch.nn.TransformerEncoderLayer(width, 2, 32, dropout=0.1,
                                                      batch_first=True)
        self.head = torch.nn.Linear(width, vocab)
        self.unused = torch.nn.Linear(3, 3)
        self.frozen = torch.nn.Linear(width, width).requires_grad_(False)

    def forward(self, ids, labels):
        logits = self.head(self.layer(self.frozen(self.emb(ids))))
        return torch.nn.functional.cross_entropy(logits.reshape(-1, self.vocab),
                                                 labels.reshape(-1))


def test_audit_of_a_small_transformer_with_dict_batches(snapshot):
    model = TinyTransformer().train()
    snap = snapshot(model)
    g = torch.Generator().manual_seed(0)
    batches = [{"ids": torch.randint(0, 20, (4, 6), generator=g),
                "labels": torch.randint(0, 20, (4, 6), generator=g)} for _ in range(3)]
    probe = Probe(model, batches, batch_loss=lambda m, b: m(**b))
    report = audit(probe, budget="quick", measures=[
        "hessian_eigenvalues", "hessian_trace", "sharpness_worst_l2", "first_order_flatness",
        "loss_line"])
    for m in report.measures.values():
        assert math.isfinite(m.value), m.name
    assert "accuracy" not in report.measures  # the model computes its own loss
    snap.assert_unchanged()


def test_compare_with_batchnorm_statistics_recomputed(snapshot):
    import numpy as np

    from landscape import aligned_barrier, interpolate
    from landscape.data import digits_cnn

    x, y = digits_tensors("train", image=True)
    x, y = x[:128], y[:128]
    a, b = digits_cnn(seed=0), digits_cnn(seed=1)
    with torch.no_grad():  # stored statistics unlike the data's, as after training elsewhere
        a[1].running_var.fill_(3.0)
        b[1].running_mean.fill_(0.5)
    snaps = [snapshot(a), snapshot(b)]
    result = compare({"a": Probe(a, (x, y)), "b": b}, data=(x, y),
                     measures=["hessian_eigenvalues"], buffers="recompute")
    pair = result.pairs[0]
    alphas = np.linspace(0, 1, 21)
    want = interpolate(Probe(a, (x, y)), b, alphas, buffers="recompute")
    assert pair.barrier == pytest.approx(want.barrier, rel=1e-9)
    stored = interpolate(Probe(a, (x, y)), b, alphas)
    assert np.abs(stored.loss - want.loss).max() > 1e-2  # the plans differ on this network
    aligned = aligned_barrier(Probe(a, (x, y)), b, alphas, buffers="recompute")
    assert pair.aligned_barrier == pytest.approx(aligned.aligned.loss_barrier, rel=1e-9)
    assert result.to_dict()["buffers"] == "recompute"
    assert "re-estimated at every alpha" in result.to_markdown()
    for snap in snaps:
        snap.assert_unchanged()
    with pytest.raises(LandscapeError, match="buffers must be one of"):
        compare({"a": Probe(a, (x, y))}, buffers="average")


def _broken_trace(*args, **kwargs):
    raise RuntimeError("trace exploded")


def test_audit_survives_a_failing_measure_and_writes_it(trained, data, tmp_path, monkeypatch,
                                                        snapshot):
    import landscape.curvature

    monkeypatch.setattr(landscape.curvature, "hessian_trace", _broken_trace)
    snap = snapshot(trained[0])
    with pytest.warns(RuntimeWarning, match="hessian_trace failed .RuntimeError: trace exploded"):
        report = audit(Probe(trained[0], data), budget="quick",
                       measures=["hessian_eigenvalues", "hessian_trace", "loss_line"])
    snap.assert_unchanged()
    failed = report.measures["hessian_trace"]
    assert failed.error == {"type": "RuntimeError", "message": "trace exploded"}
    assert math.isnan(failed.value)
    for name in ("loss", "hessian_eigenvalues", "loss_line"):
        assert report.measures[name].error is None and math.isfinite(report.measures[name].value)
    report.write(tmp_path)
    written = json.loads((tmp_path / "report.json").read_text())["measures"]
    assert written["hessian_trace"]["error"] == failed.error
    assert written["hessian_eigenvalues"]["error"] is None
    assert written["loss_line"]["value"] == report.measures["loss_line"].value
    for page in ("report.md", "report.html"):
        assert "failed (RuntimeError: trace exploded)" in (tmp_path / page).read_text()
    assert (tmp_path / "loss_line.png").is_file()


def test_compare_survives_a_failing_measure(trained, data, tmp_path, monkeypatch):
    import landscape.curvature

    monkeypatch.setattr(landscape.curvature, "hessian_trace", _broken_trace)
    with pytest.warns(RuntimeWarning, match="hessian_trace failed"):
        result = compare({"a": Probe(trained[0], data), "b": Probe(trained[1], data)},
                         measures=["hessian_trace", "loss_line"], align=False)
    table = result.table()
    for name in ("a", "b"):
        assert table["hessian_trace"][name]["error"]["type"] == "RuntimeError"
        assert math.isfinite(table["loss_line"][name]["value"])
    assert len(result.pairs) == 1 and math.isfinite(result.pairs[0].barrier)
    result.write(tmp_path)
    assert "failed (RuntimeError: trace exploded)" in (tmp_path / "comparison.md").read_text()
    written = json.loads((tmp_path / "comparison.json").read_text())
    assert written["audits"]["b"]["measures"]["hessian_trace"]["error"]["message"] == \
        "trace exploded"


def test_audit_of_a_bfloat16_model_reports_curvature_refused_and_surfaces_measured(trained, data):
    import copy

    model = copy.deepcopy(trained[0]).bfloat16()
    with pytest.warns(RuntimeWarning) as warned:
        report = audit(Probe(model, data), budget="quick",
                       measures=["hessian_eigenvalues", "sharpness_worst_l2", "loss_line"])
    assert [str(w.message).split(" (")[0] for w in warned] == [
        "audit: hessian_eigenvalues failed", "audit: sharpness_worst_l2 failed"]
    for name in ("hessian_eigenvalues", "sharpness_worst_l2"):
        assert report.measures[name].error["type"] == "LandscapeError"
        assert "dtype=torch.float32" in report.measures[name].error["message"]
    assert report.measures["loss_line"].error is None
    assert math.isfinite(report.measures["loss_line"].value)
    wide = audit(Probe(model, data, dtype=torch.float32), budget="quick",
                 measures=["hessian_eigenvalues"])
    assert wide.measures["hessian_eigenvalues"].error is None


def test_audit_bad_options_raise_before_any_work(trained, data):
    probe = Probe(trained[0], data)
    meter = probe.meter()
    with pytest.raises(LandscapeError, match=r"unknown measures \['vibes'\]"):
        audit(probe, measures=["hessian_trace", "vibes"])
    with pytest.raises(LandscapeError, match="budget must be one of"):
        audit(probe, budget="huge")
    cost = meter.cost()
    assert cost.n_batch_forward == 0 and cost.n_hvp == 0
