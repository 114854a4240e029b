"""After an edit, only the stale stages rerun: cases (a)–(f) of the workflow's
promise, each on a copy of one completed tiny run, asserted from the jobs that
``snakemake --dry-run`` plans.

(a) nothing changed → nothing;  (b) ``train:``/``model:`` → training and what
follows;  (c) ``split:`` → the split and what follows;  (d) the input NPZ's
contents → everything;  (e) a stage's code → that stage and what follows;
(f) a comment, key order or a default written out → nothing, and a section the
data stages do not use (``loader:``) → none of them.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_N_MOL
from physpack.synthetic import write_padded_npz
from test_workflow import (
    RULES,
    completed_workdir,
    copy_workdir,
    planned_jobs,
    snakemake,
)

ALL = sorted(RULES)
AFTER_TRAIN = sorted(["train_model", "evaluate_model"])
AFTER_SPLIT = sorted(["split_dataset", *AFTER_TRAIN])
PACKAGE = ROOT / "workflow" / "physpack"


@pytest.fixture(scope="module")
def completed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return completed_workdir(tmp_path_factory)


@pytest.fixture
def run(completed: Path, tmp_path: Path) -> Path:
    """A private copy of the completed run."""
    return copy_workdir(completed, tmp_path / "run")


def edit_config(workdir: Path, change: Callable[[dict], None]) -> None:
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def test_a_nothing_changed(run: Path) -> None:
    assert planned_jobs(run) == []


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("train", "learning_rate", 0.002), ("model", "features", 16)],
)
def test_b_train_or_model_changed(
    run: Path, section: str, key: str, value: object
) -> None:
    edit_config(run, lambda c: c.setdefault(section, {}).__setitem__(key, value))
    assert planned_jobs(run) == AFTER_TRAIN


def test_c_split_changed(run: Path) -> None:
    edit_config(run, lambda c: c["split"].__setitem__("seed", 7))
    assert planned_jobs(run) == AFTER_SPLIT


def test_d_input_npz_contents_changed(run: Path) -> None:
    npz = run / "data" / "tiny.npz"
    before = npz.read_bytes()
    write_padded_npz(npz, TINY_N_MOL, seed=4)
    assert npz.read_bytes() != before
    assert planned_jobs(run) == ALL


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("packed.py", ALL),  # shared by every stage
        ("convert.py", ALL),
        ("stats.py", ["packing_stats"]),
        ("split.py", AFTER_SPLIT),
        ("model.py", AFTER_TRAIN),
        ("evaluate.py", ["evaluate_model"]),
    ],
)
def test_e_stage_code_changed(run: Path, module: str, expected: list[str]) -> None:
    path = run / "workflow" / "physpack" / module
    path.write_text(path.read_text() + "\n# edited\n")
    assert planned_jobs(run) == expected


def test_e_every_imported_module_is_a_declared_input(completed: Path) -> None:
    """Each rule declares as inputs all package modules its stage imports (also
    inside functions), so that (e) holds for every module, not only those above."""
    proc = snakemake(completed, "--dry-run", "--forceall", "--printshellcmds")
    text = proc.stdout + proc.stderr
    blocks = re.findall(
        r"^rule (\w+):\n    input: (.*)\n(?:.*\n)*?Shell command: +physpack (\w+) ",
        text,
        re.MULTILINE,
    )
    assert sorted(rule for rule, _, _ in blocks) == ALL, text
    for rule, inputs, step in blocks:
        declared = {
            Path(p).name
            for p in inputs.split(", ")
            if p.startswith("workflow/physpack/")
        }
        imported = {f"{name}.py" for name in _imported_modules(step)}
        assert imported <= declared, (rule, sorted(imported - declared))


def _imported_modules(module: str, seen: set[str] | None = None) -> set[str]:
    """``module`` and the physpack modules it imports, transitively (static)."""
    seen = set() if seen is None else seen
    if module in seen:
        return seen
    seen.add(module)
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if node.level == 1 and node.module:
                names.append(parts[0])
            elif node.level == 1 or node.module == "physpack":
                names.extend(alias.name for alias in node.names)
            elif parts[0] == "physpack":
                names.append(parts[1])
        elif isinstance(node, ast.Import):
            names.extend(
                a.name.split(".")[1]
                for a in node.names
                if a.name.startswith("physpack.")
            )
        for name in names:
            if (PACKAGE / f"{name}.py").exists():
                _imported_modules(name, seen)
    return seen | {"__init__"}


def test_f_no_effective_change(run: Path) -> None:
    """Comments, the order of sections and keys, and defaults written out (here a
    whole ``validate:`` section of the schema's defaults) change nothing."""
    path = run / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["validate"] = {"checksums": True, "max_reported": 50}
    reordered = {
        name: dict(reversed(config[name].items())) for name in reversed(config)
    }
    text = "# a comment\n" + yaml.safe_dump(reordered, sort_keys=False)
    path.write_text(text.replace("seed: 1\n", "seed: 1  # the same seed\n"))
    assert "# the same seed" in path.read_text()
    assert planned_jobs(run) == []


def test_f_section_unused_by_data_stages(run: Path) -> None:
    """``loader:`` concerns batching: statistics, training and evaluation rerun;
    conversion, validation and the split do not."""
    edit_config(run, lambda c: c["loader"].__setitem__("batch_size", 4))
    assert planned_jobs(run) == sorted(["packing_stats", *AFTER_TRAIN])
