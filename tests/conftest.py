"""Shared fixtures: synthetic datasets and a throw-away copy of the workflow."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from physpack.data.synthetic import write_padded_npz

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "tests" / "tiny_config.yaml"
TINY_N_MOL = 60


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    """A padded NPZ of 60 synthetic molecules (all keys: R Z N E F Q D)."""
    return write_padded_npz(tmp_path / "tiny.npz", TINY_N_MOL, seed=3)


def make_workdir(dest: Path, n_mol: int = TINY_N_MOL) -> Path:
    """Copy the workflow (Snakefile, workflow/, profiles/, envs/) into ``dest`` with the
    tiny config as ``config.yaml`` and a synthetic ``data/tiny.npz``. The package
    itself is the installed one (editable install of this checkout)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "Snakefile", dest / "Snakefile")
    for name in ("workflow", "profiles", "envs"):
        shutil.copytree(
            ROOT / name,
            dest / name,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
    shutil.copy(TINY_CONFIG, dest / "config.yaml")
    (dest / "data").mkdir(exist_ok=True)
    write_padded_npz(dest / "data" / "tiny.npz", n_mol, seed=3)
    return dest


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh copy of the workflow with the tiny config, in a temporary directory."""
    return make_workdir(tmp_path / "wf")


def snakemake(
    workdir: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess:
    """Run snakemake in ``workdir``; output captured; raises with the log on failure."""
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory: pytest.TempPathFactory):
    """Runs of one config compile the same programs: let XLA reuse them within a
    test module (tracing, which the compilation counters see, still happens in
    every run)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    options = {
        "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla-cache")),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": -1,
    }
    before = {k: getattr(jax.config, k) for k in options}
    for k, v in options.items():
        jax.config.update(k, v)
    cc.reset_cache()
    yield
    for k, v in before.items():
        jax.config.update(k, v)
    cc.reset_cache()
