"""One copy of the workflow serves many project directories: the tiny pipeline
run end to end from a directory outside the checkout, with its own config file
(``snakemake -s /path/to/Snakefile --directory myproject --configfile
myproject/config.yaml``), as a user with their own data runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from conftest import ROOT, TINY_CONFIG, TINY_N_MOL
from physpack.data.synthetic import write_padded_npz
from test_workflow import RULES, check_final_outputs, planned_jobs


def test_run_from_a_project_directory_outside_the_checkout(tmp_path: Path) -> None:
    project = tmp_path / "myproject"
    (project / "data").mkdir(parents=True)
    write_padded_npz(project / "data" / "tiny.npz", TINY_N_MOL, seed=3)
    config = yaml.safe_load(TINY_CONFIG.read_text())
    (project / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert not project.resolve().is_relative_to(ROOT)
    snakefile = ROOT / "Snakefile"
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
    assert not (ROOT / "myproject").exists()
    # up to date when asked again, also from inside the project directory
    assert (
        planned_jobs(project, "-s", str(snakefile), "--configfile", "config.yaml") == []
    )
