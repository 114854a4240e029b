"""The custom-training-loop example of README.md ("Python API: custom training
loops") runs as written, on a tiny dataset in place of the workflow's."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from model_fixtures import write_toy

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text.split("## Python API: custom training loops", 1)[1]
    section = section.split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_custom_loop_runs(tmp_path):
    code = readme_example()
    packed, split = write_toy(tmp_path, n_mol=60)
    for name, path in (
        ("results/data/packed", packed),
        ("results/data/split.npz", split),
    ):
        assert f'"{name}"' in code
        code = code.replace(f'"{name}"', repr(str(path)))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {})  # noqa: S102 (our README)
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2"]
    assert all(line.endswith("eV/Å") for line in lines)
