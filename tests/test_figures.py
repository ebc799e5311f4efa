"""Every figure the package and its scripts write is clean and in the paper style.

Each command that writes figures (`plot`, `audit`, `compare`, `track`, the demo and
scripts/make_figures.py) runs in-process with `savefig` wrapped
(tests/helpers/figure_checks.py): every file it saves is rendered with its text boxes measured,
and none may stick out of the canvas or overlap another. The runs are small (a 16-unit digits
MLP, few points), the drawing code is the one users get.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers.figure_checks import checked_savefig, ink_extent, text_problems  # noqa: E402
from helpers.figure_data import bowl_surface, eigenvalue_track, parabola_lines  # noqa: E402

from landscape import LandscapeError, Probe, audit, compare  # noqa: E402
from landscape import plot as lp  # noqa: E402
from landscape.data import digits_mlp, digits_tensors  # noqa: E402

pytestmark = pytest.mark.slow  # the whole module: see `make test-fast`

ROOT = Path(__file__).resolve().parents[1]
# a single-column PNG at 300 dpi is 3.25 in * 300 = 975 px wide
SINGLE_PX, DOUBLE_PX = 975, 2025


def assert_clean(record: dict[str, list[str]], expected: int) -> None:
    assert len(record) >= expected, sorted(record)
    dirty = {Path(k).name: v for k, v in record.items() if v}
    assert not dirty, dirty


def png_width(path: Path) -> int:
    return plt.imread(path).shape[1]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("figures")
    for seed in range(2):
        torch.save(digits_mlp(hidden=16, seed=seed).state_dict(), root / f"net_{seed}.pt")
    (root / "net.py").write_text(
        "from landscape.data import digits_mlp\n\ndef make():\n    return digits_mlp(hidden=16)\n")
    (root / "small_data.py").write_text(
        "from landscape.data import digits_tensors\n\n"
        "def load():\n    x, y = digits_tensors('train')\n    return x[:200], y[:200]\n")
    return root


def small_probe(seed: int = 0) -> Probe:
    x, y = digits_tensors("train")
    return Probe(digits_mlp(hidden=16, seed=seed), (x[:200], y[:200]))


def test_cli_plot_figures_are_clean_column_wide_pdf_and_300dpi_png(model_files):
    from landscape.cli import main

    model, data = str(model_files / "net.py:make"), str(model_files / "small_data.py:load")
    out = model_files / "plot"
    with checked_savefig() as record:
        for kind, extra in (("1d", []), ("2d", []),
                            ("2d", ["--linear", "--zmax", "2.4", "--column", "double"])):
            folder = out / f"{kind}{len(extra)}"
            args = ["plot", "--model", model, "--data", data, "--checkpoint",
                    str(model_files / "net_0.pt"), "--kind", kind, "--points", "5",
                    "--out", str(folder), "--no-progress", *extra]
            assert main(args) == 0
    assert_clean(record, 2 + 2 * 6)
    assert (out / "1d0" / "line.pdf").read_bytes()[:5] == b"%PDF-"
    assert png_width(out / "1d0" / "line.png") == SINGLE_PX
    assert png_width(out / "2d0" / "contour.png") == SINGLE_PX
    assert png_width(out / "2d5" / "heatmap.png") == DOUBLE_PX


def test_audit_figures_are_clean(tmp_path):
    report = audit(small_probe(), budget="quick", name="net_0.pt",
                   measures=["hessian_density", "loss_line", "loss_surface"])
    with checked_savefig() as record:
        written = report.write(tmp_path)
    assert_clean(record, 6)
    assert {p.name for p in written} >= {"hessian_density.pdf", "loss_surface.png"}


DEMO_NAMES = ("sgd_small_batch", "sgd_large_batch", "adam", "sam")


def test_compare_figures_with_the_demos_four_minima_are_clean(tmp_path):
    """Four minima give six pairs: the interpolation plot of the demo."""
    probes = {name: small_probe(seed) for seed, name in enumerate(DEMO_NAMES)}
    result = compare(probes, measures=["loss_line"], interpolation_points=5, align=False)
    with checked_savefig() as record:
        result.write(tmp_path)
    assert_clean(record, 4)
    fig = plt.imread(tmp_path / "interpolation.png")
    assert fig.shape[1] == SINGLE_PX


def test_demo_figures_are_clean(tmp_path, monkeypatch):
    """The real `landscape demo`, with one epoch per optimizer and the 1D measure only."""
    import landscape.demo as demo

    monkeypatch.setattr(demo, "RECIPES", {name: (64, "sgd" if name != "adam" else "adam",
                                                 0.01, 1) for name in DEMO_NAMES})
    monkeypatch.setattr(demo, "compare", functools.partial(
        demo.compare, measures=["loss_line"], interpolation_points=3, align=False))
    def first_128(split, image):
        return tuple(t[:128] for t in digits_tensors(split, image=image))

    monkeypatch.setattr(demo, "digits_tensors", first_128)
    with checked_savefig() as record:
        demo.run_demo(out=tmp_path)
    assert_clean(record, 4)
    assert {Path(k).name for k in record} >= {"lines.png", "interpolation.png"}


@pytest.mark.parametrize("lr", [0.05, 0.7])
def test_track_figure_is_clean_with_the_edge_of_stability_far_or_near(tmp_path, lr):
    from landscape.cli import _save_track_plot

    with checked_savefig() as record:
        _save_track_plot(eigenvalue_track(), lr, tmp_path, "single")
    assert_clean(record, 2)


def test_track_axis_fits_the_data_when_two_over_lr_is_far_above():
    ax = lp.plot_track(eigenvalue_track(), lr=0.05)  # 2 / lr = 40, eigenvalues 0.7 .. 3
    low, high = ax.get_ylim()
    assert high < 5 and low > 0
    assert any("2 / lr = 40" in t.get_text() for t in ax.texts)
    near = lp.plot_track(eigenvalue_track(), lr=0.7)  # 2 / lr = 2.86: a line within the data
    assert [line.get_ydata()[0] for line in near.lines[1:]] == [pytest.approx(2 / 0.7)]
    plt.close("all")


def test_density_axis_fits_the_peak():
    from helpers.figure_data import Density

    result = Density()
    ax = lp.plot_density(result, log=True)
    peak = result.density.max()
    assert ax.get_ylim() == pytest.approx((peak * 1e-6, peak * 2))
    assert ax.get_xlim() == pytest.approx((result.grid.min(), result.grid.max()))
    plt.close("all")


def test_make_figures_script_figures_are_clean(tmp_path):
    spec = importlib.util.spec_from_file_location("make_figures",
                                                  ROOT / "scripts" / "make_figures.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    steep = bowl_surface()
    object.__setattr__(steep, "loss", steep.loss * 30)
    with checked_savefig() as record:
        for zmax in (None, 1.0):
            script.draw_figures(parabola_lines(2), [bowl_surface(), steep],
                                tmp_path / f"zmax{zmax}", zmax=zmax, formats=("png", "pdf"))
    assert_clean(record, 12)
    assert png_width(tmp_path / "zmaxNone" / "resnet_contour.png") == DOUBLE_PX
    # each 3D panel fills its half of the canvas (mplot3d's default margins left 65-75% wide)
    for zmax in (None, 1.0):
        for height, width in ink_extent(tmp_path / f"zmax{zmax}" / "resnet_surface3d.png", 2):
            assert height > 0.9 and width > 0.8, (zmax, height, width)


def test_clipping_is_stated_and_leaves_holes_not_a_plateau():
    surface = bowl_surface()
    ax = lp.plot_surface_3d(surface, zmax=2.0)
    assert "clipped at 2" in ax.clip_note and "% of the points above" in ax.clip_note
    assert any(t.get_text() == ax.clip_note for t in ax.texts)
    above = (surface.loss > 2.0).mean()
    assert f"{above:.0%} of the points above" in ax.clip_note
    assert ax.get_zlim()[1] == pytest.approx(2.0)
    unclipped = lp.plot_surface_3d(surface)
    assert unclipped.clip_note is None and not unclipped.texts
    for a in (ax, unclipped):
        a.figure.canvas.draw()
    # the points above the clip are holes: fewer polygons than the full grid's quads, and at
    # least every quad whose four corners lie below the clip
    below = surface.loss <= 2.0
    whole = below[:-1, :-1] & below[1:, :-1] & below[:-1, 1:] & below[1:, 1:]
    drawn = len(ax.collections[0].get_paths())
    assert whole.sum() <= drawn < len(unclipped.collections[0].get_paths()) == whole.size
    plt.close("all")


def test_every_contour_and_heatmap_has_a_colorbar_naming_the_scale():
    surface = bowl_surface()
    for draw, log, label in ((lp.plot_contour, False, "loss"), (lp.plot_contour, True, "log"),
                             (lp.plot_heatmap, True, "log"), (lp.plot_heatmap, False, "loss")):
        ax = draw(surface, log=log)
        bars = [a for a in ax.figure.axes if a is not ax]
        assert len(bars) == 1 and label in bars[0].get_ylabel()
    plt.close("all")


def test_one_font_family_in_every_text_of_a_figure():
    ax = lp.plot_line(parabola_lines(3), labels=["a", "b", "c"])
    families = {t.get_fontname() for t in ax.figure.findobj(matplotlib.text.Text)
                if t.get_text()}
    assert families == {"DejaVu Sans"}
    plt.close("all")


def test_line_panels_separate_loss_and_accuracy_with_the_legend_outside():
    ax = lp.plot_line(parabola_lines(6), labels=[f"pair {k}" for k in range(6)])
    fig = ax.figure
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_ylabel() == "loss" and acc_ax.get_ylabel() == "accuracy"
    # accuracy on a fixed [0, 1] axis: rounding noise near 1 must not look like a barrier
    assert acc_ax.get_ylim() == (0.0, 1.0)
    zoomed = lp.plot_line(parabola_lines(6), accuracy_range=None).figure.axes[1]
    low, high = zoomed.get_ylim()
    assert low > 0.9 and high < 1.01 and zoomed.get_ylabel() == "accuracy (zoomed)"
    legend = fig.legends[0]
    fig.canvas.draw()
    box = legend.get_window_extent()
    for panel in fig.axes:
        assert not box.overlaps(panel.get_window_extent())
    assert text_problems(fig) == []
    plt.close("all")


def test_figure_size_and_style_options():
    assert lp.figure_size("single") == (3.25, 2.4375)
    assert lp.figure_size(5.0, aspect=0.5) == (5.0, 2.5)
    with pytest.raises(LandscapeError, match="column must be one of"):
        lp.figure_size("triple")
    with pytest.raises(LandscapeError, match="positive"):
        lp.figure_size(-1.0)
    fig, _ = lp.subplots(column="double")
    assert fig.get_figwidth() == pytest.approx(6.75)
    assert fig.get_layout_engine() is not None
    plt.close("all")


def test_save_figure_writes_vector_pdf_and_300_dpi_png(tmp_path):
    ax = lp.plot_heatmap(bowl_surface())
    written = lp.save_figure(ax.figure, tmp_path / "heat.png")
    assert [p.name for p in written] == ["heat.pdf", "heat.png"]
    assert written[0].read_bytes()[:5] == b"%PDF-"
    assert png_width(written[1]) == SINGLE_PX
    plt.close("all")


def test_each_pair_has_one_colour_and_its_aligned_path_is_dashed(tmp_path, monkeypatch):
    """Six pairs with their aligned paths are twelve curves: more than the palette's eight
    colours. Each pair keeps one colour, raw solid and aligned dashed over it, so an aligned
    path equal to the raw one still shows, and no two pairs share a colour."""
    from landscape.compare import Comparison, comparison_figures

    drawn = []
    original = lp.plot_line

    def spy(*args, **kwargs):
        ax = original(*args, **kwargs)
        drawn.append(ax)
        return ax

    monkeypatch.setattr(lp, "plot_line", spy)
    lines = parabola_lines(6)
    keys = [f"m{i} -> m{j}" for i in range(4) for j in range(i + 1, 4)]
    comparison = Comparison({}, [], 0, "quick", 0.0, interpolations=dict(zip(keys, lines)),
                            aligned_interpolations=dict(zip(keys, lines)))
    comparison_figures(comparison, tmp_path)
    (ax,) = drawn
    curves = [(line.get_label(), line.get_color(), line.get_linestyle()) for line in ax.lines]
    assert len(curves) == 12
    raw = [c for c in curves if not c[0].endswith(", aligned")]
    aligned = [c for c in curves if c[0].endswith(", aligned")]
    assert [c[2] for c in raw] == ["-"] * 6 and [c[2] for c in aligned] == ["--"] * 6
    assert [c[1] for c in raw] == [c[1] for c in aligned]
    assert len({c[1] for c in raw}) == 6


@pytest.mark.parametrize("kwargs", [{}, {"zmax": 2.0}, {"log": True}, {"column": "double"}])
def test_a_3d_view_fills_its_canvas(tmp_path, kwargs):
    """plot_surface_3d's own figure: the box and its labels span the canvas (a laid-out 3D
    Axes left 15% empty above and 20% at the sides), with every label inside it."""
    ax = lp.plot_surface_3d(bowl_surface(), **kwargs)
    assert not text_problems(ax.figure)
    (path,) = lp.save_figure(ax.figure, tmp_path / "surface3d", ("png",))
    ((height, width),) = ink_extent(path)
    assert height > 0.9 and width > 0.85, (height, width)
    plt.close("all")
