"""`snakemake --report`: one self-contained HTML report of a whole (tiny) run."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from conftest import make_workdir, snakemake

#: every item the report must embed, with a phrase of its caption
REPORT_ITEMS = {
    "packing_stats.png": "Packing statistics",
    "learning_curves.png": "<strong>Learning curves.</strong>",
    "energy_parity.png": "<strong>Energy parity.</strong>",
    "force_parity.png": "<strong>Force parity.</strong>",
    "error_histograms.png": "<strong>Error distributions.</strong>",
    "force_mae_by_element.png": "<strong>Force MAE per element.</strong>",
    "metrics.html": "<strong>Error metrics of the trained model</strong>",
    "metrics.json": "All evaluation metrics as JSON",
}

_EMBEDDED = re.compile(
    r"data:(?P<mime>[\w/+.-]+);charset=[^;]*;filename=(?P<name>[^;]+);"
    r"base64,(?P<data>[A-Za-z0-9+/=]+)"
)


@pytest.mark.slow
def test_report_of_a_tiny_run_is_self_contained(tmp_path: Path) -> None:
    wd = make_workdir(tmp_path / "wf")
    snakemake(wd, "--cores", "2")
    snakemake(wd, "--report", "results/report.html")
    page = (wd / "results" / "report.html").read_text()

    embedded = {m["name"]: m for m in _EMBEDDED.finditer(page)}
    for name, caption in REPORT_ITEMS.items():
        assert name in embedded, f"{name} not embedded in the report"
        assert caption in page, f"caption of {name} missing"
    for name in REPORT_ITEMS:
        if name.endswith(".png"):
            assert embedded[name]["mime"] == "image/png"
            png = base64.b64decode(embedded[name]["data"])
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # offline: nothing is fetched from elsewhere (scripts, styles, images, frames)
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=[\"']?(https?:)?//", page)
    assert not re.search(r"<link[^>]*\shref=[\"']?(https?:)?//", page)

    # the embedded metrics table shows the numbers of metrics.json
    metrics = json.loads((wd / "results" / "eval" / "metrics.json").read_text())
    table = base64.b64decode(embedded["metrics.html"]["data"]).decode()
    mae = metrics["splits"]["test"]["forces"]["mae"]["meV/Angstrom"]
    assert f"<td>{mae:.4g}</td>" in table
    assert set(metrics["splits"]) == {"test", "valid"}
