"""Nothing unconverged looks converged: every report (Markdown, HTML, JSON, CLI, compare, track)
marks each eigenvalue, trace and density that did not reach its tolerance on the line of the
number, with its residual or standard error and what to raise, and shows all k eigenvalues.
The reports are parsed (markdown-it-py, html.parser), not searched as strings."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers.tables import Cells, rendered_cells, tables

from landscape import Probe, audit, compare, hessian_eigenvalues
from landscape.curvature import LayerResults
from landscape.data import digits_mlp, digits_tensors
from landscape.measures import EFFORT
from landscape.report import UNCONVERGED_MARK

CURVATURE = ["hessian_eigenvalues", "hessian_trace", "hessian_density"]


def _probe(seed=0):
    x, y = digits_tensors("train")
    return Probe(digits_mlp(hidden=16, seed=seed), (x[:200], y[:200]))


def _row(markdown, name):
    """The cells of measure `name`'s row of the measures table (the first) as a reader sees
    them (rendered Markdown)."""
    assert tables(markdown)[0][0][:3] == ["measure", "value", "uncertainty"]
    header, *rows = rendered_cells(markdown)
    return dict(zip(header, next(r for r in rows if r[0] == name)))


@pytest.fixture()
def starved(monkeypatch):
    """A quick budget too small to converge: 16 Lanczos products for the top 5 eigenvalues, a
    trace and density whose standard errors must be within 0.01% of their values."""
    monkeypatch.setitem(EFFORT, "quick", {**EFFORT["quick"], "eig_max_iter": 16,
                                          "trace_hvp": 6, "rel_stderr": 1e-4})
    with pytest.warns(RuntimeWarning, match="did not converge"):
        return audit(_probe(), budget="quick", measures=CURVATURE)


def test_markdown_marks_every_unconverged_number_on_its_line(starved):
    eig = starved.results["hessian_eigenvalues"]
    assert not eig.converged and len(eig.eigenvalues) == 5
    row = _row(starved.to_markdown(), "hessian_eigenvalues")
    shown = [v.strip() for v in row["value"].split(",")]
    assert len(shown) == 5  # all k asked for, not only the top one
    tol = EFFORT["quick"]["eig_tol"]
    for text, value, residual in zip(shown, eig.eigenvalues, eig.residuals):
        assert float(text.split()[0]) == pytest.approx(value, rel=1e-3)
        assert text.endswith(UNCONVERGED_MARK) == (residual > tol * abs(value))
    assert UNCONVERGED_MARK in row["value"]
    # the reason on the same line: the residual of a marked value and what to raise
    first_bad = int(np.argmax(eig.residuals > tol * np.abs(eig.eigenvalues)))
    assert f"residual {eig.residuals[first_bad]:.2g}" in row["uncertainty"]
    assert "Raise max_iter" in row["uncertainty"]
    trace = _row(starved.to_markdown(), "hessian_trace")
    assert trace["value"].endswith(UNCONVERGED_MARK)
    stderr = starved.results["hessian_trace"].stderr
    assert f"standard error {stderr:.2g}" in trace["uncertainty"]
    assert "raise n_hvp (was 6)" in trace["uncertainty"]
    density = _row(starved.to_markdown(), "hessian_density")
    assert density["value"].endswith(UNCONVERGED_MARK)
    stderr = starved.measures["hessian_density"].stderr
    assert f"standard error {stderr:.2g}" in density["uncertainty"]
    assert "raise n_vectors (was 1)" in density["uncertainty"]


def test_html_and_json_carry_the_same_marks(starved):
    rows = rendered_cells(starved.to_markdown())
    html_rows = {r[0]: r for r in _html_rows(starved.to_html())}
    md_rows = {r[0]: r for r in rows}
    for name in CURVATURE:
        assert html_rows[name][1] == md_rows[name][1]  # value cell, marks included
        assert UNCONVERGED_MARK in html_rows[name][1]
        assert html_rows[name][2] == md_rows[name][2]
    data = json.loads(starved.to_json())["measures"]
    eig = data["hessian_eigenvalues"]
    assert len(eig["values"]) == 5 and any(eig["unconverged"]) and "Raise max_iter" in eig["note"]
    assert data["hessian_trace"]["unconverged"] == [True]
    assert data["hessian_density"]["unconverged"] == [True]


def _html_rows(page):
    parser = Cells()
    parser.feed(page)
    return parser.rows


def test_converged_numbers_carry_no_mark(monkeypatch):
    monkeypatch.setitem(EFFORT, "quick", {**EFFORT["quick"], "rel_stderr": 10.0})
    # a budget large enough for the quick effort (60 products for the top 5)
    report = audit(_probe(), budget="quick", measures=["hessian_eigenvalues", "hessian_trace"],
                   max_gradients=1000)
    assert report.results["hessian_eigenvalues"].converged
    markdown = report.to_markdown()
    row = _row(markdown, "hessian_eigenvalues")
    assert len(row["value"].split(",")) == 5 and UNCONVERGED_MARK not in markdown
    assert report.measures["hessian_eigenvalues"].note is None
    assert report.measures["hessian_eigenvalues"].converged
    assert report.measures["hessian_trace"].converged
    assert report.measures["hessian_trace"].settings["rel_stderr"] == 10.0


def test_compare_marks_on_the_line(monkeypatch):
    monkeypatch.setitem(EFFORT, "quick", {**EFFORT["quick"], "eig_max_iter": 16})
    with pytest.warns(RuntimeWarning, match="did not converge"):
        result = compare({"a": _probe(0), "b": _probe(1)}, measures=["hessian_eigenvalues"],
                         align=False)
    row = next(r for r in rendered_cells(result.to_markdown()) if r[0] == "hessian_eigenvalues")
    for cell in row[1:]:
        assert UNCONVERGED_MARK in cell and "Raise max_iter" in cell
        assert len(cell.split(";")[0].split(",")) == 5


def test_track_puts_the_note_beside_the_number(monkeypatch, tmp_path):
    import importlib

    import torch

    from landscape.track import track

    track_module = importlib.import_module("landscape.track")

    starved = ("hessian_eigenvalues", lambda t: {"k": 1, "tol": t["tol"], "seed": t["seed"],
                                                  "max_iter": 3})
    monkeypatch.setitem(track_module._FROM_REGISTRY, "top_eigenvalue", starved)
    for step in (1, 2):
        torch.save(digits_mlp(hidden=16, seed=step).state_dict(), tmp_path / f"s_{step}.pt")
    x, y = digits_tensors("train")
    with pytest.warns(RuntimeWarning, match="did not converge"):
        result = track(tmp_path, model_fn=lambda: digits_mlp(hidden=16),
                       data=(x[:100], y[:100]), tol=1e-9)
    header, *rows = [line for line in csv.reader(io.StringIO(result.to_csv()))]
    assert header.index("top_eigenvalue_note") == header.index("top_eigenvalue") + 1
    for row in rows:
        assert row[header.index("top_eigenvalue_note")].startswith("not converged after 3")


def test_fewer_eigenvalues_than_asked_are_said_so(monkeypatch):
    monkeypatch.setitem(EFFORT, "quick", {**EFFORT["quick"], "eig_max_iter": 6})
    with pytest.warns(RuntimeWarning, match="did not converge"):
        report = audit(_probe(), budget="quick", measures=["hessian_eigenvalues"])
    found = len(report.results["hessian_eigenvalues"].eigenvalues)
    assert found < 5
    row = _row(report.to_markdown(), "hessian_eigenvalues")
    assert f"only {found} of the 5 eigenvalues asked for were found" in row["uncertainty"]
    assert UNCONVERGED_MARK in row["value"]


def test_layer_results_table_marks_unconverged_blocks():
    probe = _probe()
    with pytest.warns(RuntimeWarning, match="did not converge"):
        layers = hessian_eigenvalues(probe, k=2, by="layer", max_iter=5)
    assert isinstance(layers, LayerResults)
    table = rendered_cells(layers.to_markdown())
    for row, (_, r) in zip(table[1:], layers.items()):
        assert ("not converged" in row[2]) == (not r.converged)
    assert any(not r.converged for _, r in layers.items())


def test_cli_audit_prints_the_marks(tmp_path):
    script = (
        "import sys\n"
        "from landscape.measures import EFFORT\n"
        "EFFORT['quick'] = {**EFFORT['quick'], 'eig_max_iter': 16}\n"
        "from landscape.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    (tmp_path / "net.py").write_text("from landscape.data import digits_mlp\n"
                                     "def make():\n    return digits_mlp(hidden=16, seed=0)\n")
    (tmp_path / "data.py").write_text("from landscape.data import digits_tensors\n"
                                      "def load():\n    x, y = digits_tensors('train')\n"
                                      "    return x[:200], y[:200]\n")
    import torch

    torch.save(digits_mlp(hidden=16, seed=0).state_dict(), tmp_path / "m.pt")
    proc = subprocess.run(
        [sys.executable, "-c", script, "audit", "--model", "net.py:make", "--checkpoint",
         "m.pt", "--data", "data.py:load", "--out", "out", "--budget", "quick", "--measures",
         "hessian_eigenvalues", "--no-progress"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    row = _row(proc.stdout, "hessian_eigenvalues")
    assert UNCONVERGED_MARK in row["value"] and "Raise max_iter" in row["uncertainty"]
