"""Warnings reported once each, in words: the helper the command line and the figure scripts
share (`landscape.warnings_words`), and every figure script's use of it."""

from __future__ import annotations

import argparse
import runpy
import warnings
from pathlib import Path

import pytest

from landscape.warnings_words import warnings_in_words

ROOT = Path(__file__).resolve().parents[1]
FIGURE_SCRIPTS = ("make_demo_figures.py", "make_figures.py", "make_spread_figure.py",
                  "demo_stability.py", "edge_of_stability.py")
MESSAGE = "hessian_eigenvalues did not converge; raise max_iter"


def test_each_distinct_warning_is_said_once_in_words_and_deprecations_are_dropped():
    said = []
    with warnings_in_words(said.append) as seen:
        for _ in range(3):
            warnings.warn(MESSAGE, RuntimeWarning, stacklevel=1)
        warnings.warn("second\n   message", UserWarning, stacklevel=1)
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    assert said == [f"note: {MESSAGE}", "note: second message"]
    assert seen == [MESSAGE, "second message"]


def test_warnings_are_said_even_when_the_block_raises():
    said = []
    with pytest.raises(KeyError), warnings_in_words(said.append):
        warnings.warn(MESSAGE, RuntimeWarning, stacklevel=1)
        raise KeyError("x")
    assert said == [f"note: {MESSAGE}"]


@pytest.mark.parametrize("script", FIGURE_SCRIPTS)
def test_figure_scripts_report_warnings_in_words(script, monkeypatch, capsys):
    """A warning raised inside the script's main() (here by its argument parsing, which then
    stops the script) reaches stderr once, as a note, not as a raw RuntimeWarning line."""
    def parse_args(self, *args, **kwargs):
        warnings.warn(MESSAGE, RuntimeWarning, stacklevel=1)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    with pytest.raises(SystemExit):
        runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
    err = capsys.readouterr().err
    assert err.count(f"note: {MESSAGE}") == 1
    assert "RuntimeWarning" not in err
