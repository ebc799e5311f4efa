"""Reports: measured results rendered as Markdown, HTML and JSON, and their figures saved.

A `Report` is a title, a plain-text summary and a list of `Section`s. A section holds plain-text
paragraphs and at most one table; a table row (`Row`) holds its cells as text (a cell written
`` `like this` `` is code) and an optional `note`, a flag shown under the table (for example "not
converged"). Measuring code builds a `Report` from its results; this module alone knows how a
page is written, so a new kind of line (a flag, a provenance section) is added in one place.

The cell helpers (`value_text`, `uncertainty_text`, `cost_text`, `error_line`) state the
conventions every report shares: `x ± s (s.e.)` is an estimate with one standard error,
`x (± b)` or `± b (bound)` a deterministic error bound, and a failed measure reads
`failed (Type: message)`.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Characters that would start emphasis, code, links, HTML, a heading or a table cell.
_MARKDOWN_SPECIAL = ("\\", "`", "*", "_", "[", "]", "<", ">", "|", "#")

PAGE_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;}"
              "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
              "figure{display:inline-block;margin:8px}img{max-width:480px}")


@dataclass(frozen=True)
class Row:
    """One table row: its cells as text (a cell in backticks is code) and an optional note."""

    cells: tuple[str, ...]
    note: str | None = None


@dataclass(frozen=True)
class Section:
    """A part of a report: an optional heading, plain-text paragraphs and at most one table."""

    title: str | None = None
    text: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    rows: tuple[Row, ...] = ()
    after: tuple[str, ...] = ()  # plain-text paragraphs under the table


@dataclass(frozen=True)
class Report:
    """A rendered view of results: `to_markdown`, `to_html` and `to_json` (of `data`)."""

    title: str
    summary: str
    sections: tuple[Section, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.data, indent=indent)

    def to_markdown(self, figures: Sequence[str] = ()) -> str:
        """Markdown: `# title`, the summary, each section, then the figures (paths as given)."""
        lines = [f"# {md_text(self.title)}", "", md_text(self.summary), ""]
        for section in self.sections:
            lines += _section_markdown(section)
        for fig in figures:
            lines += [f"![{Path(fig).stem}]({fig})", ""]
        return "\n".join(lines)

    def to_html(self, figures: Sequence[Path] = ()) -> str:
        """A self-contained HTML page: text escaped (never Markdown), PNG figures inlined."""
        body = "".join(_section_html(s) for s in self.sections)
        imgs = "".join(
            f'<figure><img src="data:image/png;base64,'
            f'{base64.b64encode(Path(f).read_bytes()).decode()}" alt="{html.escape(Path(f).stem)}">'
            f"<figcaption>{html.escape(Path(f).stem)}</figcaption></figure>"
            for f in figures
        )
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{PAGE_STYLE}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1><p>{html.escape(self.summary)}</p>"
            f"{body}{imgs}</body></html>"
        )

    def write(self, out: Path, stem: str, figures: Sequence[Path] = ()) -> list[Path]:
        """Write STEM.json, STEM.md and STEM.html into `out` (PNG figures linked and inlined)."""
        path = out / f"{stem}.json"
        path.write_text(self.to_json())
        return [path, *self.write_pages(out, stem, figures)]

    def write_pages(self, out: Path, stem: str, figures: Sequence[Path] = ()) -> list[Path]:
        """Write STEM.md and STEM.html into `out`: the PNG figures linked by name from the
        Markdown (they sit beside it) and inlined in the HTML, so the page stands alone."""
        pngs = [Path(f) for f in figures if Path(f).suffix == ".png"]
        paths = [out / f"{stem}.md", out / f"{stem}.html"]
        paths[0].write_text(self.to_markdown([f.name for f in pngs]))
        paths[1].write_text(self.to_html(pngs))
        return paths


def _notes(section: Section) -> list[str]:
    return [f"Note on {row.cells[0].strip('`')}: {row.note}" for row in section.rows if row.note]


def _section_markdown(section: Section) -> list[str]:
    lines: list[str] = []
    if section.title:
        lines += [f"## {md_text(section.title)}", ""]
    for text in section.text:
        lines += [md_text(text), ""]
    if section.columns:
        lines += [md_row(section.columns), "|" + "---|" * len(section.columns)]
        lines += [md_row(row.cells) for row in section.rows]
        lines.append("")
    for text in (*_notes(section), *section.after):
        lines += [md_text(text), ""]
    return lines


def _html_cell(cell: str, tag: str) -> str:
    if len(cell) > 1 and cell.startswith("`") and cell.endswith("`"):
        return f"<{tag}><code>{html.escape(cell[1:-1])}</code></{tag}>"
    return f"<{tag}>{html.escape(cell)}</{tag}>"


def _section_html(section: Section) -> str:
    parts = [f"<h2>{html.escape(section.title)}</h2>"] if section.title else []
    parts += [f"<p>{html.escape(t)}</p>" for t in section.text]
    if section.columns:
        head = "".join(_html_cell(c, "th") for c in section.columns)
        rows = "".join("<tr>" + "".join(_html_cell(c, "td") for c in row.cells) + "</tr>"
                       for row in section.rows)
        parts.append(f"<table><tr>{head}</tr>{rows}</table>")
    parts += [f"<p>{html.escape(t)}</p>" for t in (*_notes(section), *section.after)]
    return "".join(parts)


def save_figures(out: Path, drawers: Sequence[tuple[str, Callable[[], Any]]]) -> list[Path]:
    """Draw each `(stem, draw)` (draw returns a Figure) and save it as out/STEM.pdf and .png.

    The figures are closed after saving. The matplotlib backend is the user's: this library
    never switches it (the command line picks a non-interactive one itself).
    """
    import matplotlib.pyplot as plt

    from . import plot

    made: list[Path] = []
    for stem, draw in drawers:
        fig = draw()
        try:
            made += plot.save_figure(fig, out / stem)
        finally:
            plt.close(fig)
    return made


# ---------------------------------------------------------------- cell text, shared by reports
def fmt(x: float | None) -> str:
    """A number with 4 significant digits; "-" for None."""
    return "-" if x is None else f"{x:.4g}"


def error_line(error: Mapping[str, str]) -> str:
    """`"Type: first line of the message"` of a failed measure's `error`."""
    first = error["message"].strip().splitlines()
    return f"{error['type']}: {first[0]}" if first else error["type"]


def value_text(value: float | None, error: Mapping[str, str] | None = None) -> str:
    """The value as shown in a table; for a failed measure `failed (Type: message)`."""
    return f"failed ({error_line(error)})" if error is not None else fmt(value)


def uncertainty_text(stderr: float | None, bound: float | None) -> str:
    """`± s (s.e.)` for a standard error, `± b (bound)` for an error bound, else "not
    estimated" (a report never leaves an uncertainty as a bare dash)."""
    if stderr is not None:
        return f"± {fmt(stderr)} (s.e.)"
    if bound is not None:
        return f"± {fmt(bound)} (bound)"
    return "not estimated"


UNCONVERGED_MARK = "(not converged)"


def marked_values_text(values: Sequence[float], unconverged: Sequence[bool] | None) -> str:
    """Every number of a measure, each that did not reach its tolerance followed by
    `(not converged)`: `12.3, 11.1, 9.87 (not converged)`."""
    marks = list(unconverged or ()) + [False] * len(values)
    return ", ".join(fmt(v) + (f" {UNCONVERGED_MARK}" if bad else "")
                     for v, bad in zip(values, marks))


def with_note(text: str, note: str | None) -> str:
    """A cell's text with a measure's note (why a number is not trusted) after it."""
    if not note:
        return text
    return note if text == "-" else f"{text}; {note}"


def value_with_uncertainty(value: float | None, stderr: float | None = None,
                           bound: float | None = None,
                           error: Mapping[str, str] | None = None) -> str:
    """One cell: `x ± s` (estimate and standard error), `x (± b)` (bound), or `x`."""
    if error is not None:
        return value_text(value, error)
    if stderr is not None:
        return f"{fmt(value)} ± {fmt(stderr)}"
    if bound is not None:
        return f"{fmt(value)} (± {fmt(bound)})"
    return fmt(value)


def cost_text(cost: Mapping[str, Any]) -> str:
    """The cost in words: products, passes and seconds; a shared cost names who shares it."""
    if cost.get("shared_with"):
        return f"with {cost['shared_with']} (one evaluation)"
    parts = [f"{cost[key]} {label}" for key, label in
             (("n_hvp", "HVP"), ("n_forward", "fwd"), ("n_gradient", "grad"),
              ("n_backward", "bwd")) if cost.get(key)]
    if cost.get("seconds") is not None:
        parts.append(f"{cost['seconds']:.2f} s")
    text = ", ".join(parts)
    shared = cost.get("shared_by")
    if shared and len(shared) > 1:
        names = [n.replace("_", " ") for n in shared]
        text = f"{', '.join(names[:-1])} and {names[-1]}: {text}"
    return text


def md_text(text: str) -> str:
    """Plain text made safe for Markdown: characters that would start emphasis, code, links,
    HTML or a table cell are backslash-escaped, and line breaks become spaces."""
    out = " ".join(str(text).split("\n"))
    for ch in _MARKDOWN_SPECIAL:
        out = out.replace(ch, "\\" + ch)
    return out


def md_row(cells: Sequence[str]) -> str:
    """One Markdown table row. Cells in backticks stay code (with `|` escaped, as GFM tables
    require); any other cell is escaped with `md_text`."""
    out = []
    for cell in cells:
        if len(cell) > 1 and cell.startswith("`") and cell.endswith("`"):
            out.append(cell.replace("|", "\\|"))
        else:
            out.append(md_text(cell))
    return "| " + " | ".join(out) + " |"
