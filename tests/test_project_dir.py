"""One copy of the workflow serves many project directories: the tiny pipeline
run end to end from a directory outside the workflow, with its own config file
(``snakemake -s /path/to/Snakefile --directory myproject --configfile
myproject/config.yaml``), as a user with their own data runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_CONFIG, TINY_N_MOL
from physpack.data.synthetic import write_padded_npz
from test_workflow import RULES, check_final_outputs, planned_jobs

#: end-to-end runs (minutes): outside the quick loop (-m 'not slow')
pytestmark = pytest.mark.slow


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow's own files (a checkout without config or data), so
    that edits to this checkout while the test runs do not touch the run."""
    dest.mkdir()
    shutil.copy(ROOT / "Snakefile", dest / "Snakefile")
    for name in ("workflow", "profiles", "envs"):
        shutil.copytree(
            ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    return dest / "Snakefile"


def test_run_from_a_project_directory_outside_the_checkout(tmp_path: Path) -> None:
    snakefile = copy_workflow(tmp_path / "physpack")
    project = tmp_path / "myproject"
    (project / "data").mkdir(parents=True)
    write_padded_npz(project / "data" / "tiny.npz", TINY_N_MOL, seed=3)
    config = yaml.safe_load(TINY_CONFIG.read_text())
    (project / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert not project.resolve().is_relative_to(snakefile.parent)
    args = ["-s", str(snakefile), "--configfile", "myproject/config.yaml"]
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args, "--directory", "myproject"]
        + ["--cores", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check_final_outputs(project, epochs=config["train"]["epochs"])
    for rule in RULES:
        assert (project / "results" / "logs" / f"{rule}.log").is_file(), rule
    assert sorted(p.name for p in snakefile.parent.iterdir()) == [
        "Snakefile",
        "envs",
        "profiles",
        "workflow",
    ]  # nothing written into the workflow
    # up to date when asked again, also from inside the project directory
    assert (
        planned_jobs(project, "-s", str(snakefile), "--configfile", "config.yaml") == []
    )


def test_workflow_used_as_a_snakemake_module(tmp_path: Path) -> None:
    """A project's own Snakefile that uses the workflow as a module (as
    snakedeploy writes it) plans every stage, with the workflow's files found in
    the workflow (dry run)."""
    snakefile = copy_workflow(tmp_path / "physpack")
    project = tmp_path / "myproject"
    (project / "data").mkdir(parents=True)
    write_padded_npz(project / "data" / "tiny.npz", TINY_N_MOL, seed=3)
    (project / "config.yaml").write_text(TINY_CONFIG.read_text())
    (project / "Snakefile").write_text(
        'configfile: "config.yaml"\n\n\n'
        f"module physpack:\n    snakefile:\n        {str(snakefile)!r}\n"
        "    config:\n        config\n\n\n"
        "use rule * from physpack as physpack_*\n"
    )
    jobs = planned_jobs(project)
    expected = sorted(f"physpack_{r}" for r in (*RULES, "report_data", "all"))
    assert jobs == expected, jobs
