"""Tests of the differences between minima: for every pair of a comparison and every measure
both have, is the difference larger than their uncertainties explain?

For a measure estimated with a standard error on both minima (Hutch++ traces, densities'
moments, ...), the difference d = value(B) - value(A) of two independent estimates has the
combined standard error s = sqrt(s_A^2 + s_B^2); z = d / s and the two-sided p-value
p = erfc(|z| / sqrt(2)) (normal approximation). Within one pair, the p-values of all its tested
measures are adjusted by Holm's step-down procedure (Holm 1979), which keeps the probability of
any false "differ" verdict in that pair at most alpha. Measures computed exactly on the data
(loss, accuracy, gradient norm) are compared exactly; a Lanczos eigenvalue with a deterministic
error bound b differs when |d| > b_A + b_B; any other measure (lower bounds of a maximum,
values without an uncertainty) is "not tested (no uncertainty)".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._results import to_jsonable
from .audit import EXACT, AuditReport
from .measures import Measure
from .report import Row, Section, fmt

ALPHA = 0.05
NOT_TESTED = "not tested (no uncertainty)"


@dataclass(frozen=True)
class DifferenceTest:
    """One measure compared between minima `a` and `b` (difference = value(b) - value(a)).

    `kind` is "z-test" (both have a standard error), "exact", "bounds" (deterministic error
    bounds) or "none". `stderr`, `z`, `p_value` and `holm_p_value` (Holm-adjusted within the
    pair) are set for z-tests only; `verdict` is the outcome in words.
    """

    measure: str
    a: str
    b: str
    kind: str
    difference: float | None
    stderr: float | None
    z: float | None
    p_value: float | None
    holm_p_value: float | None
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    With p_(1) <= ... <= p_(m) sorted, adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j));
    rejecting where the adjusted p-value is <= alpha controls the family-wise error at alpha.
    """
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _usable(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _one(key: str, a: str, b: str, ma: Measure, mb: Measure) -> DifferenceTest:
    """The test of one measure before the Holm adjustment (z-tests get `holm_p_value` later)."""
    diff = mb.value - ma.value if _usable(ma.value) and _usable(mb.value) else None
    if diff is None:
        return DifferenceTest(key, a, b, "none", None, None, None, None, None,
                              "not tested (no value)")
    if ma.name in EXACT:
        verdict = "equal (exact)" if diff == 0 else "differ (exact)"
        return DifferenceTest(key, a, b, "exact", diff, 0.0, None, None, None, verdict)
    if _usable(ma.stderr) and _usable(mb.stderr) and math.hypot(ma.stderr, mb.stderr) > 0:
        se = math.hypot(ma.stderr, mb.stderr)
        z = diff / se
        return DifferenceTest(key, a, b, "z-test", diff, se, z,
                              math.erfc(abs(z) / math.sqrt(2.0)), None, "")
    if _usable(ma.error_bound) and _usable(mb.error_bound):
        bound = ma.error_bound + mb.error_bound
        verdict = (f"differ (|difference| > bounds {fmt(bound)})" if abs(diff) > bound
                   else f"not separated (|difference| <= bounds {fmt(bound)})")
        return DifferenceTest(key, a, b, "bounds", diff, None, None, None, None, verdict)
    return DifferenceTest(key, a, b, "none", diff, None, None, None, None, NOT_TESTED)


def pair_tests(a: str, b: str, measures_a: Mapping[str, Measure],
               measures_b: Mapping[str, Measure], alpha: float = ALPHA) -> list[DifferenceTest]:
    """Every measure both minima have (and that ran), tested; z-tests Holm-adjusted together."""
    tests = [_one(key, a, b, measures_a[key], measures_b[key]) for key in measures_a
             if key in measures_b and measures_a[key].error is None
             and measures_b[key].error is None]
    z_tests = [i for i, t in enumerate(tests) if t.kind == "z-test"]
    adjusted = holm([tests[i].p_value for i in z_tests])
    for i, p in zip(z_tests, adjusted):
        verdict = (f"differ (Holm, alpha {alpha:g})" if p <= alpha
                   else f"no significant difference (Holm, alpha {alpha:g})")
        t = tests[i]
        tests[i] = DifferenceTest(t.measure, a, b, t.kind, t.difference, t.stderr, t.z,
                                  t.p_value, p, verdict)
    return tests


def difference_tests(audits: Mapping[str, AuditReport],
                     alpha: float = ALPHA) -> list[DifferenceTest]:
    """`pair_tests` for every pair of minima, in the order of `itertools.combinations`."""
    return [t for a, b in itertools.combinations(audits, 2)
            for t in pair_tests(a, b, audits[a].measures, audits[b].measures, alpha)]


def tests_section(tests: Sequence[DifferenceTest], alpha: float = ALPHA) -> Section:
    """The report's table: one row per pair and measure."""
    def num(x: float | None, text: str = "not computed") -> str:
        return text if x is None else fmt(x)

    def p_text(p: float | None) -> str:  # the normal tail is not worth more digits than this
        return "< 1e-16" if p is not None and p < 1e-16 else num(p)

    se_text = {"exact": "exact", "bounds": "error bounds", "none": "no uncertainty"}
    rows = tuple(Row((
        f"{t.a} -> {t.b}", f"`{t.measure}`", num(t.difference, "no value"),
        num(t.stderr) if t.kind == "z-test" else se_text[t.kind], num(t.z), p_text(t.p_value),
        p_text(t.holm_p_value), t.verdict)) for t in tests)
    return Section(
        "Tests of the differences",
        ("For each pair A -> B and each measure both have: difference value(B) - value(A); "
         "where both are estimates with a standard error, its combined standard error "
         "sqrt(s_A^2 + s_B^2), z = difference / s.e. and the two-sided p-value (normal "
         f"approximation), adjusted by Holm's procedure over the measures of the pair, at alpha "
         f"{alpha:g}. Exact measures are compared exactly; Lanczos eigenvalues by their error "
         "bounds; lower bounds of a maximum and other values without an uncertainty are not "
         "tested.",),
        ("pair", "measure", "difference", "s.e. of difference", "z", "p-value",
         "Holm-adjusted p", "verdict"),
        rows)
