"""Make the committed demo dataset ``data/demo.npz``: GFN2-xTB on thermal conformers.

Method
    35 neutral, closed-shell organic molecules (3-29 atoms; elements H C N O F S):
    23 from ASE's g2 collection, 6 monomers cut out of the S22 complexes (uracil,
    2-pyridone, 2-aminopyridine, adenine, thymine, indole), biphenyl from ASE's extra
    molecules, and 5 sp3 chains built here (1-hexanol, hexylamine, n-octane,
    1,2-diethoxyethane, n-nonane). Each molecule is relaxed with GFN2-xTB (BFGS,
    fmax 0.01 eV/Å), then, for each temperature, run with Langevin molecular
    dynamics (ASE; 0.5 fs time step, friction 0.01/fs, Maxwell-Boltzmann start,
    centre of mass fixed): after ``--equilibration-steps`` steps (600 = 300 fs) a
    configuration is kept every ``--stride`` steps (40 = 20 fs) until
    ``--samples-per-temperature`` are kept. A configuration whose bond graph
    differs from the relaxed molecule's (a bond stretched past 1.6x or a new contact
    under 1.05x the sum of covalent radii) or whose SCF fails is dropped, and the
    trajectory restarts from the relaxed geometry and re-equilibrates.
    Energies, forces and dipoles are GFN2-xTB single points from ``tblite`` through its
    ASE calculator (``tblite.ase.TBLite``, method "GFN2-xTB", electronic temperature
    300 K, accuracy 1.0, charge 0, singlet).

Units and keys (padded format read by ``physpack convert``)
    R  float32 (n, Amax, 3)  positions [Å], zero padded
    Z  int32   (n, Amax)     atomic numbers, 0 = padding
    N  int32   (n,)          number of atoms
    E  float64 (n,)          total GFN2-xTB energy [eV]
    F  float32 (n, Amax, 3)  forces [eV/Å], zero padded
    Q  float64 (n,)          total charge [e] (all 0)
    D  float64 (n, 3)        dipole moment [e·Å] (tblite's ASE calculator multiplies
                             the library's e·Bohr by Bohr, so ASE units, not Debye)
    T  float64 (n,)          thermostat temperature of the sample [K]
    mol_id    int32 (n,)     index into ``mol_names``
    mol_names str   (n_mol,) molecule names
    info      str   ()       JSON: method, units, seed, sampling settings, versions

How it was run (tblite 0.8, ASE 3.29, numpy 2.4; ``OMP_NUM_THREADS=1``; 570 s of CPU
time, 24 minutes wall on a shared, overloaded 2-core machine; no restarts needed)::

    OMP_NUM_THREADS=1 python scripts/make_demo_dataset.py --output data/demo.npz \\
        --samples-per-temperature 30 --temperatures 300 600 1000 --seed 0

The result depends only on the arguments (every trajectory draws from its own
``SeedSequence([seed, crc32(molecule name), temperature])``); it is bit-for-bit
reproducible with the same tblite/ASE/numpy versions on the same kind of CPU.
Needs the optional extra ``pip install -e .[demo]`` (tblite).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import os
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

# tblite is OpenMP-parallel; one thread is fastest for molecules this small and keeps
# the run reproducible. Must be set before tblite's shared library is loaded.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import ase
import numpy as np
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.calculator import CalculationFailed
from ase.constraints import FixCom
from ase.data import covalent_radii
from ase.data.s22 import create_s22_system
from ase.data.s22 import data as s22_data
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import (
    Stationary,
    ZeroRotation,
    thermalize_momenta,
)
from ase.optimize import BFGS
from physpack.errors import ConfigError, cli_entry
from xtb_frames import (
    BOND,
    METHOD,
    UNITS,
    bond_graph,
    gfn2_calculator,
    padded,
    same_topology,
    write_npz,
)

log = logging.getLogger("make_demo_dataset")

#: g2 molecules: neutral, closed shell, organic, 3-14 atoms.
G2_NAMES: tuple[str, ...] = (
    "HCN", "H2CO", "C2H2", "CH4", "HCOOH", "H2CF2", "CH3OH", "CH3CN", "H3CNH2",
    "CH3CHO", "CH3NO2", "C2H6", "CH3COOH", "CH3CH2OH", "CH3CONH2", "CH3OCH3",
    "C4H4O", "C4H4S", "C4H4NH", "CH3COCH3", "C5H5N", "C6H6", "trans-butane",
)  # fmt: skip
#: S22 monomers: (name, S22 system, which monomer: 0 = first, 1 = second).
S22_MONOMERS: tuple[tuple[str, str, int], ...] = (
    ("uracil", "Uracil_dimer_h-bonded", 0),
    ("2-pyridone", "2-pyridoxine_2-aminopyridine_complex", 0),
    ("2-aminopyridine", "2-pyridoxine_2-aminopyridine_complex", 1),
    ("adenine", "Adenine-thymine_Watson-Crick_complex", 0),
    ("thymine", "Adenine-thymine_Watson-Crick_complex", 1),
    ("indole", "Indole-benzene_T-shape_complex", 1),
)
#: sp3 chains built by :func:`sp3_chain`: name -> heavy-atom sequence.
CHAINS: dict[str, str] = {
    "1-hexanol": "CCCCCCO",
    "hexylamine": "CCCCCCN",
    "1,2-diethoxyethane": "CCOCCOCC",
    "n-octane": "CCCCCCCC",
    "n-nonane": "CCCCCCCCC",
}
_VALENCE = {"C": 4, "N": 3, "O": 2}
_TETRAHEDRAL = np.arccos(-1.0 / 3.0)
_CHAIN_ANGLE = np.deg2rad(112.0)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Settings of the MD sampling.

    Attributes:
        temperatures: thermostat temperatures [K].
        samples_per_temperature: configurations kept per molecule and temperature.
        equilibration_steps: MD steps before the first kept configuration.
        stride: MD steps between kept configurations.
        timestep_fs: MD time step [fs].
        friction_per_fs: Langevin friction [1/fs].
        seed: base seed of every trajectory's random stream.
    """

    temperatures: tuple[float, ...] = (300.0, 600.0, 1000.0)
    samples_per_temperature: int = 30
    equilibration_steps: int = 600
    stride: int = 40
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ConfigError(
                f"--temperatures: need positive temperatures in K, got "
                f"{list(self.temperatures)}"
            )
        for name in ("samples_per_temperature", "stride"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1")
        if self.equilibration_steps < 0:
            raise ConfigError("--equilibration-steps: must be >= 0")
        if self.timestep_fs <= 0 or self.friction_per_fs <= 0:
            raise ConfigError("--timestep-fs and --friction-per-fs: must be > 0")


@dataclasses.dataclass(frozen=True)
class Sample:
    """One labelled configuration (unpadded).

    Attributes: Z int32 (n,); R float32 (n, 3) Å; F float32 (n, 3) eV/Å; E eV;
    D float64 (3,) e·Å; T thermostat temperature K; mol_id index of the molecule.
    """

    Z: np.ndarray
    R: np.ndarray
    F: np.ndarray
    E: float
    D: np.ndarray
    T: float
    mol_id: int


def sp3_chain(heavy: str) -> Atoms:
    """A planar zig-zag chain of sp3 heavy atoms (C, N, O) saturated with hydrogens.

    Rough geometry (bonds from covalent radii, tetrahedral hydrogens, all-trans);
    the caller relaxes it.
    """
    symbols = list(heavy)
    r = [covalent_radii[Atoms(s).numbers[0]] for s in symbols]
    pos = [np.zeros(3)]
    for i in range(1, len(symbols)):
        # alternate the bond direction by ±(pi - angle)/2 around x: a zig-zag in xy
        half = (np.pi - _CHAIN_ANGLE) / 2 * (1 if i % 2 else -1)
        direction = np.array([np.cos(half), np.sin(half), 0.0])
        pos.append(pos[-1] + (r[i - 1] + r[i]) * direction)
    heavy_pos = np.array(pos)
    all_symbols, all_pos = list(symbols), list(heavy_pos)
    z_axis = np.array([0.0, 0.0, 1.0])
    for i, s in enumerate(symbols):
        nbrs = [j for j in (i - 1, i + 1) if 0 <= j < len(symbols)]
        u = [heavy_pos[j] - heavy_pos[i] for j in nbrs]
        u = [v / np.linalg.norm(v) for v in u]
        n_h = _VALENCE[s] - len(nbrs)
        if len(u) == 2:
            bis = -(u[0] + u[1])
            bis /= np.linalg.norm(bis)
            half = _TETRAHEDRAL / 2
            dirs = [np.cos(half) * bis + sgn * np.sin(half) * z_axis for sgn in (1, -1)]
            # interior N keeps one H: put it in the plane, where the lone pair is not
            if n_h == 1:
                dirs = [bis]
        else:
            # terminal: the three other tetrahedral directions, staggered
            e1 = np.cross(u[0], z_axis)
            e1 /= np.linalg.norm(e1)
            e2 = np.cross(u[0], e1)
            dirs = [
                -u[0] / 3 + np.sqrt(8 / 9) * (np.cos(phi) * e2 + np.sin(phi) * e1)
                for phi in np.deg2rad([0.0, 120.0, 240.0])
            ]
        for d in dirs[:n_h]:
            all_symbols.append("H")
            all_pos.append(heavy_pos[i] + (r[i] + covalent_radii[1]) * d)
    return Atoms(all_symbols, positions=np.array(all_pos))


def build_molecules() -> dict[str, Atoms]:
    """The demo molecules, unrelaxed, by name (a fixed order)."""
    mols: dict[str, Atoms] = {}
    for name in G2_NAMES:
        mols[name] = molecule(name)
    for name, system, which in S22_MONOMERS:
        dimer = create_s22_system(system)
        n_first = s22_data[system]["dimer atoms"][0]
        mols[name] = dimer[:n_first] if which == 0 else dimer[n_first:]
    mols["biphenyl"] = molecule("biphenyl")
    for name, heavy in CHAINS.items():
        mols[name] = sp3_chain(heavy)
    for atoms in mols.values():
        atoms.set_initial_magnetic_moments(None)
        atoms.set_initial_charges(None)
        atoms.center()
    return mols


def relax(atoms: Atoms, fmax: float = 0.01, steps: int = 500) -> Atoms:
    """A GFN2-xTB minimum near ``atoms`` (BFGS, ``fmax`` eV/Å), as a new Atoms."""
    atoms = atoms.copy()
    atoms.calc = gfn2_calculator("demo")
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps)
    relaxed = atoms.copy()
    relaxed.calc = None
    return relaxed


def label(atoms: Atoms, temperature: float, mol_id: int) -> Sample:
    """The calculator's results for the current positions as a :class:`Sample`."""
    return Sample(
        Z=atoms.numbers.astype(np.int32),
        R=atoms.positions.astype(np.float32),
        F=atoms.get_forces(apply_constraint=False).astype(np.float32),
        E=float(atoms.get_potential_energy()),
        D=np.asarray(atoms.get_dipole_moment(), dtype=np.float64),
        T=float(temperature),
        mol_id=mol_id,
    )


def sample_trajectory(
    relaxed: Atoms, temperature: float, mol_id: int, stream: int, sampling: Sampling
) -> tuple[list[Sample], int]:
    """Langevin MD of one molecule at one temperature.

    ``mol_id`` labels the samples; ``stream`` (with the seed and the temperature)
    selects the random stream. Returns the kept samples and the number of restarts
    (dropped configurations).
    """
    # the stream depends on the molecule's name, not its position, so a subset run
    # (--molecules) reproduces the same trajectories as the full run
    rng = np.random.default_rng(
        np.random.SeedSequence([sampling.seed, stream, round(temperature)])
    )
    reference = bond_graph(relaxed.numbers, relaxed.positions, BOND)
    samples: list[Sample] = []
    restarts = 0
    max_restarts = 5 * sampling.samples_per_temperature
    while len(samples) < sampling.samples_per_temperature:
        atoms = relaxed.copy()
        atoms.calc = gfn2_calculator("demo")
        # FixCom rather than Langevin(fixcm=True), which samples a biased ensemble
        atoms.set_constraint(FixCom())
        thermalize_momenta(atoms, temperature, rng=rng)
        Stationary(atoms)
        ZeroRotation(atoms)
        dyn = Langevin(
            atoms,
            timestep=sampling.timestep_fs * units.fs,
            temperature_K=temperature,
            friction=sampling.friction_per_fs / units.fs,
            rng=rng,
            fixcm=False,
        )
        try:
            dyn.run(sampling.equilibration_steps)
            while len(samples) < sampling.samples_per_temperature:
                dyn.run(sampling.stride)
                if not same_topology(atoms.numbers, atoms.positions, reference):
                    raise CalculationFailed("bond graph changed")
                samples.append(label(atoms, temperature, mol_id))
        except CalculationFailed as exc:
            restarts += 1
            log.info("  restart %d at %g K (%s)", restarts, temperature, exc)
            if restarts > max_restarts:
                raise ConfigError(
                    f"molecule {mol_id}: more than {max_restarts} restarts at "
                    f"{temperature} K; lower --temperatures"
                ) from None
    return samples, restarts


def generate(
    sampling: Sampling,
    molecules: dict[str, Atoms] | None = None,
    progress: Callable[[str], None] = log.info,
) -> dict[str, np.ndarray]:
    """Relax, sample and label every molecule; return the padded arrays (see module
    docstring for keys, shapes, dtypes and units)."""
    molecules = build_molecules() if molecules is None else molecules
    samples: list[Sample] = []
    start = time.perf_counter()
    for mol_id, (name, atoms) in enumerate(molecules.items()):
        relaxed = relax(atoms)
        for temperature in sampling.temperatures:
            kept, restarts = sample_trajectory(
                relaxed, temperature, mol_id, zlib.crc32(name.encode()), sampling
            )
            samples += kept
            energies = np.array([s.E for s in kept])
            progress(
                f"[{mol_id + 1}/{len(molecules)}] {name} "
                f"({relaxed.get_chemical_formula()}, {len(relaxed)} atoms) "
                f"{temperature:g} K: {len(kept)} samples, E spread "
                f"{np.ptp(energies):.3f} eV, {restarts} restarts, "
                f"{time.perf_counter() - start:.0f} s elapsed"
            )
    return pad(samples, list(molecules), sampling)


def pad(
    samples: Sequence[Sample], names: Sequence[str], sampling: Sampling
) -> dict[str, np.ndarray]:
    """Stack samples into the padded arrays (plus metadata) of the module docstring."""
    arrays = {
        **padded(samples),
        "T": np.array([s.T for s in samples], np.float64),
        "mol_id": np.array([s.mol_id for s in samples], np.int32),
        "mol_names": np.array(names, dtype=str),
    }
    info = {
        "method": METHOD,
        "units": {**UNITS, "T": "K"},
        "sampling": dataclasses.asdict(sampling),
        "versions": {
            "tblite": importlib.metadata.version("tblite"),
            "ase": ase.__version__,
            "numpy": np.__version__,
        },
    }
    arrays["info"] = np.array(json.dumps(info))
    return arrays


@cli_entry("make_demo_dataset")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="GFN2-xTB demo dataset: thermal conformers of small organics."
    )
    parser.add_argument("--output", type=Path, default=Path("data/demo.npz"))
    defaults = Sampling()
    parser.add_argument(
        "--samples-per-temperature", type=int, default=defaults.samples_per_temperature
    )
    parser.add_argument(
        "--temperatures", type=float, nargs="+", default=list(defaults.temperatures),
        help="thermostat temperatures [K]",
    )  # fmt: skip
    parser.add_argument(
        "--equilibration-steps", type=int, default=defaults.equilibration_steps
    )
    parser.add_argument("--stride", type=int, default=defaults.stride)
    parser.add_argument("--timestep-fs", type=float, default=defaults.timestep_fs)
    parser.add_argument(
        "--friction-per-fs", type=float, default=defaults.friction_per_fs
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--molecules", nargs="+", default=None,
        help="only these molecules (names as in the log); default: all",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
    )
    sampling = Sampling(
        temperatures=tuple(args.temperatures),
        samples_per_temperature=args.samples_per_temperature,
        equilibration_steps=args.equilibration_steps,
        stride=args.stride,
        timestep_fs=args.timestep_fs,
        friction_per_fs=args.friction_per_fs,
        seed=args.seed,
    )
    molecules = build_molecules()
    if args.molecules is not None:
        unknown = sorted(set(args.molecules) - set(molecules))
        if unknown:
            raise ConfigError(
                f"--molecules: unknown {unknown}; known: {', '.join(molecules)}"
            )
        molecules = {k: v for k, v in molecules.items() if k in args.molecules}
    start = time.perf_counter()
    arrays = generate(sampling, molecules)
    write_npz(args.output, arrays)
    log.info(
        "wrote %s: %d configurations of %d molecules, %.2f MB, %.0f s",
        args.output,
        len(arrays["E"]),
        len(molecules),
        args.output.stat().st_size / 1e6,
        time.perf_counter() - start,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
