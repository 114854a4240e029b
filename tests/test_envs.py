"""The conda environments of the rules (``--use-conda``) agree with pyproject.toml.

The rules run the package from the workflow source (``PYTHONPATH``), so an
environment holds the package's third-party dependencies only, pinned exactly as
``pyproject.toml`` pins them, and those of the extras that workflow options need
(``d3`` for ``data.dispersion``); no ``pip: -e ../`` (Snakemake copies the env
files to ``.snakemake/conda/``, where ``../`` is not the project).
"""

from __future__ import annotations

import ast
import sys
import tomllib

import pytest
import yaml
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: Dependencies of the workflow engine, not of the package the rules run.
ENGINE = {"snakemake", "snakemake-executor-plugin-slurm", "pulp"}
#: Import name -> distribution name, where they differ.
DISTRIBUTION = {"yaml": "pyyaml"}
ENVS = {"physpack.yaml": set(), "physpack-cuda.yaml": {"cuda12"}}
#: Extras that workflow options need (imported only when the option is set).
WORKFLOW_EXTRAS = ("d3",)


def _runtime_requirements() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    for extra in WORKFLOW_EXTRAS:
        reqs += [Requirement(r) for r in PYPROJECT["optional-dependencies"][extra]]
    return {r.name.lower(): r for r in reqs if r.name.lower() not in ENGINE}


def _env(name: str) -> tuple[list[str], dict[str, Requirement]]:
    """An environment's conda packages and its pip requirements by name."""
    spec = yaml.safe_load((ROOT / "envs" / name).read_text())
    conda = [d for d in spec["dependencies"] if isinstance(d, str)]
    (pip,) = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict)]
    for line in pip:
        assert not line.startswith(("-e", ".", "/")), (name, line)
    reqs = [Requirement(line) for line in pip]
    return conda, {r.name.lower(): r for r in reqs}


@pytest.mark.parametrize(("name", "jax_extras"), sorted(ENVS.items()))
def test_env_pins_the_package_dependencies(name: str, jax_extras: set[str]) -> None:
    conda, pip = _env(name)
    runtime = _runtime_requirements()
    assert set(pip) == set(runtime), name
    for dist, req in runtime.items():
        assert pip[dist].specifier == req.specifier, (name, dist)
    assert pip["jax"].extras == jax_extras, name
    (python,) = [d for d in conda if d.startswith("python")]
    version = python.split("=", 1)[1]
    assert SpecifierSet(PYPROJECT["requires-python"]).contains(version), python


def test_cuda_env_is_the_cuda_extra() -> None:
    (cuda,) = [Requirement(r) for r in PYPROJECT["optional-dependencies"]["cuda"]]
    _, pip = _env("physpack-cuda.yaml")
    assert (cuda.name, cuda.extras, cuda.specifier) == (
        "jax",
        pip["jax"].extras,
        pip["jax"].specifier,
    )


def test_every_third_party_import_is_a_dependency() -> None:
    """What the package imports is what the environments install."""
    imported: set[str] = set()
    for path in (ROOT / "workflow" / "physpack").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"physpack"}
    dists = {DISTRIBUTION.get(name, name) for name in third_party}
    assert dists <= set(_runtime_requirements()), sorted(
        dists - set(_runtime_requirements())
    )


def test_slurm_plugin_pin_submits_gpus_right() -> None:
    """Plugin versions before 2.7.1 build wrong GPU submissions."""
    (plugin,) = [
        Requirement(r)
        for r in PYPROJECT["dependencies"]
        if r.startswith("snakemake-executor-plugin-slurm")
    ]
    assert not plugin.specifier.contains("2.7.0")
    assert plugin.specifier.contains("2.7.1")
