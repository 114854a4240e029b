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
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from physpack.atomic import StagedOutputs
from physpack.errors import ConfigError, InputError, cli_entry
from physpack.metrics import convert
from physpack.model.calculator import PhysNetCalculator
from physpack.simulation.dynamics import (
    Integrator,
    PackedMolecules,
    compile_block,
    start_state,
)
from physpack.simulation.stability import BROKEN_STRETCH, CLASH_FACTOR, Bonds

ENSEMBLES = ("nve", "langevin")
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

    temperature_K: float = 300.0
    picoseconds: float = 5.0
    timestep_fs: float = 0.5
    ensemble: str = "nve"
    friction_per_ps: float = 1.0
    seed: int = 0
    interval: int = 100
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


def starting_velocities(atoms: Atoms, temperature_K: float, rng) -> np.ndarray:
    """Maxwell-Boltzmann velocities (n, 3) in ASE units at ``temperature_K`` with the
    centre of mass at rest (zero at 0 K)."""
    atoms = atoms.copy()
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    return atoms.get_velocities()


class _Trajectories:
    """Frames of every molecule, appended to its extxyz file in the output."""

    def __init__(
        self, directory: Path, molecules: Sequence[Atoms], names: Sequence[str]
    ):
        self.directory, self.molecules = directory, molecules
        self.paths = [directory / f"{name}.extxyz" for name in names]
        self.uncertain = directory / "uncertain.extxyz"

    def frame(self, k: int, positions, velocities, forces, info: dict) -> Atoms:
        atoms = self.molecules[k].copy()
        atoms.set_positions(positions)
        atoms.set_velocities(velocities)
        atoms.info.update(info)
        atoms.calc = SinglePointCalculator(
            atoms, energy=info["potential_energy_eV"], forces=forces
        )
        return atoms

    def write(self, k: int, atoms: Atoms, uncertain: bool) -> None:
        write(self.paths[k], atoms, format="extxyz", append=True)
        if uncertain:
            marked = atoms.copy()
            marked.calc = atoms.calc
            marked.info["molecule"] = k
            write(self.uncertain, marked, format="extxyz", append=True)


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
    charges = [calc.total_charge(a) for a in molecules]
    system = PackedMolecules.of(molecules, charges)
    members = calc.members
    velocities = np.zeros_like(system.batch["R"], dtype=np.float64)
    for k, atoms in enumerate(molecules):
        rng = np.random.default_rng([settings.seed, k])
        velocities[system.rows(k)] = starting_velocities(
            atoms, settings.temperature_K, rng
        )
    state, frame = start_state(members, system, velocities, settings.seed)
    params = [m.params for m in members]
    active = np.zeros(system.batch["Qtot"].shape[0], bool)
    active[: len(system)] = True
    block = (
        compile_block(members, system, settings.integrator(), settings.block_steps)
        .lower(params, state, jnp.asarray(active))
        .compile()
    )
    references = np.stack(
        [m.checkpoint.constants.reference_energies[system.batch["Z"]] for m in members]
    )
    references[:, system.starts[-1] :] = 0.0
    reference = (references @ _membership(system)).T  # (N, K) eV

    n = len(system)
    names = [
        f"mol{k:0{len(str(n - 1))}d}_{a.get_chemical_formula()}"
        for k, a in enumerate(molecules)
    ]
    runs = [
        MoleculeRun(
            index=k,
            formula=a.get_chemical_formula(),
            n_atoms=len(a),
            trajectory=f"{name}.extxyz",
        )
        for k, (a, name) in enumerate(zip(molecules, names, strict=True))
    ]
    bonds = [
        Bonds.of(
            a.numbers,
            system.batch["R"][system.rows(k)],
            settings.broken_stretch,
            settings.clash_factor,
        )
        for k, a in enumerate(molecules)
    ]
    dof = np.maximum(3 * system.sizes - (3 if settings.ensemble == "nve" else 0), 1)
    totals: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    temperatures: list[list[float]] = [[] for _ in range(n)]
    steps, per_block = settings.steps, settings.block_steps
    blocks = steps // per_block
    report_every = max(1, blocks // 10)

    with StagedOutputs() as staged:
        directory = staged.directory(output)
        out = _Trajectories(directory, molecules, names)
        t0 = time.perf_counter()
        for b in range(blocks + 1):
            if b > 0:
                state, frame = block(params, state, jnp.asarray(active))
            step = b * per_block
            time_ps = step * settings.timestep_fs / 1000.0
            positions = np.asarray(state.positions, np.float64)
            velocities = np.asarray(state.velocities, np.float64)
            forces = np.asarray(state.forces, np.float64)
            spread = np.asarray(frame["forces_spread"], np.float64)
            potential = (
                reference + np.asarray(frame["energy_residual"], np.float64)[:, :n].T
            ).mean(axis=1)
            kinetic = system.per_molecule(
                0.5 * system.masses[:, None] * velocities**2
            ).sum(axis=1)
            temperature = 2.0 * kinetic / (dof * units.kB)
            write_frame = step % settings.interval == 0 or b == blocks
            for k in np.flatnonzero(active[:n]):
                run, rows = runs[k], system.rows(k)
                why = bonds[k].broken(positions[rows], potential[k])
                stretch = bonds[k].max_stretch(positions[rows])
                run.max_bond_stretch = max(run.max_bond_stretch, stretch)
                if why is not None:
                    run.stable, run.broke_at_ps, run.reason = False, time_ps, why
                    active[k] = False
                    log(
                        f"md: molecule {k} ({run.formula}) broke at {time_ps:g} ps: {why}"
                    )
                totals[k].append((time_ps, potential[k] + kinetic[k]))
                temperatures[k].append(temperature[k])
                run.max_forces_spread_eV_per_A = max(
                    run.max_forces_spread_eV_per_A, float(spread[rows].max())
                )
                if not write_frame and why is None:
                    continue
                info = {
                    "time_ps": time_ps,
                    "step": step,
                    "potential_energy_eV": float(potential[k]),
                    "kinetic_energy_eV": float(kinetic[k]),
                    "total_energy_eV": float(potential[k] + kinetic[k]),
                    "temperature_K": float(temperature[k]),
                    "max_bond_stretch": stretch,
                }
                uncertain = False
                if len(members) > 1:
                    info["forces_spread_max_eV_per_A"] = float(spread[rows].max())
                    info["forces_spread_mean_eV_per_A"] = float(spread[rows].mean())
                    threshold = settings.uncertainty_threshold
                    uncertain = threshold is not None and spread[rows].max() > threshold
                atoms = out.frame(
                    k, positions[rows], velocities[rows], forces[rows], info
                )
                out.write(k, atoms, uncertain)
                run.frames += 1
                run.uncertain_frames += int(uncertain)
            if b % report_every == 0 or b == blocks:
                rate = step / max(time.perf_counter() - t0, 1e-9)
                log(
                    f"md: {time_ps:g}/{settings.picoseconds:g} ps, "
                    f"{int(active[:n].sum())}/{n} molecules intact, "
                    f"{rate:.0f} steps/s ({rate * n:.0f} molecule-steps/s)"
                )
            if not active[:n].any():
                break
        seconds = time.perf_counter() - t0
        for k, run in enumerate(runs):
            run.mean_temperature_K = float(np.mean(temperatures[k]))
            if settings.ensemble == "nve" and len(totals[k]) > 1:
                t, e = np.asarray(totals[k]).T
                slope = np.polyfit(t, e, 1)[0] / run.n_atoms  # eV/atom/ps
                run.energy_drift_meV_per_atom_ps = float(
                    convert(slope, "energy_per_atom", "meV/atom")
                )
        record = {
            "settings": dataclasses.asdict(settings),
            "checkpoints": [str(c) for c in checkpoints],
            "units": {
                "time": "ps",
                "energy": "eV",
                "energy_drift": "meV/atom/ps",
                "temperature": "K",
                "forces_spread": "eV/Angstrom",
                "length": "Angstrom",
                "velocities": "ASE (Angstrom/(Angstrom*sqrt(amu/eV)))",
            },
            "steps": b * per_block,
            "seconds": seconds,
            "molecule_steps_per_second": n * b * per_block / max(seconds, 1e-9),
            "stable": sum(r.stable for r in runs),
            "molecules": [dataclasses.asdict(r) for r in runs],
        }
        (directory / "md.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _membership(system: PackedMolecules) -> np.ndarray:
    """(A, N) 0/1: atom row a belongs to molecule n."""
    member = np.zeros((system.batch["Z"].shape[0], len(system)))
    for k in range(len(system)):
        member[system.rows(k), k] = 1.0
    return member


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
