"""The edge of stability reproduced with the monitor, and its figure (track_figure, plot-track)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers.models import tiny_data, tiny_mlp  # noqa: E402

from landscape import CurvatureMonitor, LandscapeError  # noqa: E402
from landscape.cli import main  # noqa: E402
from landscape.data.edge_of_stability import gradient_descent_run  # noqa: E402
from landscape.plot import track_figure  # noqa: E402


@pytest.mark.slow
def test_gradient_descent_hovers_at_the_edge_of_stability():
    """Full-batch GD at lr = 2 (2 / lr = 1): the sharpness starts near 0.5, rises, and over the
    last third of 600 steps stays within [0.8, 1.25] x 2 / lr (about 10 s)."""
    lr, steps = 2.0, 600
    rows = gradient_descent_run(lr, steps, every=10)
    ratios = np.array([r["top_eigenvalue"] * lr / 2 for r in rows])
    assert ratios[0] < 0.6
    last = np.array([r["eos_ratio"] for r in rows if r["step"] >= 2 * steps / 3])
    assert len(last) >= 20
    assert np.all((last >= 0.8) & (last <= 1.25)), last
    assert np.allclose(last, [r["top_eigenvalue"] * lr / 2 for r in rows
                              if r["step"] >= 2 * steps / 3])
    assert rows[-1]["loss"] < rows[0]["loss"] / 10


def _log(tmp_path, name="run", lr=0.5):
    model, data = tiny_mlp(), tiny_data()
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    monitor = CurvatureMonitor(model, data, every=2, optimizer=opt, log_dir=tmp_path / name,
                               budget=None,
                               measures=("top_eigenvalue", "eos_ratio", "loss"))
    for step in range(7):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data[0]), data[1]).backward()
        opt.step()
        monitor.step(step)
    return tmp_path / name / "curvature.jsonl", monitor


def test_track_figure_draws_sharpness_threshold_and_loss(tmp_path):
    path, monitor = _log(tmp_path)
    fig = track_figure({"a": path, "b": monitor.rows})
    top, bottom = fig.axes
    lines = top.get_lines()
    assert len(lines) == 4  # two runs, each with its threshold
    np.testing.assert_allclose(lines[0].get_ydata(), [r["top_eigenvalue"] for r in monitor.rows])
    np.testing.assert_allclose(lines[1].get_ydata(), 2 / 0.5)  # the 2 / lr line
    assert any("2/lr = 4" in t.get_text() for t in top.texts)
    assert bottom.get_yscale() == "log" and len(bottom.get_lines()) == 2
    plt.close(fig)


def test_track_figure_refuses_rows_without_sharpness():
    with pytest.raises(LandscapeError, match="no run has"):
        track_figure([{"step": 0, "loss": 1.0}])
    with pytest.raises(LandscapeError, match="cannot read rows"):
        track_figure(3)


def test_cli_plot_track_writes_the_figure(tmp_path, capsys):
    path_a, _ = _log(tmp_path, "lr_a", 0.5)
    path_b, _ = _log(tmp_path, "lr_b", 0.25)
    assert main(["plot-track", str(path_a), str(path_b), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "sharpness.png").stat().st_size > 0
    assert (tmp_path / "fig" / "sharpness.pdf").exists()
    out = capsys.readouterr().out
    assert "lr_a: 4 rows, last step 6" in out
    assert main(["plot-track", str(tmp_path / "missing.jsonl")]) == 2
    assert "no monitor log" in capsys.readouterr().err
