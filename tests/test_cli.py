"""``physpack`` command line: JAX's CPU backend is held to ``OMP_NUM_THREADS``,
which Snakemake sets to the rule's ``threads:``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from physpack import cli


def test_one_thread_sets_the_single_thread_xla_flags() -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: nothing to limit")
    env = {"OMP_NUM_THREADS": "1", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert cli.limit_cpu_threads(env) == 1
    flags = env["XLA_FLAGS"].split()
    assert flags[0] == "--xla_dump_to=/tmp/x"  # the user's flags are kept
    assert set(cli.SINGLE_THREAD_XLA_FLAGS) <= set(flags)
    assert cli.limit_cpu_threads(env) == 1
    assert len(env["XLA_FLAGS"].split()) == len(flags)  # not added twice


@pytest.mark.parametrize("value", ["", "zero", "0", "-2", "100000"])
def test_no_limit_without_a_usable_thread_count(value: str) -> None:
    env = {"OMP_NUM_THREADS": value} if value else {}
    assert cli.limit_cpu_threads(env) is None
    assert "XLA_FLAGS" not in env


def test_several_threads_restrict_the_cpus() -> None:
    """In a child process (the restriction is per process): n of the CPUs."""
    cpus = len(os.sched_getaffinity(0))
    if cpus < 3:
        pytest.skip(f"{cpus} CPUs: a limit between 1 and all needs at least 3")
    code = (
        "import os; from physpack.cli import limit_cpu_threads; "
        "print(limit_cpu_threads(), len(os.sched_getaffinity(0)))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["2", "2"]


def test_cli_applies_the_limit_before_jax_starts() -> None:
    """``python -m physpack <step>`` with OMP_NUM_THREADS=1: the step's process
    runs JAX with the single-thread flags."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: nothing to limit")
    code = (
        "import sys, os; from physpack import cli; "
        "cli.STEPS['probe'] = ('json', ''); "
        "import json; json.main = lambda argv: print(os.environ['XLA_FLAGS']) or 0; "
        "sys.exit(cli.main(['probe']))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--xla_cpu_multi_thread_eigen=false" in out
