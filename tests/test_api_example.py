"""The custom-training-loop example of README.md ("Python API: custom training
loops") runs as written, on the data it names: ``results/data/packed`` and
``results/data/split.npz`` made from the demo data (``data/demo.npz``) by the
workflow's own convert and split stages, in the directory it is run from."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from physpack.config import with_defaults

#: end-to-end runs (minutes): outside the quick loop (-m 'not slow')
pytestmark = pytest.mark.slow

README = ROOT / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text.split("## Python API: custom training loops", 1)[1]
    section = section.split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def _stage(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "physpack", *args], check=True)


def test_the_readme_custom_loop_runs_on_the_demo_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    config = with_defaults(yaml.safe_load((ROOT / "config.yaml").read_text()))
    data = {**config["data"], "npz": str(ROOT / "data" / "demo.npz")}
    monkeypatch.chdir(tmp_path)
    packed = "results/data/packed"
    _stage("convert", data["npz"], packed, "--config", json.dumps(data))
    _stage(
        "split",
        packed,
        "--output",
        "results/data/split.npz",
        "--config",
        json.dumps(config["split"]),
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), str(README), "exec"), {})  # noqa: S102
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2"]
    assert all(line.endswith("eV/Å") for line in lines)
    errors = [float(line.split()[1]) for line in lines]
    assert all(0.0 < e < 10.0 for e in errors), lines  # finite, in eV/Å
