"""The workflow through Snakemake in a temporary directory, on the tiny config: the
data stages, the whole pipeline, and what the two profiles hand to Snakemake.

The completed run made here (:func:`completed_workdir`) is made once per test
session and shared with ``test_stale.py``, which copies it for every case.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY_N_MOL, make_workdir, snakemake
from snakemake.profiles import ProfileConfigFileParser

#: Every rule that does work, in pipeline order (``all`` only collects).
RULES = (
    "convert_npz",
    "validate_packed",
    "packing_stats",
    "split_dataset",
    "train_model",
    "evaluate_model",
)
DATA_TARGETS = (
    "results/data/validation.json",
    "results/reports/packing_stats.json",
    "results/data/split.npz",
)
#: What ``rule all`` asks for, and the files next to it.
FINAL_OUTPUTS = (
    "results/data/packed/manifest.json",
    "results/data/validation.json",
    "results/reports/packing_stats.json",
    "results/reports/packing_stats.md",
    "results/reports/packing_stats.png",
    "results/data/split.npz",
    "results/model/best.ckpt",
    "results/model/history.csv",
    "results/eval/metrics.json",
    "results/eval/metrics.md",
    "results/eval/metrics.html",
    "results/eval/predictions.npz",
)
_COMPLETE = ".physpack-test-complete"
_JOB_LINE = re.compile(r"^\s*(?:local)?rule (\w+):\s*$", re.MULTILINE)


def planned_jobs(workdir: Path, *args: str) -> list[str]:
    """Rule names of the jobs that ``snakemake -n`` would run in ``workdir``
    (``all`` left out), sorted; empty when there is nothing to do."""
    proc = snakemake(workdir, "--dry-run", *args)
    text = proc.stdout + proc.stderr
    jobs = sorted(name for name in _JOB_LINE.findall(text) if name != "all")
    if not jobs:
        assert "Nothing to be done" in text, text
    return jobs


def completed_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workflow copy on which the whole tiny pipeline has run with ``--cores 2``,
    made once per session (a marker file says it is complete). Copy it before
    changing anything: every user of this session shares it."""
    workdir = tmp_path_factory.getbasetemp() / "completed_run"
    if (workdir / _COMPLETE).exists():
        return workdir
    if workdir.exists():  # an earlier attempt of this session failed half-way
        shutil.rmtree(workdir)
    make_workdir(workdir)
    snakemake(workdir, "--cores", "2")
    (workdir / _COMPLETE).touch()
    return workdir


def copy_workdir(source: Path, dest: Path) -> Path:
    """A copy of a workflow directory with modification times kept (Snakemake
    compares them) and Snakemake's metadata included."""
    shutil.copytree(source, dest, symlinks=True, copy_function=shutil.copy2)
    (dest / _COMPLETE).unlink(missing_ok=True)
    return dest


def check_data_outputs(workdir: Path, n_mol: int = TINY_N_MOL) -> None:
    """The data stages' outputs are complete and agree with each other."""
    results = workdir / "results"
    manifest = json.loads((results / "data/packed/manifest.json").read_text())
    assert manifest  # readable, non-empty
    report = json.loads((results / "data/validation.json").read_text())
    assert report["ok"] is True and report["n_errors"] == 0, report["errors"]
    stats = json.loads((results / "reports/packing_stats.json").read_text())
    assert stats["n_molecules"] == n_mol
    with np.load(results / "data/split.npz") as split:
        subsets = [split[name] for name in ("train", "valid", "test")]
    joined = np.concatenate(subsets)
    assert all(s.size > 0 for s in subsets)
    assert np.array_equal(np.sort(joined), np.arange(n_mol))  # disjoint, complete
    for rule in RULES[:4]:
        assert (results / "logs" / f"{rule}.log").exists(), rule
        assert (results / "benchmarks" / f"{rule}.tsv").exists(), rule


def check_final_outputs(workdir: Path, epochs: int) -> None:
    """Every output of ``rule all`` exists and holds what the later stages need."""
    for name in FINAL_OUTPUTS:
        assert (workdir / name).exists(), name
    check_data_outputs(workdir)
    with open(workdir / "results/model/history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(float(r["epoch"])) for r in rows] == list(range(1, epochs + 1))
    metrics = json.loads((workdir / "results/eval/metrics.json").read_text())
    with np.load(workdir / "results/data/split.npz") as split:
        n_test = split["test"].size
    with np.load(workdir / "results/eval/predictions.npz") as pred:
        energies = [pred[k] for k in pred.files if k.startswith("test") and "E" in k]
    assert energies and all(e.shape[0] == n_test for e in energies), energies
    numbers = [v for v in _leaves(metrics) if isinstance(v, float)]
    assert numbers and all(math.isfinite(v) for v in numbers)
    figures = list((workdir / "results/eval/figures").glob("*.png"))
    assert figures


def _leaves(tree: object) -> list[object]:
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in _leaves(value)]
    if isinstance(tree, list):
        return [leaf for value in tree for leaf in _leaves(value)]
    return [tree]


def test_data_stages(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path / "wf")
    assert planned_jobs(workdir, *DATA_TARGETS) == sorted(RULES[:4])
    snakemake(workdir, "--cores", "2", *DATA_TARGETS)
    check_data_outputs(workdir)
    assert not (workdir / "results/model").exists()  # nothing beyond the targets
    assert planned_jobs(workdir, *DATA_TARGETS) == []


def test_whole_pipeline(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = completed_workdir(tmp_path_factory)
    epochs = 2  # tests/tiny_config.yaml
    check_final_outputs(workdir, epochs)
    log = (workdir / "results/logs/train_model.log").read_text()
    assert f"epoch {epochs}/{epochs}" in log
    assert planned_jobs(workdir) == []


# --------------------------------------------------------------------------------
# Profiles


def _profile(path: Path) -> dict[str, object]:
    """A profile as Snakemake reads it: option -> value (lists for key=value ones)."""
    with open(path) as fh:
        return dict(ProfileConfigFileParser().parse(fh))


@pytest.mark.parametrize(
    ("visible", "slots"),
    [("0,1,2", 3), ("1", 1), ("", 1), ("-1", 1)],
)
def test_default_profile_gpu_slots(
    monkeypatch: pytest.MonkeyPatch, visible: str, slots: int
) -> None:
    """One slot per visible GPU, at least one (training then runs on the CPU)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    profile = _profile(ROOT / "profiles/default/config.yaml")
    assert profile["resources"] == [f"gpu={slots}"]
    assert profile["set-resource-scopes"] == ["gpu=local"]


def test_default_profile_runs_one_gpu_job_per_slot(tmp_path: Path) -> None:
    """The slots limit concurrent GPU jobs: two independent `gpu=1` jobs overlap
    with two slots and run one after the other with one."""
    (tmp_path / "profiles").mkdir()
    shutil.copytree(ROOT / "profiles/default", tmp_path / "profiles/default")
    (tmp_path / "Snakefile").write_text(
        "rule all:\n"
        "    input: 'a.txt', 'b.txt'\n"
        "rule gpu_job:\n"
        "    output: '{name}.txt'\n"
        "    resources: gpu=1\n"
        "    shell: 'date +%s.%N > {output}; sleep 2; date +%s.%N >> {output}'\n"
    )

    def overlap(visible: str) -> bool:
        for name in ("a.txt", "b.txt"):
            (tmp_path / name).unlink(missing_ok=True)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible}
        subprocess.run(
            [sys.executable, "-m", "snakemake", "--cores", "2"],
            cwd=tmp_path,
            env=env,
            check=True,
            capture_output=True,
        )
        (a0, a1), (b0, b1) = (
            [float(x) for x in (tmp_path / n).read_text().split()]
            for n in ("a.txt", "b.txt")
        )
        return max(a0, b0) < min(a1, b1)

    assert overlap("0,1")
    assert not overlap("0")


def test_slurm_profile_resources(tmp_path: Path) -> None:
    """What each rule would ask SLURM for, as Snakemake resolves the profile
    (dry run; no cluster needed): CPU stages on the default partition, training
    and evaluation one GPU each on the GPU partition, runtime growing with the
    attempt."""
    workdir = make_workdir(tmp_path / "wf")
    proc = snakemake(workdir, "--dry-run", "--profile", "profiles/slurm")
    text = proc.stdout + proc.stderr
    found = re.findall(
        r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", text, re.MULTILINE
    )
    blocks = {rule: line for rule, line in found if rule != "all"}
    assert set(blocks) == set(RULES), text
    resources = {
        rule: dict(item.split("=", 1) for item in line.split(", "))
        for rule, line in blocks.items()
    }
    for rule in RULES[:4]:
        assert resources[rule]["slurm_partition"] == "cpu"
        assert "gpu" not in resources[rule]
    for rule in RULES[4:]:
        assert resources[rule]["slurm_partition"] == "gpu"
        assert resources[rule]["gpu"] == "1"
    for rule in RULES:
        assert (
            int(resources[rule]["runtime"]) > 0 and int(resources[rule]["mem_mb"]) > 0
        )
    profile = _profile(ROOT / "profiles/slurm/config.yaml")
    assert profile["executor"] == "slurm"
    assert profile["slurm-requeue"] == "True"
    assert int(profile["retries"]) >= 1
    runtimes = [e for e in profile["set-resources"] if ":runtime=" in e]
    runtimes += [e for e in profile["default-resources"] if e.startswith("runtime=")]
    assert runtimes and all("attempt" in e for e in runtimes)
    assert not any("slurm_extra" in e for e in profile["set-resources"])
