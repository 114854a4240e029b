"""The workflow on a real SLURM cluster: one node on localhost, started for the
session by ``tests/slurm/start_slurm.sh`` where SLURM is installed (Debian
packages ``slurm-wlm`` and ``munge``; the daemons need root), skipped elsewhere.

Snakemake runs with ``profiles/slurm`` as it is, except what the test node cannot
give: it has no GPU, so train/evaluate ask for ``gpu=0`` (still on the "gpu"
partition), and CPU and memory requests are capped at the node's. The plugin is
told to poll ``squeue`` (no accounting database) and to use no account.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, make_workdir
from test_workflow import GPU_RULES, RULES, check_final_outputs, copy_workdir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM_SCRIPTS = ROOT / "tests" / "slurm"
COMMANDS = (
    "munge", "munged", "slurmctld", "slurmd",
    "sbatch", "squeue", "scancel", "scontrol", "sinfo",
)  # fmt: skip
#: Settings of the executor plugin for the test cluster (see the module docstring);
#: the first status check after 2 s instead of 40 s keeps the test short.
PLUGIN_ARGS = (
    "--slurm-status-command", "squeue",
    "--slurm-no-account",
    "--slurm-init-seconds-before-status-checks", "2",
    "--slurm-keep-successful-logs",
)  # fmt: skip
#: The data stages are one group, one SLURM job (``group: "data"`` in the rules),
#: which Snakemake names after the group and its rules.
DATA_GROUP = "data_" + "_".join(sorted(RULES[:4]))
_SUBMITTED = re.compile(
    r"Job \S+ has been submitted with SLURM jobid (\d+) \(log: .*/(?:rule|group)_(\w+)/"
)
RUN_TIMEOUT_S = 900


@pytest.fixture(scope="session")
def slurm_node() -> Iterator[dict[str, int]]:
    """A running single-node cluster; yields the node's CPUs and memory (MB)."""
    missing = [name for name in COMMANDS if shutil.which(name) is None]
    if missing:
        pytest.skip(
            f"SLURM is not installed (no {', '.join(missing)}): apt-get install "
            "slurm-wlm munge"
        )
    if os.geteuid() != 0:
        pytest.skip("starting munged, slurmctld and slurmd for the test needs root")
    proc = subprocess.run(
        [SLURM_SCRIPTS / "start_slurm.sh"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode == 3:  # a SLURM configuration of this machine's own
        pytest.skip(proc.stderr.strip())
    if proc.returncode != 0:
        pytest.fail(f"tests/slurm/start_slurm.sh failed:\n{proc.stdout}{proc.stderr}")
    started_here = "already running" not in proc.stdout
    show = subprocess.run(
        ["scontrol", "show", "node", "localhost"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    node = {
        "cpus": int(re.search(r"\bCPUTot=(\d+)", show).group(1)),
        "mem_mb": int(re.search(r"\bRealMemory=(\d+)", show).group(1)),
    }
    yield node
    if started_here:
        subprocess.run(
            [SLURM_SCRIPTS / "stop_slurm.sh"], check=False, capture_output=True
        )


def write_test_profile(workdir: Path, node: dict[str, int]) -> Path:
    """``profiles/slurm`` plus what the test node needs, as ``profiles/slurm-test``
    in ``workdir``: GPU jobs ask for no GPU, and every job for no more CPUs and
    memory than the node has (the data group runs up to three stages at once)."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert "default-resources" not in profile  # job sizes are the rules' own
    resources = profile.setdefault("set-resources", {})
    for rule in RULES:
        extra = {"mem_mb": node["mem_mb"] // 8}  # at most 3 at once
        if rule in GPU_RULES:
            extra.update(gpu=0, cpus_per_task=min(4, node["cpus"]))
        resources[rule] = {**(resources.get(rule) or {}), **extra}
    dest = workdir / "profiles" / "slurm-test"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


def slurm_snakemake(workdir: Path, *args: str) -> list[str]:
    """The command line that runs the workflow in ``workdir`` on the test cluster.
    ``--cores`` caps every job's threads, also those of the data group (whose
    stages run side by side), at the test node's CPUs."""
    cpus = int(subprocess.run(
        ["sinfo", "--noheader", "--nodes=localhost", "--format=%c"],
        capture_output=True, text=True, check=True,
    ).stdout.split()[0])  # fmt: skip
    return [
        sys.executable, "-m", "snakemake", "--directory", str(workdir),
        "--profile", "profiles/slurm-test", "--cores", str(cpus), *PLUGIN_ARGS,
        *args,
    ]  # fmt: skip


def submitted_jobs(output: str) -> dict[str, list[str]]:
    """Rule -> SLURM job ids, in submission order, from Snakemake's output."""
    jobs: dict[str, list[str]] = {}
    for job_id, rule in _SUBMITTED.findall(output):
        jobs.setdefault(rule, []).append(job_id)
    return jobs


def slurm_jobs() -> dict[str, dict[str, str]]:
    """Job id -> state, partition and comment of every job the controller knows."""
    out = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T|%P|%k"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    table = {}
    for line in out.splitlines():
        job_id, state, partition, comment = line.strip().split("|")
        table[job_id] = {"state": state, "partition": partition, "comment": comment}
    return table


def run_on_cluster(workdir: Path) -> str:
    """Snakemake on the test cluster in ``workdir`` (its default targets); the
    output, after asserting that it succeeded."""
    proc = subprocess.run(
        slurm_snakemake(workdir), check=False, cwd=workdir, capture_output=True,
        text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def slurm_run(
    slurm_node: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """The whole tiny workflow run on the cluster: its directory and output."""
    workdir = make_workdir(tmp_path_factory.mktemp("slurm") / "wf")
    write_test_profile(workdir, slurm_node)
    output = run_on_cluster(workdir)
    return workdir, output


def test_every_rule_runs_as_a_slurm_job(slurm_run: tuple[Path, str]) -> None:
    """Training and evaluation are one job each; the four data stages one job
    together (the group); nothing runs on the submitting machine. CPU jobs go to
    the cluster's default partition ("cpu" on the test cluster)."""
    workdir, output = slurm_run
    jobs = submitted_jobs(output)
    assert sorted(jobs) == sorted([DATA_GROUP, *GPU_RULES]), output
    assert all(len(ids) == 1 for ids in jobs.values()), jobs
    for rule in RULES:
        assert f"localrule {rule}:" not in output
    table = slurm_jobs()
    for name, (job_id,) in jobs.items():
        assert table[job_id]["state"] == "COMPLETED", (name, table[job_id])
        # rule_<rule>, or rule_<rule>_wildcards_<values> for a rule with wildcards
        assert re.fullmatch(rf"rule_{name}(_wildcards_.*)?", table[job_id]["comment"])
        expected = "gpu" if name in GPU_RULES else "cpu"
        assert table[job_id]["partition"] == expected, name
        kind = "group" if name == DATA_GROUP else "rule"
        logs = list(
            (workdir / ".snakemake/slurm_logs" / f"{kind}_{name}").rglob("*.log")
        )
        text = "".join(log.read_text() for log in logs)
        rules = RULES[:4] if name == DATA_GROUP else (name,)
        for rule in rules:
            assert f"rule {rule}:" in text, (name, rule, logs)
    check_final_outputs(workdir, epochs=2)


def test_cancelled_training_resumes(
    slurm_run: tuple[Path, str], tmp_path: Path
) -> None:
    """scancel of the training job mid-run: the job is CANCELLED, the profile's
    retry submits it again, and that run resumes from results/model/state/
    instead of starting over; the workflow completes."""
    workdir = copy_workdir(slurm_run[0], tmp_path / "wf")
    epochs = 300  # seconds of training after the first saved state: time to cancel
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["train"].update(epochs=epochs, patience=epochs, state_every_steps=5)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    state_file = workdir / "results/model/state/state.msgpack"
    state_before = state_file.stat().st_mtime_ns if state_file.exists() else 0

    output_file = tmp_path / "snakemake.out"
    with open(output_file, "w") as out:
        proc = subprocess.Popen(
            slurm_snakemake(workdir, "results/model/best.ckpt"),
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            cancelled = _cancel_training_after_first_state(
                state_file, state_before, proc
            )
            proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = output_file.read_text()
    assert proc.returncode == 0, output

    jobs = submitted_jobs(output)
    assert list(jobs) == ["train_model"], output
    first, second = jobs["train_model"]
    assert first == cancelled
    table = slurm_jobs()
    assert table[first]["state"] == "CANCELLED"
    assert table[second]["state"] == "COMPLETED"

    log = (workdir / "results/logs/train_model.log").read_text()
    assert re.search(r"resuming from .*state\.msgpack: epoch \d+", log), log
    epoch_lines = re.findall(rf"^epoch (\d+)/{epochs}\b", log, re.MULTILINE)
    assert epoch_lines and int(epoch_lines[0]) > 1, log  # continued, not restarted
    with open(workdir / "results/model/history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(float(r["epoch"])) for r in rows] == list(range(1, epochs + 1))
    assert (workdir / "results/model/best.ckpt").exists()


def _cancel_training_after_first_state(
    state_file: Path, state_before: int, proc: subprocess.Popen
) -> str:
    """Wait until the running training job has saved a state, then scancel it;
    return its job id."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, "snakemake ended before training could be cancelled"
        running = [
            job_id
            for job_id, job in slurm_jobs().items()
            if re.fullmatch(r"rule_train_model(_wildcards_.*)?", job["comment"])
            and job["state"] == "RUNNING"
        ]
        saved = state_file.exists() and state_file.stat().st_mtime_ns > state_before
        if running and saved:
            (job_id,) = running
            subprocess.run(["scancel", job_id], check=True)
            return job_id
        time.sleep(0.2)
    raise AssertionError("training never saved a state")


def test_ensemble_members_are_one_slurm_job_each(
    slurm_run: tuple[Path, str], tmp_path: Path
) -> None:
    """A 3-member committee added to the finished run: three training jobs and
    three evaluation jobs, all submitted (the data stages are shared and done);
    the committee's evaluation and the comparison run on the submitting machine."""
    workdir = copy_workdir(slurm_run[0], tmp_path / "wf")
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["runs"] = {"committee": {"ensemble": 3}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    output = run_on_cluster(workdir)
    jobs = submitted_jobs(output)
    assert sorted(jobs) == sorted(GPU_RULES), output
    assert all(len(ids) == 3 for ids in jobs.values()), jobs
    table = slurm_jobs()
    for ids in jobs.values():
        for job_id in ids:
            assert table[job_id]["state"] == "COMPLETED", table[job_id]
    metrics = workdir / "results/ensembles/committee/metrics.json"
    assert '"members": 3' in metrics.read_text()
    assert (workdir / "results/comparison.md").is_file()
