"""Reports render: Markdown tables parsed by a real parser keep their columns, the HTML shows
formatted text (no Markdown source), each cost appears once, the audited checkpoint is named."""

from __future__ import annotations

import pytest
from helpers.tables import Cells, rendered_cells, tables
from markdown_it import MarkdownIt

from landscape import Probe, audit, compare
from landscape.data import digits_mlp, digits_tensors
from landscape.report import md_row as _md_row
from landscape.report import md_text as _md_text

MEASURES = ["loss_line", "hessian_trace"]


@pytest.fixture(scope="module")
def report():
    x, y = digits_tensors("train")
    probe = Probe(digits_mlp(hidden=16, seed=0), (x[:200], y[:200]))
    return audit(probe, budget="quick", measures=MEASURES, name="run|1_*final*.pt",
                 data_name="digits, first 200 training samples")


def test_markdown_table_has_as_many_cells_in_every_row_as_in_its_header(report):
    md = report.to_markdown()
    table, provenance = tables(md)  # the measures, then the provenance
    assert len(provenance[0]) == 2 and all(len(row) == 2 for row in provenance)
    assert len(table[0]) == 5
    assert all(len(row) == 5 for row in table), [len(r) for r in table]
    rows = rendered_cells(md)
    line = next(r for r in rows if "loss_line" in r[0])
    assert "|alpha| <= 1" in line[3]  # the pipes of the description survive as text


def test_markdown_names_the_checkpoint_and_data_without_breaking(report):
    md = report.to_markdown()
    html = MarkdownIt("commonmark").enable("table").render(md)
    assert "<h1>Audit of run|1_*final*.pt</h1>" in html  # no emphasis, no table, the name
    assert "digits, first 200 training samples (200 samples)" in html
    assert "<em>" not in html


def test_unnamed_report_says_how_to_name_it():
    x, y = digits_tensors("train")
    r = audit(Probe(digits_mlp(hidden=16), (x[:50], y[:50])), budget="quick", measures=[])
    assert r.title == "Checkpoint audit"
    assert "pass name= to audit" in r.summary()


def test_each_cost_appears_once(report):
    rows = {r[0]: r for r in tables(report.to_markdown())[0][1:]}
    loss_cost = rows["`loss`"][4]
    assert loss_cost.startswith("loss, accuracy and gradient norm: ")
    for shared in ("`accuracy`", "`gradient_norm`"):
        assert rows[shared][4].startswith("with loss")
        assert "fwd" not in rows[shared][4] and " s" not in rows[shared][4]
    costs = [m.cost for m in report.measures.values()]
    forward = sum(c.get("n_forward", 0) for c in costs)
    assert forward == report.measures["loss"].cost.get("n_forward", 0) + sum(
        report.measures[m].cost.get("n_forward", 0) for m in MEASURES)


def test_html_shows_formatted_text_not_markdown_source(report, tmp_path):
    report.write(tmp_path)
    page = (tmp_path / "report.html").read_text()
    parser = Cells()
    parser.feed(page)
    text = "".join(parser.all_text)
    assert "`" not in text and "**" not in text and "](" not in text
    assert "budget quick" in text and "Audit of run|1_*final*.pt" in text
    assert {"table", "code", "img", "h1"} <= set(parser.tags)
    assert all(len(r) in (5, 2) for r in parser.rows)  # measures (5), provenance (2)
    assert sum(len(r) == 2 for r in parser.rows) == 15  # header and 14 provenance fields


def test_comparison_markdown_tables_keep_their_columns(tmp_path):
    x, y = digits_tensors("train")
    probes = {name: Probe(digits_mlp(hidden=16, seed=k), (x[:100], y[:100]))
              for k, name in enumerate(("a|b", "c_d_"))}
    result = compare(probes, measures=["loss_line"], interpolation_points=3, align=False)
    for table in tables(result.to_markdown()):
        assert len({len(row) for row in table}) == 1, table
    cells = rendered_cells(result.to_markdown())
    assert cells[0][1:] == ["a|b", "c_d_"]
    assert any(row[0] == "a|b -> c_d_" for row in cells)


@pytest.mark.parametrize("text", ["|x|", "a_b_c", "*bold*", "`code`", "<b>", "[link](x)", "#"])
def test_escaped_text_renders_as_itself(text):
    html = MarkdownIt("commonmark").enable("table").render(_md_text(text))
    parser = Cells()
    parser.feed(html)
    assert "".join(parser.all_text).strip() == text
    row = _md_row(["`name|x`", text])
    (table,) = tables(f"| h1 | h2 |\n|---|---|\n{row}\n")
    assert len(table[1]) == 2


PROVENANCE_FIELDS = ("package", "torch", "numpy", "python", "platform", "device", "dtype",
                     "data", "n_samples", "n_params", "checkpoints", "seed", "budget", "date")


def _check_provenance(info, checkpoint, data):
    import hashlib

    assert set(PROVENANCE_FIELDS) <= set(info)
    assert info["package"].startswith("landscape-probe ") and info["torch"]
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["data"] == data and info["n_samples"] == 120 and info["seed"] == 0
    (entry,) = info["checkpoints"]
    assert entry["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert entry["path"] == str(checkpoint.resolve())
    assert "T" in info["date"] and info["date"].endswith("+00:00")


def test_every_report_carries_its_provenance(tmp_path):
    """audit, compare and track: JSON with every field, Markdown and HTML with the table."""
    import json

    import torch

    from landscape import track

    x, y = digits_tensors("train")
    data = (x[:120], y[:120])
    ckpt = tmp_path / "net_3.pt"
    torch.save(digits_mlp(hidden=8, seed=0).state_dict(), ckpt)
    model = digits_mlp(hidden=8)
    model.load_state_dict(torch.load(ckpt))
    report = audit(Probe(model, data), budget="quick", measures=["hessian_trace"],
                   data_name="digits:train[:120]", checkpoint=ckpt)
    written = report.write(tmp_path / "audit")
    _check_provenance(json.loads(written[0].read_text())["provenance"], ckpt,
                      "digits:train[:120]")
    for page in (written[1].read_text(), written[2].read_text()):
        assert "Provenance" in page and "SHA-256" in page
        assert report.provenance["checkpoints"][0]["sha256"] in page

    result = compare({"net_3": str(ckpt)}, model_fn=lambda: digits_mlp(hidden=8), data=data,
                     measures=["loss_line"], data_names=("digits:train[:120]", "data_b"))
    out = result.write(tmp_path / "compare")
    _check_provenance(json.loads(out[0].read_text())["provenance"], ckpt, "digits:train[:120]")
    assert "Provenance" in out[2].read_text() and "Budget quick, seed 0" in out[2].read_text()

    tracked = track([ckpt], model_fn=lambda: digits_mlp(hidden=8), data=data,
                    measures=["loss"], out=tmp_path / "track.json",
                    data_name="digits:train[:120]")
    _check_provenance(tracked.provenance, ckpt, "digits:train[:120]")
    saved = json.loads((tmp_path / "track.json").read_text())["provenance"]
    assert saved["checkpoints"] == tracked.provenance["checkpoints"]


def test_no_uncertainty_is_a_bare_dash():
    x, y = digits_tensors("train")
    report = audit(Probe(digits_mlp(hidden=8, seed=0), (x[:120], y[:120])), budget="quick",
                   measures=["hessian_density", "sharpness_worst_l2"])
    table = tables(report.to_markdown())[0]
    uncertainty = {row[0]: row[2] for row in table[1:]}
    assert "-" not in uncertainty.values()
    assert uncertainty["`loss`"] == "exact"
    assert uncertainty["`hessian_density`"] in ("not estimated",) or "s.e." in \
        uncertainty["`hessian_density`"]


def test_track_markdown_and_html_carry_every_column_and_the_provenance(tmp_path):
    """track.md and track.html: one row per checkpoint with every column of track.json (each
    measure with its uncertainty, "exact" or "not estimated", never a bare dash), an unconverged
    value marked, the provenance table with every field, the figure linked and inlined."""
    import json

    import torch

    from landscape import track
    from landscape.provenance import FIELDS
    from landscape.track import Track

    x, y = digits_tensors("train")
    ckpts = []
    for step in (3, 7):
        ckpts.append(tmp_path / f"net_{step}.pt")
        torch.save(digits_mlp(hidden=8, seed=step).state_dict(), ckpts[-1])
    tracked = track(ckpts, model_fn=lambda: digits_mlp(hidden=8), data=(x[:120], y[:120]),
                    measures=["top_eigenvalue", "trace", "loss"], n_hvp=6,
                    out=tmp_path / "track.json", data_name="digits:train[:120]")
    rows = [dict(r) for r in tracked.rows]  # the second top eigenvalue did not converge
    rows[1]["top_eigenvalue_note"] = "Not converged after 3 iterations: raise max_iter."
    tracked = Track(rows, tracked.measures, tracked.seed, tracked.provenance)
    figure = tmp_path / "track.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    md_path, html_path = tracked.write_pages(tmp_path, [figure])
    assert (md_path.name, html_path.name) == ("track.md", "track.html")
    md = md_path.read_text()
    saved = json.loads((tmp_path / "track.json").read_text())

    table, prov = tables(md)  # the cells as parsed; then as a reader sees them
    assert len(table) == 1 + len(saved["rows"]) and all(len(r) == len(table[0]) for r in table)
    table = rendered_cells(md)[:len(table)]
    header = table[0]
    assert header[:2] == ["checkpoint", "step"] and header[-1] == "seconds"
    assert header[2:4] == ["top_eigenvalue", "top_eigenvalue uncertainty"]
    assert [r[0] for r in table[1:]] == [str(c) for c in ckpts]
    cols = {name: [row[i] for row in table[1:]] for i, name in enumerate(header)}
    assert cols["step"] == ["3", "7"]
    assert cols["loss uncertainty"] == ["exact", "exact"]
    assert all(c.startswith("± ") and "(s.e.)" in c for c in cols["trace uncertainty"])
    eig, eig_unc = cols["top_eigenvalue"], cols["top_eigenvalue uncertainty"]
    assert not eig[0].endswith("(not converged)") and eig_unc[0] == "not estimated"
    assert eig[1].endswith(" (not converged)") and float(eig[1].split()[0]) > 0
    assert eig_unc[1] == "not estimated; Not converged after 3 iterations: raise max_iter."
    assert "-" not in [c for name, col in cols.items() for c in col if "uncertainty" in name]
    assert all(len(r) == 2 for r in prov) and len(prov) == 1 + len(FIELDS)
    info = dict(rendered_cells(md)[-len(FIELDS):])
    assert list(info) == list(FIELDS.values())  # every provenance field, in order
    assert info["data"] == "digits:train[:120]" and info["seed"] == "0"
    for entry in saved["provenance"]["checkpoints"]:
        assert entry["sha256"] in info["checkpoints (SHA-256)"]
    assert "![track](track.png)" in md

    parser = Cells()
    parser.feed(html_path.read_text())
    assert {"table", "img", "h1"} <= set(parser.tags)
    assert [r for r in parser.rows if len(r) == len(header)] == table
    assert sum(len(r) == 2 for r in parser.rows) == 1 + len(FIELDS)
    assert "data:image/png;base64," in html_path.read_text()
