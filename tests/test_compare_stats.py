"""compare's tests of the differences (landscape/compare_stats.py): z, two-sided p-value and
Holm's adjustment against numbers computed by hand; exact measures compared exactly; measures
without an uncertainty not tested; and every table of comparison.json in comparison.md and
comparison.html."""

from __future__ import annotations

import json
import math

import pytest
from helpers.tables import Cells, rendered_cells

from landscape import Probe, compare
from landscape.audit import AuditReport
from landscape.compare import Comparison
from landscape.compare_stats import holm
from landscape.data import digits_mlp, digits_tensors
from landscape.measures import Measure
from landscape.provenance import FIELDS


def _measure(name, value, stderr=None, error_bound=None):
    return Measure(name, value, stderr, "", {}, {}, error_bound=error_bound)


def _audit(*measures):
    return AuditReport({m.name: m for m in measures}, "quick", 0, 0.0, 10, 100)


def test_holm_matches_the_hand_computed_step_down():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_differences_tested_against_hand_computed_numbers():
    a = _audit(_measure("loss", 0.25), _measure("hessian_trace", 10.0, 1.0),
               _measure("hessian_density", 0.0, 0.1),
               _measure("hessian_eigenvalues", 2.0, error_bound=0.01),
               _measure("sharpness_worst_l2", 0.1), _measure("accuracy", 1.0))
    b = _audit(_measure("loss", 0.5), _measure("hessian_trace", 13.0, 2.0),
               _measure("hessian_density", 0.5, 0.1),
               _measure("hessian_eigenvalues", 2.015, error_bound=0.01),
               _measure("sharpness_worst_l2", 0.3), _measure("accuracy", 1.0))
    result = Comparison({"A": a, "B": b}, [], 0, "quick", 0.0)
    tests = {t.measure: t for t in result.tests()}

    # trace: d = 3, s = sqrt(1 + 4) = 2.2360680, z = 1.3416408, p = erfc(z / sqrt 2) = 0.1797125
    trace = tests["hessian_trace"]
    assert (trace.a, trace.b, trace.kind) == ("A", "B", "z-test")
    assert trace.difference == pytest.approx(3.0)
    assert trace.stderr == pytest.approx(2.2360680)
    assert trace.z == pytest.approx(1.3416408)
    assert trace.p_value == pytest.approx(0.1797125, abs=1e-7)
    # density: d = 0.5, s = 0.1414214, z = 3.5355339, p = 4.0695e-4
    density = tests["hessian_density"]
    assert density.z == pytest.approx(3.5355339)
    assert density.p_value == pytest.approx(4.0695e-4, rel=1e-4)
    # Holm over the two: 2 x 4.0695e-4 = 8.139e-4; max(8.139e-4, 1 x 0.1797125) = 0.1797125
    assert density.holm_p_value == pytest.approx(8.139e-4, rel=1e-3)
    assert trace.holm_p_value == pytest.approx(0.1797125, abs=1e-7)
    assert density.verdict == "differ (Holm, alpha 0.05)"
    assert trace.verdict == "no significant difference (Holm, alpha 0.05)"

    assert tests["loss"].kind == "exact" and tests["loss"].verdict == "differ (exact)"
    assert tests["loss"].difference == pytest.approx(0.25) and tests["loss"].p_value is None
    assert tests["accuracy"].verdict == "equal (exact)"
    # |2.015 - 2| = 0.015 < 0.01 + 0.01: the bounds do not separate them
    assert tests["hessian_eigenvalues"].verdict.startswith("not separated")
    assert tests["sharpness_worst_l2"].verdict == "not tested (no uncertainty)"
    assert tests["sharpness_worst_l2"].z is None

    rows = {row[1]: row for row in rendered_cells(result.to_markdown()) if len(row) == 8}
    assert rows["hessian_trace"] == ["A -> B", "hessian_trace", "3", "2.236", "1.342", "0.1797",
                                     "0.1797", "no significant difference (Holm, alpha 0.05)"]
    assert rows["sharpness_worst_l2"][-1] == "not tested (no uncertainty)"
    assert rows["loss"][3] == "exact"


def test_holm_turns_two_unadjusted_rejections_into_none():
    """p = 0.03 and 0.04 each fall under 0.05 alone; Holm adjusts both to 0.06."""
    z1, z2 = 2.1700904, 2.0537489  # two-sided p = 0.03 and 0.04
    a = _audit(_measure("m1", 0.0, 1.0 / math.sqrt(2)), _measure("m2", 0.0, 1.0 / math.sqrt(2)))
    b = _audit(_measure("m1", z1, 1.0 / math.sqrt(2)), _measure("m2", z2, 1.0 / math.sqrt(2)))
    tests = Comparison({"A": a, "B": b}, [], 0, "quick", 0.0).tests()
    assert [t.p_value for t in tests] == pytest.approx([0.03, 0.04], abs=1e-6)
    assert [t.holm_p_value for t in tests] == pytest.approx([0.06, 0.06], abs=1e-6)
    assert all(t.verdict.startswith("no significant difference") for t in tests)


# The JSON's keys that are tables, and how each shows in the pages: a key -> the texts of one
# row per JSON entry. Keys that are not tables of their own are listed in NOT_TABLES.
NOT_TABLES = {"names", "seed", "budget", "seconds", "buffers", "buffers_reason", "data_names",
              "audits"}  # "audits": the per-minimum detail of "table", shown by its rows


def _rows_expected(data):
    """One tuple of cell texts per row a reader must find (code shown without backticks)."""
    yield from ((key,) for key in data["table"])
    yield from ((f"{p['a']} -> {p['b']}", "not aligned") for p in data["pairs"])
    yield from ((f"{t['a']} -> {t['b']}", t["measure"], t["verdict"]) for t in data["tests"])
    yield from ((name,) for name in data["across_data"])
    yield from ((FIELDS[k],) for k in data["provenance"])


def test_every_table_of_the_json_is_in_the_markdown_and_the_html(tmp_path):
    x, y = digits_tensors("train")
    data = (x[:100], y[:100])
    probes = {name: Probe(digits_mlp(hidden=8, seed=k), data) for k, name in enumerate("ab")}
    result = compare(probes, measures=["hessian_trace", "sharpness_worst_l2"],
                     interpolation_points=3, align=False, data_b=(x[100:160], y[100:160]))
    written = result.write(tmp_path)
    data_json = json.loads(written[0].read_text())
    tables_in_json = {k for k, v in data_json.items() if k not in NOT_TABLES}
    assert tables_in_json == {"table", "pairs", "tests", "across_data", "provenance"}, \
        "a new table in comparison.json: show it in the pages and list it here"
    assert data_json["tests"] and data_json["across_data"]

    md_rows = rendered_cells(written[1].read_text())
    parser = Cells()
    parser.feed(written[2].read_text())
    for name, rows in (("Markdown", md_rows), ("HTML", parser.rows)):
        for expected in _rows_expected(data_json):
            assert any(all(e in [c.strip() for c in row] for e in expected) for row in rows), \
                f"{name} has no row for {expected}"


def test_a_p_value_below_double_precision_reads_as_a_bound():
    a = _audit(_measure("hessian_trace", 0.0, 0.01))
    b = _audit(_measure("hessian_trace", 1.0, 0.01))  # z = 70.7: p underflows to 0
    result = Comparison({"A": a, "B": b}, [], 0, "quick", 0.0)
    (test,) = result.tests()
    assert test.p_value == 0.0
    row = next(r for r in rendered_cells(result.to_markdown()) if len(r) == 8 and r[0] != "pair")
    assert row[5:7] == ["< 1e-16", "< 1e-16"]
