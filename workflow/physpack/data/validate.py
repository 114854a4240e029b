"""``physpack validate``: integrity checks of a packed directory → a JSON report.

Checks, in order (each reported under its name in ``errors`` or ``warnings``):

structure (errors; content checks are skipped when any fails)
    ``manifest``   manifest.json readable, counts agree with offsets.npy
    ``offsets``    1-D integer, starts at 0, strictly increasing (no empty or
                   negative-size molecule), ``n_atoms.npy`` == diff(offsets)
    ``files``      every required file (and every file the manifest lists) exists
                   with exactly count × record-size bytes
    ``checksum``   sha256 of every file the manifest lists (``checksums: true``)
content (one streaming pass, chunk by chunk)
    ``atomic_numbers``  Z in 1..118
    ``finite_<key>``    R, F, E, Qtot, D finite
    ``min_distance``    no two atoms of one molecule closer than ``min_distance`` Å
                        (vectorised per molecule-size group)
    ``energy_outlier``  warning: robust z-score (median/MAD) of the per-atom energy
                        residual after the per-element least-squares reference
                        fit of training (``fit_energy_constants``)
    ``force_outlier``   warning: robust z-score of each molecule's largest |F|
                        against the |F| distribution of all atoms
plausibility (warnings: the scales of the data, where unit mistakes show)
    ``plausible_energies``   fitted per-element energies within atomic scales
    ``plausible_distances``  median nearest-neighbour distance within 0.6–2 Å
    ``plausible_forces``     median |F| within 0.001–10 eV/Å
    (:mod:`physpack.data.plausibility`; values are checked in eV and Å, converted
    from the directory's stored or declared units)

Every problem names the check, the molecule (or file) and the value; at most
``max_reported`` are listed per check, the counts are exact. A directory without
``manifest.json`` (older tooling) is checked from ``offsets.npy`` alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols
from scipy.spatial import cKDTree

from physpack import config as cfg
from physpack.atomic import StagedOutputs
from physpack.data import plausibility
from physpack.data.descriptor import read_descriptor
from physpack.data.loader import PackedMemmapLoader
from physpack.data.manifest import read_manifest
from physpack.data.packed import (
    ARRAYS,
    MANIFEST,
    MAX_Z,
    N_ATOMS,
    OFFSETS,
    PackedDataset,
    PackedDataWarning,
    sample_stride,
    sha256_file,
    size_problem,
)
from physpack.data.progress import Progress
from physpack.errors import InputError, PhyspackError, cli_entry
from physpack.reference import fit_energy_constants

#: molecules larger than this get a k-d tree instead of a dense distance matrix
DENSE_DISTANCE_MAX_ATOMS = 512
#: distance-matrix entries per vectorised block (memory ≈ 8 bytes each, × a few)
DISTANCE_BLOCK = 1 << 21
#: robust-scale floors, so that a perfect fit does not turn rounding into outliers
MAD_FLOOR = {"energy": 1e-6, "force": 1e-6}
MAD_TO_SIGMA = 1.4826
#: molecules per batch of the reference-energy fit (streamed through the loader)
FIT_BATCH = 256


@dataclasses.dataclass(frozen=True)
class Problem:
    """One error or warning.

    Attributes:
        check: the check's name (see the module docstring).
        message: one line, naming molecule/file and value.
        molecule: molecule index, when the problem belongs to one molecule.
        file: the file concerned, when the problem belongs to one file.
    """

    check: str
    message: str
    molecule: int | None = None
    file: str | None = None


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """Result of :func:`validate_packed` (see :meth:`to_json` for the file layout).

    Attributes:
        path: the packed directory.
        errors, warnings: problems, at most ``max_reported`` per check.
        error_counts, warning_counts: exact number of problems per check.
        summary: dataset counts and fitted reference values (units in the keys).
        checks: the checks that ran.
        skipped: checks that could not run, with the reason.
    """

    path: str
    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    error_counts: dict[str, int]
    warning_counts: dict[str, int]
    summary: dict[str, Any]
    checks: tuple[str, ...]
    skipped: dict[str, str]
    config: cfg.ValidateConfig

    @property
    def ok(self) -> bool:
        return not self.error_counts

    @property
    def n_errors(self) -> int:
        return sum(self.error_counts.values())

    @property
    def n_warnings(self) -> int:
        return sum(self.warning_counts.values())

    def to_json(self) -> dict[str, Any]:
        def listed(problems: tuple[Problem, ...]) -> list[dict[str, Any]]:
            return [
                {k: v for k, v in dataclasses.asdict(p).items() if v is not None}
                for p in problems
            ]

        return {
            "path": self.path,
            "ok": self.ok,
            "n_errors": self.n_errors,
            "n_warnings": self.n_warnings,
            "error_counts": self.error_counts,
            "warning_counts": self.warning_counts,
            "errors": listed(self.errors),
            "warnings": listed(self.warnings),
            "checks": list(self.checks),
            "skipped": self.skipped,
            "summary": self.summary,
            "config": dataclasses.asdict(self.config),
        }

    def one_line(self) -> str:
        """A one-line summary (counts per check and the first error)."""
        if self.ok:
            return (
                f"{self.path}: ok ({self.summary.get('n_molecules', 0)} molecules, "
                f"{self.n_warnings} warning(s))"
            )
        counts = ", ".join(f"{k}: {v}" for k, v in self.error_counts.items())
        return (
            f"{self.path}: {self.n_errors} error(s) ({counts}); first: "
            f"{self.errors[0].message}"
        )


class _Collector:
    """Collects problems per check: exact counts, at most ``cap`` listed."""

    def __init__(self, cap: int):
        self.cap = cap
        self.listed: dict[str, list[Problem]] = {"error": [], "warning": []}
        self.counts: dict[str, dict[str, int]] = {"error": {}, "warning": {}}

    def add(
        self,
        check: str,
        message: str,
        *,
        molecule: int | None = None,
        file: str | None = None,
        level: str = "error",
    ) -> None:
        counts = self.counts[level]
        if counts.get(check, 0) < self.cap:
            self.listed[level].append(Problem(check, message, molecule, file))
        counts[check] = counts.get(check, 0) + 1

    def add_molecules(
        self,
        check: str,
        molecules: np.ndarray,
        template: str,
        *values: np.ndarray,
        level: str = "error",
    ) -> None:
        """One problem per molecule of ``molecules`` (int array, global indices).

        The k-th message is ``template.format(molecules[k], *(v[k] for v in
        values))``, built only for the problems that are listed."""
        counts = self.counts[level]
        seen = counts.get(check, 0)
        for k in range(min(len(molecules), max(self.cap - seen, 0))):
            text = template.format(molecules[k], *(v[k] for v in values))
            self.listed[level].append(Problem(check, text, molecule=int(molecules[k])))
        if len(molecules):
            counts[check] = seen + len(molecules)

    def has_errors(self, *checks: str) -> bool:
        return any(self.counts["error"].get(c, 0) for c in checks)


def min_interatomic_distances(
    R: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest pair of atoms of every molecule, and its typical neighbour distance.

    Molecules of equal size are stacked into (m, n, 3) blocks and their distance
    matrices computed at once, so the cost is a few numpy calls per distinct size
    (large molecules use a k-d tree instead).

    Args:
        R: float (n_atoms, 3) positions [Å], atoms of consecutive molecules.
        offsets: int (n_mol + 1,) atom offsets into ``R``, starting at 0.

    Returns:
        (dmin, pairs, neighbour): float64 (n_mol,) smallest distance [Å] (``inf``
        for one-atom molecules, NaN where positions are not finite); int64
        (n_mol, 2) the atom indices (within the molecule) of that pair, -1 where
        undefined; float64 (n_mol,) median over the molecule's atoms of the
        distance to their nearest neighbour [Å] (NaN where undefined).
    """
    counts = np.diff(offsets)
    n_mol = counts.size
    dmin = np.full(n_mol, np.inf)
    pairs = np.full((n_mol, 2), -1, dtype=np.int64)
    neighbour = np.full(n_mol, np.nan)
    for n in np.unique(counts):
        n = int(n)
        if n < 2:
            continue
        mols = np.flatnonzero(counts == n)
        if n > DENSE_DISTANCE_MAX_ATOMS:
            for i in mols:
                pos = np.asarray(R[offsets[i] : offsets[i + 1]], dtype=np.float64)
                if not np.isfinite(pos).all():
                    dmin[i] = np.nan
                    continue
                dist, idx = cKDTree(pos).query(pos, k=2)
                a = int(np.argmin(dist[:, 1]))
                dmin[i], pairs[i] = dist[a, 1], (a, idx[a, 1])
                neighbour[i] = np.median(dist[:, 1])
            continue
        block = max(1, DISTANCE_BLOCK // (n * n))
        for s in range(0, mols.size, block):
            sel = mols[s : s + block]
            pos = R[offsets[sel][:, None] + np.arange(n)].astype(np.float64)
            pos -= pos.mean(axis=1, keepdims=True)  # small norms: less cancellation
            sq = np.einsum("mij,mij->mi", pos, pos)
            d2 = sq[:, :, None] + sq[:, None, :] - 2.0 * pos @ pos.transpose(0, 2, 1)
            d2[:, np.arange(n), np.arange(n)] = np.inf
            flat = d2.reshape(sel.size, -1)
            arg = np.argmin(flat, axis=1)
            best = flat[np.arange(sel.size), arg]
            dmin[sel] = np.sqrt(np.maximum(best, 0.0))
            pairs[sel, 0], pairs[sel, 1] = np.divmod(arg, n)
            nearest = np.sqrt(np.maximum(d2.min(axis=2), 0.0))
            neighbour[sel] = np.median(nearest, axis=1)
            bad = ~np.isfinite(pos).all(axis=(1, 2))
            dmin[sel[bad]] = np.nan
            neighbour[sel[bad]] = np.nan
            pairs[sel[bad]] = -1
    return dmin, pairs, neighbour


def robust_z(
    values: np.ndarray, reference: np.ndarray, floor: float
) -> tuple[np.ndarray, float, float]:
    """Robust z-scores ``(values - median) / (1.4826 · MAD)`` of ``values``, with
    median and MAD taken from ``reference``; returns (z, median, MAD)."""
    med = float(np.median(reference))
    mad = float(np.median(np.abs(reference - med)))
    scale = MAD_TO_SIGMA * max(mad, floor)
    return (values - med) / scale, med, mad


def _relpath(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _read_manifest(path: Path, col: _Collector) -> dict[str, Any] | None:
    """The checked manifest (:func:`physpack.data.manifest.read_manifest`), or
    ``None`` with a ``manifest`` error when it is unusable."""
    try:
        return read_manifest(path)
    except InputError as exc:
        col.add("manifest", str(exc), file=MANIFEST)
        return None


def _read_offsets(path: Path, col: _Collector) -> np.ndarray | None:
    p = path / OFFSETS
    if not p.exists():
        col.add("files", f"{p}: missing file", file=OFFSETS)
        return None
    try:
        offsets = np.load(p, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        col.add("files", f"{p}: unreadable ({exc})", file=OFFSETS)
        return None
    if offsets.ndim != 1 or offsets.size < 1 or offsets.dtype.kind not in "iu":
        col.add(
            "offsets",
            f"{p}: expected a 1-D integer array, got {offsets.dtype} {offsets.shape}",
            file=OFFSETS,
        )
        return None
    return np.asarray(offsets, dtype=np.int64)


def _check_offsets(path: Path, offsets: np.ndarray, col: _Collector) -> None:
    if offsets[0] != 0:
        col.add(
            "offsets",
            f"{path / OFFSETS}: offsets[0] = {offsets[0]}, not 0",
            file=OFFSETS,
        )
    sizes = np.diff(offsets)
    neg = np.flatnonzero(sizes < 0)
    col.add_molecules(
        "offsets",
        neg,
        "molecule {0}: offsets not monotonic (offsets[{0}] = {1} > offsets[{2}] = {3})",
        offsets[neg],
        neg + 1,
        offsets[neg + 1],
    )
    empty = np.flatnonzero(sizes == 0)
    col.add_molecules("offsets", empty, "molecule {}: no atoms (empty molecule)")
    if sizes.size == 0:
        col.add("offsets", f"{path}: empty dataset (0 molecules)", file=OFFSETS)
    p = path / N_ATOMS
    if not p.exists():
        return
    try:
        n_atoms = np.load(p, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        col.add("files", f"{p}: unreadable ({exc})", file=N_ATOMS)
        return
    if n_atoms.shape != sizes.shape:
        col.add(
            "offsets",
            f"{p}: shape {n_atoms.shape} but offsets.npy describes {sizes.size} "
            "molecules",
            file=N_ATOMS,
        )
        return
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    wrong = np.flatnonzero(n_atoms != sizes)
    col.add_molecules(
        "offsets",
        wrong,
        "molecule {}: n_atoms.npy says {}, offsets say {}",
        n_atoms[wrong],
        sizes[wrong],
    )


def _check_files(
    path: Path, offsets: np.ndarray, manifest: dict[str, Any] | None, col: _Collector
) -> None:
    n_mol, n_atoms = offsets.size - 1, int(offsets[-1])
    listed = (manifest or {}).get("arrays", {})
    if manifest is not None:
        for key, want in (("n_molecules", n_mol), ("n_atoms_total", n_atoms)):
            if key in manifest and manifest[key] != want:
                col.add(
                    "manifest",
                    f"{path / MANIFEST}: {key} = {manifest[key]} but offsets.npy "
                    f"gives {want}",
                    file=MANIFEST,
                )
    for key, spec in ARRAYS.items():
        p = path / spec.file
        if not p.exists():
            if spec.required or key in listed:
                col.add("files", f"{p}: missing file", file=spec.file)
            continue
        problem = size_problem(p, spec, n_mol, n_atoms)
        if problem is not None:
            col.add("files", problem, file=spec.file)
    sized = {s.file for s in ARRAYS.values()}  # already checked against the counts
    for entry in listed.values():
        p = path / str(entry.get("file", ""))
        if p.name in sized:
            continue
        if p.is_file() and "bytes" in entry and p.stat().st_size != entry["bytes"]:
            col.add(
                "files",
                f"{p}: {p.stat().st_size} bytes but the manifest says {entry['bytes']}",
                file=entry["file"],
            )
        elif not p.is_file() and p.name != OFFSETS:  # a missing offsets: reported
            col.add("files", f"{p}: missing file (listed in manifest)", file=p.name)


def _check_checksums(path: Path, manifest: dict[str, Any], col: _Collector) -> None:
    entries = [e for e in manifest["arrays"].values() if (path / e["file"]).is_file()]
    megabytes = [math.ceil((path / e["file"]).stat().st_size / 1e6) for e in entries]
    with Progress(sum(megabytes), f"validate {path.name}: sha256", "MB") as bar:
        for entry, size in zip(entries, megabytes):
            p = path / entry["file"]
            want = entry["sha256"]
            got = sha256_file(p)
            bar.update(size)
            if got == want:
                continue
            col.add(
                "checksum",
                f"{p}: sha256 {got[:12]}… differs from the manifest's {want[:12]}…",
                file=entry["file"],
            )


@dataclasses.dataclass
class _ContentState:
    """Accumulators of the streaming content pass."""

    fmax: np.ndarray  # float64 (n_mol,) largest |F| per molecule [eV/Å]
    fsample: list[np.ndarray]
    neighbour: np.ndarray  # float64 (n_mol,) median nearest-neighbour distance [Å]
    # bool (n_mol,): valid Z, finite R, E (and F): used by the fit and the statistics
    usable: np.ndarray


def _content_pass(
    ds: PackedDataset,
    config: cfg.ValidateConfig,
    col: _Collector,
    atoms_per_chunk: int,
) -> _ContentState:
    stride = sample_stride(ds.n_atoms_total)
    state = _ContentState(
        fmax=np.zeros(ds.n_molecules),
        fsample=[],
        neighbour=np.full(ds.n_molecules, np.nan),
        usable=np.ones(ds.n_molecules, dtype=bool),
    )
    bar = Progress(ds.n_molecules, f"validate {ds.path.name}: content")
    for chunk in ds.atom_chunks(atoms_per_chunk):
        bar.update(chunk.n_molecules)
        a, b, lo, hi = chunk.start, chunk.stop, chunk.lo, chunk.hi
        local, m, atom_mol = chunk.local_offsets, chunk.n_molecules, chunk.atom_molecule
        z = np.asarray(ds.Z[lo:hi])
        r = ds.canonical("R", lo, hi)

        bad = (z < 1) | (z > MAX_Z)
        mols, first = np.unique(atom_mol[bad], return_index=True)
        atoms = np.flatnonzero(bad)[first]
        col.add_molecules(
            "atomic_numbers",
            mols + a,
            f"molecule {{}}, atom {{}}: atomic number {{}} outside 1..{MAX_Z}",
            atoms - local[mols],
            z[atoms],
        )

        per_atom = {"R": r}
        if ds.F is not None:
            per_atom["F"] = ds.canonical("F", lo, hi)
        finite_mol = {}
        for key, arr in per_atom.items():
            ok_atom = np.isfinite(arr).all(axis=1)
            ok = np.bincount(atom_mol, weights=~ok_atom, minlength=m) == 0
            finite_mol[key] = ok
            _report_nonfinite(col, key, np.flatnonzero(~ok) + a)
        per_mol = {"E": ds.canonical("E", a, b), "Qtot": ds.canonical("Qtot", a, b)}
        if ds.D is not None:
            per_mol["D"] = ds.canonical("D", a, b)
        for key, arr in per_mol.items():
            ok = np.isfinite(arr.reshape(m, -1)).all(axis=1)
            finite_mol[key] = ok
            _report_nonfinite(col, key, np.flatnonzero(~ok) + a)

        with np.errstate(invalid="ignore", over="ignore"):
            dmin, pairs, state.neighbour[a:b] = min_interatomic_distances(r, local)
        close = np.flatnonzero(dmin < config.min_distance)
        col.add_molecules(
            "min_distance",
            close + a,
            "molecule {}: atoms {} and {} are {:.4f} Å apart "
            f"(< min_distance {config.min_distance} Å)",
            pairs[close, 0],
            pairs[close, 1],
            dmin[close],
        )

        valid_z = np.bincount(atom_mol, weights=bad, minlength=m) == 0
        usable = finite_mol["E"] & finite_mol["R"] & valid_z
        if "F" in per_atom:
            f = per_atom["F"].astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                fmag = np.sqrt(np.einsum("ij,ij->i", f, f))
            fmag_ok = np.where(np.isfinite(fmag), fmag, 0.0)
            fmax = np.zeros(m)
            np.maximum.at(fmax, atom_mol, fmag_ok)
            state.fmax[a:b] = fmax
            usable &= finite_mol["F"]
            keep = chunk.sample(stride) & np.isfinite(fmag)
            state.fsample.append(fmag[keep].astype(np.float32))
        state.usable[a:b] = usable
    bar.close()
    return state


def _report_nonfinite(col: _Collector, key: str, mols: np.ndarray) -> None:
    col.add_molecules(
        f"finite_{key}",
        mols,
        f"molecule {{}}: {ARRAYS[key].file} has NaN or inf values",
    )


def _fit_references(
    ds: PackedDataset, usable: np.ndarray, col: _Collector
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Per-element reference energies (float64 (MAX_Z + 1,) eV, and the elements
    present) fitted on the ``usable`` molecules by training's own least-squares fit
    (:func:`physpack.reference.fit_energy_constants`)."""
    loader = PackedMemmapLoader(
        ds,
        batch_size=FIT_BATCH,
        shuffle=False,
        indices=np.flatnonzero(usable),
        prefetch=0,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        constants, _ = fit_energy_constants(loader, MAX_Z)
    for w in caught:
        col.add("energy_reference", str(w.message), level="warning")
    return np.asarray(constants.reference_energies, np.float64), constants.elements


def _outliers(
    ds: PackedDataset,
    config: cfg.ValidateConfig,
    col: _Collector,
    state: _ContentState,
    atoms_per_chunk: int,
) -> dict[str, Any]:
    """Energy and force outlier warnings and the plausibility of the dataset's
    scales (:mod:`physpack.data.plausibility`); returns the fitted reference values
    and the scales."""
    summary: dict[str, Any] = {}
    usable = state.usable
    if usable.sum() < 3:
        return summary
    try:
        table, elements = _fit_references(ds, usable, col)
    except PhyspackError as exc:  # e.g. a molecule beyond the loader's size limit
        col.add("energy_reference", f"no reference fit: {exc}", level="warning")
        return summary
    summary["element_reference_energy_eV"] = {
        chemical_symbols[e]: float(table[e]) for e in elements
    }
    residual = np.empty(ds.n_molecules)
    for chunk in ds.atom_chunks(atoms_per_chunk):
        a, b = chunk.start, chunk.stop
        z = np.clip(np.asarray(ds.Z[chunk.lo : chunk.hi]), 0, MAX_Z)
        fitted = np.bincount(
            chunk.atom_molecule, weights=table[z], minlength=chunk.n_molecules
        )
        residual[a:b] = (ds.canonical("E", a, b) - fitted) / chunk.counts
    z, med, mad = robust_z(residual, residual[usable], MAD_FLOOR["energy"])
    flagged = np.flatnonzero(usable & (np.abs(z) > config.outlier_z))
    col.add_molecules(
        "energy_outlier",
        flagged,
        "molecule {}: energy residual {:+.4f} eV/atom from the element-reference "
        "fit (robust z = {:.1f})",
        residual[flagged] - med,
        z[flagged],
        level="warning",
    )
    summary["energy_residual_eV_per_atom"] = {"median": med, "mad": mad}
    units = ds.units
    plausible = {
        "plausible_energies": plausibility.check_reference_energies(
            {e: float(table[e]) for e in elements}, units
        )
    }
    neighbour = state.neighbour[usable & np.isfinite(state.neighbour)]
    if neighbour.size:
        nn = float(np.median(neighbour))
        summary["median_nearest_neighbour_A"] = nn
        plausible["plausible_distances"] = plausibility.check_neighbour_distance(
            nn, units
        )
    if ds.F is not None and state.fsample:
        sample = np.concatenate(state.fsample).astype(np.float64)
        if sample.size:
            fz, fmed, fmad = robust_z(state.fmax, sample, MAD_FLOOR["force"])
            hot = np.flatnonzero(usable & (fz > config.outlier_z))
            col.add_molecules(
                "force_outlier",
                hot,
                "molecule {}: largest |F| {:.3f} eV/Å (robust z = {:.1f}; median |F| "
                f"{fmed:.3f} eV/Å)",
                state.fmax[hot],
                fz[hot],
                level="warning",
            )
            summary["force_magnitude_eV_per_A"] = {
                "median": fmed,
                "mad": fmad,
                "sampled_atoms": int(sample.size),
            }
            plausible["plausible_forces"] = plausibility.check_force_magnitude(
                fmed, units
            )
    for check, message in plausible.items():
        if message is not None:
            col.add(check, f"{ds.path}: {message}", level="warning")
    return summary


def _open(path: Path, units: dict[str, str] | None, col: _Collector) -> PackedDataset:
    """The dataset, its :class:`PackedDataWarning` (all-zero forces) reported as
    ``forces`` warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PackedDataWarning)
        ds = PackedDataset(path, units=units)
    for w in caught:
        if issubclass(w.category, PackedDataWarning):
            col.add("forces", str(w.message), file=ARRAYS["F"].file, level="warning")
    return ds


def validate_packed(
    path: str | Path,
    config: cfg.ValidateConfig | None = None,
    *,
    units: dict[str, str] | None = None,
    atoms_per_chunk: int = 1 << 20,
) -> ValidationReport:
    """Run every check on the packed directory ``path``.

    Values are checked in eV, Å, eV/Å (converted from the stored ``units``).

    Args:
        path: packed directory (with or without ``manifest.json``), or a dataset
            descriptor (:mod:`physpack.data.descriptor`) naming one and its units.
        units: the directory's units when it has no manifest (``physpack.units``
            names by kind); ignored for a descriptor, which carries its own.
            ``validate.require_manifest: null`` requires ``manifest.json`` unless
            units are declared (here or by a descriptor).
        config: the ``validate`` config section; defaults when ``None``.
        atoms_per_chunk: atoms read per step of the streaming pass (memory bound).

    Raises:
        InputError: only when ``path`` is not a directory; every problem inside it
        goes into the report.
    """
    config = config or cfg.ValidateConfig()
    path = Path(path)
    require = config.require_manifest
    if path.is_file():  # a dataset descriptor: the directory and its units
        described = read_descriptor(path)
        if described.packed is None:  # shards: each checked, then one summary
            reports = [
                validate_packed(shard, config, atoms_per_chunk=atoms_per_chunk)
                for shard in described.shards
            ]
            return combine_shard_reports(path, reports, config)
        path, units = described.packed, described.units
    if require is None:
        # a directory physpack converted always has one; one described or given
        # with declared units (data.packed) may come from the older tooling
        require = units is None
    if not path.is_dir():
        raise InputError(f"{path}: packed directory not found")
    col = _Collector(config.max_reported)
    checks = ["manifest", "offsets", "files"]
    skipped: dict[str, str] = {}
    summary: dict[str, Any] = {
        "units": {"distance": "Angstrom", "energy": "eV", "forces": "eV/Angstrom"}
    }
    manifest = _read_manifest(path, col)
    summary["has_manifest"] = (path / MANIFEST).exists()
    if require and not summary["has_manifest"]:
        col.add(
            "manifest",
            f"{path / MANIFEST}: missing, so the files' checksums cannot be verified; "
            "physpack writes one into every directory it converts (deleted?). For a "
            "directory of the older tooling set validate.require_manifest: false",
            file=MANIFEST,
        )
    offsets = _read_offsets(path, col)
    if offsets is not None:
        _check_offsets(path, offsets, col)
        _check_files(path, offsets, manifest, col)
        summary["n_molecules"] = int(offsets.size - 1)
        summary["n_atoms_total"] = int(offsets[-1])
    if manifest is not None and config.checksums:
        checks.append("checksum")
        _check_checksums(path, manifest, col)
    elif config.checksums:
        skipped["checksum"] = "no usable manifest.json"
    else:
        skipped["checksum"] = "disabled (checksums: false)"
    content = [
        "atomic_numbers",
        "finite",
        "min_distance",
        "energy_outlier",
        "force_outlier",
        "plausible_energies",
        "plausible_distances",
        "plausible_forces",
    ]
    ds = None
    if offsets is None or col.has_errors("manifest", "offsets", "files"):
        reason = "structure errors (see files/offsets/manifest)"
    else:
        try:
            ds = _open(path, units, col)
        except PhyspackError as exc:  # e.g. units that disagree with the manifest
            col.add("units", str(exc), file=MANIFEST)
            reason = "the dataset cannot be opened (see units)"
    if ds is None:
        for check in content:
            skipped[check] = reason
    else:
        summary["stored_units"] = ds.units
        summary["max_atoms"] = int(np.max(ds.n_atoms))
        summary["arrays"] = ds.keys
        state = _content_pass(ds, config, col, atoms_per_chunk)
        checks += content[:3]
        summary.update(_outliers(ds, config, col, state, atoms_per_chunk))
        checks += ["energy_outlier", "plausible_energies", "plausible_distances"]
        if ds.F is not None:
            checks += ["force_outlier", "plausible_forces"]
        else:
            for check in ("force_outlier", "plausible_forces"):
                skipped[check] = "no forces in this dataset"
    return ValidationReport(
        path=str(path),
        errors=tuple(col.listed["error"]),
        warnings=tuple(col.listed["warning"]),
        error_counts=dict(col.counts["error"]),
        warning_counts=dict(col.counts["warning"]),
        summary=summary,
        checks=tuple(checks),
        skipped=skipped,
        config=config,
    )


def combine_shard_reports(
    dataset: str | Path,
    reports: Sequence[ValidationReport],
    config: cfg.ValidateConfig | None = None,
) -> ValidationReport:
    """One report for a sharded dataset from its shards' reports.

    The shards are those of the descriptor ``dataset``, in its order; each report
    must be of its shard (same directory, same counts as described), else that is
    an error of the ``shards`` check. Problems keep their messages (which name the
    shard's files) and their molecule indices become global; counts add up; the
    summary lists every shard. Checks across shards (outliers against the whole
    dataset) are those of each shard.

    Args:
        dataset: the dataset descriptor listing the shards.
        reports: one report per shard (:func:`validate_packed` of the shard, or
            :func:`report_from_json` of its file), in the descriptor's order.
    """
    config = config or cfg.ValidateConfig()
    dataset = Path(dataset)
    described = read_descriptor(dataset)
    col = _Collector(config.max_reported)
    if described.packed is not None:
        raise InputError(f"{dataset}: not a sharded dataset (it names one directory)")
    if len(reports) != len(described.shards):
        col.add(
            "shards",
            f"{dataset}: lists {len(described.shards)} shards but "
            f"{len(reports)} shard reports were given",
        )
    errors: list[Problem] = []
    warned: list[Problem] = []
    counts: dict[str, dict[str, int]] = {"error": {}, "warning": {}}
    checks: list[str] = ["shards"]
    skipped: dict[str, str] = {}
    shards = []
    start = 0
    for k, (shard, report) in enumerate(zip(described.shards, reports, strict=False)):
        n, t = described.shard_counts[k]
        got = (report.summary.get("n_molecules"), report.summary.get("n_atoms_total"))
        if shard.resolve() != Path(report.path).resolve():
            col.add(
                "shards",
                f"{dataset}: shard {k} is {shard}, but its report is of {report.path}",
            )
        elif report.ok and got != (n, t):
            col.add(
                "shards",
                f"{dataset}: shard {shard} has {got[0]} molecules and {got[1]} atoms, "
                f"but the descriptor lists {n} and {t} (replaced after it was "
                "described; rerun the workflow)",
            )
        for level, problems, into in (
            ("error", report.errors, errors),
            ("warning", report.warnings, warned),
        ):
            for p in problems:
                into.append(_in_shard(p, report.path, start))
            source = report.error_counts if level == "error" else report.warning_counts
            for check, c in source.items():
                counts[level][check] = counts[level].get(check, 0) + c
        checks += [c for c in report.checks if c not in checks]
        for check, why in report.skipped.items():
            skipped.setdefault(check, f"{shard.name}: {why}")
        shards.append(
            {
                "path": report.path,
                "ok": report.ok,
                "n_molecules": got[0],
                "n_errors": report.n_errors,
                "n_warnings": report.n_warnings,
            }
        )
        start += n
    for level, into in (("error", errors), ("warning", warned)):
        into[:0] = col.listed[level]
        for check, c in col.counts[level].items():
            counts[level][check] = counts[level].get(check, 0) + c
    summaries = [r.summary for r in reports]
    summary: dict[str, Any] = {
        "units": {"distance": "Angstrom", "energy": "eV", "forces": "eV/Angstrom"},
        "n_shards": len(described.shards),
        "n_molecules": int(sum(n for n, _ in described.shard_counts)),
        "n_atoms_total": int(sum(t for _, t in described.shard_counts)),
        "shards": shards,
    }
    if summaries and all("max_atoms" in s for s in summaries):
        summary["max_atoms"] = max(s["max_atoms"] for s in summaries)
    return ValidationReport(
        path=str(dataset),
        errors=tuple(errors),
        warnings=tuple(warned),
        error_counts={k: v for k, v in counts["error"].items() if v},
        warning_counts={k: v for k, v in counts["warning"].items() if v},
        summary=summary,
        checks=tuple(checks),
        skipped=skipped,
        config=config,
    )


def _in_shard(problem: Problem, shard: str, start: int) -> Problem:
    """A shard's problem as one of the dataset: the message names the shard (and
    the molecule's dataset index), the molecule index is global."""
    message = problem.message
    if not message.startswith(shard):
        message = f"{shard}: {message}"
    if problem.molecule is None:
        return dataclasses.replace(problem, message=message)
    index = problem.molecule + start
    return dataclasses.replace(
        problem, molecule=index, message=f"{message} (dataset molecule {index})"
    )


def report_from_json(data: dict[str, Any], source: str | Path) -> ValidationReport:
    """A report written by :meth:`ValidationReport.to_json` (``source``: its file,
    for messages). Raises InputError when it is not one."""
    try:
        return ValidationReport(
            path=str(data["path"]),
            errors=tuple(Problem(**p) for p in data["errors"]),
            warnings=tuple(Problem(**p) for p in data["warnings"]),
            error_counts=dict(data["error_counts"]),
            warning_counts=dict(data["warning_counts"]),
            summary=dict(data["summary"]),
            checks=tuple(data["checks"]),
            skipped=dict(data["skipped"]),
            config=cfg.ValidateConfig(**data["config"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{source}: not a validation report ({exc!r})") from exc


def failed_report_path(output: Path) -> Path:
    """Where the report goes when validation fails (never at ``output`` itself, so
    that the workflow sees the stage fail): ``validation.json`` →
    ``validation.failed.json``."""
    return output.with_name(f"{output.stem}.failed{output.suffix or '.json'}")


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """Write ``data`` as JSON to a temporary sibling, then rename it to ``path``."""
    with StagedOutputs() as staged:
        staged.file(path).write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_report(report: ValidationReport, output: Path) -> Path:
    """Write the report to ``output`` when ok, else to :func:`failed_report_path`
    (removing any stale ``output``); returns the path written."""
    failed = failed_report_path(output)
    target = output if report.ok else failed
    write_json_atomic(report.to_json(), target)
    (failed if report.ok else output).unlink(missing_ok=True)
    return target


@cli_entry("physpack validate")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="physpack validate",
        description="Integrity checks of a packed directory; writes a JSON report "
        "and exits non-zero when there are errors.",
    )
    parser.add_argument(
        "packed",
        type=Path,
        help="packed directory, or dataset descriptor (a sharded dataset: every "
        "shard is checked)",
    )
    parser.add_argument(
        "--output", type=Path, required=True, help="validation report (JSON)"
    )
    parser.add_argument(
        "--shard-reports",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="combine these reports of the shards (in the descriptor's order; "
        "failed ones included) into the sharded dataset's report, without "
        "reading the shards again",
    )
    cfg.add_section_arguments(parser, cfg.ValidateConfig, "validate")
    args = parser.parse_args(argv)
    config = cfg.section_from_args(cfg.ValidateConfig, args, "validate")
    if args.shard_reports:
        reports = []
        for path in args.shard_reports:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(
                    f"{path}: unreadable validation report ({exc})"
                ) from exc
            reports.append(report_from_json(data, path))
        report = combine_shard_reports(args.packed, reports, config)
    else:
        report = validate_packed(args.packed, config)
    written = write_report(report, args.output)
    if not report.ok:
        raise InputError(f"{report.one_line()} (report: {written})")
    print(report.one_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
