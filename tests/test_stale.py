"""After an edit, only the stale stages rerun: cases (a)–(f) of the workflow's
promise, each on a copy of one completed tiny run, asserted from the jobs that
``snakemake --dry-run`` plans.

(a) nothing changed → nothing;  (b) ``train:``/``model:`` → training and what
follows; ``md:`` → the stability stage alone;  (c) ``split:`` → the split and what follows;  (d) the input NPZ's
contents → everything;  (e) a stage's code → that stage and what follows;
(f) a comment, key order or a default written out → nothing, and a section the
data stages do not use (``loader:``) → none of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import TINY_N_MOL
from physpack.cli import STEPS
from physpack.data.synthetic import write_padded_npz
from physpack.sources import module_file
from test_workflow import (
    RULES,
    completed_workdir,
    copy_workdir,
    planned_jobs,
    snakemake,
)

#: end-to-end runs (minutes): outside the quick loop (-m 'not slow')
pytestmark = pytest.mark.slow

#: the rules with the data page of the report, which the data stages feed
REPORT = "report_data"
ALL = sorted([*RULES, REPORT])
AFTER_TRAIN = sorted(["train_model", "evaluate_model", "md_stability"])
AFTER_SPLIT = sorted(["split_dataset", *AFTER_TRAIN])


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
        ("data/packed.py", ALL),  # shared by every stage
        ("data/convert.py", ALL),
        ("data/stats.py", ["packing_stats", REPORT]),
        ("data/split.py", AFTER_SPLIT),
        # the model is not an input of the data stages
        ("model/physnet.py", AFTER_TRAIN),
        # validation's plausibility checks fit the same reference energies
        ("reference.py", sorted(["validate_packed", REPORT, *AFTER_TRAIN])),
        ("evaluation/evaluate.py", ["evaluate_model"]),
        ("simulation/md.py", ["md_stability"]),
    ],
)
def test_e_stage_code_changed(run: Path, module: str, expected: list[str]) -> None:
    path = run / "workflow" / "physpack" / module
    path.write_text(path.read_text() + "\n# edited\n")
    assert planned_jobs(run) == expected


@pytest.fixture(scope="module")
def imports_at_run_time(
    completed: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of the completed run in which every stage ran again with Python's
    import log on (``PYTHONPROFILEIMPORTTIME``): each stage's log lists the
    modules that stage really loaded, inside functions too."""
    workdir = copy_workdir(completed, tmp_path_factory.mktemp("imports") / "run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPROFILEIMPORTTIME", "1")
        snakemake(workdir, "--forceall", "--cores", "2")
    return workdir


def test_e_every_module_a_stage_loads_is_a_declared_input(
    imports_at_run_time: Path,
) -> None:
    """Each rule declares as inputs all package modules its stage loads when it
    runs, so that (e) holds for every module, not only those above."""
    proc = snakemake(imports_at_run_time, "--dry-run", "--forceall", "--printshellcmds")
    text = proc.stdout + proc.stderr
    blocks = re.findall(
        r"^ *rule (\w+):\n +input: (.*)\n(?:(?!Shell command).*\n)*?"
        r"Shell command: .*?python -m physpack ([\w-]+) ",
        text,
        re.MULTILINE,
    )
    assert sorted(rule for rule, _, _ in blocks) == sorted(RULES), text
    for rule, inputs, step in blocks:
        declared = {
            p.removeprefix("workflow/physpack/")
            for p in inputs.split(", ")
            if p.startswith("workflow/physpack/")
        }
        log = imports_at_run_time / "results" / "logs" / f"{rule}.log"
        loaded = {
            module_file(name)
            for name in re.findall(
                r"^import time:.*\| +(physpack[\w.]*)$", log.read_text(), re.MULTILINE
            )
        }
        assert "cli.py" in loaded, (rule, log.read_text()[:2000])  # the log is on
        # the stage's own module is loaded by importlib.import_module, which the
        # import log does not list (its imports it does)
        loaded.add(module_file(STEPS[step][0]))
        assert loaded - {None} <= declared, (rule, sorted(loaded - declared - {None}))


def test_md_section_reruns_only_the_stability_stage(run: Path) -> None:
    """``md:`` concerns the simulations alone; ``md.enabled: false`` only drops the
    stage from the default target (nothing reruns, the results stay)."""
    edit_config(run, lambda c: c["md"].__setitem__("picoseconds", 0.1))
    assert planned_jobs(run) == ["md_stability"]
    edit_config(run, lambda c: c["md"].update(picoseconds=0.05, enabled=False))
    assert planned_jobs(run) == []
    assert (run / "results" / "md" / "stability.json").exists()


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
    assert planned_jobs(run) == sorted(["packing_stats", REPORT, *AFTER_TRAIN])
