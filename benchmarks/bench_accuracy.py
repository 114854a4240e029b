"""Accuracy per CPU-minute: physpack's shipped recipe against mlip's MACE, side by
side in one run, on the same split of the demo data and the same wall budget.

Three trainings run one after another, each in its own process (so that peak RSS
is each one's own): physpack with the shipped ``config.yaml`` (``model``,
``train``, ``loader``, ``split`` sections; ``train.max_minutes`` = the budget), and
InstaDeep's ``mlip`` MACE (64 channels, 2 layers, l_max 1, correlation 3, cutoff
5 Å, batch 32, AMSGrad lr 0.01, EMA 0.99, MSE loss with weights E 1 (per-atom
energy) / F 25), once as is and once with the weights flipped to E 25 / F 1 for
the last 25 % of the budget (at the first epoch boundary past 75 %). Each run
then predicts the test split and runs the MD stability test: NVE (velocity
Verlet) at 300 K, 0.5 fs steps, on the largest test molecules (one conformation
per compound), with the same initial momenta for every model; a molecule whose
bond (atoms closer than 1.2 × the sum of covalent radii at the start) stretches
beyond 1.5× its starting length is broken. MACE runs ``--md-ps`` picoseconds
through ASE's ``VelocityVerlet`` and mlip's ASE calculator; physpack runs 50 ps
(the target; the count at ``--md-ps`` is reported too) with the same integrator
written in JAX (:func:`md_stability_jitted`: the molecules side by side in one
batch, jitted blocks of 20 steps), as ASE's per-step Python overhead would make
50 ps take hours here. The table gives test energy MAE (meV, meV/atom), force
MAE (meV/Å), training structures/s, peak RSS, parameter count, MD stable/total
and the total-energy drift of the stable runs (meV/atom/ps).

``--physpack-set section.key=value --physpack-variant NAME`` trains a variant of
the shipped recipe (e.g. ``train.energy_stage_start=null``) beside it, to choose
the defaults by measurement; with ``--workdir`` and ``--runs`` the runs can be
made one at a time and the table shows every result kept there.

MACE runs in the interpreter given by ``--mace-python``: a virtual environment
with mlip, made so that the project's environment is not changed::

    python -m venv --system-site-packages /tmp/bench-venv
    /tmp/bench-venv/bin/pip install -e ".[bench]"

    python benchmarks/bench_accuracy.py                         # 3 × 15 min + MD
    python benchmarks/bench_accuracy.py --minutes 0.3 --md-ps 0.05   # smoke test
    python benchmarks/bench_accuracy.py --minutes 30            # 2× the budget
    python benchmarks/bench_accuracy.py --workdir /tmp/acc --runs physpack \
        --physpack-set train.energy_stage_start=null --physpack-variant one-stage

Targets (issue 11): physpack's test energy and force MAE both below the better
MACE run's; every MD molecule stable for 50 ps; peak RSS ≤ 1 GiB; throughput
≥ 2× MACE's.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MD_TEMPERATURE_K = 300.0
MD_TIMESTEP_FS = 0.5
BOND_FACTOR = 1.2  # bonded: closer than this × (r_cov,i + r_cov,j) at the start
BROKEN_STRETCH = 1.5  # broken: a bond longer than this × its starting length
MACE_FLIP_FRACTION = 0.75
#: physpack's NVE runs this long by default (the target), whatever --md-ps is
PHYSPACK_MD_PS = 50.0


def peak_rss_gib() -> float:
    """Peak resident set size of this process [GiB] (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# --------------------------------------------------------------------- data


def prepare_data(work: Path, config: dict) -> dict:
    """Pack the demo NPZ, split it with the shipped ``split`` section, and write
    the three subsets as extxyz (eV, Å, eV/Å) for MACE. Returns the paths."""
    from physpack.config import SplitConfig, section_from_mapping
    from physpack.data.convert import convert_npz
    from physpack.data.packed import PackedDataset
    from physpack.data.split import make_split, save_split

    packed = work / "packed"
    if not packed.exists():
        convert_npz(ROOT / config["data"]["npz"], packed)
    split_cfg = section_from_mapping(SplitConfig, config.get("split"), "split")
    split = save_split(make_split(packed, split_cfg), work / "split.npz")
    data = PackedDataset(packed)
    subsets = dict(np.load(split))
    paths = {"packed": str(packed), "split": str(split)}
    for name in ("train", "valid", "test"):
        paths[name] = str(write_extxyz(data, subsets[name], work / f"{name}.xyz"))
    paths["md"] = str(
        write_extxyz(data, md_molecules(data, subsets["test"]), work / "md.xyz")
    )
    return paths


def write_extxyz(data, indices: np.ndarray, path: Path) -> Path:
    """Molecules ``indices`` of a packed dataset as extxyz with energy and forces."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for i in np.asarray(indices):
        mol = data.molecule(int(i))
        atoms = Atoms(numbers=mol["Z"], positions=mol["R"])
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(mol["E"]), forces=np.asarray(mol["F"])
        )
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return path


def md_molecules(data, test: np.ndarray, count: int = 6) -> np.ndarray:
    """The largest test molecules, one conformation per composition."""
    seen: set[tuple[int, ...]] = set()
    chosen = []
    n_atoms = np.diff(data.offsets)[np.asarray(test)]
    for i in np.asarray(test)[np.argsort(-n_atoms, kind="stable")]:
        key = tuple(np.bincount(data.molecule(int(i))["Z"], minlength=100))
        if key not in seen:
            seen.add(key)
            chosen.append(int(i))
        if len(chosen) == count:
            break
    return np.asarray(chosen)


# ----------------------------------------------------------------- metrics


def error_metrics(
    e_true, e_pred, n_atoms, f_true: np.ndarray, f_pred: np.ndarray
) -> dict[str, float]:
    """Test MAEs: energy [meV], energy per atom [meV/atom], forces [meV/Å]."""
    de = np.abs(np.asarray(e_pred, float) - np.asarray(e_true, float))
    return {
        "energy_mae_meV": 1e3 * float(de.mean()),
        "energy_mae_meV_per_atom": 1e3 * float((de / np.asarray(n_atoms)).mean()),
        "forces_mae_meV_per_A": 1e3 * float(np.abs(f_pred - f_true).mean()),
    }


def md_stability(
    molecules, make_calculator: Callable, picoseconds: float
) -> dict[str, float]:
    """NVE at 300 K of each molecule (ASE atoms) with ASE's velocity Verlet;
    stable/total and the mean absolute total-energy drift of the stable runs
    [meV/atom/ps]. Initial momenta from :func:`start_state`."""
    from ase import units
    from ase.data import covalent_radii
    from ase.md.verlet import VelocityVerlet

    steps = max(1, round(picoseconds * 1000 / MD_TIMESTEP_FS))
    check_every = min(20, steps)
    stable, drifts = 0, []
    for atoms in start_state(molecules):
        atoms.calc = make_calculator(atoms)
        r0 = atoms.get_all_distances()
        radii = covalent_radii[atoms.numbers]
        bonded = np.triu(r0 < BOND_FACTOR * (radii[:, None] + radii[None, :]), 1)
        dyn = VelocityVerlet(atoms, timestep=MD_TIMESTEP_FS * units.fs)
        e0 = atoms.get_total_energy()
        broken = False
        for _ in range(0, steps, check_every):
            dyn.run(check_every)
            stretch = atoms.get_all_distances()[bonded] / r0[bonded]
            if not np.all(np.isfinite(stretch)) or stretch.max() > BROKEN_STRETCH:
                broken = True
                break
        if not broken:
            stable += 1
            drift = (atoms.get_total_energy() - e0) / len(atoms) / picoseconds
            drifts.append(1e3 * abs(drift))
    return {
        "md_stable": stable,
        "md_total": len(molecules),
        "md_ps": picoseconds,
        "md_drift_meV_per_atom_ps": float(np.mean(drifts)) if drifts else float("nan"),
    }


def start_state(molecules) -> list:
    """Each molecule (ASE atoms) with the test's initial momenta: Maxwell-Boltzmann
    at :data:`MD_TEMPERATURE_K` from ``default_rng(k)``, centre of mass at rest (the
    same draws as :func:`md_stability`)."""
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    started = []
    for k, start in enumerate(molecules):
        atoms = start.copy()
        thermalize_momenta(
            atoms, temperature_K=MD_TEMPERATURE_K, rng=np.random.default_rng(k)
        )
        Stationary(atoms)
        started.append(atoms)
    return started


def md_stability_jitted(
    molecules, ckpt, picoseconds: float, also_at: float | None = None
) -> dict[str, float]:
    """:func:`md_stability` for a physpack checkpoint, integrated in JAX: the
    molecules side by side in one packed batch (independent: no pair crosses
    molecules), velocity Verlet (the algorithm of ASE's ``VelocityVerlet``) in
    jitted blocks of 20 steps, the bond check after every block on the host. A
    broken molecule is frozen (not integrated further). Same molecules, initial
    momenta, time step and criterion as :func:`md_stability`; fast enough for
    the 50 ps target. ``also_at`` [ps]: stable count at that time as well."""
    import jax
    import jax.numpy as jnp
    from ase import units
    from ase.data import covalent_radii
    from physpack.model.physnet import (
        device_inputs,
        energy_and_forces,
        molecules_to_batch,
    )

    started = start_state(molecules)
    batch = molecules_to_batch(
        [{"Z": a.numbers, "R": a.positions.astype(np.float32)} for a in started]
    )
    inputs = device_inputs(batch)
    n = [len(a) for a in started]
    A = batch["Z"].shape[0]
    real = np.asarray(batch["atom_mask"])
    masses = np.ones(A)
    masses[real] = np.concatenate([a.get_masses() for a in started])
    velocities = np.zeros((A, 3))
    velocities[real] = np.concatenate([a.get_velocities() for a in started])
    params, model = jax.device_put(ckpt.params), ckpt.model
    scale = jnp.float32(ckpt.constants.scale)
    dt = MD_TIMESTEP_FS * units.fs
    inv_m = jnp.asarray(1.0 / masses, jnp.float32)[:, None]
    segments = np.asarray(batch["batch_segments"])

    def forces(r):
        out = energy_and_forces(params, model, {**inputs, "R": r}, scale)
        return out["forces"], out["energy_residual"]

    @jax.jit
    def block(r, v, f, active):
        move = active[inputs["batch_segments"]][:, None] & inputs["atom_mask"][:, None]

        def step(_, state):
            r, v, f = state
            v_half = v + 0.5 * dt * f * inv_m
            r_new = jnp.where(move, r + dt * v_half, r)
            f_new, _ = forces(r_new)
            v_new = jnp.where(move, v_half + 0.5 * dt * f_new * inv_m, v)
            return r_new, v_new, f_new

        r, v, f = jax.lax.fori_loop(0, 20, step, (r, v, f))
        return r, v, f, forces(r)[1]

    def total_energy(e_res, v):
        kinetic = np.bincount(
            segments,
            0.5 * masses * (np.asarray(v, np.float64) ** 2).sum(1),
            minlength=len(n) + 1,
        )[: len(n)]
        return np.asarray(e_res, np.float64)[: len(n)] + kinetic

    r = jnp.asarray(batch["R"])
    v = jnp.asarray(velocities, jnp.float32)
    f, e_res = forces(r)
    e0 = total_energy(e_res, v)
    r0 = [a.get_all_distances() for a in started]
    bonded = []
    for a, d in zip(started, r0, strict=True):
        radii = covalent_radii[a.numbers]
        bonded.append(np.triu(d < BOND_FACTOR * (radii[:, None] + radii[None, :]), 1))
    starts = np.concatenate([[0], np.cumsum(n)])
    active = np.ones(len(n) + 1, bool)
    active[-1] = False
    blocks = max(1, round(picoseconds * 1000 / MD_TIMESTEP_FS / 20))
    check_at = None if also_at is None else round(also_at * 1000 / MD_TIMESTEP_FS / 20)
    stable_then = None
    t0 = time.perf_counter()
    for b in range(1, blocks + 1):
        r, v, f, e_res = block(r, v, f, jnp.asarray(active))
        pos = np.asarray(r, np.float64)
        for k in np.flatnonzero(active[:-1]):
            x = pos[starts[k] : starts[k + 1]]
            d = np.linalg.norm(x[:, None] - x[None], axis=-1)
            stretch = d[bonded[k]] / r0[k][bonded[k]]
            if not np.all(np.isfinite(stretch)) or stretch.max() > BROKEN_STRETCH:
                active[k] = False
        if b == check_at:
            stable_then = int(active[:-1].sum())
    e_end = total_energy(e_res, v)
    drift = 1e3 * np.abs(e_end - e0) / np.asarray(n) / picoseconds
    ok = active[:-1]
    result = {
        "md_stable": int(ok.sum()),
        "md_total": len(n),
        "md_ps": picoseconds,
        "md_drift_meV_per_atom_ps": float(drift[ok].mean())
        if ok.any()
        else float("nan"),
        "md_seconds": time.perf_counter() - t0,
    }
    if stable_then is not None:
        result["md_stable_at"] = {f"{also_at:g}": stable_then}
    return result


# ------------------------------------------------------------------ physpack


def run_physpack(
    paths: dict,
    work: Path,
    minutes: float,
    md_ps: float,
    settings: list[str],
    variant: str,
    long_md_ps: float = PHYSPACK_MD_PS,
) -> dict:
    """Train the shipped recipe (with ``settings``) for ``minutes``, evaluate on
    test, run MD."""
    import yaml
    from physpack.config import (
        LoaderConfig,
        ModelConfig,
        TrainConfig,
        section_from_mapping,
    )
    from physpack.training.train import train

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config = apply_settings(config, settings)
    model_cfg = section_from_mapping(ModelConfig, config.get("model"), "model")
    loader_cfg = section_from_mapping(LoaderConfig, config.get("loader"), "loader")
    train_cfg = section_from_mapping(
        TrainConfig, {**config.get("train", {}), "max_minutes": minutes}, "train"
    )
    out = work / (f"physpack-{variant}" if variant else "physpack")
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    result = train(
        paths["packed"],
        paths["split"],
        out / "best.ckpt",
        out / "history.csv",
        out / "state",
        model_cfg,
        train_cfg,
        loader_cfg,
        progress=False,
        log=lambda _: None,
        overwrite=True,
    )
    wall = time.perf_counter() - start
    rss_train = peak_rss_gib()
    # imported after training: the training's peak is what `physpack train` needs
    from ase.io import read
    from physpack.data.loader import PackedMemmapLoader
    from physpack.evaluation.evaluate import predict_split
    from physpack.model.checkpoint import load

    with open(result.history, newline="") as fh:
        rows = list(csv.DictReader(fh))
    # steady state: the first epoch (compilation) excluded when possible
    throughput = float(np.mean([float(r["molecules_per_s"]) for r in rows[1:] or rows]))
    ckpt = load(result.checkpoint)
    test = np.load(paths["split"])["test"]
    loader = PackedMemmapLoader(
        paths["packed"], batch_size=loader_cfg.batch_size, shuffle=False, indices=test
    )
    pred = predict_split(ckpt, loader, with_dipoles=False, where="test")
    metrics = error_metrics(
        pred.E_true, pred.E_pred, pred.n_atoms, pred.F_true, pred.F_pred
    )
    params = sum(int(np.size(a)) for a in _leaves(ckpt.params))
    md = md_stability_jitted(
        read(paths["md"], index=":"), ckpt, max(md_ps, long_md_ps), also_at=md_ps
    )
    return {
        "name": f"physpack ({variant or 'shipped config'})",
        "settings": settings,
        **metrics,
        "structures_per_s": throughput,
        "epochs": result.epochs,
        "train_wall_s": wall,
        "params": params,
        **md,
        "peak_rss_train_GiB": rss_train,
        "peak_rss_GiB": peak_rss_gib(),
    }


def _leaves(tree) -> list:
    import jax

    return jax.tree.leaves(tree)


# ---------------------------------------------------------------------- MACE


def run_mace(paths: dict, minutes: float, md_ps: float, flip: bool) -> dict:
    """Train mlip's MACE for ``minutes`` (optionally with the late weight flip),
    evaluate on test, run MD. Runs in the interpreter that has mlip."""
    import jax
    import jax.numpy as jnp
    from ase.io import read
    from mlip.data import GraphDatasetBuilder
    from mlip.data.chemical_systems_readers.extxyz_reader import ExtxyzReader
    from mlip.inference.batched_inference import run_batched_inference
    from mlip.models import ForceField, Mace
    from mlip.models.loss import MSELoss
    from mlip.simulation.ase.mlip_ase_calculator import MLIPForceFieldASECalculator
    from mlip.training import TrainingLoop
    from mlip.training.optimizer import get_default_mlip_optimizer
    from mlip.training.optimizer_config import OptimizerConfig
    from mlip.training.training_loop_config import TrainingLoopConfig

    readers = {name: [ExtxyzReader(paths[name])] for name in ("train", "valid")}
    builder = GraphDatasetBuilder(
        readers, GraphDatasetBuilder.Config(graph_cutoff_angstrom=5.0, batch_size=32)
    )
    datasets = builder.get_datasets()
    mace = Mace(
        Mace.Config(num_channels=64, num_layers=2, l_max=1, correlation=3),
        builder.dataset_info,
    )
    force_field = ForceField.from_mlip_network(mace)
    # The flip is signalled through the epoch number the loop passes to the loss
    # (the schedules are traced once): past the flip, epochs count from FLIPPED.
    flipped = 10**6

    def energy_weight(epoch):
        return jnp.where(epoch >= flipped, 25.0, 1.0)

    def forces_weight(epoch):
        return jnp.where(epoch >= flipped, 1.0, 25.0)

    loss = MSELoss(energy_weight, forces_weight) if flip else MSELoss()
    optimizer = get_default_mlip_optimizer(
        OptimizerConfig(
            init_learning_rate=0.01, peak_learning_rate=0.01, final_learning_rate=0.01
        )
    )
    budget_s = 60.0 * minutes
    epoch_seconds: list[float] = []
    start = time.perf_counter()

    class BudgetLoop(TrainingLoop):
        def _run_training_epoch(self) -> None:
            t0 = time.perf_counter()
            super()._run_training_epoch()
            epoch_seconds.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            if (
                flip
                and self.epoch_number < flipped
                and elapsed > (MACE_FLIP_FRACTION * budget_s)
            ):
                self.epoch_number += flipped
            if elapsed > budget_s:
                self.epoch_number = self.config.num_epochs

    loop = BudgetLoop(
        datasets["train"],
        datasets["valid"],
        force_field,
        loss,
        optimizer,
        TrainingLoopConfig(num_epochs=10**7, ema_decay=0.99),
    )
    loop.run()
    wall = time.perf_counter() - start
    rss_train = peak_rss_gib()
    # the best parameters come back as numpy arrays; inference indexes them with
    # traced species indices, which needs device arrays
    best = dataclasses.replace(
        loop.best_model, params=jax.tree.map(jnp.asarray, loop.best_model.params)
    )
    test_atoms = read(paths["test"], index=":")
    preds = run_batched_inference(test_atoms, best, batch_size=32)
    f_true = np.concatenate([a.get_forces() for a in test_atoms])
    f_pred = np.concatenate([np.asarray(p.forces) for p in preds])
    metrics = error_metrics(
        [a.get_potential_energy() for a in test_atoms],
        [float(p.energy) for p in preds],
        [len(a) for a in test_atoms],
        f_true,
        f_pred,
    )
    n_train = len(read(paths["train"], index=":"))
    params = sum(int(np.size(a)) for a in _leaves(best.params))
    md = md_stability(
        read(paths["md"], index=":"),
        lambda atoms: MLIPForceFieldASECalculator(
            atoms, edge_capacity_multiplier=1.25, force_field=best
        ),
        md_ps,
    )
    return {
        "name": "mlip MACE, E/F flip at 75 %" if flip else "mlip MACE, default loss",
        **metrics,
        # parameter updates only, first epoch (compilation) excluded when possible
        "structures_per_s": n_train
        / float(np.mean(epoch_seconds[1:] or epoch_seconds)),
        "epochs": len(epoch_seconds),
        "train_wall_s": wall,
        "params": params,
        **md,
        "peak_rss_train_GiB": rss_train,
        "peak_rss_GiB": peak_rss_gib(),
    }


# ---------------------------------------------------------------------- main


RUNS = ("physpack", "mace", "mace-flip")


def result_path(work: Path, kind: str, minutes: float, variant: str = "") -> Path:
    """Where a run's result dict is kept in the work directory."""
    tag = f"-{variant}" if variant else ""
    return work / f"{kind}{tag}-{minutes:g}min.json"


def apply_settings(config: dict, settings: list[str]) -> dict:
    """``config`` with ``section.key=value`` settings (values parsed as YAML)."""
    import yaml

    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for item in settings:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not name:
            raise SystemExit(f"--physpack-set {item!r}: expected section.key=value")
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def run_worker(kind: str, python: str, work: Path, args: argparse.Namespace) -> dict:
    """One training in its own process; returns its result dict."""
    variant = args.physpack_variant if kind == "physpack" else ""
    result = result_path(work, kind, args.minutes, variant)
    cmd = [
        python,
        __file__,
        "--worker",
        kind,
        "--workdir",
        str(work),
        "--minutes",
        str(args.minutes),
        "--md-ps",
        str(args.md_ps),
    ]
    if kind == "physpack":
        cmd += [
            "--physpack-variant",
            variant,
            "--physpack-md-ps",
            str(args.physpack_md_ps),
        ]
        cmd += [f"--physpack-set={item}" for item in args.physpack_set]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow")}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(result.read_text())


def print_table(results: list[dict], minutes: float) -> None:
    rows = (
        ("energy MAE [meV]", "energy_mae_meV", "{:.1f}"),
        ("energy MAE [meV/atom]", "energy_mae_meV_per_atom", "{:.2f}"),
        ("force MAE [meV/Å]", "forces_mae_meV_per_A", "{:.1f}"),
        ("structures/s (training)", "structures_per_s", "{:.0f}"),
        ("epochs", "epochs", "{:d}"),
        ("peak RSS, training [GiB]", "peak_rss_train_GiB", "{:.2f}"),
        ("peak RSS, whole run [GiB]", "peak_rss_GiB", "{:.2f}"),
        ("parameters", "params", "{:,d}"),
        ("MD stable (300 K, NVE)", None, None),
        ("MD drift [meV/atom/ps]", "md_drift_meV_per_atom_ps", "{:.2f}"),
    )
    width = 30
    print(f"\ntest split of data/demo.npz, {minutes:g} min of training each")
    print(f"{'':{width}s}" + "".join(f"{r['name'][:30]:>32s}" for r in results))
    for label, key, fmt in rows:
        cells = []
        for r in results:
            if key is None:
                text = f"{r['md_stable']}/{r['md_total']} in {r['md_ps']:g} ps"
                for at, count in r.get("md_stable_at", {}).items():
                    if float(at) != r["md_ps"]:
                        text = f"{count}/{r['md_total']} in {at} ps, {text}"
                cells.append(text)
            elif key not in r:  # kept by an older version of this script
                cells.append("-")
            else:
                cells.append(fmt.format(r[key]))
        print(f"{label:{width}s}" + "".join(f"{c:>32s}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="per training")
    parser.add_argument("--md-ps", type=float, default=5.0, help="MD length [ps]")
    parser.add_argument(
        "--mace-python",
        default="/tmp/bench-venv/bin/python",
        help="interpreter with mlip installed ('' skips MACE)",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--runs",
        default=",".join(RUNS),
        help="comma-separated runs to train now; with --workdir, the table also "
        "shows the other runs' results kept there for the same --minutes",
    )
    parser.add_argument(
        "--physpack-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="train physpack with this setting changed from config.yaml "
        "(repeatable; give --physpack-variant a name for the run)",
    )
    parser.add_argument(
        "--physpack-variant", default="", help="name of the physpack variant"
    )
    parser.add_argument(
        "--physpack-md-ps",
        type=float,
        default=PHYSPACK_MD_PS,
        help="length of physpack's NVE runs [ps] (at least --md-ps)",
    )
    parser.add_argument("--worker", choices=RUNS)
    args = parser.parse_args()
    if args.worker:
        paths = json.loads((args.workdir / "paths.json").read_text())
        if args.worker == "physpack":
            result = run_physpack(
                paths,
                args.workdir,
                args.minutes,
                args.md_ps,
                args.physpack_set,
                args.physpack_variant,
                args.physpack_md_ps,
            )
        else:
            result = run_mace(
                paths, args.minutes, args.md_ps, flip=args.worker == "mace-flip"
            )
        variant = args.physpack_variant if args.worker == "physpack" else ""
        result_path(args.workdir, args.worker, args.minutes, variant).write_text(
            json.dumps(result)
        )
        return
    import yaml

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    with tempfile.TemporaryDirectory(prefix="bench_accuracy_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        paths = prepare_data(work, config)
        (work / "paths.json").write_text(json.dumps(paths))
        chosen = [r for r in args.runs.split(",") if r]
        unknown = sorted(set(chosen) - set(RUNS))
        if unknown:
            parser.error(f"--runs: unknown {unknown}; choose from {list(RUNS)}")
        if args.physpack_set and not args.physpack_variant:
            parser.error("--physpack-set needs --physpack-variant NAME")
        results = []
        for kind in RUNS:
            python = sys.executable if kind == "physpack" else args.mace_python
            if kind in chosen and python:
                results.append(run_worker(kind, python, work, args))
            kept = sorted(work.glob(f"{kind}*-{args.minutes:g}min.json"))
            if kind == "physpack":  # the shipped recipe first, then variants
                kept.sort(key=lambda p: p.name != f"physpack-{args.minutes:g}min.json")
            done = {r["name"] for r in results}
            for path in kept:
                if path.name.startswith("mace-flip") and kind == "mace":
                    continue
                kept_result = json.loads(path.read_text())
                if kept_result["name"] not in done:
                    results.append(kept_result)
        print_table(results, args.minutes)


if __name__ == "__main__":
    main()
