"""Is a figure clean? No text outside the canvas, no two text boxes overlapping.

Measured with matplotlib's renderer: the figure is drawn once on the Agg canvas and every `Text`
that actually renders (tick labels in view, axis labels, titles, legend entries, colorbar labels,
annotations, contour labels) is recorded with its window extent in pixels. Used by
tests/test_figures.py on every figure the package and its scripts save (`savefig` is wrapped).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

# One pixel of slack (antialiasing) at the figure's dpi.
SLACK_PX = 1.0


@contextmanager
def _spy_texts() -> Iterator[list[tuple[Any, ...]]]:
    """Record (text, window extent, canvas width, height) of every non-empty Text drawn inside
    the block; a text drawn twice (a layout pass, then the file) keeps its last extent."""
    drawn: list[tuple[Any, ...]] = []
    original = Text.draw

    def spy(self: Text, renderer: Any) -> None:
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            canvas = self.get_figure(root=True).bbox  # at the dpi being drawn
            drawn[:] = [d for d in drawn if d[0] is not self]
            drawn.append((self, self.get_window_extent(renderer), canvas.width, canvas.height))

    with mock.patch.object(Text, "draw", spy):
        yield drawn


def text_problems(fig: Figure) -> list[str]:
    """Every text box outside the canvas and every pair of overlapping text boxes, in words,
    when `fig` is drawn on its Agg canvas."""
    with _spy_texts() as drawn:
        fig.canvas.draw()
    return _problems(drawn)


def _problems(texts: list[tuple[Any, ...]]) -> list[str]:
    problems = []
    for text, box, width, height in texts:
        if (box.x0 < -SLACK_PX or box.y0 < -SLACK_PX or box.x1 > width + SLACK_PX
                or box.y1 > height + SLACK_PX):
            problems.append(f"{text.get_text()!r} outside the canvas: box "
                            f"({box.x0:.0f}, {box.y0:.0f}, {box.x1:.0f}, {box.y1:.0f}) on "
                            f"{width:.0f}x{height:.0f} px")
    for i, (t1, b1, *_) in enumerate(texts):
        for t2, b2, *_ in texts[i + 1:]:
            dx = min(b1.x1, b2.x1) - max(b1.x0, b2.x0)
            dy = min(b1.y1, b2.y1) - max(b1.y0, b2.y0)
            if dx > SLACK_PX and dy > SLACK_PX:
                problems.append(f"{t1.get_text()!r} overlaps {t2.get_text()!r} "
                                f"({dx:.0f}x{dy:.0f} px)")
    return problems


@contextmanager
def checked_savefig() -> Iterator[dict[str, list[str]]]:
    """Within the block, every `Figure.savefig` is checked as it renders the file (at the dpi and
    size of the file, PNG and PDF alike); yields the record {path: problems}."""
    record: dict[str, list[str]] = {}
    original = Figure.savefig

    def savefig(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("bbox_inches") is not None:
            raise AssertionError(f"{fname}: bbox_inches changes the canvas; constrained layout "
                                 "must fit the figure as sized")
        with _spy_texts() as drawn:
            result = original(self, fname, *args, **kwargs)
        # save_figure writes `.NAME.PID.tmp.EXT` and renames it to NAME.EXT: record NAME.EXT
        name = re.sub(r"^\.(.*)\.\d+\.tmp\.(\w+)$", r"\1.\2", Path(str(fname)).name)
        record[str(Path(str(fname)).with_name(name))] = _problems(drawn)
        return result

    with mock.patch.object(Figure, "savefig", savefig):
        yield record


def ink_extent(path: str | Path, panels: int = 1) -> list[tuple[float, float]]:
    """(height, width) of the drawn part of each of `panels` equal side-by-side parts of a PNG,
    as fractions of that part: the box around every pixel darker than near-white. A 3D view
    that leaves wide white margins (mplot3d's default) has a small width."""
    import numpy as np
    from PIL import Image

    ink = (np.asarray(Image.open(path).convert("RGB")) < 245).any(-1)
    out = []
    for k in range(panels):
        part = ink[:, k * ink.shape[1] // panels:(k + 1) * ink.shape[1] // panels]
        rows, cols = np.flatnonzero(part.any(1)), np.flatnonzero(part.any(0))
        out.append(((rows[-1] - rows[0] + 1) / part.shape[0],
                    (cols[-1] - cols[0] + 1) / part.shape[1]))
    return out
