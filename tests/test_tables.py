"""physpack.evaluation.tables: one cell format and the Markdown, HTML and text
layouts of a table."""

from __future__ import annotations

import numpy as np
from physpack.evaluation.tables import (
    format_cell,
    html_page,
    html_table,
    markdown_table,
    text_table,
)


def test_cells():
    assert format_cell(0.0123456) == "0.01235"
    assert format_cell(1234.0) == "1234"
    assert format_cell(float("nan")) == "n/a" and format_cell(np.inf) == "n/a"
    assert format_cell(np.float32(2.5)) == "2.5"
    assert format_cell(40) == "40" and format_cell(np.int64(7)) == "7"
    assert format_cell(True) == "true" and format_cell(None) == "null"
    assert format_cell("eV") == "eV" and format_cell([1, 2]) == "[1, 2]"


def test_layouts():
    header, rows = ["Quantity", "Unit", "test"], [["E <MAE>", "meV", "1.5"]]
    assert markdown_table(header, rows, right=2) == [
        "| Quantity | Unit | test |",
        "|---|---|---:|",
        "| E <MAE> | meV | 1.5 |",
    ]
    assert markdown_table(header, rows)[1] == "|---|---|---|"
    table = html_table(header, rows, row_header=True, column_class={1: "u"})
    assert table == (
        "<table><thead><tr><th>Quantity</th><th>Unit</th><th>test</th></tr></thead>"
        "<tbody><tr><th scope='row'>E &lt;MAE&gt;</th><td class='u'>meV</td>"
        "<td>1.5</td></tr></tbody></table>"
    )
    page = html_page("A & B", [table], ["note <1>"])
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert "<title>A &amp; B</title>" in page and "<p>note &lt;1&gt;</p>" in page
    assert text_table(["", "run"], [["x", "1"]], widths=(3, 5)) == [
        "     run",
        "x      1",
    ]
