"""The packed on-disk format: file names, array dtypes and shapes, units.

A packed dataset is a directory::

    offsets.npy     int64   (n_mol + 1,)   atom offset of each molecule, offsets[0] == 0
    n_atoms.npy     int32   (n_mol,)       atoms per molecule, == diff(offsets)
    Z_pack.int32    int32   (n_atoms_total,)     atomic numbers
    R_pack.f32      float32 (n_atoms_total, 3)   positions [Å]
    F_pack.f32      float32 (n_atoms_total, 3)   forces [eV/Å]          (optional)
    E.f64           float64 (n_mol,)             total energies [eV]
    Qtot.f64        float64 (n_mol,)             total charges [e]      (optional)
    D.f64           float64 (n_mol, 3)           dipole moments [e·Å]   (optional)
    E_dispersion.f64 float64 (n_mol,)            D3 energy subtracted from E and its
                                                 forces from F [eV] (optional; see
                                                 :mod:`physpack.dispersion`)
    manifest.json   format version, counts, units, per-file dtype/shape/bytes/sha256,
                    source file and its sha256, the D3 settings (``dispersion``)

The ``*.int32``/``*.f32``/``*.f64`` files are raw little-endian binaries, so that
directories written by the older packed-memmap tooling (same names, no manifest)
stay readable: everything the manifest would say is derived from ``offsets.npy``.
Such directories may be in other units (the older converter documents kcal/mol and
kcal/mol/Å and converts nothing): they are opened with declared units, and
:func:`unit_scale` gives the factor of each array to eV, Å, eV/Å, e·Å.

This module says what the format is and nothing else: the directory is read by
:class:`~physpack.data.packed_dataset.PackedDataset` and written by
:class:`~physpack.data.packed.PackedWriter`; ``manifest.json`` is read (and
checked against its schema) by :mod:`physpack.data.manifest`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from physpack.errors import ConfigError
from physpack.units import (
    CANONICAL_UNITS,
    canonical_unit_name,
    dipole_factor,
    energy_factor,
    length_factor,
)

OFFSETS = "offsets.npy"
N_ATOMS = "n_atoms.npy"


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One raw binary array of the format.

    Attributes:
        key: name used in batches and in the NPZ (``Z``, ``R``, ``F``, ``E``, ...).
        file: file name inside the packed directory.
        dtype: little-endian numpy dtype string.
        per: ``"atom"`` (first axis runs over all atoms) or ``"molecule"``.
        trailing: shape after the first axis.
        required: whether every packed directory must have it.
    """

    key: str
    file: str
    dtype: str
    per: str
    trailing: tuple[int, ...]
    required: bool

    @property
    def itemsize(self) -> int:
        return int(
            np.dtype(self.dtype).itemsize * int(np.prod(self.trailing, dtype=int))
        )


ARRAYS: dict[str, ArraySpec] = {
    s.key: s
    for s in (
        ArraySpec("Z", "Z_pack.int32", "<i4", "atom", (), True),
        ArraySpec("R", "R_pack.f32", "<f4", "atom", (3,), True),
        ArraySpec("F", "F_pack.f32", "<f4", "atom", (3,), False),
        ArraySpec("E", "E.f64", "<f8", "molecule", (), True),
        ArraySpec("Qtot", "Qtot.f64", "<f8", "molecule", (), False),
        ArraySpec("D", "D.f64", "<f8", "molecule", (3,), False),
        ArraySpec("E_dispersion", "E_dispersion.f64", "<f8", "molecule", (), False),
    )
}


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (memory independent of file size)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


#: unit kinds a directory's units can be declared for (``physpack.units`` names)
UNIT_KINDS = ("energy", "length", "dipole")
#: how the stored array ``key`` converts to canonical units
_SCALE_KIND = {
    "E": "energy",
    "R": "length",
    "F": "forces",
    "D": "dipole",
    "E_dispersion": "energy",
}
#: largest atomic number (oganesson): atomic numbers are 1..MAX_Z
MAX_Z = 118
#: atoms kept (a stride sample) for medians and percentiles of per-atom values
ATOM_SAMPLE = 1 << 22


def full_units(units: Mapping[str, str] | None) -> dict[str, str]:
    """Complete, canonically spelled unit labels from a partial declaration.

    Args:
        units: ``{"energy": ..., "length": ..., "dipole": ...}`` (any subset; names
            and aliases of :mod:`physpack.units`); missing kinds are canonical.
            ``forces`` and ``charge`` may be given only if they equal
            energy/length and ``e``.

    Returns:
        ``{"energy", "length", "forces", "dipole", "charge"}`` labels.

    Raises:
        ConfigError: an unknown kind or unit, or inconsistent force/charge units.
    """
    units = dict(units or {})
    unknown = sorted(set(units) - {*UNIT_KINDS, "forces", "charge"})
    if unknown:
        raise ConfigError(
            f"units: unknown kind(s) {', '.join(unknown)}; expected "
            f"{', '.join(UNIT_KINDS)}"
        )
    out = {
        kind: canonical_unit_name(units.get(kind, CANONICAL_UNITS[kind]), kind)
        for kind in UNIT_KINDS
    }
    out["forces"] = f"{out['energy']}/{out['length']}"
    out["charge"] = "e"
    for kind in ("forces", "charge"):
        if kind in units and units[kind] != out[kind]:
            raise ConfigError(
                f"units: {kind} {units[kind]!r} disagrees with the other units "
                f"(expected {out[kind]!r})"
            )
    return {k: out[k] for k in CANONICAL_UNITS}


def unit_scale(units: Mapping[str, str], key: str) -> float:
    """Factor from the stored unit of array ``key`` (in ``units``, as returned by
    :func:`full_units`) to the canonical one; 1.0 for ``Z``, ``Qtot``."""
    kind = _SCALE_KIND.get(key)
    if kind is None:
        return 1.0
    if kind == "forces":
        return energy_factor(units["energy"]) / length_factor(units["length"])
    factor = {"energy": energy_factor, "length": length_factor, "dipole": dipole_factor}
    return float(factor[kind](units[kind]))


@dataclasses.dataclass(frozen=True)
class AtomChunk:
    """Consecutive molecules ``start:stop`` and their atoms ``lo:hi``.

    Attributes:
        start, stop: molecule range (global indices).
        offsets: int64 (m + 1,) the dataset's offsets of molecules start..stop.
    """

    start: int
    stop: int
    offsets: np.ndarray

    @property
    def lo(self) -> int:
        """First atom (global index)."""
        return int(self.offsets[0])

    @property
    def hi(self) -> int:
        """One past the last atom (global index)."""
        return int(self.offsets[-1])

    @property
    def n_molecules(self) -> int:
        return self.stop - self.start

    @property
    def local_offsets(self) -> np.ndarray:
        """int64 (m + 1,) atom offsets within the chunk, starting at 0."""
        return self.offsets - self.offsets[0]

    @property
    def counts(self) -> np.ndarray:
        """int64 (m,) atoms per molecule."""
        return np.diff(self.offsets)

    @property
    def atom_molecule(self) -> np.ndarray:
        """int64 (hi - lo,) chunk-local molecule index (0..m-1) of every atom."""
        return np.repeat(np.arange(self.n_molecules), self.counts)

    def sample(self, stride: int) -> np.ndarray:
        """bool (hi - lo,): the atoms of the dataset-wide every-``stride``-th sample
        (:func:`sample_stride`)."""
        return (self.lo + np.arange(self.hi - self.lo)) % stride == 0


def sample_stride(n_atoms_total: int) -> int:
    """Stride of the per-atom sample that keeps at most :data:`ATOM_SAMPLE` atoms
    (for medians and percentiles of streamed per-atom values)."""
    return max(1, math.ceil(n_atoms_total / ATOM_SAMPLE))


def size_problem(
    path: Path, spec: ArraySpec, n_molecules: int, n_atoms_total: int
) -> str | None:
    """Why the file ``path`` of ``spec`` has the wrong size for the counts (one line
    naming it), or ``None`` when its size is right."""
    n = n_atoms_total if spec.per == "atom" else n_molecules
    expected = max(n, 0) * spec.itemsize
    size = path.stat().st_size
    if size == expected:
        return None
    return (
        f"{path}: {size} bytes but {n} {spec.per}s × {spec.itemsize} bytes = "
        f"{expected} expected (truncated or from another dataset)"
    )


def molecule_chunks(offsets: np.ndarray, max_atoms: int) -> Iterator[tuple[int, int]]:
    """Split molecules into consecutive ranges ``(start, stop)`` holding at most
    ``max_atoms`` atoms each (one larger molecule forms a range of its own).

    Args:
        offsets: int64 (n_mol + 1,), non-decreasing, ``offsets[0] == 0``.
        max_atoms: atom budget per range (≥ 1).
    """
    n_mol = offsets.size - 1
    start = 0
    while start < n_mol:
        limit = offsets[start] + max_atoms
        stop = int(np.searchsorted(offsets, limit, side="right")) - 1
        stop = min(max(stop, start + 1), n_mol)
        yield start, stop
        start = stop
