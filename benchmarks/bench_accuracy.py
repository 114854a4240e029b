"""Accuracy per CPU-minute: physpack's shipped recipe against mlip's MACE, side by
side in one run, on the same split of one dataset and the same wall budget.

Two datasets, one table each (``--dataset``):

* ``demo`` (default): ``data/demo.npz`` (35 small organic molecules, thermal
  conformers), split by the shipped ``split`` section of ``config.yaml`` (random:
  test conformations of compositions seen in training).
* ``transfer``: a chemically diverse GFN2-xTB dataset given with ``--npz`` (the
  padded NPZ format of ``data/demo.npz``; ``scripts/make_transfer_dataset.py``),
  split with ``group_by: formula``, so that no test composition occurs in
  training. Test or validation compositions with an element that no training
  structure has are moved to training (a model cannot learn an element it never
  sees); the table's title says how many.

``--npz`` may also replace ``data/demo.npz`` for ``demo``. Each dataset has its
own subfolder of the work directory (packed data, split, extxyz files, results),
so the two never mix; a subfolder made from one NPZ refuses another.

Three trainings run one after another, each in its own process (so that peak RSS
is each one's own): physpack with the shipped ``config.yaml`` (``model``,
``train``, ``loader`` sections; ``train.max_minutes`` = the budget;
``model.max_atomic_number`` raised to the dataset's largest element where it is
below it), and InstaDeep's ``mlip`` MACE (64 channels, 2 layers, l_max 1,
correlation 3, cutoff 5 Å, batch 32, AMSGrad lr 0.01, EMA 0.99, MSE loss with
weights E 1 (per-atom energy) / F 25), once as is and once with the weights
flipped to E 25 / F 1 for the last 25 % of the budget. MACE's budget is checked
before every batch, once the previous step has finished (:class:`WallBudget`):
the flip and the stop come inside an epoch, and the epoch cut short is validated
like a whole one, so the best (EMA) parameters include it. Each run then
predicts the test split and runs the MD stability test: NVE (velocity Verlet) at
300 K, 0.5 fs steps, on the largest test molecules (one conformation per
compound), with the same initial momenta for every model and the criterion of
:mod:`physpack.simulation.stability` (a bond stretched beyond 1.5× its starting
length, non-bonded atoms closer than 0.6 × the sum of covalent radii, or a
non-finite energy). MACE runs ``--md-ps`` picoseconds through ASE's
``VelocityVerlet`` and mlip's ASE calculator; physpack runs 50 ps (the target; the
count at ``--md-ps`` is reported too) with ``physpack md`` (the same integrator,
the molecules side by side in one compiled batch), as ASE's per-step Python
overhead would make 50 ps take hours here. The table gives test energy MAE (meV, meV/atom), force
MAE (meV/Å) overall and per element (with each element's share of the test
atoms), training structures/s, epochs, training wall time, peak RSS, parameter
count, MD stable/total and the total-energy drift of the stable runs
(meV/atom/ps).

``--physpack-set section.key=value --physpack-variant NAME`` trains a variant of
the shipped recipe (e.g. ``train.energy_stage_start=null``) beside it, to choose
the defaults by measurement; with ``--workdir`` and ``--runs`` the runs can be
made one at a time and the table shows every result kept there for the dataset.

MACE runs in the interpreter given by ``--mace-python``: a virtual environment
with mlip, made so that the project's environment is not changed::

    python -m venv --system-site-packages /tmp/bench-venv
    /tmp/bench-venv/bin/pip install -e ".[bench]"

    python benchmarks/bench_accuracy.py                         # 3 × 15 min + MD
    python benchmarks/bench_accuracy.py --minutes 0.3 --md-ps 0.05 \
        --physpack-md-ps 0.05                                   # smoke test
    python benchmarks/bench_accuracy.py --minutes 30            # 2× the budget
    python benchmarks/bench_accuracy.py --workdir /tmp/acc --runs physpack \
        --physpack-set train.energy_stage_start=null --physpack-variant one-stage

    # the transfer dataset (made by scripts/make_transfer_dataset.py)
    python benchmarks/bench_accuracy.py --dataset transfer --npz freesolv_xtb.npz
    python benchmarks/bench_accuracy.py --dataset transfer --npz freesolv_xtb.npz \
        --workdir /tmp/acc --runs mace                          # one run at a time
    python benchmarks/bench_accuracy.py --dataset transfer --npz freesolv_xtb.npz \
        --minutes 0.3 --md-ps 0.05 --physpack-md-ps 0.05        # smoke test

Targets (issue 11, demo data): physpack's test energy and force MAE both below
the better MACE run's; every MD molecule stable for 50 ps; peak RSS ≤ 1 GiB;
throughput ≥ 2× MACE's.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# measure this tree's code (a worktree at a fixed commit), not whichever physpack is installed
sys.path.insert(0, str(ROOT / "workflow"))
MD_TEMPERATURE_K = 300.0
MD_TIMESTEP_FS = 0.5
MACE_FLIP_FRACTION = 0.75
#: physpack's NVE runs this long by default (the target), whatever --md-ps is
PHYSPACK_MD_PS = 50.0


def peak_rss_gib() -> float:
    """Peak resident set size of this process [GiB] (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_steal_and_total(
    stat: str | os.PathLike = "/proc/stat",
) -> tuple[int, int] | None:
    """(steal, total) CPU time of all cores since boot [clock ticks], from the
    ``cpu`` line of Linux's ``/proc/stat``; None where there is none (not Linux,
    or a kernel that does not count steal)."""
    try:
        line = Path(stat).read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if line[0] != "cpu" or len(line) < 9:
        return None
    # user nice system idle iowait irq softirq steal; guest time is inside user
    ticks = [int(t) for t in line[1:9]]
    return ticks[7], sum(ticks)


def steal_percent(
    before: tuple[int, int] | None, after: tuple[int, int] | None
) -> float | None:
    """Share of the machine's CPU time the hypervisor took between two
    ``cpu_steal_and_total`` readings [%]: a run on a contended host got less
    compute than its wall budget says. None where either reading is missing."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


# --------------------------------------------------------------------- data

#: the datasets: the NPZ each reads by default (None: ``--npz`` must give it)
DATASETS: dict[str, Path | None] = {
    "demo": ROOT / "data" / "demo.npz",
    "transfer": None,
}
SUBSETS = ("train", "valid", "test")


def dataset_npz(dataset: str, npz: str | os.PathLike | None = None) -> Path:
    """The padded NPZ of ``dataset``: ``npz`` when given, else its default."""
    if dataset not in DATASETS:
        raise SystemExit(f"--dataset {dataset!r}: choose from {sorted(DATASETS)}")
    chosen = Path(npz) if npz else DATASETS[dataset]
    if chosen is None:
        raise SystemExit(f"--dataset {dataset} needs --npz PATH")
    return chosen.resolve()


def split_section(config: dict, dataset: str) -> dict:
    """The ``split`` section for ``dataset``: the shipped one for ``demo``; for
    ``transfer`` the same fractions and seed, grouped by sum formula."""
    section = dict(config.get("split") or {})
    if dataset == "transfer":
        section["group_by"] = "formula"
    return section


def dataset_workdir(root: Path, dataset: str) -> Path:
    """The subfolder of the work directory that holds one dataset's files."""
    return Path(root) / dataset


def result_path(
    root: Path, dataset: str, kind: str, minutes: float, variant: str = ""
) -> Path:
    """Where a run's result dict is kept: in the dataset's subfolder."""
    return dataset_workdir(root, dataset) / f"{run_name(kind, minutes, variant)}.json"


def run_name(kind: str, minutes: float, variant: str = "") -> str:
    """A run's name: its result file's stem and its folder's name."""
    tag = f"-{variant}" if variant else ""
    return f"{kind}{tag}-{minutes:g}min"


def fresh_run_dir(work: Path, kind: str, minutes: float, variant: str = "") -> Path:
    """A run's own folder in the dataset's subfolder ``work`` (checkpoint, history,
    training state, MD), emptied: every run trains from scratch for its own budget.
    physpack's training continues a finished state whose budget was raised, at the
    final learning rate it ended on; a kept state would turn a 60-minute run into
    the 15-minute run plus 45 minutes at that rate."""
    out = Path(work) / run_name(kind, minutes, variant)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def element_presence(numbers: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """bool (n_molecules, 119): which elements each molecule has, from packed
    atomic numbers and the molecules' offsets into them."""
    offsets = np.asarray(offsets)
    counts = np.diff(offsets)
    molecule = np.repeat(np.arange(counts.size), counts)
    present = np.zeros((counts.size, 119), bool)
    present[molecule, np.asarray(numbers)[offsets[0] : offsets[-1]]] = True
    return present


def fold_unseen_elements(
    subsets: dict[str, np.ndarray], present: np.ndarray
) -> tuple[dict[str, np.ndarray], int]:
    """Move the valid and test molecules that have an element no training
    molecule has into train. Whole compositions move together, so a split by
    formula stays one. Returns the new subsets (sorted) and how many moved."""
    seen = present[subsets["train"]].any(axis=0)
    out, moved = dict(subsets), [np.asarray(subsets["train"])]
    for name in ("valid", "test"):
        idx = np.asarray(subsets[name])
        unseen = present[idx][:, ~seen].any(axis=1)
        out[name] = idx[~unseen]
        moved.append(idx[unseen])
    out["train"] = np.sort(np.concatenate(moved))
    return out, sum(len(m) for m in moved[1:])


def split_title(section: dict, sizes: dict[str, int], moved: int) -> str:
    """How a dataset was split, for the table's title."""
    how = (
        "split by sum formula (no test composition in training)"
        if section.get("group_by") == "formula"
        else "random split (shipped split section)"
    )
    counts = " / ".join(f"{sizes[name]:,} {name}" for name in SUBSETS)
    text = f"{how}, seed {section.get('seed')}: {counts} structures"
    if moved:
        text += f"; {moved} with an element absent from training moved to train"
    return text


def prepare_data(work: Path, config: dict, dataset: str, npz: Path) -> dict:
    """Pack ``npz`` into ``work`` (the dataset's subfolder), split it
    (:func:`split_section`, :func:`fold_unseen_elements`), and write the three
    subsets and the MD molecules as extxyz (eV, Å, eV/Å) for MACE. Returns the
    paths and the split's description, also kept as ``work/paths.json``."""
    from physpack.config import SplitConfig, section_from_mapping
    from physpack.data.convert import convert_npz
    from physpack.data.packed import PackedDataset
    from physpack.data.split import make_split, save_split
    from physpack.simulation.stability_stage import largest_molecules

    work.mkdir(parents=True, exist_ok=True)
    record = work / "paths.json"
    if record.exists():
        before = json.loads(record.read_text()).get("npz")
        if before is not None and before != str(npz):
            raise SystemExit(
                f"{work} holds {dataset} prepared from {before}, not {npz}: "
                "give another --workdir"
            )
    packed = work / "packed"
    if not packed.exists():
        convert_npz(npz, packed)
    section = split_section(config, dataset)
    split = make_split(packed, section_from_mapping(SplitConfig, section, "split"))
    data = PackedDataset(packed)
    present = element_presence(data.Z, data.offsets)
    subsets, moved = fold_unseen_elements(
        {name: getattr(split, name) for name in SUBSETS}, present
    )
    if subsets["test"].size == 0:
        raise SystemExit(
            f"{npz}: every test molecule has an element absent from training"
        )
    split_file = work / "split.npz"
    unchanged = split_file.exists() and all(
        np.array_equal(np.load(split_file)[name], subsets[name]) for name in SUBSETS
    )
    save_split(dataclasses.replace(split, **subsets), split_file)
    paths = {"packed": str(packed), "split": str(split_file)}
    for name in SUBSETS:
        path = work / f"{name}.xyz"
        if not (unchanged and path.exists()):
            write_extxyz(data, subsets[name], path)
        paths[name] = str(path)
    md = work / "md.xyz"
    if not (unchanged and md.exists()):
        write_extxyz(data, largest_molecules(data, subsets["test"], 6), md)
    paths.update(
        md=str(md),
        dataset=dataset,
        npz=str(npz),
        split_title=split_title(
            section, {k: int(v.size) for k, v in subsets.items()}, moved
        ),
        max_z=int(np.flatnonzero(present.any(axis=0)).max()),
        test_elements=np.flatnonzero(present[subsets["test"]].any(axis=0)).tolist(),
    )
    record.write_text(json.dumps(paths))
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


# ----------------------------------------------------------------- metrics


def error_metrics(
    e_true,
    e_pred,
    n_atoms,
    f_true: np.ndarray,
    f_pred: np.ndarray,
    numbers: np.ndarray | None = None,
) -> dict:
    """Test MAEs: energy [meV], energy per atom [meV/atom], forces [meV/Å]; with
    the atoms' ``numbers`` (in the order of the force rows) also ``per_element``
    (:func:`element_force_errors`). Named by :func:`physpack.metrics.metric_name`."""
    from physpack.metrics import convert, mae_rmse, metric_name

    de = np.asarray(e_pred, float) - np.asarray(e_true, float)
    errors = {
        ("energy", "meV"): de,
        ("energy_per_atom", "meV/atom"): de / np.asarray(n_atoms),
        ("forces", "meV/Å"): np.asarray(f_pred, float) - np.asarray(f_true, float),
    }
    out: dict = {
        metric_name(q, "mae", unit): convert(mae_rmse(err)[0], q, unit)
        for (q, unit), err in errors.items()
    }
    if numbers is not None:
        out["per_element"] = element_force_errors(numbers, f_true, f_pred)
    return out


def element_force_errors(
    numbers: np.ndarray, f_true: np.ndarray, f_pred: np.ndarray
) -> dict[str, dict[str, float]]:
    """Force MAE of each element's atoms [meV/Å] (over their three components,
    as the overall force MAE) and the element's fraction of all atoms, keyed by
    chemical symbol in order of atomic number."""
    from physpack.metrics import convert, metric_name, per_element

    z = np.asarray(numbers).reshape(-1)
    error = np.asarray(f_pred, float) - np.asarray(f_true, float)
    name = metric_name("forces", "mae", "meV/Å")
    return {
        symbol: {
            name: convert(e.sums.mae, "forces", "meV/Å"),
            "atom_fraction": e.n_atoms / z.size,
        }
        for symbol, e in per_element(error.reshape(z.size, 3), z).items()
    }


def md_stability(
    molecules, make_calculator: Callable, picoseconds: float
) -> dict[str, float]:
    """NVE at 300 K of each molecule (ASE atoms) with ASE's velocity Verlet (for
    models without ``physpack md``, i.e. MACE): the starting velocities and the
    stability criterion of :mod:`physpack.simulation` (molecule ``k`` draws from
    ``default_rng([0, k])``); stable/total and the mean absolute total-energy
    drift of the stable runs [meV/atom/ps] (slope of a straight line, as ``physpack
    md`` reports it)."""
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from physpack.metrics import convert
    from physpack.simulation.stability import Bonds
    from physpack.simulation.velocities import starting_velocities

    steps = max(1, round(picoseconds * 1000 / MD_TIMESTEP_FS))
    check_every = min(20, steps)
    stable, drifts = 0, []
    for k, start in enumerate(molecules):
        atoms = start.copy()
        atoms.set_velocities(
            starting_velocities(atoms, MD_TEMPERATURE_K, np.random.default_rng([0, k]))
        )
        atoms.calc = make_calculator(atoms)
        bonds = Bonds.of(atoms.numbers, atoms.positions)
        dyn = VelocityVerlet(atoms, timestep=MD_TIMESTEP_FS * units.fs)
        times, totals = [0.0], [atoms.get_total_energy()]
        broken = None
        for done in range(check_every, steps + 1, check_every):
            dyn.run(check_every)
            totals.append(atoms.get_total_energy())
            times.append(done * MD_TIMESTEP_FS / 1000)
            broken = bonds.broken(atoms.positions, atoms.get_potential_energy())
            if broken:
                break
        if broken is None:
            stable += 1
            slope = np.polyfit(times, totals, 1)[0] / len(atoms)
            drifts.append(abs(float(convert(slope, "energy_per_atom", "meV/atom"))))
    return {
        "md_stable": stable,
        "md_total": len(molecules),
        "md_ps": picoseconds,
        "md_drift_meV_per_atom_ps": float(np.mean(drifts)) if drifts else float("nan"),
    }


def physpack_md_stability(
    molecules,
    checkpoint: Path,
    picoseconds: float,
    work: Path,
    also_at: float | None = None,
) -> dict[str, float]:
    """:func:`md_stability` for a physpack checkpoint with ``physpack md`` (the
    molecules side by side in one compiled batch, velocity Verlet: the same
    algorithm, starting velocities, time step and criterion), fast enough for the
    50 ps target. ``also_at`` [ps]: the stable count at that time as well;
    trajectories in ``work``."""
    from physpack.simulation.md import MDSettings, run_md

    settings = MDSettings(
        temperature_K=MD_TEMPERATURE_K,
        picoseconds=picoseconds,
        timestep_fs=MD_TIMESTEP_FS,
        interval=1000,
    )
    record = run_md([checkpoint], molecules, settings, work, log=lambda line: None)
    runs = record["molecules"]
    drifts = [abs(m["energy_drift_meV_per_atom_ps"]) for m in runs if m["stable"]]
    result = {
        "md_stable": record["stable"],
        "md_total": len(runs),
        "md_ps": picoseconds,
        "md_drift_meV_per_atom_ps": float(np.mean(drifts)) if drifts else float("nan"),
        "md_seconds": record["seconds"],
    }
    if also_at is not None:
        intact = sum(m["stable"] or m["broke_at_ps"] > also_at for m in runs)
        result["md_stable_at"] = {f"{also_at:g}": intact}
    return result


# ------------------------------------------------------------------ physpack


def recipe_sections(max_z: int, minutes: float, settings: list[str]) -> tuple:
    """The shipped recipe's ``model``, ``train`` and ``loader`` sections (those of
    ``config.yaml``, the schema's defaults for the rest) with ``settings``
    (``section.key=value``) applied and ``train.max_minutes`` = ``minutes``;
    ``model.max_atomic_number`` is raised to ``max_z`` where it is below it.

    Returns:
        ``(ModelConfig, TrainConfig, LoaderConfig, settings)``, the settings with
        the raise appended when there was one.
    """
    import yaml
    from physpack.config import (
        LoaderConfig,
        ModelConfig,
        TrainConfig,
        section_from_mapping,
        with_defaults,
    )

    config = with_defaults(yaml.safe_load((ROOT / "config.yaml").read_text()))
    config = apply_settings(config, settings)
    if max_z > config.get("model", {}).get("max_atomic_number", 36):
        settings = [*settings, f"model.max_atomic_number={max_z}"]
        config = apply_settings(config, settings[-1:])
    model_cfg = section_from_mapping(ModelConfig, config.get("model"), "model")
    loader_cfg = section_from_mapping(LoaderConfig, config.get("loader"), "loader")
    train_cfg = section_from_mapping(
        TrainConfig, {**config.get("train", {}), "max_minutes": minutes}, "train"
    )
    return model_cfg, train_cfg, loader_cfg, settings


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
    test, run MD. ``model.max_atomic_number`` is raised to the dataset's largest
    element where the recipe's is below it (recorded in ``settings``)."""
    from physpack.training.train import train

    model_cfg, train_cfg, loader_cfg, settings = recipe_sections(
        paths["max_z"], minutes, settings
    )
    out = fresh_run_dir(work, "physpack", minutes, variant)
    cpu_before = cpu_steal_and_total()
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
    steal = steal_percent(cpu_before, cpu_steal_and_total())
    rss_train = peak_rss_gib()
    # imported after training: the training's peak is what `physpack train` needs
    from ase.io import read
    from physpack.data.loader import PackedMemmapLoader
    from physpack.evaluation.inference import predict_split
    from physpack.model.checkpoint import load

    with open(result.history, newline="") as fh:
        rows = list(csv.DictReader(fh))
    # steady state: the first epoch (compilation) excluded when possible
    throughput = float(np.mean([float(r["molecules_per_s"]) for r in rows[1:] or rows]))
    learning = learning_curve(rows)
    ckpt = load(result.checkpoint)
    test = np.load(paths["split"])["test"]
    loader = PackedMemmapLoader(
        paths["packed"], batch_size=loader_cfg.batch_size, shuffle=False, indices=test
    )
    pred = predict_split(ckpt, loader, with_dipoles=False, where="test")
    metrics = error_metrics(
        pred.E_true, pred.E_pred, pred.n_atoms, pred.F_true, pred.F_pred, pred.Z
    )
    params = sum(int(np.size(a)) for a in _leaves(ckpt.params))
    md = physpack_md_stability(
        read(paths["md"], index=":"),
        result.checkpoint,
        max(md_ps, long_md_ps),
        Path(result.checkpoint).parent / "md",
        also_at=md_ps,
    )
    return {
        "name": f"physpack ({variant or 'shipped config'})",
        "settings": settings,
        **metrics,
        "structures_per_s": throughput,
        "epochs": result.epochs,
        **learning,
        "train_wall_s": wall,
        "train_steal_percent": steal,
        "params": params,
        **md,
        "peak_rss_train_GiB": rss_train,
        "peak_rss_GiB": peak_rss_gib(),
    }


def learning_curve(rows: list[dict]) -> dict:
    """Whether a run was still learning, from its ``history.csv`` rows: the epoch
    of the lowest validation loss, and the training and validation losses (the
    weighted loss of the recipe) of the last epoch; a validation loss far above the
    training loss that has stopped falling is overfitting, not a stalled
    optimiser. Also the validation force MAE of every epoch [meV/Å], where the
    history has it: runs that got unequal compute (a host that took part of the
    CPU) compare at the same epoch."""
    from physpack.metrics import convert, metric_name

    valid = [float(r["valid_loss"]) for r in rows]
    best = int(np.argmin(valid))
    curve = {
        "best_epoch": int(rows[best]["epoch"]),
        "train_loss_end": float(rows[-1]["train_loss"]),
        "valid_loss_end": valid[-1],
    }
    forces = metric_name("forces", "mae", prefix="valid_")  # history.csv: eV/Å
    if all(r.get(forces) for r in rows):
        curve["valid_forces_mae_meV_per_A_by_epoch"] = [
            convert(float(r[forces]), "forces", "meV/Å") for r in rows
        ]
    return curve


def _leaves(tree) -> list:
    import jax

    return jax.tree.leaves(tree)


# ---------------------------------------------------------------------- MACE


class WallBudget:
    """A training's wall-clock budget, checked between parameter updates.

    :meth:`batches` passes on a training loop's batches until the budget is
    spent. Before each batch but the run's first it waits for the previous
    update to finish (``wait``; JAX dispatches asynchronously, so the time of a
    step is only known once its result is ready), then reads the clock: past
    ``flip_fraction`` of the budget :attr:`flipped` turns true (the caller
    switches its loss weights from the next update on); past the budget the
    iteration ends inside the epoch. The next batch is taken from the data set
    before the wait, so that its host-side preparation still overlaps the
    previous update. At least one update is always made.
    """

    def __init__(
        self,
        seconds: float,
        flip_fraction: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.seconds = seconds
        self.flip_s = None if flip_fraction is None else flip_fraction * seconds
        self.clock = clock
        self.start = clock()
        self.steps = 0  # parameter updates passed on
        self.graphs = 0  # structures in them
        self.flipped_at: float | None = None  # seconds into the budget
        self.stopped_at: float | None = None

    def elapsed(self) -> float:
        return self.clock() - self.start

    @property
    def flipped(self) -> bool:
        return self.flipped_at is not None

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def check(self) -> bool:
        """Reads the clock, flips and stops as due; True while time is left."""
        t = self.elapsed()
        if self.flip_s is not None and not self.flipped and t >= self.flip_s:
            self.flipped_at = t
        if t >= self.seconds and not self.stopped:
            self.stopped_at = t
        return not self.stopped

    def batches(
        self,
        dataset,
        wait: Callable[[], object] = lambda: None,
        count: Callable[[object], int] = lambda batch: 1,
    ):
        """The batches of one pass over ``dataset`` while the budget lasts;
        ``count(batch)``: the structures in a batch."""
        if self.stopped:
            return
        for batch in dataset:
            if self.steps:
                wait()
                if not self.check():
                    return
            self.steps += 1
            self.graphs += count(batch)
            yield batch


class _BudgetedDataset:
    """A training set as a loop sees it, its iteration cut by a
    :class:`WallBudget`; everything else is the wrapped data set's."""

    def __init__(self, dataset, iterate: Callable) -> None:
        self._dataset = dataset
        self._iterate = iterate

    def __iter__(self):
        return self._iterate(self._dataset)

    def __len__(self) -> int:
        return len(self._dataset)

    def __getattr__(self, name: str):
        return getattr(self._dataset, name)


def run_mace(paths: dict, minutes: float, md_ps: float, flip: bool) -> dict:
    """Train mlip's MACE for ``minutes`` (optionally with the late weight flip),
    evaluate on test, run MD. Runs in the interpreter that has mlip.

    mlip's ``TrainingLoop`` runs whole epochs (``_run_training_epoch`` iterates
    ``self.train_dataset`` and calls ``self.training_step(state, batch,
    epoch_number)`` per batch), then validates the EMA parameters and keeps the
    best. Here its training set is wrapped so that the iteration ends when the
    budget is spent (:class:`WallBudget`); that epoch is then validated like a
    whole one, and ``num_epochs`` is lowered to it, so the loop ends after it.
    The flip is passed through the epoch number the loss receives (its weight
    schedules are traced once): once flipped, every training and validation step
    sees the epoch number plus ``FLIPPED``."""
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
    flipped = 10**6  # FLIPPED

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
    budget = WallBudget(60.0 * minutes, MACE_FLIP_FRACTION if flip else None)
    epochs: list[tuple[float, int]] = []  # (seconds, structures) of each epoch

    class BudgetLoop(TrainingLoop):
        def _run_training_epoch(self) -> None:
            t0, graphs = time.perf_counter(), budget.graphs
            super()._run_training_epoch()
            epochs.append((time.perf_counter() - t0, budget.graphs - graphs))
            budget.check()  # spent at the epoch's end: no further epoch
            if budget.stopped:  # validate this epoch, then end the loop
                self.config = self.config.model_copy(
                    update={"num_epochs": self.epoch_number}
                )

    loop = BudgetLoop(
        datasets["train"],
        datasets["valid"],
        force_field,
        loss,
        optimizer,
        TrainingLoopConfig(num_epochs=10**7, ema_decay=0.99),
    )
    loop.train_dataset = _BudgetedDataset(
        loop.train_dataset,
        lambda dataset: budget.batches(
            dataset,
            wait=lambda: jax.block_until_ready(loop.training_state),
            count=lambda batch: int(np.sum(batch.graph_mask())),
        ),
    )
    if flip:
        step, evaluate = loop.training_step, loop.eval_step

        def epoch_seen(epoch):
            return epoch + flipped if budget.flipped else epoch

        loop.training_step = lambda state, batch, epoch: step(
            state, batch, epoch_seen(epoch)
        )
        loop.eval_step = lambda params, batch, epoch: evaluate(
            params, batch, epoch_seen(epoch)
        )
    cpu_before = cpu_steal_and_total()
    loop.run()
    wall = budget.elapsed()
    steal = steal_percent(cpu_before, cpu_steal_and_total())
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
        np.concatenate([a.numbers for a in test_atoms]),
    )
    params = sum(int(np.size(a)) for a in _leaves(best.params))
    md = md_stability(
        read(paths["md"], index=":"),
        lambda atoms: MLIPForceFieldASECalculator(
            atoms, edge_capacity_multiplier=1.25, force_field=best
        ),
        md_ps,
    )
    # parameter updates only, first epoch (compilation) excluded when possible
    steady = [e for e in epochs[1:] if e[1]] or epochs
    return {
        "name": "mlip MACE, E/F flip at 75 %" if flip else "mlip MACE, default loss",
        **metrics,
        "structures_per_s": sum(g for _, g in steady) / sum(t for t, _ in steady),
        "epochs": budget.graphs / loop.total_num_graphs,
        "steps": budget.steps,
        "best_epoch": int(loop.best_evaluation_epoch),
        "train_wall_s": wall,
        "train_stop_s": budget.stopped_at,
        "train_steal_percent": steal,
        "flip_s": budget.flipped_at,
        "params": params,
        **md,
        "peak_rss_train_GiB": rss_train,
        "peak_rss_GiB": peak_rss_gib(),
    }


# ---------------------------------------------------------------------- main


RUNS = ("physpack", "mace", "mace-flip")


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


def run_worker(kind: str, python: str, root: Path, args: argparse.Namespace) -> dict:
    """One training in its own process; returns its result dict."""
    variant = args.physpack_variant if kind == "physpack" else ""
    result = result_path(root, args.dataset, kind, args.minutes, variant)
    cmd = [
        python,
        __file__,
        "--worker",
        kind,
        "--workdir",
        str(root),
        "--dataset",
        args.dataset,
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


def _md_cell(r: dict) -> str:
    text = f"{r['md_stable']}/{r['md_total']} in {r['md_ps']:g} ps"
    for at, count in r.get("md_stable_at", {}).items():
        if float(at) != r["md_ps"]:
            text = f"{count}/{r['md_total']} in {at} ps, {text}"
    return text


def _epochs_cell(r: dict) -> str:
    """Whole epochs as such; MACE's, cut short by the budget, as a fraction."""
    epochs = r.get("epochs")
    if epochs is None:
        return "-"
    return f"{epochs:d}" if isinstance(epochs, int) else f"{epochs:.2f}"


def _losses_cell(r: dict) -> str:
    if r.get("train_loss_end") is None:
        return "-"
    return f"{r['train_loss_end']:.3g} / {r['valid_loss_end']:.3g}"


def table_rows(results: list[dict]) -> list[tuple[str, Callable[[dict], str]]]:
    """The table's rows: a label and each result's cell (``-`` where a result
    kept by an older version of this script lacks the entry). Where results keep
    their validation force MAE per epoch, one row gives it at the last epoch the
    shortest of them reached: the same number of updates for each (the shorter
    run's learning rate has annealed by then, which favours it)."""

    def key(name: str, fmt: str, scale: float = 1.0) -> Callable[[dict], str]:
        def cell(r: dict) -> str:
            if r.get(name) is None:
                return "-"
            return fmt.format(r[name] if scale == 1.0 else scale * r[name])

        return cell

    from ase.data import atomic_numbers
    from physpack.metrics import metric_name

    force = metric_name("forces", "mae", "meV/Å")

    def element(symbol: str) -> Callable[[dict], str]:
        def cell(r: dict) -> str:
            entry = r.get("per_element", {}).get(symbol)
            return "-" if entry is None else f"{entry[force]:.1f}"

        return cell

    fractions: dict[str, float] = {}
    for r in results:
        for symbol, entry in r.get("per_element", {}).items():
            fractions.setdefault(symbol, entry["atom_fraction"])
    per_element = [
        (f"  {symbol} ({100 * fractions[symbol]:.1f} % of atoms)", element(symbol))
        for symbol in sorted(fractions, key=atomic_numbers.__getitem__)
    ]
    by_epoch = "valid_forces_mae_meV_per_A_by_epoch"
    common = min((len(r[by_epoch]) for r in results if r.get(by_epoch)), default=0)

    def at_common_epoch(r: dict) -> str:
        curve = r.get(by_epoch)
        return f"{curve[common - 1]:.1f}" if curve else "-"

    matched = (
        [(f"validation force MAE, epoch {common} [meV/Å]", at_common_epoch)]
        if common
        else []
    )
    return [
        ("energy MAE [meV]", key(metric_name("energy", "mae", "meV"), "{:.1f}")),
        (
            "energy MAE [meV/atom]",
            key(metric_name("energy_per_atom", "mae", "meV/atom"), "{:.2f}"),
        ),
        ("force MAE [meV/Å]", key(force, "{:.1f}")),
        *per_element,
        ("structures/s (training)", key("structures_per_s", "{:.0f}")),
        ("epochs", _epochs_cell),
        ("best epoch (validation loss)", key("best_epoch", "{:d}")),
        ("train / valid loss, last epoch", _losses_cell),
        *matched,
        ("training wall [min]", key("train_wall_s", "{:.2f}", 1 / 60)),
        ("CPU taken by the host (steal) [%]", key("train_steal_percent", "{:.0f}")),
        ("peak RSS, training [GiB]", key("peak_rss_train_GiB", "{:.2f}")),
        ("peak RSS, whole run [GiB]", key("peak_rss_GiB", "{:.2f}")),
        ("parameters", key("params", "{:,d}")),
        ("MD stable (300 K, NVE)", _md_cell),
        ("MD drift [meV/atom/ps]", key("md_drift_meV_per_atom_ps", "{:.2f}")),
    ]


def print_table(results: list[dict], minutes: float, paths: dict) -> None:
    from physpack.evaluation.tables import text_table

    print(
        f"\n{paths['dataset']} dataset ({Path(paths['npz']).name}), test split; "
        f"{paths['split_title']}; {minutes:g} min of training each"
    )
    header = ["", *(r["name"][:30] for r in results)]
    rows = [[label, *(cell(r) for r in results)] for label, cell in table_rows(results)]
    print("\n".join(text_table(header, rows, widths=(30, 32))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="demo",
        help="demo: data/demo.npz, random split; transfer: --npz, split by formula",
    )
    parser.add_argument(
        "--npz", type=Path, default=None, help="the dataset's padded NPZ"
    )
    parser.add_argument("--minutes", type=float, default=15.0, help="per training")
    parser.add_argument("--md-ps", type=float, default=5.0, help="MD length [ps]")
    parser.add_argument(
        "--mace-python",
        default="/tmp/bench-venv/bin/python",
        help="interpreter with mlip installed ('' skips MACE)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="kept files, one subfolder per dataset (default: a temporary one)",
    )
    parser.add_argument(
        "--runs",
        default=",".join(RUNS),
        help="comma-separated runs to train now; with --workdir, the table also "
        "shows the other runs' results kept there for the same dataset and --minutes",
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
        work = dataset_workdir(args.workdir, args.dataset)
        paths = json.loads((work / "paths.json").read_text())
        if args.worker == "physpack":
            result = run_physpack(
                paths,
                work,
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
        result["dataset"] = args.dataset
        result_path(
            args.workdir, args.dataset, args.worker, args.minutes, variant
        ).write_text(json.dumps(result))
        return
    import yaml

    chosen = [r for r in args.runs.split(",") if r]
    unknown = sorted(set(chosen) - set(RUNS))
    if unknown:
        parser.error(f"--runs: unknown {unknown}; choose from {list(RUNS)}")
    if args.physpack_set and not args.physpack_variant:
        parser.error("--physpack-set needs --physpack-variant NAME")
    npz = dataset_npz(args.dataset, args.npz)
    from physpack.config import with_defaults

    config = with_defaults(yaml.safe_load((ROOT / "config.yaml").read_text()))
    with tempfile.TemporaryDirectory(prefix="bench_accuracy_") as tmp:
        root = args.workdir or Path(tmp)
        work = dataset_workdir(root, args.dataset)
        paths = prepare_data(work, config, args.dataset, npz)
        results = []
        for kind in RUNS:
            python = sys.executable if kind == "physpack" else args.mace_python
            if kind in chosen and python:
                results.append(run_worker(kind, python, root, args))
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
        print_table(results, args.minutes, paths)


if __name__ == "__main__":
    main()
