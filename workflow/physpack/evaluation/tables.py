"""Tables of numbers, written one way: cells formatted by :func:`format_cell`, as
Markdown (for people and ``*.md`` files), as HTML (self-contained pages for the
Snakemake report) or as fixed-width text (benchmark consoles).

A table is a header and rows of cells that are already strings
(:func:`format_cell` makes them); the writers only lay them out.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

#: the page style of every HTML table (inline, no scripts, no external files)
STYLE = (
    "body{font-family:sans-serif;margin:1em}"
    "table{border-collapse:collapse}"
    "th,td{border:1px solid #ccc;padding:3px 8px}"
    "td{text-align:right;font-variant-numeric:tabular-nums}"
    "td.u{text-align:left;color:#555}"
    "thead th{background:#eee}"
    "tbody th{text-align:left;font-weight:normal}"
)


def format_cell(value: Any) -> str:
    """One cell: floats with 4 significant digits (``n/a`` when not finite),
    integers as they are, strings unchanged, anything else as JSON (``true``,
    ``null``, lists)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        return str(int(value))
    if isinstance(value, float) or hasattr(value, "dtype"):
        value = float(value)
        return f"{value:.4g}" if math.isfinite(value) else "n/a"
    return json.dumps(value)


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: int | None = None
) -> list[str]:
    """The lines of a Markdown table; columns from index ``right`` on are
    right-aligned (``None``: none)."""
    rule = [
        "---:" if right is not None and k >= right else "---"
        for k in range(len(header))
    ]
    return [
        "| " + " | ".join(header) + " |",
        "|" + "".join(f"{r}|" for r in rule),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def html_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    row_header: bool = False,
    column_class: Mapping[int, str] | None = None,
) -> str:
    """An HTML ``<table>`` (cells escaped); with ``row_header`` the first cell of
    each row is its header; ``column_class`` gives columns a CSS class (``u``:
    a unit, left-aligned)."""
    esc = html.escape
    classes = column_class or {}
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for k, cell in enumerate(row):
            if k == 0 and row_header:
                cells.append(f"<th scope='row'>{esc(cell)}</th>")
            else:
                attr = f" class='{classes[k]}'" if k in classes else ""
                cells.append(f"<td{attr}>{esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def html_page(title: str, parts: Sequence[str], notes: Sequence[str] = ()) -> str:
    """A self-contained HTML page: ``title`` (escaped here) as heading, then
    ``parts`` (HTML, e.g. :func:`html_table`), then each note as a paragraph."""
    esc = html.escape
    paragraphs = "".join(f"<p>{esc(note)}</p>" for note in notes)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<h3>{esc(title)}</h3>{''.join(parts)}{paragraphs}"
        "</body></html>\n"
    )


def html_heading(text: str) -> str:
    """A section heading between the tables of a page."""
    return f"<h3>{html.escape(text)}</h3>"


def text_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], widths: tuple[int, int]
) -> list[str]:
    """Fixed-width lines: the first column left-aligned in ``widths[0]``
    characters, the others right-aligned in ``widths[1]``."""
    first, other = widths

    def line(cells: Sequence[str]) -> str:
        return f"{cells[0]:{first}s}" + "".join(f"{c:>{other}s}" for c in cells[1:])

    return [line(header), *(line(r) for r in rows)]
