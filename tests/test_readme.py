"""Every command line README.md shows is run here, in a throw-away copy of the
workflow: ``snakemake`` lines as dry runs (which check the configuration and the
inputs and plan the jobs; the real runs are the workflow tests), the others as
written. A command line added to README.md without a check here fails
:func:`test_every_readme_command_is_checked`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, make_workdir
from physpack.cli import STEPS
from physpack.data.synthetic import write_padded_npz

README = (ROOT / "README.md").read_text()


def _bash_blocks(text: str = README) -> list[str]:
    """Command lines of the ```bash blocks of ``text`` (continuations joined,
    comments dropped)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        text = re.sub(r"\s*\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _inline_commands() -> list[str]:
    """Inline code spans of the README that are a complete command line."""
    spans = re.findall(r"`((?:snakemake|physpack|python -m) [^`\n]*)`", README)
    return [s for s in spans if "<" not in s]  # `physpack <step>` is a pattern


BLOCK_COMMANDS = _bash_blocks()
INLINE_COMMANDS = _inline_commands()


def run(cmd: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["bash", "-c", f"set -euo pipefail; {cmd}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{cmd}\n{output}"
    return output


def dry(cmd: str) -> str:
    """``cmd`` (a snakemake line) as a dry run that prints the shell commands,
    run with this interpreter's Snakemake."""
    assert cmd.startswith("snakemake "), cmd
    return (
        f"{shlex.quote(sys.executable)} -m snakemake --dry-run --printshellcmds"
        f" {cmd.removeprefix('snakemake ')}"
    )


@pytest.fixture
def demo_workdir(tmp_path: Path) -> Path:
    """A copy of this checkout as a user clones it: the workflow, the demo's
    config.yaml and data/demo.npz."""
    workdir = make_workdir(tmp_path / "physpack")
    shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")
    shutil.copy(ROOT / "data" / "demo.npz", workdir / "data" / "demo.npz")
    return workdir


def _pip_install_targets(cmd: str) -> list[str]:
    return re.findall(r"pip install -e (\S+)", cmd)


def check_pip_install(target: str) -> None:
    """``pip install -e TARGET`` names this project and extras it defines (the
    install itself needs the network; the environment here was made with it)."""
    target = target.strip("'\"")
    assert target.startswith("."), target
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = re.findall(r"\[(.*)\]", target)
    for extra in extras[0].split(",") if extras else []:
        assert extra in project["optional-dependencies"], extra


def test_every_readme_command_is_checked() -> None:
    checked = set(CHECKED_BLOCK_COMMANDS) | set(CHECKED_INLINE_COMMANDS)
    unchecked = [c for c in BLOCK_COMMANDS + INLINE_COMMANDS if c not in checked]
    assert not unchecked, f"README command lines without a test: {unchecked}"
    assert BLOCK_COMMANDS and INLINE_COMMANDS


# --------------------------------------------------------------------------------
# Quick start


def test_venv_line(tmp_path: Path) -> None:
    (cmd,) = [c for c in BLOCK_COMMANDS if c.startswith("python3 -m venv")]
    run(cmd.replace("-m venv", "-m venv --without-pip", 1), tmp_path)
    assert (tmp_path / ".venv" / "bin" / "activate").is_file()


@pytest.mark.slow
def test_quick_start(demo_workdir: Path) -> None:
    """The demo run: the install names this project; Snakemake plans every data
    stage and training for the target, with the demo's configuration."""
    (cmd,) = [c for c in BLOCK_COMMANDS if c.endswith("results/model/best.ckpt")]
    install, snake = cmd.split(" && ")
    for target in _pip_install_targets(install):
        check_pip_install(target)
    out = run(dry(snake), demo_workdir)
    assert "python -m physpack train" in out and "--cores 8" in snake
    assert '"max_minutes": 9' in out  # the demo's limit, from its config.yaml


def test_test_line() -> None:
    """``pip install -e ".[test]" && python -m pytest -q``: this suite itself."""
    (cmd,) = [c for c in BLOCK_COMMANDS if "pytest" in c and "pip install" in c]
    install, pytest_line = cmd.split(" && ")
    for target in _pip_install_targets(install):
        check_pip_install(target)
    assert pytest_line == "python -m pytest -q"
    assert (ROOT / "pyproject.toml").read_text().count('testpaths = ["tests"]') == 1


def test_quick_loop_line() -> None:
    """``python -m pytest -q -m "not slow"``: the unit tests, without the
    end-to-end workflow, SLURM and training runs (collected, not run, here)."""
    (cmd,) = [c for c in BLOCK_COMMANDS if "pytest" in c and "not slow" in c]
    args = shlex.split(cmd)[1:]
    assert args[:2] == ["-m", "pytest"], cmd

    def collected(*options: str) -> set[str]:
        proc = subprocess.run(
            [sys.executable, *args[:2], "--collect-only", *options],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return {line for line in proc.stdout.splitlines() if "::" in line}

    quick, everything = collected(*args[2:]), collected("-q")
    files = {test.split("::")[0] for test in quick}
    assert len(quick) > len(everything) // 2, (len(quick), len(everything))
    assert files.isdisjoint(
        {"tests/test_workflow.py", "tests/test_slurm.py", "tests/test_stale.py"}
    )
    assert "tests/test_readme.py::test_quick_loop_line" in quick
    assert not any("test_trainable" in test for test in quick)


@pytest.mark.slow
def test_inline_snakemake_commands(demo_workdir: Path) -> None:
    out = run(dry("snakemake --cores 8"), demo_workdir)
    assert "python -m physpack evaluate" in out
    assert "python -m physpack md-stability" in out  # md.enabled: true by default
    out = run(dry("snakemake --cores 8 results/md/stability.json"), demo_workdir)
    assert re.search(r"^md_stability\s+1$", out, re.MULTILINE), out
    assert "python -m physpack evaluate" not in out
    (override,) = [c for c in INLINE_COMMANDS if "--config train=" in c]
    out = run(dry(override), demo_workdir)
    (train,) = re.findall(r"--train-config '(\{.*?\})'", out)
    assert json.loads(train)["epochs"] == 20


@pytest.mark.slow
def test_step_help(tmp_path: Path) -> None:
    """``physpack <step> --help`` for every step (and ``physpack train --help``)."""
    for step in STEPS:
        out = run(f"physpack {step} --help", tmp_path)
        assert out.startswith("usage:"), step


# --------------------------------------------------------------------------------
# Your own data in five lines


@pytest.mark.slow
def test_own_data_in_five_lines(tmp_path: Path) -> None:
    """The five lines, with this checkout's workflow for ``~/physpack`` and a
    synthetic NPZ for ``/data/mydata.npz``; the training run as a dry run."""
    start = README.index("## Your own data in five lines")
    block = re.search(r"```bash\n(.*?)```", README[start:], re.DOTALL).group(1)
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert len(lines) == 5, lines
    workflow = make_workdir(tmp_path / "physpack").resolve()
    data = write_padded_npz(tmp_path / "mydata.npz", 40, seed=5)
    cwd = tmp_path
    for line in lines:
        cmd = line.replace("~/physpack", str(workflow)).replace(
            "/data/mydata.npz", str(data)
        )
        if cmd.startswith("snakemake "):
            out = run(dry(cmd), cwd)
            assert "Shell command:" in out and "python -m physpack train" in out
            assert re.search(r'"energy_unit": "kcal/mol"', out)
            assert '"max_minutes": null' in out  # schema default, not the demo's
        elif cmd.startswith("tail -f "):
            log = cmd.removeprefix("tail -f ")
            assert f"> {log} 2>&1" in out  # the log the training rule writes
        else:
            run(cmd, cwd)
            if re.fullmatch(r"mkdir (\S+) && cd \1", cmd):
                cwd = cwd / cmd.split()[1]
    assert (cwd / "config.yaml").is_file()


# --------------------------------------------------------------------------------
# Running on a SLURM cluster


def _slurm_lines() -> list[str]:
    start = README.index("## Running on a SLURM cluster")
    end = README.index("\n## ", start + 1)
    return _bash_blocks(README[start:end])


@pytest.mark.slow
def test_slurm_commands(tmp_path: Path) -> None:
    """The SLURM section's lines: the install, the profile run, the override of
    partitions and account, and the copied profile (in a temporary home)."""
    workdir = make_workdir(tmp_path / "wf")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    env.pop("XDG_CONFIG_HOME", None)
    seen = []
    for cmd in _slurm_lines():
        seen.append(cmd)
        if cmd.startswith("pip install"):
            for target in _pip_install_targets(cmd):
                check_pip_install(target)
        elif cmd.startswith("snakemake "):
            out = run(dry(cmd), workdir, env)
            if "slurm_account=myproject" in cmd:
                assert "slurm_account=myproject" in out
                assert "slurm_partition=a100" in out
        elif "cp -r profiles/slurm" in cmd:
            run(cmd, workdir, env)
            assert (home / ".config/snakemake/physpack-mycluster/config.yaml").is_file()
        else:
            raise AssertionError(f"no check for {cmd!r}")
    assert any("physpack-mycluster" in c and c.startswith("snakemake") for c in seen)


# --------------------------------------------------------------------------------
# Many runs


def _section(title: str) -> str:
    start = README.index(title)
    return README[start : README.index("\n## ", start + 1)]


def _many_runs_lines() -> list[str]:
    return _bash_blocks(_section("## Many runs"))


@pytest.mark.slow
def test_many_runs_commands(tmp_path: Path) -> None:
    """The README's runs: block plans one training per run (4 members, 4 sweep
    points, 1 fine-tuned run after its parent); its predict line runs on the
    committee's checkpoints and writes the committee's mean and spread."""
    import numpy as np
    import yaml
    from ase import Atoms
    from ase.io import write
    from model_fixtures import make_checkpoint, make_packed
    from physpack.data.packed import PackedDataset

    (runs_yaml,) = re.findall(r"```yaml\n(.*?)```", _section("## Many runs"), re.DOTALL)
    workdir = make_workdir(tmp_path / "wf")
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config.update(yaml.safe_load(runs_yaml))
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    snake, predict = _many_runs_lines()
    out = run(dry(snake), workdir)
    assert re.search(r"^train_model\s+9$", out, re.MULTILINE), out
    assert "--output results/runs/ccsdt/model/best.ckpt" in out
    assert '"init_from": "results/runs/committee-0/model/best.ckpt"' in out
    (tmp_path / "data").mkdir()
    packed, _ = make_packed(tmp_path / "data", n_mol=6)
    for i in range(4):
        path = workdir / f"results/runs/committee-{i}/model/best.ckpt"
        path.parent.mkdir(parents=True)
        make_checkpoint(path, packed, seed=i)
    ds = PackedDataset(packed)
    frames = [
        Atoms(numbers=ds.molecule(i)["Z"], positions=ds.molecule(i)["R"])
        for i in range(3)
    ]
    write(workdir / "new_molecules.extxyz", frames, format="extxyz")
    assert predict.startswith("physpack predict ")
    run(f"{shlex.quote(sys.executable)} -m {predict}", workdir)
    got = np.load(workdir / "predictions.npz")
    assert got["energy"].shape == got["energy_std"].shape == (3,)
    assert got["energy_members"].shape == (4, 3)
    assert got["forces_std"].shape == got["forces"].shape


# --------------------------------------------------------------------------------
# Molecular dynamics


def _md_lines() -> list[str]:
    return _bash_blocks(_section("### Molecular dynamics with the trained model"))


@pytest.mark.slow
def test_md_commands(tmp_path: Path) -> None:
    """The two ``physpack md`` lines as written: one model (NVE), then a committee
    of four (Langevin) with uncertain frames written."""
    from ase.io import read, write
    from model_fixtures import make_checkpoint, make_packed
    from physpack.data.packed import PackedDataset
    from physpack.simulation.md import molecule_atoms

    one, committee = _md_lines()
    workdir = tmp_path / "project"
    (tmp_path / "data").mkdir()
    packed, _ = make_packed(tmp_path / "data", n_mol=6)
    paths = [workdir / "results/model/best.ckpt"]
    paths += [workdir / f"results/runs/committee-{i}/model/best.ckpt" for i in range(4)]
    for seed, path in enumerate(paths):
        path.parent.mkdir(parents=True)
        make_checkpoint(path, packed, seed=seed, scale_factor=1e-3)
    data = PackedDataset(packed)
    write(workdir / "molecules.extxyz", [molecule_atoms(data, i) for i in range(3)])
    for line in (one, committee):
        assert line.startswith("physpack md ")
        run(f"{shlex.quote(sys.executable)} -m {line}", workdir)
    single = json.loads((workdir / "results/md/run/md.json").read_text())
    assert single["settings"]["picoseconds"] == 5 and len(single["molecules"]) == 3
    record = json.loads((workdir / "results/md/committee/md.json").read_text())
    assert record["settings"]["ensemble"] == "langevin"
    assert len(record["checkpoints"]) == 4
    frames = read(
        workdir / "results/md/committee" / record["molecules"][0]["trajectory"], ":"
    )
    assert frames[-1].info["forces_spread_max_eV_per_A"] > 0


# --------------------------------------------------------------------------------
# D3 dispersion


def _dispersion_lines() -> list[str]:
    return _bash_blocks(_section("### D3 dispersion"))


@pytest.mark.slow
def test_dispersion_commands(demo_workdir: Path) -> None:
    """The install names the d3 extra; the conversion runs on the demo data and
    records D3(BJ)/pbe0 in the manifest."""
    install, convert = _dispersion_lines()
    for target in _pip_install_targets(install):
        check_pip_install(target)
    assert _pip_install_targets(install) == ['".[d3]"']
    assert convert.startswith("physpack convert ")
    run(convert, demo_workdir)
    out = demo_workdir / "results/data/packed-d3"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dispersion"]["label"] == "D3(BJ)/pbe0"
    assert (out / "E_dispersion.f64").is_file()


FIVE_LINES = (
    "mkdir myproject",
    "printf 'data:",
    "tail -f results/logs",
    "snakemake -s ~/physpack/Snakefile",
)
CHECKED_BLOCK_COMMANDS = [
    c
    for c in BLOCK_COMMANDS
    if c.startswith(FIVE_LINES + ("python3 -m venv",))
    or c.endswith("results/model/best.ckpt")
    or "pytest" in c
    or c in _slurm_lines()
    or c in _many_runs_lines()
    or c in _dispersion_lines()
    or c in _md_lines()
]
CHECKED_INLINE_COMMANDS = [
    c
    for c in INLINE_COMMANDS
    if c in ("snakemake --cores 8", "python -m pytest -q")
    or "--config train=" in c
    or c in ("physpack train --help",)
    or c == "snakemake --report results/report.html"  # tests/test_report.py
    or c == "snakemake --cores 8 results/md/stability.json"
    or c.startswith("physpack ")
    and c.split()[1] in STEPS
    and len(c.split()) == 2
]


# --------------------------------------------------------------------------------
# The configuration table


def test_configuration_table_shows_the_schema_defaults() -> None:
    """Every default in README's configuration table is the schema's (the schema
    is the one definition; the table must not drift from it)."""
    import yaml

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    start = README.index("## Configuration")
    table = README[start : README.index("\n## ", start + 1)]
    rows = re.findall(r"^\| (`\w+`)? ?\| (.+?) \| (.+?) \| .* \|$", table, re.MULTILINE)
    section, checked = None, 0
    for name, keys, defaults in rows:
        section = name.strip("`") if name else section
        keys = [k.strip().strip("`") for k in keys.split(",")]
        values = [yaml.safe_load(v.strip().strip("`")) for v in defaults.split(", ")]
        assert len(keys) == len(values) or len(values) == 1, (keys, values)
        values = values * len(keys) if len(values) == 1 else values
        for key, value in zip(keys, values, strict=True):
            spec = schema["properties"][section]["properties"][key]
            assert value == spec["default"], f"{section}.{key}: {value!r}"
            checked += 1
    assert checked >= 30
