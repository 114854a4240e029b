"""Joining a multi-process run: the cluster's environment (SLURM) read into a
:class:`DistributedSetup`, and ``jax.distributed`` started from it.

One process per SLURM task of an ``srun`` step; :func:`initialize_distributed` must
run before any other JAX call of the process. What the processes then do together
(the mesh, sharded steps, collectives) is :mod:`physpack.training.parallel`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Literal

import jax

from physpack.errors import ConfigError

log = logging.getLogger(__name__)

#: Coordinator port range used when SLURM gives no ``JAX_COORDINATOR_PORT``: the
#: ephemeral ports above 61440, offset by the job id (as jax's SLURM detection does).
_PORT_BASE, _PORT_SPAN = 61440, 4096


@dataclasses.dataclass(frozen=True)
class DistributedSetup:
    """How this process joined (or did not join) a multi-process run.

    Attributes:
        num_processes: processes of the run (1: single-process, nothing started).
        process_id: this process, ``0 <= process_id < num_processes``.
        coordinator_address: ``host:port`` of process 0's coordination service
            (``None`` when single-process).
        local_device_ids: accelerator ids this process uses, ``None``: all visible.
        source: ``"explicit"`` (arguments), ``"slurm"`` (environment) or
            ``"single"``.
    """

    num_processes: int
    process_id: int
    coordinator_address: str | None
    local_device_ids: tuple[int, ...] | None
    source: Literal["explicit", "slurm", "single"]


def first_hostname(nodelist: str) -> str:
    """The first host of a SLURM node list (``"gpu[003-005,9],cpu1"`` → ``"gpu003"``).

    Used when ``scontrol`` is not on the PATH; zero padding of ranges is kept.
    """
    match = re.match(r"([^,\[]+)(?:\[([^\]]*)\])?", nodelist.strip())
    if match is None or not match.group(1):
        raise ConfigError(f"SLURM node list {nodelist!r}: cannot read a host name")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    return prefix + re.split(r"[,-]", ranges, maxsplit=1)[0]


def _expand_first_host(nodelist: str) -> str:
    """First host of ``nodelist``: ``scontrol show hostnames`` when available."""
    if shutil.which("scontrol"):
        proc = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            check=False,
        )
        hosts = proc.stdout.split()
        if proc.returncode == 0 and hosts:
            return hosts[0]
    return first_hostname(nodelist)


def _tasks_on_node(environ: Mapping[str, str]) -> int:
    """Tasks of this job step on this node (``SLURM_STEP_TASKS_PER_NODE`` is a
    compressed list such as ``"2(x3),1"``; this node's entry is ``SLURM_NODEID``)."""
    text = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get(
        "SLURM_TASKS_PER_NODE", ""
    )
    per_node: list[int] = []
    for part in filter(None, text.split(",")):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m is None:
            return 1
        per_node += [int(m.group(1))] * int(m.group(2) or 1)
    node = int(environ.get("SLURM_NODEID", "0"))
    return per_node[node] if node < len(per_node) else 1


def slurm_setup(environ: Mapping[str, str] | None = None) -> DistributedSetup | None:
    """The multi-process setup that a SLURM job step describes, or ``None``.

    ``None`` unless this process is one of several tasks of an ``srun`` step
    (``SLURM_STEP_NUM_TASKS`` > 1). The batch script of a multi-task job has
    ``SLURM_NTASKS`` > 1 and ``SLURM_PROCID`` = 0 too, but it is one process: only
    ``srun`` starts the tasks, and a process that waited there for the others would
    wait forever.
    The coordinator is the step's first node on port ``JAX_COORDINATOR_PORT`` or
    ``61440 + SLURM_JOB_ID mod 4096``. Devices: one task on a node uses all of the
    node's visible accelerators (the recommended layout, ``tasks == nodes``);
    several tasks on a node take one each, accelerator ``SLURM_LOCALID``, unless
    SLURM already bound one per task (``CUDA_VISIBLE_DEVICES`` lists one) or
    ``JAX_LOCAL_DEVICE_IDS`` says otherwise (jax reads it itself).
    """
    env = os.environ if environ is None else environ
    tasks = env.get("SLURM_STEP_NUM_TASKS")
    if not tasks or int(tasks) <= 1:
        return None
    nodelist = (
        env.get("SLURM_STEP_NODELIST")
        or env.get("SLURM_JOB_NODELIST")
        or env.get("SLURM_NODELIST")
    )
    if not nodelist:
        raise ConfigError(
            "SLURM_STEP_NUM_TASKS > 1 but no SLURM_STEP_NODELIST/SLURM_NODELIST is set"
        )
    if env.get("JAX_COORDINATOR_PORT"):
        port = int(env["JAX_COORDINATOR_PORT"])
    else:
        port = _PORT_BASE + int(env.get("SLURM_JOB_ID", "0")) % _PORT_SPAN
    local_ids: tuple[int, ...] | None = None
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    if _tasks_on_node(env) > 1 and len(visible) != 1:
        local_ids = (int(env.get("SLURM_LOCALID", "0")),)
    host = _expand_first_host(nodelist)
    return DistributedSetup(
        num_processes=int(tasks),
        process_id=int(env.get("SLURM_PROCID", "0")),
        coordinator_address=f"{host}:{port}",
        local_device_ids=local_ids,
        source="slurm",
    )


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    timeout_s: int = 300,
) -> DistributedSetup:
    """Join a multi-process run, before any other JAX call of this process.

    With ``coordinator_address``, ``num_processes`` and ``process_id`` given (tests
    on localhost, hand-started runs) those are used; otherwise the SLURM
    environment of an ``srun`` step with several tasks (:func:`slurm_setup`);
    otherwise this is a single-process run and nothing is started. Calling it again
    in an initialised process returns the running setup.

    On CPUs the cross-process collectives are gloo (jax's default
    ``jax_cpu_collectives_implementation``); on GPUs NCCL.

    Raises:
        ConfigError: only some of the three explicit arguments are given, or
            ``process_id`` is out of range.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ConfigError(
                "initialize_distributed: give coordinator_address, num_processes "
                f"and process_id together (got {explicit})"
            )
        assert num_processes is not None and process_id is not None
        if not 0 <= process_id < num_processes:
            raise ConfigError(
                f"initialize_distributed: process_id {process_id} is not in "
                f"[0, {num_processes})"
            )
        setup = DistributedSetup(
            num_processes=int(num_processes),
            process_id=int(process_id),
            coordinator_address=coordinator_address,
            local_device_ids=tuple(local_device_ids) if local_device_ids else None,
            source="explicit",
        )
    else:
        found = slurm_setup()
        if found is None:
            return DistributedSetup(1, 0, None, None, "single")
        setup = found
    if jax.distributed.is_initialized():
        return setup
    log.info(
        "joining %d processes as process %d (coordinator %s, %s)",
        setup.num_processes,
        setup.process_id,
        setup.coordinator_address,
        setup.source,
    )
    # "deactivate": our own values stand; jax's SLURM auto-detection would bind one
    # device per task even when one task per node should drive all its GPUs.
    jax.distributed.initialize(
        coordinator_address=setup.coordinator_address,
        num_processes=setup.num_processes,
        process_id=setup.process_id,
        local_device_ids=list(setup.local_device_ids)
        if setup.local_device_ids
        else None,
        cluster_detection_method="deactivate",
        initialization_timeout=timeout_s,
    )
    return setup


def is_main_process() -> bool:
    """Whether this is process 0: the only one that writes checkpoints and logs."""
    return jax.process_index() == 0
