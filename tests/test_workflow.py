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
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, TINY_N_MOL, make_workdir, snakemake
from snakemake.profiles import ProfileConfigFileParser

#: end-to-end runs (minutes): outside the quick loop (-m 'not slow')
pytestmark = pytest.mark.slow

#: Every rule that does work, in pipeline order (``all`` only collects).
RULES = (
    "convert_npz",
    "validate_packed",
    "packing_stats",
    "split_dataset",
    "train_model",
    "evaluate_model",
    "md_stability",
)
GPU_RULES = ("train_model", "evaluate_model", "md_stability")
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
    "results/md/stability.json",
    "results/md/stability.md",
    "results/md/stability.html",
    "results/md/stability.png",
    "results/reports/data.html",
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


#: The config sections each rule's stage is given, in the order its log names them.
RULE_SECTIONS = {
    "convert_npz": ("data",),
    "validate_packed": ("validate",),
    "packing_stats": ("loader",),
    "split_dataset": ("split",),
    "train_model": ("model", "train", "loader"),
    "evaluate_model": ("loader",),
}


def test_every_log_starts_with_the_effective_config(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Each rule's log begins with the sections it ran with, every key included
    (defaults too), as the workflow resolved them."""
    workdir = completed_workdir(tmp_path_factory)
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())[
        "properties"
    ]
    user = yaml.safe_load((workdir / "config.yaml").read_text())
    for rule, sections in RULE_SECTIONS.items():
        lines = (workdir / "results/logs" / f"{rule}.log").read_text().splitlines()
        head = lines[: len(sections)]
        assert [ln.split(":", 1)[0] for ln in head] == [
            f"config {name}" for name in sections
        ], (rule, lines[:5])
        for name, line in zip(sections, head, strict=True):
            logged = json.loads(line.split(": ", 1)[1])
            assert set(logged) == set(schema[name]["properties"]), (rule, name)
            for key, value in (user.get(name) or {}).items():
                assert logged[key] == value, (rule, name, key)


def _train_config(workdir: Path, *args: str) -> dict[str, object]:
    """The train section that ``train_model`` would be given (dry run)."""
    proc = snakemake(workdir, "--dry-run", "--printshellcmds", "--forceall", *args)
    text = proc.stdout + proc.stderr
    (raw,) = re.findall(r"--train-config '(\{.*?\})'", text)
    return json.loads(raw)


def test_user_configfile_does_not_inherit_the_demo_config(tmp_path: Path) -> None:
    """A --configfile replaces ./config.yaml instead of being merged into it: the
    shipped config's demo limits (here max_minutes: 9) do not leak into a user's
    run, keys the user leaves out take the schema's defaults."""
    workdir = make_workdir(tmp_path / "wf")
    demo = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert demo["train"]["max_minutes"] is not None  # the demo sets a limit
    shipped = yaml.safe_load((workdir / "config.yaml").read_text())
    shipped["train"]["max_minutes"] = demo["train"]["max_minutes"]
    (workdir / "config.yaml").write_text(yaml.safe_dump(shipped))
    assert _train_config(workdir)["max_minutes"] == demo["train"]["max_minutes"]

    user = {"data": {"npz": "data/tiny.npz"}, "train": {"epochs": 500}}
    (workdir / "user.yaml").write_text(yaml.safe_dump(user))
    train = _train_config(workdir, "--configfile", "user.yaml")
    assert train["epochs"] == 500
    assert train["max_minutes"] is None  # the schema's default
    assert train["patience"] != shipped["train"]["patience"]


def _stage_settings(workdir: Path, *args: str) -> dict[str, dict[str, object]]:
    """``--<name>-config '{...}'`` and ``--config '{...}'`` arguments of every job
    that a dry run plans, keyed by rule and flag."""
    proc = snakemake(workdir, "--dry-run", "--printshellcmds", "--forceall", *args)
    text = proc.stdout + proc.stderr
    settings: dict[str, dict[str, object]] = {}
    for rule, command in re.findall(
        r"^ *rule (\w+):\n(?:(?!Shell command).*\n)*?Shell command: (.*)$",
        text,
        re.MULTILINE,
    ):
        for flag, raw in re.findall(r"--([\w-]*config) '(\{.*?\})'", command):
            settings.setdefault(rule, {})[flag] = json.loads(raw)
    return settings


def test_an_empty_user_config_gets_the_demo_recipe(tmp_path: Path) -> None:
    """The recipe measured on the demo is the schema's default: a user's config that
    names only its data plans every stage with the settings of the demo's
    config.yaml without the demo's own data and budget."""
    workdir = make_workdir(tmp_path / "wf")
    demo = yaml.safe_load((ROOT / "config.yaml").read_text())
    demo["data"] = {"npz": "data/tiny.npz"}
    for key in ("epochs", "max_minutes"):  # the demo's budget
        del demo["train"][key]
    (workdir / "demo.yaml").write_text(yaml.safe_dump(demo))
    (workdir / "user.yaml").write_text(yaml.safe_dump({"data": demo["data"]}))
    user = _stage_settings(workdir, "--configfile", "user.yaml")
    assert sorted(user) == sorted(RULES), sorted(user)
    assert user["train_model"]["train-config"]["learning_rate"] == 0.01
    assert _stage_settings(workdir, "--configfile", "demo.yaml") == user


def test_wrong_input_path_fails_before_anything_runs(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Once results/ exists, a data.npz that does not exist is not ignored: the
    run stops before planning anything, naming the key and the path."""
    workdir = copy_workdir(completed_workdir(tmp_path_factory), tmp_path / "run")
    proc = snakemake(
        workdir,
        "--dry-run",
        "--config",
        "data={'npz': 'data/tiny-renamed.npz'}",
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "config: data.npz: no such file 'data/tiny-renamed.npz'" in output
    assert "Nothing to be done" not in output


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


def resources_planned(workdir: Path, *args: str) -> dict[str, dict[str, str]]:
    """Rule -> resources (name -> value, as text) of the jobs that ``snakemake -n``
    would submit in ``workdir`` with ``args`` (``all`` left out). ``--cores 64``
    keeps the rules' threads from being capped at the dry run's single core."""
    proc = snakemake(workdir, "--dry-run", "--cores", "64", *args)
    text = proc.stdout + proc.stderr
    found = re.findall(
        r"^ *rule (\w+):\n(?: +.*\n)*? +resources: (.*)$", text, re.MULTILINE
    )
    return {
        rule: dict(item.split("=", 1) for item in line.split(", "))
        for rule, line in found
        if rule != "all"
    }


def test_slurm_profile_resources(tmp_path: Path) -> None:
    """What each job asks SLURM for, as Snakemake resolves the rules and the
    profile (dry run; no cluster needed). The rules declare what they need; the
    profile names only the GPU partition. CPU stages go to the cluster's default
    partition and each asks for its own threads as CPUs."""
    workdir = make_workdir(tmp_path / "wf")
    resources = resources_planned(workdir, "--profile", "profiles/slurm")
    assert set(resources) == {*RULES, "report_data"}, resources
    for rule in RULES[:4]:
        assert "slurm_partition" not in resources[rule], resources[rule]
        assert "gpu" not in resources[rule]
    for rule in GPU_RULES:
        assert resources[rule]["slurm_partition"] == "gpu"
        assert resources[rule]["gpu"] == "1"
        assert int(resources[rule]["cpus_per_task"]) >= 4
    for rule in RULES:
        assert int(resources[rule]["runtime"]) > 0
        assert int(resources[rule]["mem_mb"]) > 0

    profile = _profile(ROOT / "profiles/slurm/config.yaml")
    assert profile["executor"] == "slurm"
    assert profile["slurm-requeue"] == "True"
    assert int(profile["retries"]) >= 1
    assert "default-resources" not in profile  # no CPU partition, no job sizes
    site = ("slurm_partition", "slurm_account")
    assert all(e.split(":", 1)[1].startswith(site) for e in profile["set-resources"])


def test_slurm_override_keeps_the_rules_resources(tmp_path: Path) -> None:
    """README's example: naming the cluster's partitions on the command line
    (which replaces the profile's whole set-resources) keeps each job's memory,
    runtime and CPUs, which the rules declare."""
    workdir = make_workdir(tmp_path / "wf")
    base = resources_planned(workdir, "--profile", "profiles/slurm")
    override = resources_planned(
        workdir,
        "--profile",
        "profiles/slurm",
        "--default-resources",
        "slurm_account=myproject",
        "--set-resources",
        "train_model:slurm_partition=a100",
        "evaluate_model:slurm_partition=a100",
        "md_stability:slurm_partition=a100",
    )
    for rule in RULES:
        for name in ("mem_mb", "runtime", "cpus_per_task", "gpu"):
            assert override[rule].get(name) == base[rule].get(name), (rule, name)
        assert override[rule]["slurm_account"] == "myproject"
    for rule in GPU_RULES:
        assert override[rule]["slurm_partition"] == "a100"


def test_training_runtime_does_not_grow_with_retries() -> None:
    """Training resumes from its saved state, so a retry needs no longer runtime
    (720 × attempt would ask for 36 h on the third attempt); the other stages
    restart from scratch and do get runtime × attempt."""
    rules = (ROOT / "workflow/rules/train.smk").read_text()
    (runtime,) = re.findall(r"^ +runtime=(.+),$", rules, re.MULTILINE)
    assert runtime.isdigit() and int(runtime) > 0, runtime
    for name in ("data.smk", "evaluate.smk"):
        text = (ROOT / "workflow/rules" / name).read_text()
        found = re.findall(r"^ +runtime=(.+),$", text, re.MULTILINE)
        assert found and all("attempt" in r for r in found), (name, found)


def _multinode_recipe() -> dict[str, object]:
    """The multi-node recipe that profiles/slurm/config.yaml gives in comments
    under train_model, parsed as YAML."""
    lines = (ROOT / "profiles/slurm/config.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "x 4 GPUs" in line)
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("    #   "):
            break
        recipe.append(line.removeprefix("    #   "))
    return yaml.safe_load("\n".join(recipe))


class _Resources(dict):
    """Job resources as the SLURM plugin reads them (``.get`` and attributes)."""

    __getattr__ = dict.__getitem__


def test_multinode_recipe_submit_line(tmp_path: Path) -> None:
    """The sbatch line of the profile's multi-node recipe, made by the installed
    SLURM plugin from the resources Snakemake resolves: GPUs per node by --gres
    only (no conflicting --gpus), two nodes, one task per node."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    recipe = _multinode_recipe()
    assert recipe["gres"] == "gpu:4" and recipe["nodes"] == 2
    workdir = make_workdir(tmp_path / "wf")
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    profile["set-resources"]["train_model"].update(recipe)
    (workdir / "profiles/multinode").mkdir(parents=True)
    (workdir / "profiles/multinode/config.yaml").write_text(yaml.safe_dump(profile))
    planned = resources_planned(workdir, "--profile", "profiles/multinode")
    values = {}
    for name, text in planned["train_model"].items():
        values[name] = int(text) if text.lstrip("-").isdigit() else text
    job = types.SimpleNamespace(
        resources=_Resources(values), threads=values["cpus_per_task"]
    )
    params = {
        "run_uuid": "uuid",
        "slurm_logfile": "log",
        "comment_str": "rule_train_model",
        "account": "",
        "partition": "-p gpu",
        "workdir": str(workdir),
    }
    call = get_submit_command(job, params) + set_gres_string(job)
    flags = call.split()
    assert "--gres=gpu:4" in flags, call
    assert not any(f.startswith("--gpus") for f in flags), call
    assert "--nodes=2" in flags and "--cpus-per-task=8" in flags, call
    assert not any(f.startswith("--ntasks-per-gpu") for f in flags), call


# --------------------------------------------------------------------------------
# A config file's values are checked alike, whichever way the file is given


def test_quoted_number_fails_alike_in_any_config_file(tmp_path: Path) -> None:
    """`epochs: "20"` is refused in ./config.yaml and in a --configfile, with the
    same line naming the key, the value and the file; on the command line, where
    Snakemake hands every nested value over as a string, it is parsed."""
    workdir = make_workdir(tmp_path / "wf")
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["train"]["epochs"] = "20"
    text = yaml.safe_dump(config)
    assert "epochs: '20'" in text
    (workdir / "user.yaml").write_text(text)
    lines = {}
    for name, args in (
        ("user.yaml", ("--configfile", "user.yaml")),
        ("config.yaml", ()),
    ):
        if name == "config.yaml":
            (workdir / "config.yaml").write_text(text)
        proc = snakemake(workdir, "--dry-run", *args, check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output
        (line,) = [ln for ln in output.splitlines() if "train.epochs" in ln]
        lines[name] = line.replace(name, "FILE")
        assert name in line and "write epochs: 20" in line, line
    assert lines["user.yaml"] == lines["config.yaml"], lines
    assert lines["config.yaml"].startswith(
        "config: train.epochs: '20' is not of type 'integer' (in "
    )
    planned = planned_jobs(workdir, "--config", "train={'epochs': '20'}")
    assert "train_model" in planned
