"""``physpack md``: molecular dynamics of many molecules side by side with a trained
model or a committee.

    physpack md results/model/best.ckpt --structures molecules.xyz --ps 5 \\
        --temperature 300 --output results/md/run

All input molecules are integrated together in one packed batch (they do not
interact), in compiled blocks of steps; between blocks the host checks each
molecule's stability (:mod:`physpack.simulation.stability`), writes frames and takes
broken molecules out of the run. NVE uses velocity Verlet, ``--ensemble langevin``
BAOAB at ``--temperature`` with ``--friction`` (1/ps). Starting velocities are
Maxwell-Boltzmann at ``--temperature`` (molecule ``k`` draws from
``numpy.random.default_rng([seed, k])``, so a molecule starts the same alone or among
others), with the centre of mass at rest.

With several checkpoints the forces are the committee's mean and every frame carries
the committee's force spread (:func:`~physpack.simulation.dynamics.committee_forces`);
frames whose largest per-atom spread exceeds ``--uncertainty-threshold`` (eV/Å) are
also written to ``uncertain.extxyz``: candidates for new reference calculations.

The output directory (written to a temporary sibling, renamed when complete) holds:

- ``mol<k>_<formula>.extxyz``: every ``--interval`` steps a frame of positions (Å),
  velocities (ASE units), forces (eV/Å) and potential energy (eV), with ``info``
  ``time_ps``, ``step``, ``potential_energy_eV``, ``kinetic_energy_eV``,
  ``total_energy_eV``, ``temperature_K``, ``forces_spread_max_eV_per_A``,
  ``forces_spread_mean_eV_per_A`` (committees);
- ``uncertain.extxyz`` (committees with a threshold), the frames above it, each
  with ``info["molecule"]``;
- ``md.json``: the settings, units, throughput and per molecule its stability
  (stable, or when and why it broke), NVE energy drift (meV/atom/ps, slope of a
  least-squares line through the total energy), largest bond stretch, mean
  temperature and largest force spread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from physpack.atomic import StagedOutputs
from physpack.config import MDConfig
from physpack.errors import ConfigError, InputError, cli_entry
from physpack.metrics import convert
from physpack.model.calculator import Member, PhysNetCalculator
from physpack.simulation.dynamics import (
    Integrator,
    PackedMolecules,
    compile_block,
    start_state,
)
from physpack.simulation.stability import BROKEN_STRETCH, CLASH_FACTOR, Bonds
from physpack.simulation.velocities import starting_velocities

ENSEMBLES = ("nve", "langevin")
#: the defaults of the config's md section (the schema is their one definition)
_MD = MDConfig()
#: most steps per compiled block (the stability check runs after each block)
MAX_BLOCK_STEPS = 50


@dataclasses.dataclass(frozen=True)
class MDSettings:
    """One run's settings.

    Attributes:
        temperature_K: starting (Maxwell-Boltzmann) and, for Langevin, bath
            temperature, K.
        picoseconds: length of the run, ps.
        timestep_fs: time step, fs.
        ensemble: ``"nve"`` or ``"langevin"``.
        friction_per_ps: Langevin friction γ, 1/ps.
        seed: seed of the starting velocities and the Langevin noise.
        interval: steps between written frames.
        uncertainty_threshold: eV/Å; frames whose largest per-atom committee force
            spread exceeds it go to ``uncertain.extxyz`` (``None``: none written).
        broken_stretch, clash_factor: when a molecule counts as broken
            (:class:`~physpack.simulation.stability.Bonds`).
    """

    temperature_K: float = float(_MD.temperatures[0])
    picoseconds: float = float(_MD.picoseconds)
    timestep_fs: float = _MD.timestep_fs
    ensemble: str = _MD.ensemble
    friction_per_ps: float = _MD.friction_per_ps
    seed: int = _MD.seed
    interval: int = _MD.interval
    uncertainty_threshold: float | None = None
    broken_stretch: float = BROKEN_STRETCH
    clash_factor: float = CLASH_FACTOR

    def __post_init__(self) -> None:
        checks = {
            "timestep_fs": self.timestep_fs > 0,
            "picoseconds": self.picoseconds > 0,
            "temperature_K": self.temperature_K >= 0,
            "friction_per_ps": self.friction_per_ps > 0,
            "interval": self.interval >= 1,
            "broken_stretch": self.broken_stretch > 1,
            "clash_factor": 0 < self.clash_factor < 1,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not (ok and math.isfinite(value)):
                raise ConfigError(f"md: {name} out of range, got {value!r}")
        if self.ensemble not in ENSEMBLES:
            raise ConfigError(
                f"md: ensemble must be one of {', '.join(ENSEMBLES)}, got "
                f"{self.ensemble!r}"
            )

    @property
    def steps(self) -> int:
        """Number of steps: :attr:`picoseconds` over the time step, rounded up to
        whole blocks (:attr:`block_steps`)."""
        wanted = max(1, round(self.picoseconds * 1000.0 / self.timestep_fs))
        return math.ceil(wanted / self.block_steps) * self.block_steps

    @property
    def block_steps(self) -> int:
        """Steps per compiled block: the largest divisor of :attr:`interval` up to
        :data:`MAX_BLOCK_STEPS`, so that frames fall on block ends."""
        return max(d for d in range(1, MAX_BLOCK_STEPS + 1) if self.interval % d == 0)

    def integrator(self) -> Integrator:
        """The step in ASE units."""
        return Integrator(
            ensemble=self.ensemble,
            dt=self.timestep_fs * units.fs,
            kT=units.kB * self.temperature_K,
            friction=self.friction_per_ps / (1000.0 * units.fs),
        )


@dataclasses.dataclass
class MoleculeRun:
    """What happened to one molecule (the ``md.json`` entry)."""

    index: int
    formula: str
    n_atoms: int
    trajectory: str  # file name in the output directory
    stable: bool = True
    broke_at_ps: float | None = None
    reason: str | None = None
    energy_drift_meV_per_atom_ps: float | None = None
    max_bond_stretch: float = 1.0
    mean_temperature_K: float = 0.0
    max_forces_spread_eV_per_A: float = 0.0
    frames: int = 0
    uncertain_frames: int = 0


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The batch after a block, on the host.

    Attributes:
        step, time_ps: steps done and the time, ps.
        positions, velocities, forces: float64 (A, 3): Å, ASE units, eV/Å.
        spread: float64 (A,) committee force spread, eV/Å (0 for one model).
        potential, kinetic: float64 (N,) per molecule, eV.
        temperature: float64 (N,) K.
    """

    step: int
    time_ps: float
    positions: np.ndarray
    velocities: np.ndarray
    forces: np.ndarray
    spread: np.ndarray
    potential: np.ndarray
    kinetic: np.ndarray
    temperature: np.ndarray


class _Molecule:
    """One molecule's bookkeeping: stability, energies and temperatures over the
    run, and the frame it writes."""

    def __init__(self, run: MoleculeRun, bonds: Bonds, rows: slice, committee: bool):
        self.run, self.bonds, self.rows, self.committee = run, bonds, rows, committee
        self.totals: list[tuple[float, float]] = []
        self.temperatures: list[float] = []

    def observe(self, snap: Snapshot) -> str | None:
        """Take in the molecule's state in ``snap``; why it broke, or ``None``."""
        k, run, x = self.run.index, self.run, snap.positions[self.rows]
        self.stretch = self.bonds.max_stretch(x)
        run.max_bond_stretch = max(run.max_bond_stretch, self.stretch)
        run.max_forces_spread_eV_per_A = max(
            run.max_forces_spread_eV_per_A, float(snap.spread[self.rows].max())
        )
        self.totals.append((snap.time_ps, snap.potential[k] + snap.kinetic[k]))
        self.temperatures.append(float(snap.temperature[k]))
        why = self.bonds.broken(x, snap.potential[k])
        if why is not None:
            run.stable, run.broke_at_ps, run.reason = False, snap.time_ps, why
        return why

    def info(self, snap: Snapshot) -> dict[str, float]:
        """The ``info`` of the molecule's frame in ``snap``."""
        k = self.run.index
        info = {
            "time_ps": snap.time_ps,
            "step": snap.step,
            "potential_energy_eV": float(snap.potential[k]),
            "kinetic_energy_eV": float(snap.kinetic[k]),
            "total_energy_eV": float(snap.potential[k] + snap.kinetic[k]),
            "temperature_K": float(snap.temperature[k]),
            "max_bond_stretch": self.stretch,
        }
        if self.committee:
            info["forces_spread_max_eV_per_A"] = float(snap.spread[self.rows].max())
            info["forces_spread_mean_eV_per_A"] = float(snap.spread[self.rows].mean())
        return info

    def finish(self, ensemble: str) -> None:
        """Mean temperature and, for NVE, the energy drift: the slope of a straight
        line through the total energy."""
        self.run.mean_temperature_K = float(np.mean(self.temperatures))
        if ensemble == "nve" and len(self.totals) > 1:
            t, e = np.asarray(self.totals).T
            slope = np.polyfit(t, e, 1)[0] / self.run.n_atoms  # eV/atom/ps
            self.run.energy_drift_meV_per_atom_ps = float(
                convert(slope, "energy_per_atom", "meV/atom")
            )


class _Trajectories:
    """Frames of every molecule, appended to its extxyz file in the output."""

    def __init__(self, directory: Path, molecules: Sequence[Atoms]):
        self.directory, self.molecules = directory, molecules
        self.uncertain = directory / "uncertain.extxyz"

    def write(
        self, molecule: _Molecule, snap: Snapshot, threshold: float | None
    ) -> None:
        """Append the molecule's frame of ``snap`` (and to ``uncertain.extxyz`` when
        its largest force spread exceeds ``threshold``)."""
        run, rows = molecule.run, molecule.rows
        atoms = self.molecules[run.index].copy()
        atoms.set_positions(snap.positions[rows])
        atoms.set_velocities(snap.velocities[rows])
        atoms.info.update(molecule.info(snap))
        atoms.calc = SinglePointCalculator(
            atoms, energy=atoms.info["potential_energy_eV"], forces=snap.forces[rows]
        )
        write(self.directory / run.trajectory, atoms, format="extxyz", append=True)
        run.frames += 1
        if threshold is not None and snap.spread[rows].max() > threshold:
            atoms.info["molecule"] = run.index
            write(self.uncertain, atoms, format="extxyz", append=True)
            run.uncertain_frames += 1


def _checked_calculator(
    checkpoints: Sequence[str | Path],
    molecules: Sequence[Atoms],
    settings: MDSettings,
) -> PhysNetCalculator:
    """The models, after checking that they can run ``molecules``."""
    calc = PhysNetCalculator([str(c) for c in checkpoints])
    if calc.dispersion_label is not None:
        raise InputError(
            f"{checkpoints[0]}: trained with {calc.dispersion_label} subtracted; "
            f"physpack md integrates the network alone, so it would leave D3 out "
            f"(use PhysNetCalculator with an ASE integrator)"
        )
    if not molecules:
        raise InputError("physpack md: no molecules given")
    if settings.uncertainty_threshold is not None and calc.committee_size < 2:
        raise InputError(
            "physpack md: --uncertainty-threshold needs a committee (several "
            "checkpoints); one model has no force spread"
        )
    for k, atoms in enumerate(molecules):
        try:
            calc.check_atoms(atoms)
        except InputError as exc:
            raise InputError(f"molecule {k}: {exc}") from None
    return calc


def run_md(
    checkpoints: Sequence[str | Path],
    molecules: Sequence[Atoms],
    settings: MDSettings,
    output: str | Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Integrate ``molecules`` side by side and write ``output`` (module docstring).

    Args:
        checkpoints: one model or a committee.
        molecules: isolated molecules (Å); total charge as the ASE calculator reads
            it (``info["charge"]``, initial charges).
        settings: the run.
        output: directory to write (replaced only when the run completes).
        log: where progress lines go.

    Returns:
        The ``md.json`` record.

    Raises:
        InputError: an element a model never saw, periodic cells, coincident atoms,
            no molecules, or a model trained with D3 subtracted (D3 is not part of
            the compiled step: use :class:`PhysNetCalculator` with ASE's integrators).
    """
    calc = _checked_calculator(checkpoints, molecules, settings)
    system = PackedMolecules.of(molecules, [calc.total_charge(a) for a in molecules])
    members, n = calc.members, len(molecules)
    state, frame = _start(members, system, molecules, settings)
    params = [m.params for m in members]
    active = np.zeros(system.batch["Qtot"].shape[0], bool)
    active[:n] = True
    block = (
        compile_block(members, system, settings.integrator(), settings.block_steps)
        .lower(params, state, jnp.asarray(active))
        .compile()
    )
    tracked = _tracked(system, molecules, settings, committee=len(members) > 1)
    snapshot = _Snapshots(system, members, settings)

    def advance(state: Any) -> tuple[Any, Any]:
        return block(params, state, jnp.asarray(active))

    with StagedOutputs() as staged:
        directory = staged.directory(output)
        out = _Trajectories(directory, molecules)
        t0 = time.perf_counter()
        steps = _integrate(
            advance, state, frame, snapshot, active, tracked, out, settings, log
        )
        seconds = time.perf_counter() - t0
        for molecule in tracked:
            molecule.finish(settings.ensemble)
        record = {
            "settings": dataclasses.asdict(settings),
            "checkpoints": [str(c) for c in checkpoints],
            "units": UNITS,
            "steps": steps,
            "seconds": seconds,
            "molecule_steps_per_second": n * steps / max(seconds, 1e-9),
            "stable": sum(m.run.stable for m in tracked),
            "molecules": [dataclasses.asdict(m.run) for m in tracked],
        }
        (directory / "md.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _start(
    members: Sequence[Member],
    system: PackedMolecules,
    molecules: Sequence[Atoms],
    settings: MDSettings,
) -> tuple[Any, Any]:
    """The integrator's first state and frame: Maxwell-Boltzmann velocities at
    ``settings.temperature_K``, molecule ``k`` drawing from ``default_rng([seed,
    k])`` (the same start alone or in a batch)."""
    velocities = np.zeros_like(system.batch["R"], dtype=np.float64)
    for k, atoms in enumerate(molecules):
        rng = np.random.default_rng([settings.seed, k])
        velocities[system.rows(k)] = starting_velocities(
            atoms, settings.temperature_K, rng
        )
    return start_state(members, system, velocities, settings.seed)


def _tracked(
    system: PackedMolecules,
    molecules: Sequence[Atoms],
    settings: MDSettings,
    committee: bool,
) -> list[_Molecule]:
    """Each molecule's record, output name and stability criterion, its bonds
    taken from its starting geometry."""
    n = len(molecules)
    tracked = []
    for k, atoms in enumerate(molecules):
        name = f"mol{k:0{len(str(n - 1))}d}_{atoms.get_chemical_formula()}"
        run = MoleculeRun(k, atoms.get_chemical_formula(), len(atoms), f"{name}.extxyz")
        x = system.batch["R"][system.rows(k)]
        bonds = Bonds.of(
            atoms.numbers, x, settings.broken_stretch, settings.clash_factor
        )
        tracked.append(_Molecule(run, bonds, system.rows(k), committee))
    return tracked


def _integrate(
    advance: Callable[[Any], tuple[Any, Any]],
    state: Any,
    frame: Any,
    snapshot: _Snapshots,
    active: np.ndarray,
    tracked: list[_Molecule],
    out: _Trajectories,
    settings: MDSettings,
    log: Callable[[str], None],
) -> int:
    """Run ``settings.steps`` in compiled blocks (``advance``), checking every
    molecule after each block: a broken one is logged, written and leaves the run
    (``active[k]`` cleared, in place); frames go to ``out`` every
    ``settings.interval`` steps. Returns the steps made (fewer when every
    molecule broke)."""
    n = len(tracked)
    blocks = settings.steps // settings.block_steps
    report_every = max(1, blocks // 10)
    t0 = time.perf_counter()
    for b in range(blocks + 1):
        if b > 0:
            state, frame = advance(state)
        snap = snapshot(b * settings.block_steps, state, frame)
        written = snap.step % settings.interval == 0 or b == blocks
        for k in np.flatnonzero(active[:n]):
            why = tracked[k].observe(snap)
            if why is not None:
                active[k] = False
                log(f"md: molecule {k} broke at {snap.time_ps:g} ps: {why}")
            if written or why is not None:
                out.write(tracked[k], snap, settings.uncertainty_threshold)
        if b > 0 and (b % report_every == 0 or b == blocks):
            rate = snap.step / max(time.perf_counter() - t0, 1e-9)
            log(
                f"md: {snap.time_ps:g}/{settings.picoseconds:g} ps, "
                f"{int(active[:n].sum())}/{n} molecules intact, "
                f"{rate:.0f} steps/s ({rate * n:.0f} molecule-steps/s)"
            )
        if not active[:n].any():
            break
    return snap.step


#: units of ``md.json`` and the frames' ``info``
UNITS = {
    "time": "ps",
    "energy": "eV",
    "energy_drift": "meV/atom/ps",
    "temperature": "K",
    "forces_spread": "eV/Angstrom",
    "length": "Angstrom",
    "velocities": "ASE (Angstrom/(Angstrom*sqrt(amu/eV)))",
}


class _Snapshots:
    """Turns the device state after a block into a :class:`Snapshot`: per molecule
    the potential energy (the committee's mean, reference energies added in
    float64), kinetic energy and temperature (2 E_kin / (f k_B) with f = 3n − 3 for
    NVE, whose centre of mass is at rest, and 3n for Langevin)."""

    def __init__(self, system: PackedMolecules, members, settings: MDSettings):
        self.system, self.timestep_fs = system, settings.timestep_fs
        n = len(system)
        z = system.batch["Z"]
        per_atom = np.stack(
            [m.checkpoint.constants.reference_energies[z] for m in members]
        )
        per_atom[:, system.starts[-1] :] = 0.0
        self.reference = system.per_molecule(per_atom.T)  # (N, K) eV
        removed = 3 if settings.ensemble == "nve" else 0
        self.dof = np.maximum(3 * system.sizes - removed, 1)
        self.n = n

    def __call__(self, step: int, state, frame) -> Snapshot:
        system, n = self.system, self.n
        velocities = np.asarray(state.velocities, np.float64)
        residual = np.asarray(frame["energy_residual"], np.float64)[:, :n].T
        kinetic = system.per_molecule(0.5 * system.masses[:, None] * velocities**2)
        kinetic = kinetic.sum(axis=1)
        return Snapshot(
            step=step,
            time_ps=step * self.timestep_fs / 1000.0,
            positions=np.asarray(state.positions, np.float64),
            velocities=velocities,
            forces=np.asarray(state.forces, np.float64),
            spread=np.asarray(frame["forces_spread"], np.float64),
            potential=(self.reference + residual).mean(axis=1),
            kinetic=kinetic,
            temperature=2.0 * kinetic / (self.dof * units.kB),
        )


def molecule_atoms(dataset, i: int) -> Atoms:
    """Molecule ``i`` of a packed dataset as ASE atoms (Å) with
    ``info["charge"]`` (e)."""
    a, b = int(dataset.offsets[i]), int(dataset.offsets[i + 1])
    atoms = Atoms(
        numbers=np.asarray(dataset.Z[a:b]), positions=dataset.canonical("R", a, b)
    )
    atoms.info["charge"] = float(dataset.Qtot[i])
    return atoms


def read_molecules(path: str | Path) -> list[Atoms]:
    """The structures of ``path`` (anything ``physpack predict`` reads: an NPZ in
    canonical units, a packed directory or descriptor, an ASE-readable file) as ASE
    atoms in Å with ``info["charge"]``."""
    from physpack.evaluation.predict import open_structures

    with open_structures(path) as data:
        return [molecule_atoms(data, i) for i in range(len(data))]


@cli_entry("physpack md")
def main(argv: Sequence[str] | None = None) -> int:
    defaults = MDSettings()
    parser = argparse.ArgumentParser(
        prog="physpack md",
        description="Molecular dynamics of many molecules side by side with a "
        "trained model or a committee (several checkpoints).",
    )
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    parser.add_argument(
        "--structures",
        required=True,
        help="starting structures: extxyz/xyz/traj (anything ASE reads), a padded "
        "NPZ in eV/Angstrom, or a packed directory",
    )
    parser.add_argument("--output", required=True, help="directory to write")
    parser.add_argument(
        "--temperature", type=float, default=defaults.temperature_K, help="K"
    )
    parser.add_argument(
        "--ps", type=float, default=defaults.picoseconds, help="length, ps"
    )
    parser.add_argument(
        "--timestep", type=float, default=defaults.timestep_fs, help="fs"
    )
    parser.add_argument("--ensemble", choices=ENSEMBLES, default=defaults.ensemble)
    parser.add_argument(
        "--friction",
        type=float,
        default=defaults.friction_per_ps,
        help="Langevin, 1/ps",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--interval", type=int, default=defaults.interval, help="steps between frames"
    )
    parser.add_argument(
        "--uncertainty-threshold",
        type=float,
        default=None,
        help="eV/Angstrom: committee frames whose largest per-atom force spread "
        "exceeds it also go to uncertain.extxyz",
    )
    args = parser.parse_args(argv)
    settings = MDSettings(
        temperature_K=args.temperature,
        picoseconds=args.ps,
        timestep_fs=args.timestep,
        ensemble=args.ensemble,
        friction_per_ps=args.friction,
        seed=args.seed,
        interval=args.interval,
        uncertainty_threshold=args.uncertainty_threshold,
    )
    molecules = read_molecules(args.structures)
    record = run_md(
        args.checkpoints,
        molecules,
        settings,
        args.output,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(
        f"physpack md: {record['stable']}/{len(molecules)} molecules stable over "
        f"{settings.picoseconds:g} ps; wrote {args.output}"
    )
    return 0
