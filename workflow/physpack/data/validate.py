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
plausibility (the scales of the data, where unit mistakes show)
    ``plausible_energies``   fitted per-element energies within atomic scales
    ``plausible_distances``  median nearest-neighbour distance within 0.6–2 Å
    ``plausible_forces``     median |F| within 0.001–10 eV/Å
    (:mod:`physpack.data.plausibility`; values are checked in eV and Å, converted
    from the directory's stored or declared units). Energies beyond atomic scales
    and forces above 10 eV/Å are errors, unit errors that stop the stage, unless
    ``validate.allow_implausible_units``; the rest are warnings.

Every problem names the check, the molecule (or file) and the value; at most
``max_reported`` are listed per check, the counts are exact. A directory without
``manifest.json`` (older tooling) is checked from ``offsets.npy`` alone.

The structure checks are in :mod:`physpack.data.structure`, the report and its
file in :mod:`physpack.data.validation_report`, and the merging of a sharded
dataset's shard reports in :mod:`physpack.data.shard_reports`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols
from scipy.spatial import cKDTree

from physpack import config as cfg
from physpack.data import plausibility
from physpack.data.descriptor import read_descriptor
from physpack.data.loader import PackedMemmapLoader
from physpack.data.manifest import MANIFEST
from physpack.data.packed_dataset import PackedDataset, PackedDataWarning
from physpack.data.packed_format import ARRAYS, MAX_Z, sample_stride
from physpack.data.progress import Progress
from physpack.data.shard_reports import combine_shard_reports
from physpack.data.structure import check_structure
from physpack.data.validation_report import (
    Collector,
    Problem,
    ValidationReport,
    failed_report_path,
    read_report,
    report_from_json,
    write_report,
)
from physpack.errors import InputError, PhyspackError, cli_entry
from physpack.reference import fit_energy_constants

# the report and its merging live in their own modules; their names stay here too
__all__ = [
    "Problem",
    "ValidationReport",
    "combine_shard_reports",
    "failed_report_path",
    "main",
    "min_interatomic_distances",
    "report_from_json",
    "robust_z",
    "validate_packed",
    "write_report",
]

#: molecules larger than this get a k-d tree instead of a dense distance matrix
DENSE_DISTANCE_MAX_ATOMS = 512
#: distance-matrix entries per vectorised block (memory ≈ 8 bytes each, × a few)
DISTANCE_BLOCK = 1 << 21
#: robust-scale floors, so that a perfect fit does not turn rounding into outliers
MAD_FLOOR = {"energy": 1e-6, "force": 1e-6}
MAD_TO_SIGMA = 1.4826
#: molecules per batch of the reference-energy fit (streamed through the loader)
FIT_BATCH = 256


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
    col: Collector,
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


def _report_nonfinite(col: Collector, key: str, mols: np.ndarray) -> None:
    col.add_molecules(
        f"finite_{key}",
        mols,
        f"molecule {{}}: {ARRAYS[key].file} has NaN or inf values",
    )


def _fit_references(
    ds: PackedDataset, usable: np.ndarray, col: Collector
) -> tuple[np.ndarray, tuple[int, ...], bool]:
    """Per-element reference energies (float64 (MAX_Z + 1,) eV), the elements
    present and whether the compositions determine the values (full rank), fitted
    on the ``usable`` molecules by training's own least-squares fit
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
        constants, stats = fit_energy_constants(loader, MAX_Z)
    for w in caught:
        col.add("energy_reference", str(w.message), level="warning")
    table = np.asarray(constants.reference_energies, np.float64)
    return table, constants.elements, stats["composition_rank"] == stats["n_elements"]


def _energy_residuals(
    ds: PackedDataset, table: np.ndarray, atoms_per_chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each molecule's energy minus its per-element references, per atom [eV],
    and its |E| over the most its free atoms can have
    (:func:`physpack.data.plausibility.atom_energy_bounds`), both float64
    (n_mol,)."""
    residual = np.empty(ds.n_molecules)
    ratio = np.empty(ds.n_molecules)
    bounds = plausibility.atom_energy_bounds(MAX_Z)
    for chunk in ds.atom_chunks(atoms_per_chunk):
        a, b = chunk.start, chunk.stop
        z = np.clip(np.asarray(ds.Z[chunk.lo : chunk.hi]), 0, MAX_Z)
        m, atom_mol = chunk.n_molecules, chunk.atom_molecule
        fitted = np.bincount(atom_mol, weights=table[z], minlength=m)
        energy = ds.canonical("E", a, b)
        residual[a:b] = (energy - fitted) / chunk.counts
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio[a:b] = np.abs(energy) / np.bincount(atom_mol, bounds[z], m)
    return residual, ratio


def _outliers(
    ds: PackedDataset,
    config: cfg.ValidateConfig,
    col: Collector,
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
        table, elements, determined = _fit_references(ds, usable, col)
    except PhyspackError as exc:  # e.g. a molecule beyond the loader's size limit
        col.add("energy_reference", f"no reference fit: {exc}", level="warning")
        return summary
    summary["element_reference_energy_eV"] = {
        chemical_symbols[e]: float(table[e]) for e in elements
    }
    residual, ratio = _energy_residuals(ds, table, atoms_per_chunk)
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
    bound_ratio = float(np.median(ratio[usable]))
    summary["energy_over_free_atom_bound_median"] = bound_ratio
    units = ds.units
    findings = {
        "plausible_energies": plausibility.check_energies(
            {e: float(table[e]) for e in elements}, determined, bound_ratio, units
        )
    }
    neighbour = state.neighbour[usable & np.isfinite(state.neighbour)]
    if neighbour.size:
        nn = float(np.median(neighbour))
        summary["median_nearest_neighbour_A"] = nn
        findings["plausible_distances"] = plausibility.check_neighbour_distance(
            nn, units
        )
    if ds.F is not None and state.fsample:
        findings["plausible_forces"] = _force_outliers(ds, config, col, state, summary)
    for check, finding in findings.items():
        if finding is not None:
            message, level = finding.problem(ds.path, config.allow_implausible_units)
            col.add(check, message, level=level)
    return summary


def _force_outliers(
    ds: PackedDataset,
    config: cfg.ValidateConfig,
    col: Collector,
    state: _ContentState,
    summary: dict[str, Any],
) -> plausibility.Finding | None:
    """Molecules whose largest |F| is an outlier (warnings), the |F| statistics
    into ``summary``, and the plausibility of the median |F|."""
    sample = np.concatenate(state.fsample).astype(np.float64)
    if not sample.size:
        return None
    fz, fmed, fmad = robust_z(state.fmax, sample, MAD_FLOOR["force"])
    hot = np.flatnonzero(state.usable & (fz > config.outlier_z))
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
    return plausibility.check_force_magnitude(fmed, ds.units)


def _open(path: Path, units: dict[str, str] | None, col: Collector) -> PackedDataset:
    """The dataset, its :class:`PackedDataWarning` (all-zero forces) reported as
    ``forces`` warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PackedDataWarning)
        ds = PackedDataset(path, units=units)
    for w in caught:
        if issubclass(w.category, PackedDataWarning):
            col.add("forces", str(w.message), file=ARRAYS["F"].file, level="warning")
    return ds


#: the checks that read the arrays, skipped when the structure is broken
CONTENT_CHECKS = (
    "atomic_numbers",
    "finite",
    "min_distance",
    "energy_outlier",
    "force_outlier",
    "plausible_energies",
    "plausible_distances",
    "plausible_forces",
)


def _check_content(
    ds: PackedDataset,
    config: cfg.ValidateConfig,
    col: Collector,
    summary: dict[str, Any],
    checks: list[str],
    skipped: dict[str, str],
    atoms_per_chunk: int,
) -> None:
    """The content and plausibility checks of an opened dataset (one streaming
    pass, then the outliers against the fitted references)."""
    summary["stored_units"] = ds.units
    summary["max_atoms"] = int(np.max(ds.n_atoms))
    summary["arrays"] = ds.keys
    state = _content_pass(ds, config, col, atoms_per_chunk)
    checks += CONTENT_CHECKS[:3]
    summary.update(_outliers(ds, config, col, state, atoms_per_chunk))
    checks += ["energy_outlier", "plausible_energies", "plausible_distances"]
    if ds.F is not None:
        checks += ["force_outlier", "plausible_forces"]
    else:
        for check in ("force_outlier", "plausible_forces"):
            skipped[check] = "no forces in this dataset"


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
    col = Collector(config.max_reported)
    checks = ["manifest", "offsets", "files"]
    skipped: dict[str, str] = {}
    summary: dict[str, Any] = {
        "units": {"distance": "Angstrom", "energy": "eV", "forces": "eV/Angstrom"}
    }
    offsets = check_structure(path, config, require, col, summary, checks, skipped)
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
        for check in CONTENT_CHECKS:
            skipped[check] = reason
    else:
        _check_content(ds, config, col, summary, checks, skipped, atoms_per_chunk)
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


@cli_entry("physpack validate")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="physpack validate",
        description="Integrity checks of a packed directory; writes a JSON report, "
        "prints one line per check with problems, and exits non-zero when there "
        "are errors.",
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
        nargs="*",
        metavar="JSON",
        help="combine these reports of the shards (in the descriptor's order; "
        "failed ones included) into the sharded dataset's report, without "
        "reading the shards again (none: validate the dataset itself)",
    )
    cfg.add_section_arguments(parser, cfg.ValidateConfig, "validate")
    args = parser.parse_args(argv)
    config = cfg.section_from_args(cfg.ValidateConfig, args, "validate")
    if args.shard_reports:
        reports = [read_report(path) for path in args.shard_reports]
        report = combine_shard_reports(args.packed, reports, config)
    else:
        report = validate_packed(args.packed, config)
    written = write_report(report, args.output)
    for line in report.problem_lines(written):  # heard in the log, not only stored
        print(line, file=sys.stderr, flush=True)
    if not report.ok:
        raise InputError(f"{report.one_line()} (report: {written})")
    print(report.one_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
