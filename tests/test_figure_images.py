"""The main plot functions draw what they drew when the baselines were approved.

Each figure is drawn from the deterministic data of tests/helpers/figure_data.py (no model, no
seed), with matplotlib's test font settings (DejaVu Sans, shipped with matplotlib; no hinting) and
saved at 72 dpi, then compared pixel by pixel with tests/baseline/NAME.png by
`matplotlib.testing.compare.compare_images` (root-mean-square difference of the 0-255 grey levels
at most TOLERANCE, which absorbs anti-aliasing differences between FreeType builds but not a
moved label, a lost colorbar or a changed colour).

After an intended change of the figures, regenerate the baselines and look at them:
`LANDSCAPE_UPDATE_BASELINES=1 .venv/bin/python -m pytest tests/test_figure_images.py` writes
them and skips the comparison; commit them, then the tests compare again. A test compares only
against a committed baseline (in a git checkout: tracked and unchanged since the last commit),
never against one it has just written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from helpers.figure_data import (  # noqa: E402
    Density,
    bowl_surface,
    eigenvalue_track,
    parabola_lines,
)
from matplotlib.testing import set_font_settings_for_testing  # noqa: E402
from matplotlib.testing.compare import compare_images  # noqa: E402

from landscape import plot as lp  # noqa: E402

BASELINES = Path(__file__).parent / "baseline"
TOLERANCE = 3.0
DPI = 72

FIGURES: dict[str, Callable[[], Any]] = {
    "line_panels": lambda: lp.plot_line(parabola_lines(3), labels=["sgd", "adam", "sam"]),
    "contour_log": lambda: lp.plot_contour(bowl_surface(), log=True),
    "contour_filled": lambda: lp.plot_contour(bowl_surface(), filled=True, log=False,
                                              levels=[0.0, 0.5, 1.0, 2.0, 4.0]),
    "heatmap": lambda: lp.plot_heatmap(bowl_surface()),
    "surface3d_clipped": lambda: lp.plot_surface_3d(bowl_surface(), zmax=2.0),
    "density_log": lambda: lp.plot_density(Density(), log=True),
    "track_far_edge": lambda: lp.plot_track(eigenvalue_track(), lr=0.05),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_matches_its_baseline(name, tmp_path):
    with matplotlib.rc_context():
        set_font_settings_for_testing()
        ax = FIGURES[name]()
        actual = tmp_path / f"{name}.png"
        ax.figure.savefig(actual, dpi=DPI, metadata={"Software": None})
        plt.close(ax.figure)
    expected = BASELINES / f"{name}.png"
    if os.environ.get("LANDSCAPE_UPDATE_BASELINES"):
        BASELINES.mkdir(exist_ok=True)
        expected.write_bytes(actual.read_bytes())
        pytest.skip(f"baseline {expected.name} written: look at it and commit it")
    assert expected.is_file(), f"no baseline {expected.name}: run with LANDSCAPE_UPDATE_BASELINES=1"
    assert committed(expected), (f"baseline {expected.name} differs from the committed one: "
                                 "commit it after looking at it, or restore it")
    failure = compare_images(str(expected), str(actual), tol=TOLERANCE)
    assert failure is None, failure


def committed(path: Path) -> bool:
    """True when `path` is tracked by git and unchanged since the last commit (or when the
    tests do not run in a git checkout, where every file is as released)."""
    git = shutil.which("git")
    root = path.parent
    if git is None or subprocess.run([git, "-C", str(root), "rev-parse", "--is-inside-work-tree"],
                                     capture_output=True).returncode != 0:
        return True
    tracked = subprocess.run([git, "-C", str(root), "ls-files", "--error-unmatch", path.name],
                             capture_output=True).returncode == 0
    clean = subprocess.run([git, "-C", str(root), "diff", "--quiet", "HEAD", "--", path.name],
                           capture_output=True).returncode == 0
    return tracked and clean
