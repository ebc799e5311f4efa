"""Every plot renders to PNG; the VTK export is valid XML with the grid's points and quads."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers.models import tiny_data, tiny_mlp  # noqa: E402

from landscape import (  # noqa: E402
    LandscapeError,
    Probe,
    loss_line,
    loss_surface,
    pca_directions,
    random_direction,
)
from landscape import plot as lp  # noqa: E402


@pytest.fixture(scope="module")
def results():
    model = tiny_mlp()
    probe = Probe(model, tiny_data(60))
    d1, d2 = random_direction(probe, seed=1), random_direction(probe, seed=2)
    xs, ys = np.linspace(-1, 1, 7), np.linspace(-0.5, 0.5, 5)
    surface = loss_surface(probe, d1, d2, xs, ys)
    loss = surface.loss.copy()
    loss[0, 0] = np.nan  # a diverged point must be drawn as blank, not fail
    object.__setattr__(surface, "loss", loss)
    lines = [loss_line(probe, d1, xs), loss_line(probe, d2, xs, max_samples=16)]
    w = probe.flat_params()
    states = [{k: v.clone() for k, v in model.state_dict().items()} for _ in range(4)]
    for k, s in enumerate(states):
        for name, p in probe.unflatten(w + 0.1 * (3 - k) * (d1.vector + k * d2.vector)).items():
            s[name] = p.clone()
    return surface, lines, pca_directions(probe, states)


def _png(ax, tmp_path, name):
    path = tmp_path / f"{name}.png"
    ax.figure.savefig(path)
    plt.close(ax.figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_every_plot_renders_to_png(results, tmp_path):
    surface, lines, pca = results
    _png(lp.plot_line(lines, labels=["d1", "d2"]), tmp_path, "line")
    _png(lp.plot_line(lines[0], log=True, accuracy=False), tmp_path, "line_log")
    _png(lp.plot_contour(surface), tmp_path, "contour")
    _png(lp.plot_contour(surface, log=True, filled=True), tmp_path, "contourf")
    _png(lp.plot_heatmap(surface), tmp_path, "heat")
    _png(lp.plot_heatmap(surface, field="accuracy"), tmp_path, "heat_acc")
    _png(lp.plot_surface_3d(surface, zmax=3.0), tmp_path, "surf3d")
    _png(lp.plot_trajectory(surface, pca), tmp_path, "traj")
    fig, axes = plt.subplots(1, 2)
    assert lp.plot_contour(surface, axes[1]) is axes[1]
    _png(axes[0], tmp_path, "given_ax")


@dataclass(frozen=True)
class FakeDensity:
    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray


def test_plot_density_draws_grid_and_density(tmp_path):
    grid = np.linspace(-1, 5, 200)
    dens = np.exp(-(grid - 1) ** 2) / np.sqrt(np.pi)
    res = FakeDensity(grid, dens, np.array([1.0]), np.array([1.0]))
    ax = lp.plot_density(res, log=True)
    x, y = ax.lines[0].get_data()
    np.testing.assert_array_equal(x, grid)
    np.testing.assert_array_equal(y, dens)
    assert ax.get_yscale() == "log"
    _png(ax, tmp_path, "density")
    with pytest.raises(LandscapeError, match="grid"):
        lp.plot_density(FakeDensity(grid, dens[:-1], grid, grid))


def test_plot_errors(results):
    surface, lines, _ = results
    _, ax = plt.subplots()
    with pytest.raises(LandscapeError, match="3D Axes"):
        lp.plot_surface_3d(surface, ax)
    with pytest.raises(LandscapeError, match="labels has"):
        lp.plot_line(lines, labels=["one"])
    with pytest.raises(LandscapeError, match="field must be"):
        lp.plot_heatmap(surface, field="error")
    with pytest.raises(LandscapeError, match=r"shape \(T, 2\)"):
        lp.plot_trajectory(surface, np.zeros(3))
    plt.close("all")


def test_export_vtp(results, tmp_path):
    surface, _, _ = results
    path = tmp_path / "s.vtp"
    lp.export_vtp(surface, path)
    piece = ET.parse(path).getroot().find("PolyData/Piece")
    assert piece.get("NumberOfPoints") == "35" and piece.get("NumberOfPolys") == str(6 * 4)
    pts = np.array(piece.find("Points/DataArray").text.split(), dtype=float).reshape(-1, 3)
    assert pts[8, 0] == pytest.approx(surface.xs[1]) and pts[8, 1] == pytest.approx(surface.ys[3])
    assert pts[8, 2] == pytest.approx(surface.loss[1, 3])
    assert np.isfinite(pts).all()  # the NaN point gets the top height
    loss = np.array(piece.find("PointData/DataArray").text.split(), dtype=float)
    assert np.isnan(loss[0]) and loss[8] == pytest.approx(surface.loss[1, 3])


@pytest.mark.slow
def test_cli_plot_writes_figures_and_resumable_file(tmp_path, capsys):
    from landscape.cli import main

    out = tmp_path / "p"
    assert main(["plot", "--model", "digits_mlp", "--kind", "2d", "--points", "3",
                 "--out", str(out), "--max-samples", "64"]) == 0
    for name in ("contour.png", "contour.pdf", "surface3d.png", "surface.h5", "surface.vtp",
                 "2d.json"):
        assert (out / name).stat().st_size > 0, name
    assert main(["plot", "--model", "digits_mlp", "--kind", "1d", "--points", "5",
                 "--out", str(out)]) == 0
    assert (out / "line.png").exists() and "wrote" in capsys.readouterr().out
    assert main(["plot", "--model", "nope", "--out", str(out)]) == 2
    assert "neither a built-in" in capsys.readouterr().err
