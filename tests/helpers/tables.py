"""Markdown tables as a reader sees them: parsed by a CommonMark + GFM-tables parser
(markdown-it-py), and rendered to HTML then read back by html.parser."""

from __future__ import annotations

from html.parser import HTMLParser

from markdown_it import MarkdownIt


def tables(markdown: str) -> list[list[list[str]]]:
    """Every table in `markdown` as rows of cell texts, as a CommonMark + GFM-tables parser
    reads it."""
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    out, row, cell = [], None, None
    for tok in tokens:
        if tok.type == "table_open":
            out.append([])
        elif tok.type == "tr_open":
            row = []
        elif tok.type in ("th_open", "td_open"):
            cell = []
        elif tok.type == "inline" and cell is not None:
            cell.append(tok.content)
        elif tok.type in ("th_close", "td_close"):
            row.append("".join(cell))
            cell = None
        elif tok.type == "tr_close":
            out[-1].append(row)
    return out


def rendered_cells(markdown: str) -> list[list[str]]:
    """The text of each rendered table row (HTML of the cells), to read what a reader sees."""
    html = MarkdownIt("commonmark").enable("table").render(markdown)
    parser = Cells()
    parser.feed(html)
    return parser.rows


class Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.in_cell = False
        self.texts: list[str] = []
        self.all_text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.in_cell, self.texts = True, []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append("".join(self.texts))
            self.in_cell = False

    def handle_data(self, data):
        self.all_text.append(data)
        if self.in_cell:
            self.texts.append(data)
