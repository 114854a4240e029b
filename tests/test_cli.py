"""``physpack`` command line: a stage is held to ``OMP_NUM_THREADS`` CPUs (which
Snakemake sets to the rule's ``threads:``); JAX's own thread pools ignore it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from physpack import cli

CPUS = len(os.sched_getaffinity(0))


def _child(code: str, threads: str | None) -> list[str]:
    """Run ``code`` in a fresh interpreter (affinity is per process)."""
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


LIMIT = (
    "import os; from physpack.cli import limit_cpu_threads; "
    "print(limit_cpu_threads(), len(os.sched_getaffinity(0)))"
)


@pytest.mark.skipif(CPUS < 2, reason="one CPU: nothing to limit")
def test_one_thread_is_one_cpu() -> None:
    assert _child(LIMIT, "1") == ["1", "1"]


@pytest.mark.skipif(CPUS < 3, reason="a limit between 1 and all needs 3 CPUs")
def test_several_threads_are_that_many_cpus() -> None:
    assert _child(LIMIT, "2") == ["2", "2"]


@pytest.mark.parametrize("value", [None, "", "zero", "0", "-2", str(CPUS), "100000"])
def test_no_limit_without_a_usable_thread_count(value: str | None) -> None:
    assert _child(LIMIT, value) == ["None", str(CPUS)]


@pytest.mark.skipif(CPUS < 2, reason="one CPU: nothing to limit")
def test_concurrent_stages_do_not_share_one_cpu() -> None:
    """The CPU chosen rotates with the process id, so one-thread stages started
    side by side spread over the machine instead of all taking the first CPU."""
    code = (
        "import os; from physpack.cli import limit_cpu_threads; "
        "limit_cpu_threads(); print(*os.sched_getaffinity(0))"
    )
    chosen = {tuple(_child(code, "1")) for _ in range(12)}
    assert len(chosen) > 1, chosen


@pytest.mark.skipif(CPUS < 2, reason="one CPU: nothing to limit")
def test_cli_applies_the_limit_before_the_step_runs() -> None:
    """``python -m physpack <step>``: the step runs restricted (before JAX is
    imported by the step's module)."""
    code = (
        "import sys, os, types; from physpack import cli; "
        "probe = types.ModuleType('probe'); "
        "probe.main = lambda argv: print(len(os.sched_getaffinity(0))) or 0; "
        "sys.modules['probe'] = probe; cli.STEPS['probe'] = ('probe', ''); "
        "sys.exit(cli.main(['probe']))"
    )
    assert _child(code, "1") == ["1"]
    assert cli.limit_cpu_threads({}) is None  # no OMP_NUM_THREADS: no limit
