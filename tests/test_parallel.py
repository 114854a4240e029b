"""Data-parallel training (physpack.training.parallel): layout, equality with one device,
several processes.

Tests that need two devices run this file as a script in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (the flag must be set before
jax starts, so it cannot be set inside the pytest process without affecting the
rest of the suite). The subprocess writes its results to an ``.npz``; the
comparisons are made here.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from physpack.errors import ConfigError
from physpack.model import checkpoint as ckpt_io
from physpack.training import cluster
from physpack.training import parallel as par
from test_slurm import slurm_node  # noqa: F401  (fixture: the local test cluster)

HERE = Path(__file__).resolve()

#: Tiny PhysNet for the subprocess checks (seconds to compile on 2 cores).
TINY_MODEL = {
    "features": 8,
    "max_degree": 0,
    "num_iterations": 1,
    "num_basis_functions": 4,
    "cutoff": 4.0,
    "max_atomic_number": 9,
    "n_res": 1,
    "n_res_interaction": 2,  # as model_fixtures.TINY_MODEL
}
#: Molecules per batch of the test stream: unequal, so global and per-device
#: normalisation differ; 5 batches on 2 devices leave a short last step.
BATCH_SIZES = (3, 1, 4, 2, 3)
BUDGETS = {"max_atoms": 30, "max_pairs": 160, "max_molecules": 5}
FORCES_WEIGHT = 10.0


# --------------------------------------------------------------------------------
# In-process tests (one CPU device)


def test_first_hostname() -> None:
    assert cluster.first_hostname("node7") == "node7"
    assert cluster.first_hostname("gpu[003-005,9],cpu1") == "gpu003"
    assert cluster.first_hostname("a[12,4]") == "a12"
    assert cluster.first_hostname("host1,host2") == "host1"


def _slurm_env(**extra: str) -> dict[str, str]:
    env = {
        "SLURM_JOB_ID": "4101",
        "SLURM_NTASKS": "4",
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_STEP_NODELIST": "gpu[07-08]",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    }
    env.update(extra)
    return env


def test_slurm_setup_from_environment() -> None:
    setup = cluster.slurm_setup(_slurm_env())
    assert setup is not None
    assert (setup.num_processes, setup.process_id) == (4, 3)
    assert setup.coordinator_address == f"gpu07:{61440 + 4101 % 4096}"
    # two tasks on this node: one device each, chosen by the local task id
    assert setup.local_device_ids == (1,)


def test_slurm_setup_one_task_per_node_uses_all_devices() -> None:
    env = _slurm_env(SLURM_STEP_TASKS_PER_NODE="1(x4)", JAX_COORDINATOR_PORT="5000")
    setup = cluster.slurm_setup(env)
    assert setup is not None and setup.local_device_ids is None
    assert setup.coordinator_address == "gpu07:5000"
    # SLURM bound one GPU per task already: it is device 0 of the visible ones
    bound = cluster.slurm_setup(_slurm_env(CUDA_VISIBLE_DEVICES="3"))
    assert bound is not None and bound.local_device_ids is None


def test_slurm_setup_single_task_or_no_slurm() -> None:
    assert cluster.slurm_setup(_slurm_env(SLURM_STEP_NUM_TASKS="1")) is None
    assert cluster.slurm_setup({}) is None
    # the batch script of a 4-task job (no srun step): one process, not 4
    batch = _slurm_env()
    del batch["SLURM_STEP_NUM_TASKS"], batch["SLURM_STEP_NODELIST"]
    assert cluster.slurm_setup(batch) is None
    with pytest.raises(ConfigError, match="NODELIST"):
        env = _slurm_env()
        del env["SLURM_STEP_NODELIST"]
        cluster.slurm_setup(env)


def test_initialize_distributed_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="together"):
        cluster.initialize_distributed("127.0.0.1:1234", num_processes=2)
    with pytest.raises(ConfigError, match="not in"):
        cluster.initialize_distributed("127.0.0.1:1234", 2, 2)
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS", raising=False)
    setup = cluster.initialize_distributed()
    assert setup.source == "single" and setup.num_processes == 1


@pytest.mark.parametrize("devices", [0, -1, True, "two", 2.0])
def test_select_devices_rejects_bad_values(devices: Any) -> None:
    with pytest.raises(ConfigError, match="train.devices"):
        par.select_devices(devices)


def test_select_devices_more_than_available() -> None:
    import jax

    n = len(jax.local_devices())
    with pytest.raises(
        ConfigError, match=f"{n + 1} requested but this process has {n}"
    ):
        par.select_devices(n + 1)
    dp = par.select_devices("all")
    assert dp.num_devices == dp.num_local_devices == n and dp.first_shard == 0


def test_stack_batches_refuses_changing_shapes() -> None:
    a = {"R": np.zeros((4, 3), np.float32), "Z": np.zeros(4, np.int32)}
    b = {"R": np.zeros((5, 3), np.float32), "Z": np.zeros(5, np.int32)}
    with pytest.raises(ValueError, match="'R' of batch 1"):
        par.stack_batches([a, b])
    stacked = par.stack_batches([a, a, a])
    assert stacked["R"].shape == (3, 4, 3) and stacked["Z"].dtype == np.int32


def test_empty_batch_clears_masks_only() -> None:
    batch = _stream(seed=1)[0]
    empty = par.empty_batch(batch)
    assert not any(empty[k].any() for k in empty if k.endswith("_mask"))
    assert (empty["mol_index"] == -1).all()
    np.testing.assert_array_equal(empty["R"], batch["R"])
    assert batch["atom_mask"].any()  # the template is untouched


@settings(max_examples=80, deadline=None)
@given(
    n_batches=st.integers(1, 23),
    local_counts=st.lists(st.integers(1, 3), min_size=1, max_size=4),
    per_device=st.integers(1, 2),
    skip_others=st.booleans(),
)
def test_step_batches_every_batch_exactly_once(
    n_batches: int, local_counts: list[int], per_device: int, skip_others: bool
) -> None:
    """Processes with ``local_counts`` devices of ``per_device`` slots each, one
    shared stream (optionally ``None`` where a process need not read): every batch
    is used by exactly one slot once, the other slots get empty batches, and all
    processes run the same number of steps."""
    per_step = sum(local_counts) * per_device
    stream = [
        {"i": np.array([i]), "x_mask": np.array([True])} for i in range(n_batches)
    ]
    seen: list[int] = []
    steps = set()
    first = 0
    for count in local_counts:
        slots = range(first * per_device, (first + count) * per_device)
        mine = [
            b if (not skip_others or i % per_step in slots) else None
            for i, b in enumerate(stream)
        ]
        if n_batches < per_step and all(b is None for b in mine):
            with pytest.raises(ValueError, match="before this process saw a batch"):
                list(par.step_batches(mine, per_step, slots[0], len(slots)))
            return
        groups = list(par.step_batches(iter(mine), per_step, slots[0], len(slots)))
        steps.add(len(groups))
        for group in groups:
            assert len(group) == len(slots)
            for b in group:
                if b["x_mask"].all():
                    seen.append(int(b["i"][0]))
        first += count
    assert steps == {par.steps_per_epoch(n_batches, per_step)}
    assert sorted(seen) == list(range(n_batches))


def test_check_batches_per_epoch() -> None:
    dp = par.select_devices(1, batches_per_device=3)
    assert dp.batches_per_step == 3 * dp.num_devices
    par.check_batches_per_epoch(3, dp, "train")
    with pytest.raises(ConfigError, match="valid: 2 batch"):
        par.check_batches_per_epoch(2, dp, "valid")


# --------------------------------------------------------------------------------
# Subprocess checks on 2 forced CPU devices / 2 processes


def _run_worker(
    *args: str, devices: int = 2, timeout: float = 240
) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, str(HERE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.slow
def test_data_parallel_step_equals_single_device_step(tmp_path: Path) -> None:
    out = tmp_path / "step.npz"
    _check(_run_worker("step", str(out)))
    r = np.load(out)
    assert r["num_devices"] == 2
    # loss and gradient of one step on 2 devices (one batch each) and on 1 device
    # with 2 batches per device equal those on one concatenated batch
    for tag in ("dp", "accum"):
        np.testing.assert_allclose(r[f"{tag}_loss"], r["ref_loss"], rtol=2e-5)
        np.testing.assert_allclose(
            r[f"{tag}_grad"],
            r["ref_grad"],
            rtol=2e-4,
            atol=1e-6 * abs(r["ref_grad"]).max(),
        )
        np.testing.assert_allclose(
            r[f"{tag}_params"], r["ref_params"], rtol=1e-4, atol=1e-7
        )
    # the batches hold different numbers of molecules, so the mean of per-device
    # means is a different loss: global normalisation is what makes them equal
    assert abs(r["mean_of_means"] - r["ref_loss"]) > 1e-3 * abs(r["ref_loss"])
    # a short last step: batch 4 with an empty batch equals batch 4 alone
    np.testing.assert_allclose(r["tail_loss"], r["tail_ref_loss"], rtol=2e-5)
    np.testing.assert_allclose(
        r["tail_grad"],
        r["tail_ref_grad"],
        rtol=2e-4,
        atol=1e-6 * abs(r["tail_ref_grad"]).max(),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """40 synthetic molecules, packed, and a 60/20/20 split."""
    from model_fixtures import make_packed

    return make_packed(tmp_path_factory.mktemp("toy"), n_mol=40)


@pytest.fixture(scope="module")
def single_process_runs(
    toy_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``physpack.training.train.train`` in one process with 2 forced CPU devices, twice:
    ``train.devices = 2`` (one batch per device and step), and one device summing
    two batches per step (the same global batch)."""
    out = tmp_path_factory.mktemp("fit")
    _check(_run_worker("fit", str(out), *map(str, toy_data), "--runs", "2x1,1x2"))
    return out


def _history(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


@pytest.mark.slow
def test_two_devices_train_like_one_device_at_the_same_global_batch(
    single_process_runs: Path,
) -> None:
    """A short training run (2 epochs, the last step of each epoch short) on 2
    devices has the loss curve and final parameters of 1 device with the same
    batches per step, and the same config hash (it would resume the other's
    state): results depend on the device count only through the global batch."""
    two, one = (np.load(single_process_runs / f"{r}.npz") for r in ("2x1", "1x2"))
    assert (int(two["devices"]), int(one["devices"])) == (2, 1)
    assert int(two["steps"]) == int(one["steps"]) > 2 * 2
    h2, h1 = (_history(single_process_runs / r / "history.csv") for r in ("2x1", "1x2"))
    assert h2["epoch"].tolist() == h1["epoch"].tolist() == [1.0, 2.0]
    for column in ("train_loss", "valid_loss", "valid_forces_mae_eV_per_A"):
        np.testing.assert_allclose(h2[column], h1[column], rtol=1e-4)
    assert h2["train_loss"][1] < h2["train_loss"][0]  # it did train
    np.testing.assert_allclose(two["params"], one["params"], rtol=1e-4, atol=1e-6)
    states = [
        ckpt_io.load_state(single_process_runs / r / "state") for r in ("2x1", "1x2")
    ]
    assert states[0]["config"] == states[1]["config"]
    assert states[0]["config"]["train"]["devices"] == 2  # batches per step
    best = ckpt_io.load(single_process_runs / "2x1" / "best.ckpt")
    assert best.training["devices"] == 2 and best.training["batches_per_step"] == 2


@pytest.mark.slow
def test_two_processes_train_alike_and_only_process_0_writes(
    toy_data: tuple[Path, Path], single_process_runs: Path, tmp_path: Path
) -> None:
    """``train`` in two processes (one CPU device each) on localhost, gloo
    collectives: both end with the same parameters, equal to one process with
    two devices; only process 0 wrote a checkpoint, history and state."""
    address = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE),
                "fit",
                str(tmp_path / f"p{i}"),
                *map(str, toy_data),
                "--runs",
                "1x1",
                "--coordinator",
                address,
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, f"process failed:\n{text}"
    p0, p1 = (np.load(tmp_path / f"p{i}" / "1x1.npz") for i in range(2))
    single = np.load(single_process_runs / "2x1.npz")
    assert (int(p0["processes"]), int(p0["devices"])) == (2, 2)
    np.testing.assert_array_equal(p0["params"], p1["params"])
    np.testing.assert_allclose(p0["params"], single["params"], rtol=1e-5, atol=1e-7)
    assert int(p0["steps"]) == int(single["steps"])
    # each process assembled only its own batches: together, each training
    # molecule once per epoch (as the single process did alone)
    # molecule once per epoch (as the single process did alone); every process
    # also assembles one molecule to initialise the parameters
    n_train = np.load(toy_data[1])["train"].size
    own = [int(p["assembled"]) - 1 for p in (p0, p1)]
    assert sum(own) == int(single["assembled"]) - 1 == n_train * int(single["epochs"])
    assert all(0.3 * sum(own) < k < 0.7 * sum(own) for k in own), own
    written = {"best.ckpt", "history.csv", "state"}
    assert written <= {f.name for f in (tmp_path / "p0" / "1x1").iterdir()}
    assert not any((tmp_path / "p1" / "1x1").iterdir())
    assert "epoch 2/2" in outputs[0] and "epoch 2/2" not in outputs[1]
    for p in (p0, p1):  # the collectives behind the run's agreement checks
        assert p["agree_same"] and not p["agree_different"] and p["any_process"]
        assert p["broadcast"].tolist() == [0.5, 1e-300]  # bit-exact float64


#: What profiles/slurm needs on train_model for one process per task: ``tasks``
#: sizes the allocation (sbatch --ntasks) and ``mpi`` is the launcher that the rule
#: puts before ``physpack train`` (its presence also stops the plugin from wrapping
#: the job in a single-task srun). The plugin clears SLURM_NTASKS & co. before the
#: job runs, so the launcher states the task geometry itself. On the 2-CPU test
#: node: 1 CPU a task.
TWO_TASKS = {
    "tasks": 2,
    "cpus_per_task": 1,
    "mpi": "srun --ntasks=2 --cpus-per-task=1",
}


@pytest.mark.slow
@pytest.mark.slurm
def test_train_rule_runs_as_a_two_task_slurm_job(
    slurm_node: dict[str, int],  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    """The train rule as a SLURM job of 2 tasks on the local test cluster: both
    tasks train as one 2-process run (one CPU device each), process 0 alone logs
    and writes the outputs."""
    import yaml
    from conftest import make_workdir
    from test_slurm import (
        slurm_jobs,
        slurm_snakemake,
        submitted_jobs,
        write_test_profile,
    )

    workdir = make_workdir(tmp_path / "wf")
    profile = write_test_profile(workdir, slurm_node) / "config.yaml"
    settings = yaml.safe_load(profile.read_text())
    settings["set-resources"]["train_model"].update(TWO_TASKS)
    profile.write_text(yaml.safe_dump(settings, sort_keys=False))
    proc = subprocess.run(
        slurm_snakemake(workdir, "results/model/best.ckpt"),
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    (job_id,) = submitted_jobs(output)["train_model"]
    assert slurm_jobs()[job_id]["state"] == "COMPLETED"
    shown = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"\bNumTasks=2\b", shown), shown
    log = (workdir / "results/logs/train_model.log").read_text()
    assert "2 processes" in log and "devices: 2 × cpu in 2 process(es)" in log, log
    assert len(re.findall(r"^epoch 1/2 ", log, re.MULTILINE)) == 1, log  # rank 0 only
    best = ckpt_io.load(workdir / "results/model/best.ckpt")
    assert best.training["processes"] == 2 and best.training["devices"] == 2


# --------------------------------------------------------------------------------
# Worker (runs in the subprocesses)


def _stream(seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Fixed-budget packed batches of small synthetic molecules (sizes 3–6)."""
    from physpack.data.synthetic import molecules
    from physpack.model.physnet import molecules_to_batch

    rng = np.random.default_rng(seed)
    mols = list(molecules(rng.integers(3, 7, size=sum(BATCH_SIZES)), rng))
    for m in mols:
        m["E"] = np.float64(rng.normal())  # small energies: no reference needed
    bounds = np.cumsum((0,) + BATCH_SIZES)
    return [
        molecules_to_batch(mols[a:b], **BUDGETS) for a, b in itertools.pairwise(bounds)
    ]


def _concatenate(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One packed batch holding the real molecules of ``batches`` (built anew)."""
    from physpack.model.physnet import molecules_to_batch

    mols = []
    for b in batches:
        for j in np.flatnonzero(b["molecule_mask"]):
            atoms = b["batch_segments"] == j
            mols.append(
                {
                    "Z": b["Z"][atoms],
                    "R": b["R"][atoms],
                    "F": b["F"][atoms],
                    "E": b["E"][j],
                    "Qtot": b["Qtot"][j],
                }
            )
    return molecules_to_batch(mols)


def _loss_parts(model: Any) -> tuple[Any, Any]:
    """A per-batch (sums, counts) energy+forces loss of ``model`` and its combine."""
    import jax.numpy as jnp
    from physpack.model.physnet import energy_and_forces

    def partial_fn(params: Any, b: Mapping[str, Any]) -> tuple[dict, dict]:
        out = energy_and_forces(params, model, b, jnp.float32(1.0))
        d_e = (out["energy_residual"] - b["E"]) * b["molecule_mask"]
        d_f = (out["forces"] - b["F"]) * b["atom_mask"][:, None]
        sums = {"E": jnp.sum(d_e**2), "F": jnp.sum(d_f**2)}
        counts = {"mol": jnp.sum(b["molecule_mask"]), "atoms": jnp.sum(b["atom_mask"])}
        return sums, counts

    def combine(sums: dict, counts: dict) -> Any:
        return sums["E"] / counts["mol"] + FORCES_WEIGHT * sums["F"] / (
            3 * counts["atoms"]
        )

    return partial_fn, combine


def _flat(tree: Any) -> np.ndarray:
    import jax

    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(par.to_host(tree))])


def _setup_model(stream: Sequence[Mapping[str, np.ndarray]]) -> tuple[Any, Any]:
    """The tiny PhysNet and its initial parameters (``init`` jitted: one compile
    instead of one per operation)."""
    import jax
    from physpack.model.physnet import MODEL_INPUTS, PhysNet, device_inputs

    model = PhysNet(**TINY_MODEL)
    inputs = device_inputs(stream[0])
    init = jax.jit(lambda key, x: model.init(key, *(x[k] for k in MODEL_INPUTS)))
    return model, init(jax.random.key(0), inputs)["params"]


def worker_step(out: Path) -> None:
    """One step three ways: 2 devices × 1 batch, 1 device × 2 batches, and plain
    jax on the concatenated batch; plus a short last step and the mean of means."""
    import jax
    import optax

    stream = _stream()
    model, params = _setup_model(stream)
    partial_fn, combine = _loss_parts(model)
    tx = optax.adam(1e-2)

    ref_vg = jax.jit(jax.value_and_grad(lambda p, b: combine(*partial_fn(p, b))))

    def ref(batch: Mapping[str, np.ndarray]) -> tuple[Any, Any]:
        return ref_vg(params, {k: v[0] for k, v in par.stack_batches([batch]).items()})

    @jax.jit
    def adam_step(p: Any, g: Any) -> Any:
        updates, _ = tx.update(g, tx.init(p), p)
        return optax.apply_updates(p, updates)

    result: dict[str, Any] = {}
    ref_loss, ref_grad = ref(_concatenate(stream[:2]))
    result.update(
        ref_loss=ref_loss,
        ref_grad=_flat(ref_grad),
        ref_params=_flat(adam_step(params, ref_grad)),
    )
    for tag, dp in (("dp", par.select_devices(2)), ("accum", par.select_devices(1))):
        vg = jax.jit(par.data_parallel_value_and_grad(partial_fn, combine, dp.mesh))
        p = par.replicate(dp, params)
        (loss, _), grad = vg(p, par.shard_batches(dp, stream[:2]))
        result.update(
            {
                f"{tag}_loss": par.to_host(loss),
                f"{tag}_grad": _flat(grad),
                f"{tag}_params": _flat(adam_step(p, grad)),
            }
        )
        if tag == "dp":
            result["num_devices"] = dp.num_devices
            (last,) = list(par.step_batches(stream, 2))[-1:]
            (tail_loss, _), tail_grad = vg(p, par.shard_batches(dp, last))
            tail_ref_loss, tail_ref_grad = ref(stream[4])
            result.update(
                tail_loss=par.to_host(tail_loss),
                tail_grad=_flat(tail_grad),
                tail_ref_loss=tail_ref_loss,
                tail_ref_grad=_flat(tail_ref_grad),
            )
    result["mean_of_means"] = np.mean([ref(b)[0] for b in stream[:2]])
    np.savez(out, **{k: np.asarray(v) for k, v in result.items()})


def worker_fit(out: Path, args: argparse.Namespace) -> None:
    """``physpack.training.train.train`` on the toy data for each ``DxK`` of ``--runs``
    (``D`` devices per process, ``K`` batches per device and step); results in
    ``out/DxK.npz``, the run's files in ``out/DxK/``."""
    setup = cluster.initialize_distributed(
        args.coordinator, args.num_processes, args.process_id
    )
    from physpack.config import LoaderConfig, ModelConfig, TrainConfig
    from physpack.data.loader import PackedMemmapLoader
    from physpack.training.train import train

    # molecules this process assembles for training (the shuffled loader)
    assembled = [0]
    original = PackedMemmapLoader.assemble

    def counting(self: Any, positions: np.ndarray, kind: int = 0) -> Any:
        if self.shuffle:
            assembled[0] += int(np.size(positions))
        return original(self, positions, kind)

    PackedMemmapLoader.assemble = counting  # type: ignore[method-assign]

    model_cfg = ModelConfig(**TINY_MODEL)
    loader_cfg = LoaderConfig(batch_size=4, bucket_size=64, prefetch=1)
    for run in args.runs.split(","):
        devices, per_device = map(int, run.split("x"))
        train_cfg = TrainConfig(
            epochs=2,
            warmup_steps=2,
            learning_rate=1e-2,
            state_every_steps=3,
            patience=5,
            forces_weight=FORCES_WEIGHT,
            devices=devices,
        )
        dp = par.select_devices(devices, batches_per_device=per_device)
        files = out / run
        files.mkdir(parents=True)
        assembled[0] = 0
        result = train(
            args.packed,
            args.split,
            files / "best.ckpt",
            files / "history.csv",
            files / "state",
            model_cfg,
            train_cfg,
            loader_cfg,
            progress=False,
            log=lambda msg: print(msg, flush=True),
            data_parallel=None if per_device == 1 else dp,
        )
        me = setup.process_id
        np.savez(
            out / f"{run}.npz",
            params=_flat(result.params),
            steps=result.steps,
            assembled=assembled[0],
            epochs=result.epochs,
            devices=dp.num_devices,
            processes=setup.num_processes,
            agree_same=par.all_processes_agree("same"),
            agree_different=par.all_processes_agree(f"process {me}"),
            any_process=par.any_process(me == setup.num_processes - 1),
            broadcast=par.broadcast_from_main(np.array([me + 0.5, 1e-300 * (me + 1)])),
        )


def _worker_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="subprocess side of test_parallel")
    parser.add_argument("mode", choices=["step", "fit"])
    parser.add_argument("out", type=Path)
    parser.add_argument("packed", nargs="?", type=Path)
    parser.add_argument("split", nargs="?", type=Path)
    parser.add_argument("--runs", default="2x1")
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    args = parser.parse_args(argv)
    if args.mode == "step":
        worker_step(args.out)
    else:
        worker_fit(args.out, args)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
