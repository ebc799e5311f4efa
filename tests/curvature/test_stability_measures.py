"""||H||_F, mini-batch spectra and Hessian alignment against dense Hessians of small models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers.models import exact_hessian, tiny_data, tiny_mlp

from landscape import (
    LandscapeError,
    Probe,
    batch_size_spectrum,
    hessian_alignment,
    hessian_frobenius,
)
from landscape.data import quadratic_probe


@pytest.fixture(scope="module")
def mlp_and_data():
    model = tiny_mlp()
    x, y = tiny_data(36)
    return model, x, y, exact_hessian(model, x, y)


# ---------------------------------------------------------------- hessian_frobenius


def test_frobenius_exact_path_equals_dense(mlp_and_data, snapshot):
    model, x, y, H = mlp_and_data
    probe = Probe(model, (x, y))
    snap = snapshot(model)
    r = hessian_frobenius(probe, n_hvp=probe.num_params)
    snap.assert_unchanged()
    assert r.method == "exact" and r.stderr == 0.0 and r.n_hvp == probe.num_params
    assert abs(r.estimate - float(torch.linalg.matrix_norm(H))) <= 1e-10
    assert abs(r.squared - float((H * H).sum())) <= 1e-10


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_frobenius_estimate_and_stderr_over_seeds(mlp_and_data, method):
    """Each estimate lies within a few of its stderr of the dense value, and the reported
    stderr matches the observed spread of the estimates over seeds."""
    model, x, y, H = mlp_and_data
    truth = float(torch.linalg.matrix_norm(H))
    probe = Probe(model, (x, y))
    runs = [hessian_frobenius(probe, n_hvp=30, method=method, seed=s) for s in range(40)]
    est = np.array([r.estimate for r in runs])
    err = np.array([r.stderr for r in runs])
    assert all(r.method == method and r.n_hvp == 30 and r.seed == s
               for s, r in enumerate(runs))
    assert np.all(np.abs(est - truth) <= 4.5 * err)
    assert abs(est.mean() - truth) <= 3 * est.std() / math.sqrt(len(est))
    assert 0.6 <= err.mean() / est.std() <= 1.6


def test_frobenius_hutchpp_on_a_decaying_spectrum():
    eigenvalues = 100.0 * 0.8 ** np.arange(200)
    eigenvalues[::7] *= -1  # sign does not matter: tr(H^2)
    # rotated (with a diagonal H, ||H z||^2 would not vary over Rademacher z)
    q, _ = torch.linalg.qr(torch.randn(200, 200, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64))
    h = q @ torch.diag(torch.as_tensor(eigenvalues)) @ q.T
    probe = quadratic_probe(0.5 * (h + h.T))
    truth = float(np.sqrt((eigenvalues ** 2).sum()))
    plain = hessian_frobenius(probe, n_hvp=60, method="hutchinson", seed=3)
    pp = hessian_frobenius(probe, n_hvp=60, method="hutch++", seed=3)
    assert abs(pp.estimate - truth) <= 4 * pp.stderr + 1e-9 * truth
    assert pp.stderr < plain.stderr / 10  # the sketch takes the dominant eigenvalues exactly
    assert pp.sketch_size == 20 and pp.stored_vectors == 21
    assert pp.to_dict()["estimate"] == pp.estimate


def test_frobenius_params_block_and_errors(mlp_and_data):
    model, x, y, _ = mlp_and_data
    probe = Probe(model, (x, y))
    names = ["2.weight", "2.bias"]
    block = exact_hessian(model, x, y, names=names)
    r = hessian_frobenius(probe, n_hvp=100, params="2")
    assert abs(r.estimate - float(torch.linalg.matrix_norm(block))) <= 1e-10
    with pytest.raises(LandscapeError, match="method must be one of"):
        hessian_frobenius(probe, method="xtrace")
    with pytest.raises(LandscapeError, match="n_hvp must be an integer >= 3"):
        hessian_frobenius(probe, n_hvp=2)


# ---------------------------------------------------------------- batch_size_spectrum


def _batch(x, y, m, i):
    return x[i * m:(i + 1) * m], y[i * m:(i + 1) * m]


def test_batch_spectrum_each_batch_against_its_dense_hessian(mlp_and_data, snapshot):
    model, x, y, H = mlp_and_data
    probe = Probe(model, (x, y), batch_size=10)  # loader batches differ from the groups
    snap = snapshot(model)
    result = batch_size_spectrum(probe, [4, 9, 12], k=2, max_batches=None, tol=1e-8)
    snap.assert_unchanged()
    full = torch.linalg.eigvalsh(H).flip(0)
    assert np.allclose(result.full_eigenvalues, full[:2].numpy(), rtol=1e-8)
    assert result.full_stable_lr == pytest.approx(2 / float(full[0]))
    assert result.batch_sizes == [4, 9, 12]
    for row in result.rows:
        m = row.batch_size
        assert row.count == row.n_batches == 36 // m and row.converged
        for i, values in zip(row.batches, row.eigenvalues):
            dense = torch.linalg.eigvalsh(exact_hessian(model, *_batch(x, y, m, i))).flip(0)
            assert np.allclose(values, dense[:2].numpy(), rtol=1e-7, atol=1e-10)
        assert row.mean == pytest.approx(row.values.mean())
        assert row.stderr == pytest.approx(row.values.std(ddof=1) / math.sqrt(row.count))
        assert row.stable_lr == pytest.approx(2 / row.mean)


@pytest.mark.slow
def test_batch_spectrum_mean_is_at_least_the_full_value(mlp_and_data):
    """Jensen: lambda_max is convex and H is the mean of the batch Hessians."""
    model, x, y, _ = mlp_and_data
    result = batch_size_spectrum(Probe(model, (x, y)), [1, 2, 3, 6, 18, 36], max_batches=None)
    for row in result.rows:
        assert row.mean >= result.full_value * (1 - 1e-8)
    assert result.rows[-1].mean == pytest.approx(result.full_value, rel=1e-8)
    assert result.rows[0].mean > 1.5 * result.full_value  # single samples: much sharper


def test_batch_spectrum_draws_at_most_max_batches(mlp_and_data):
    model, x, y, _ = mlp_and_data
    probe = Probe(model, (x, y))
    a = batch_size_spectrum(probe, [5], max_batches=3, seed=1)
    b = batch_size_spectrum(probe, [5], max_batches=3, seed=1)
    row = a.rows[0]
    assert row.count == 3 and row.n_batches == 7  # 36 = 7 * 5 + 1: the last sample left out
    assert list(row.batches) == sorted(set(row.batches)) and row.batches.max() < 7
    assert np.array_equal(row.values, b.rows[0].values)
    assert "| 5 | 3 of 7 |" in a.to_markdown()
    assert a.to_dict()["rows"][0]["batch_size"] == 5


def test_batch_spectrum_errors(mlp_and_data):
    model, x, y, _ = mlp_and_data
    probe = Probe(model, (x, y))
    with pytest.raises(LandscapeError, match="exceed the number of samples"):
        batch_size_spectrum(probe, [4, 100])
    with pytest.raises(LandscapeError, match="batch_sizes is empty"):
        batch_size_spectrum(probe, [])
    with pytest.raises(LandscapeError, match="each batch size must be an integer"):
        batch_size_spectrum(probe, [0])


# ---------------------------------------------------------------- hessian_alignment


def _domains():
    """One model, two synthetic domains: b's inputs are scaled and shifted."""
    model = tiny_mlp(seed=2)
    xa, ya = tiny_data(30, seed=1)
    xb, yb = tiny_data(25, seed=2)
    return model, (xa, ya), (xb * 1.5 + 0.5, yb)


def _gradient(model, x, y, names=None):
    named = [(n, p) for n, p in model.named_parameters() if names is None or n in names]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [p for _, p in named])])


@pytest.mark.parametrize("params", [None, "2"])
def test_alignment_against_dense_hessians(params, snapshot):
    model, a, b = _domains()
    names = None if params is None else ["2.weight", "2.bias"]
    snap = snapshot(model)
    r = hessian_alignment(Probe(model, a), Probe(model, b), params=params, k=2, tol=1e-8)
    snap.assert_unchanged()
    Ha, Hb = exact_hessian(model, *a, names=names), exact_hessian(model, *b, names=names)
    ends = torch.linalg.eigvalsh(Ha - Hb)
    assert r.converged
    assert r.hessian_distance == pytest.approx(float(torch.linalg.matrix_norm(Ha - Hb, 2)),
                                               rel=1e-8)
    assert r.difference_largest == pytest.approx(float(ends[-1]), rel=1e-8)
    assert r.difference_smallest == pytest.approx(float(ends[0]), rel=1e-8)
    assert r.hessian_distance_residual <= 1e-6 * r.hessian_distance
    assert np.allclose(r.eigenvalues_a, torch.linalg.eigvalsh(Ha).flip(0)[:2].numpy(), rtol=1e-8)
    assert np.allclose(r.eigenvalues_b, torch.linalg.eigvalsh(Hb).flip(0)[:2].numpy(), rtol=1e-8)
    ga, gb = _gradient(model, *a, names), _gradient(model, *b, names)
    assert r.gradient_distance == pytest.approx(float((ga - gb).norm()), rel=1e-10)
    cosine = float(ga @ gb / (ga.norm() * gb.norm()))
    assert r.gradient_cosine == pytest.approx(cosine, rel=1e-10)
    assert r.params == (names or [n for n, _ in model.named_parameters()])
    assert r.n_samples_a == 30 and r.n_samples_b == 25 and r.n_hvp > 0
    assert "spectral norm of H_a - H_b" in r.to_markdown()


def test_alignment_of_one_domain_with_itself_is_zero():
    model, a, _ = _domains()
    r = hessian_alignment(Probe(model, a), Probe(model, a))
    assert r.hessian_distance <= 1e-12 and r.gradient_distance == 0.0
    assert r.gradient_cosine == pytest.approx(1.0)


def test_alignment_refuses_two_models():
    model, a, b = _domains()
    with pytest.raises(LandscapeError, match="hold different weights"):
        hessian_alignment(Probe(model, a), Probe(tiny_mlp(seed=5), b))
    with pytest.raises(LandscapeError, match="measure different parameters"):
        hessian_alignment(Probe(model, a, params="0"), Probe(model, b))


# ---------------------------------------------------------------- figure


def test_batch_spectrum_figure_is_log_log_with_the_full_data_line(mlp_and_data):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from helpers.figure_checks import text_problems

    from landscape.plot_batch import plot_batch_spectrum

    model, x, y, _ = mlp_and_data
    spectrum = batch_size_spectrum(Probe(model, (x, y)), [2, 6, 18], max_batches=None)
    ax = plot_batch_spectrum(spectrum)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    full = [line for line in ax.get_lines() if np.allclose(line.get_ydata(),
                                                           spectrum.full_value)]
    assert full, "the full-data value is drawn as a horizontal line"
    means = [line for line in ax.get_lines() if len(line.get_xdata()) == 3]
    assert np.allclose(means[0].get_ydata(), [r.mean for r in spectrum.rows])
    assert not text_problems(ax.figure)
    plt.close(ax.figure)
    negative = type(spectrum)(**{**spectrum.__dict__, "full_value": -1.0})
    with pytest.raises(LandscapeError, match="needs positive top eigenvalues"):
        plot_batch_spectrum(negative)


# ---------------------------------------------------------------- audit entries


def test_audit_reports_frobenius_and_the_trace_ratio_with_a_learning_rate(mlp_and_data,
                                                                         tmp_path):
    from landscape import audit

    model, x, y, H = mlp_and_data
    probe = Probe(model, (x, y))
    report = audit(probe, budget="quick", measures=["hessian_trace", "hessian_frobenius"],
                   lr=0.3)
    frob, ratio = report.measures["hessian_frobenius"], report.measures["trace_ratio"]
    trace = report.measures["hessian_trace"]
    # n = 57 > 30 products: both are estimates, within a few standard errors of the dense values
    assert abs(frob.value - float(torch.linalg.matrix_norm(H))) <= 4 * frob.stderr
    assert ratio.value == pytest.approx(trace.value * 0.3 / 2)
    assert ratio.stderr == pytest.approx(trace.stderr * 0.3 / 2)
    assert ratio.cost == {"shared_with": "hessian_trace"}  # the trace is not measured twice
    assert abs(ratio.value - float(torch.trace(H)) * 0.15) <= 4 * ratio.stderr
    assert "trace_ratio" in report.to_markdown() and "hessian_frobenius" in report.to_markdown()
    # without the trace measure, trace_ratio measures the trace itself
    alone = audit(probe, budget="quick", measures=["trace_ratio"], lr=0.3)
    assert alone.measures["trace_ratio"].cost["n_hvp"] > 0
    assert "trace_ratio" not in audit(probe, budget="quick", measures=["loss"]).measures
    with pytest.warns(RuntimeWarning, match="trace_ratio failed"):
        failed = audit(probe, budget="quick", measures=["trace_ratio"]).measures["trace_ratio"]
    assert "needs the learning rate" in failed.error["message"] and math.isnan(failed.value)
    with pytest.raises(LandscapeError, match="lr must be a number"):
        audit(probe, budget="quick", measures=["loss"], lr=-1.0)


@pytest.mark.slow
def test_audit_batch_spectrum_entry_and_figure(mlp_and_data, tmp_path):
    from landscape import audit

    model, x, y, _ = mlp_and_data
    report = audit(Probe(model, (x, y)), budget="quick", measures=["loss"],
                   batch_sizes=[4, 12])
    m = report.measures["batch_spectrum"]
    spectrum = report.results["batch_spectrum"]
    assert m.value == spectrum.rows[0].mean and m.stderr == spectrum.rows[0].stderr
    assert m.settings["batch_sizes"] == [4, 12] and m.settings["max_batches"] == 8
    assert [r["batch_size"] for r in m.details["rows"]] == [4, 12]
    written = report.write(tmp_path)
    assert (tmp_path / "batch_spectrum.png").exists() and tmp_path / "batch_spectrum.png" in written
    with pytest.raises(LandscapeError, match="batch_sizes must be a non-empty list"):
        audit(Probe(model, (x, y)), measures=["loss"], batch_sizes=[])


# ---------------------------------------------------------------- compare across data sets


def test_compare_one_checkpoint_on_two_data_sets():
    from landscape import compare

    model, a, b = _domains()
    result = compare({"net": Probe(model, a)}, measures=["hessian_eigenvalues"], data_b=b,
                     data_names=("source", "target"), alignment_params="2")
    direct = hessian_alignment(Probe(model, a), Probe(model, b), params="2")
    got = result.across_data["net"]
    assert got.hessian_distance == pytest.approx(direct.hessian_distance, rel=1e-8)
    assert got.gradient_cosine == pytest.approx(direct.gradient_cosine, rel=1e-10)
    assert got.params == ["2.weight", "2.bias"]
    text = result.to_markdown()
    assert "One checkpoint on two data sets (a = source, b = target)" in text
    assert f"{got.hessian_distance:.4g}" in text
    assert result.to_dict()["across_data"]["net"]["gradient_distance"] == got.gradient_distance
    assert compare({"net": Probe(model, a)}, measures=["loss"]).across_data == {}


@pytest.mark.slow
def test_cli_audit_lr_and_batch_sizes_and_compare_data_b(tmp_path, capsys):
    from landscape.cli import main
    from landscape.data import digits_mlp

    torch.save(digits_mlp(hidden=16, seed=0).state_dict(), tmp_path / "net.pt")
    (tmp_path / "net.py").write_text(
        "from landscape.data import digits_mlp\n\ndef make():\n    return digits_mlp(hidden=16)\n")
    (tmp_path / "small.py").write_text(
        "from landscape.data import digits_tensors\n\n"
        "def load():\n    x, y = digits_tensors('train')\n    return x[:120], y[:120]\n"
        "def other():\n    x, y = digits_tensors('test')\n    return x[:80], y[:80]\n")
    model = ["--model", f"{tmp_path}/net.py:make", "--data", f"{tmp_path}/small.py:load",
             "--no-progress"]
    code = main(["audit", *model, "--checkpoint", str(tmp_path / "net.pt"), "--out",
                 str(tmp_path / "audit"), "--budget", "quick", "--measures",
                 "hessian_trace,hessian_frobenius", "--lr", "0.2", "--batch-sizes", "16,32"])
    assert code == 0
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    measures = report["measures"]
    assert measures["trace_ratio"]["value"] == pytest.approx(
        measures["hessian_trace"]["value"] * 0.1)
    assert measures["batch_spectrum"]["settings"]["batch_sizes"] == [16, 32]
    assert measures["hessian_frobenius"]["value"] > 0
    assert (tmp_path / "audit" / "batch_spectrum.png").exists()
    code = main(["compare", *model, str(tmp_path / "net.pt"), "--out", str(tmp_path / "cmp"),
                 "--measures", "hessian_trace", "--data-b", f"{tmp_path}/small.py:other",
                 "--head", "4"])
    assert code == 0
    out = capsys.readouterr().out
    assert "One checkpoint on two data sets" in out and "4.weight, 4.bias" in out
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved["across_data"]["net"]["n_samples_b"] == 80
    with pytest.raises(SystemExit) as exc:
        main(["audit", *model, "--checkpoint", str(tmp_path / "net.pt"), "--out",
              str(tmp_path / "x"), "--batch-sizes", "16,a"])
    assert exc.value.code == 2
    assert "not a comma-separated list of integers" in capsys.readouterr().err


# ---------------------------------------------------------------- monitor measures


def test_monitor_frobenius_and_trace_ratio(mlp_and_data):
    from landscape import CurvatureMonitor

    model, x, y, H = mlp_and_data
    opt = torch.optim.SGD(model.parameters(), lr=0.04)
    monitor = CurvatureMonitor(model, (x, y), optimizer=opt,
                               measures=("trace", "trace_ratio", "frobenius"), n_hvp=100)
    row = monitor.measure(0)
    # n = 57 <= 100 products: both exact
    assert row["frobenius"] == pytest.approx(float(torch.linalg.matrix_norm(H)), rel=1e-10)
    assert row["trace"] == pytest.approx(float(torch.trace(H)), rel=1e-10)
    assert row["trace_ratio"] == pytest.approx(float(torch.trace(H)) * 0.04 / 2, rel=1e-10)
    assert row["lr"] == 0.04 and row["frobenius_stderr"] == 0.0
    assert row["n_hvp"] == row["trace_n_hvp"] + row["frobenius_n_hvp"]  # one trace for both
    small = CurvatureMonitor(model, (x, y), optimizer=opt, measures=("frobenius",), n_hvp=20,
                             seed=3).measure(0)
    assert abs(small["frobenius"] - float(torch.linalg.matrix_norm(H))) <= \
        4.5 * small["frobenius_stderr"]
    with pytest.raises(LandscapeError, match="trace_ratio' needs the training learning rate"):
        CurvatureMonitor(model, (x, y), measures=("trace_ratio",))
