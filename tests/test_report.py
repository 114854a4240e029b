"""`snakemake --report`: one self-contained HTML report of a whole (tiny) run."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, snakemake
from test_workflow import completed_workdir, copy_workdir

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
    "data.html": "<strong>Is the data sound?</strong>",
    "stability.html": "<strong>Is the model usable in simulation?</strong>",
    "stability.png": "<strong>Is the model usable in simulation?</strong>",
}
#: the report's categories, numbered without gaps
CATEGORIES = ("1. Data", "2. Evaluation", "3. Simulation")

_EMBEDDED = re.compile(
    r"data:(?P<mime>[\w/+.-]+);charset=[^;]*;filename=(?P<name>[^;]+);"
    r"base64,(?P<data>[A-Za-z0-9+/=]+)"
)


@pytest.fixture(scope="module")
def report_page(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, str]:
    """README's ``snakemake --report results/report.html`` on a copy of the
    session's completed tiny run: the run's directory and the report page."""
    wd = copy_workdir(
        completed_workdir(tmp_path_factory), tmp_path_factory.mktemp("report") / "wf"
    )
    snakemake(wd, "--report", "results/report.html")
    return wd, (wd / "results" / "report.html").read_text()


@pytest.mark.slow
def test_report_of_a_tiny_run_is_self_contained(report_page) -> None:
    wd, page = report_page

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


@pytest.mark.slow
def test_report_front_page_says_what_was_trained(report_page) -> None:
    """workflow.rst is filled from the run's configuration: the input, the split,
    the model and the training settings; its categories are numbered 1, 2, ..."""
    wd, page = report_page
    config = yaml.safe_load((wd / "config.yaml").read_text())
    text = re.sub(r"<[^>]+>", "", page.replace('\\"', '"'))
    text = " ".join(text.replace("\\n", " ").split())
    assert f"The padded NPZ {config['data']['npz']}" in text
    assert f"PhysNet with {config['model']['features']} features" in text
    assert f"at most {config['train']['epochs']} epochs" in text
    assert "How good is the model?" in text and "Is the data sound?" in text
    found = sorted(set(re.findall(r'"(\d+\. [A-Z][a-z]+)"', page)))
    assert tuple(found) == CATEGORIES, found


@pytest.mark.slow
def test_data_page_shows_validation_and_packing_statistics(report_page) -> None:
    """The data page has a row per validation check with its result, and the
    packing-statistics tables with the numbers of packing_stats.json."""
    wd, _ = report_page
    page = (wd / "results" / "reports" / "data.html").read_text()
    validation = json.loads((wd / "results" / "data" / "validation.json").read_text())
    stats = json.loads((wd / "results" / "reports" / "packing_stats.json").read_text())
    assert validation["checks"]
    for check in validation["checks"]:
        row = re.search(rf"<tr><td><code>{check}</code></td>.*?</tr>", page)
        assert row and "passed" in row.group(0), check
    assert f"<td>molecules</td><td>{stats['n_molecules']}</td>" in page
    assert "Padding efficiency" in page and "<td>packed</td>" in page
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page


def _front_page(config: dict) -> str:
    """workflow.rst rendered as Snakemake renders it (Jinja with trim_blocks and
    lstrip_blocks), whitespace collapsed."""
    from jinja2 import Environment
    from physpack.config import with_defaults

    template = (ROOT / "workflow" / "report" / "workflow.rst").read_text()
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    snakemake_ = type("Snakemake", (), {"config": with_defaults(config)})
    return " ".join(env.from_string(template).render(snakemake=snakemake_).split())


def test_front_page_sentences_read_right() -> None:
    """The sentences written from the config have their spaces and say what the
    run does: the demo's budget without an early stop, and a run with one."""
    demo = _front_page(yaml.safe_load((ROOT / "config.yaml").read_text()))
    assert "``e*Angstrom``). Split: 0.1 validation" in demo
    assert (
        "trained for at most 10000 epochs or 9 minutes (no early stop: the learning"
        " rate anneals to the end of the budget), optimizer" in demo
    )
    assert "SpookyNet's local interaction (angular degree 2, 8 channels);" in demo
    assert "None" not in demo
    other = _front_page(
        {
            "data": {"packed": "old/"},
            "train": {"patience": 5},
            "model": {"angular_degree": 0, "charges": True, "zbl": True},
        }
    )
    assert "(declared units: energy ``from its manifest``" in other
    assert "``from its manifest``). Split:" in other
    assert (
        "irreps degree 0, atomic charges and electrostatics, ZBL repulsion; trained"
        " for at most 200 epochs (early stop after 5 epochs without improvement),"
        in other
    )
    assert "SpookyNet" not in other and "None" not in other
