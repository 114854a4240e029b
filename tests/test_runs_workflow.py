"""Many runs from one workflow: a 3-member committee and a fine-tuned run through
Snakemake, the committee's evaluation, the comparison, and stale-only reruns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import snakemake
from physpack.model import checkpoint as ckpt_io
from test_workflow import completed_workdir, copy_workdir, planned_jobs

#: end-to-end runs (minutes): outside the quick loop (-m 'not slow')
pytestmark = pytest.mark.slow

RUNS = {
    "committee": {"ensemble": 3},
    "ft": {"train": {"init_from": "committee-0", "freeze": ["embedding"]}},
}
MEMBERS = ["committee-0", "committee-1", "committee-2"]


def set_runs(workdir: Path, runs: dict) -> None:
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["runs"] = runs
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The completed tiny pipeline, copied, with the runs above added and made."""
    workdir = copy_workdir(
        completed_workdir(tmp_path_factory), tmp_path_factory.mktemp("runs") / "wf"
    )
    set_runs(workdir, RUNS)
    planned = planned_jobs(workdir)
    # the data stages are shared and done; each run trains once
    assert planned == sorted(
        ["compare_runs", "evaluate_ensemble"]
        + ["evaluate_model", "md_stability", "train_model"] * 4
    )
    snakemake(workdir, "--cores", "2")
    return workdir


def test_every_run_is_trained_and_evaluated_and_compared(ran: Path) -> None:
    results = ran / "results"
    seeds = []
    for run in [*MEMBERS, "ft"]:
        metrics = json.loads((results / "runs" / run / "eval/metrics.json").read_text())
        assert metrics["splits"]["test"]["n_molecules"] > 0
        ckpt = ckpt_io.load(results / "runs" / run / "model/best.ckpt")
        seeds.append(ckpt.training["train_config"]["seed"])
    assert seeds[:3] == [0, 1, 2]  # members differ only in their seed
    ft = ckpt_io.load(results / "runs/ft/model/best.ckpt")
    assert (
        ft.training["init_from"]["path"] == "results/runs/committee-0/model/best.ckpt"
    )
    parent = ckpt_io.load(results / "runs/committee-0/model/best.ckpt")
    np.testing.assert_array_equal(
        ft.params["embedding"]["embedding"], parent.params["embedding"]["embedding"]
    )
    ensemble = json.loads((results / "ensembles/committee/metrics.json").read_text())
    assert ensemble["members"] == 3
    assert ensemble["forces"]["calibration"]["n"] > 0
    table = (results / "comparison.md").read_text()
    for run in [*MEMBERS, "ft"]:
        assert f"| {run} |" in table
    assert "| committee | 3 |" in table
    assert "train.seed" in table and "train.init_from" in table  # what differs
    assert (results / "comparison/learning_curves.png").stat().st_size > 0
    assert (results / "comparison/calibration.png").stat().st_size > 0
    # every run's MD stability: a row per run and its figure
    assert "Is each model usable in simulation?" in table
    for run in [*MEMBERS, "ft"]:
        assert (results / "runs" / run / "md/stability.json").exists()
        assert (results / f"comparison/md_stability_{run}.png").stat().st_size > 0


def test_editing_one_run_reruns_only_that_run(ran: Path, tmp_path: Path) -> None:
    work = copy_workdir(ran, tmp_path / "wf")
    assert planned_jobs(work) == []
    set_runs(work, {**RUNS, "ft": {"train": {**RUNS["ft"]["train"], "epochs": 3}}})
    assert planned_jobs(work) == [
        "compare_runs",
        "evaluate_model",
        "md_stability",
        "train_model",
    ]


def test_adding_a_run_trains_only_the_new_one(ran: Path, tmp_path: Path) -> None:
    work = copy_workdir(ran, tmp_path / "wf")
    set_runs(work, {**RUNS, "wide": {"model": {"features": 12}}})
    assert planned_jobs(work) == [
        "compare_runs",
        "evaluate_model",
        "md_stability",
        "train_model",
    ]


def test_report_includes_the_comparison(ran: Path, tmp_path: Path) -> None:
    work = copy_workdir(ran, tmp_path / "wf")
    snakemake(work, "--report", "report.html")
    html = (work / "report.html").read_text()
    assert "Comparison of runs" in html
