"""The packed on-disk format: flat per-atom and per-molecule arrays plus offsets.

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
kcal/mol/Å and converts nothing): open them with ``units=`` to declare them. The
arrays stay as stored; :meth:`PackedDataset.scale` gives the factor to eV, Å.
Without ``Qtot.f64`` molecules are neutral; an all-zero ``F_pack.f32`` (what the
older converter writes for data without forces) is not taken for forces.

Directories are written into a temporary sibling and renamed when complete
(:class:`PackedWriter`), so a directory that exists is a finished one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import queue
import shutil
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np

from physpack import __version__
from physpack.atomic import replace_dir, temporary_sibling
from physpack.data.manifest import FORMAT_NAME, FORMAT_VERSION, MANIFEST, read_manifest
from physpack.errors import ConfigError, InputError
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


class PackedDataWarning(UserWarning):
    """Data that is read, but not as it is stored (e.g. all-zero forces dropped)."""


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
#: rows checked per step when scanning offsets or forces
_SCAN_ROWS = 1 << 20
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


class PackedDataset:
    """Read-only, memory-mapped view of a packed directory.

    Only ``offsets`` and ``n_atoms`` are index arrays; every data array is a
    ``np.memmap``, so opening a dataset costs memory independent of its size.

    Arrays are returned as stored. Directories this package wrote are in eV, Å,
    eV/Å, e·Å; others (older tooling) are in the units declared with ``units``
    (canonical when not declared). Multiply by :meth:`scale` to get canonical values.

    Args:
        path: the directory (a dataset descriptor, ``dataset.json``, is opened
            with :func:`physpack.data.descriptor.open_dataset`).
        units: the directory's units, e.g. ``{"energy": "kcal/mol", "length":
            "Angstrom", "dipole": "e*Angstrom"}``; must agree with the manifest's
            when there is one.

    Attributes:
        path: the directory.
        manifest: the parsed ``manifest.json``, or ``None`` for older directories.
        offsets: int64 (n_molecules + 1,), memory-mapped, strictly increasing.
        n_atoms: int32 (n_molecules,), memory-mapped.
        Z, R, E, Qtot: always present (Qtot: zeros when the directory has no
        ``Qtot.f64``); F, D: ``None`` when absent (F also when every force is 0).
        dispersion: the manifest's record of the D3 term subtracted from E and F
        (``damping``, ``functional``, ``label``, ``dftd3_version``), ``None``
        when none was (:mod:`physpack.dispersion`).

    Raises:
        InputError: a missing or truncated file, offsets that do not increase,
        counts or units that disagree, naming the file.
    """

    def __init__(self, path: str | os.PathLike, units: Mapping[str, str] | None = None):
        path = Path(path)
        if path.is_file():
            # descriptors are read by physpack.data.descriptor, which imports this
            # module: reading them here too would make an import circle
            raise InputError(
                f"{path}: a file, not a packed directory; open a dataset descriptor "
                "with physpack.data.descriptor.open_dataset"
            )
        self.path = path
        if not self.path.is_dir():
            raise InputError(f"{self.path}: packed directory not found")
        self.manifest: dict[str, Any] | None = read_manifest(self.path)
        self._units = self._resolve_units(units)
        self.dispersion: dict[str, Any] | None = (self.manifest or {}).get("dispersion")
        self.offsets = self._load_index(OFFSETS, np.int64)
        if self.offsets.ndim != 1 or self.offsets.size < 1 or self.offsets[0] != 0:
            raise InputError(
                f"{self.path / OFFSETS}: expected a 1-D int64 array starting at 0"
            )
        self.n_molecules = int(self.offsets.size - 1)
        self.n_atoms_total = int(self.offsets[-1])
        self._check_increasing()
        n_atoms_path = self.path / N_ATOMS
        if n_atoms_path.exists():
            self.n_atoms = self._load_index(N_ATOMS, np.int32)
        else:  # derivable: older writers may have left it out
            self.n_atoms = np.diff(self.offsets).astype(np.int32)
        if self.n_atoms.shape != (self.n_molecules,):
            raise InputError(
                f"{n_atoms_path}: shape {self.n_atoms.shape} but offsets.npy "
                f"describes {self.n_molecules} molecules"
            )
        if self.manifest is not None:
            for key, want in (
                ("n_molecules", self.n_molecules),
                ("n_atoms_total", self.n_atoms_total),
            ):
                if self.manifest[key] != want:
                    raise InputError(
                        f"{self.path / MANIFEST}: {key}={self.manifest[key]} but "
                        f"offsets.npy gives {want}"
                    )
        self._arrays: dict[str, np.ndarray | None] = {
            key: self._map(spec) for key, spec in ARRAYS.items()
        }
        if self._arrays["Qtot"] is None:  # older tooling: neutral molecules
            self._arrays["Qtot"] = np.broadcast_to(
                np.zeros((), ARRAYS["Qtot"].dtype), (self.n_molecules,)
            )
        forces = self._arrays["F"]
        if forces is not None and self.n_atoms_total and _all_zero(forces):
            warnings.warn(
                f"{self.path / ARRAYS['F'].file}: every force is exactly zero (what "
                "the older converter writes for data without forces); the dataset "
                "is read without forces (energies only)",
                PackedDataWarning,
                stacklevel=2,
            )
            self._arrays["F"] = None

    # -- construction helpers -------------------------------------------------
    def _resolve_units(self, declared: Mapping[str, str] | None) -> dict[str, str]:
        stored = (self.manifest or {}).get("units")
        if stored is None:
            return full_units(declared)
        try:
            stored_units = full_units(stored)
        except ConfigError as exc:
            raise InputError(f"{self.path / MANIFEST}: {exc}") from exc
        if declared is not None and full_units(declared) != stored_units:
            raise InputError(
                f"{self.path / MANIFEST}: stored in {stored_units}, but the units "
                f"declared for it are {full_units(declared)}; the manifest's units "
                "are the right ones for a directory physpack wrote (leave the "
                "declared units at their defaults)"
            )
        return stored_units

    def _check_increasing(self) -> None:
        for a in range(0, self.n_molecules, _SCAN_ROWS):
            sizes = np.diff(np.asarray(self.offsets[a : a + _SCAN_ROWS + 1]))
            bad = np.flatnonzero(sizes <= 0)
            if bad.size:
                i = a + int(bad[0])
                raise InputError(
                    f"{self.path / OFFSETS}: offsets do not increase at molecule {i} "
                    f"(offsets[{i}] = {self.offsets[i]}, offsets[{i + 1}] = "
                    f"{self.offsets[i + 1]}): empty or negative-size molecule"
                )

    def _load_index(self, name: str, dtype: type) -> np.ndarray:
        p = self.path / name
        if not p.exists():
            raise InputError(f"{p}: missing file")
        try:
            arr = np.load(p, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise InputError(f"{p}: unreadable ({exc})") from exc
        if arr.dtype != np.dtype(dtype):
            arr = np.asarray(arr, dtype=dtype)
        return arr

    def _map(self, spec: ArraySpec) -> np.memmap | None:
        p = self.path / spec.file
        if not p.exists():
            listed = self.manifest is not None and spec.key in self.manifest.get(
                "arrays", {}
            )
            if spec.required or listed:
                raise InputError(f"{p}: missing file")
            return None
        problem = size_problem(p, spec, self.n_molecules, self.n_atoms_total)
        if problem is not None:
            raise InputError(problem)
        n = self.n_atoms_total if spec.per == "atom" else self.n_molecules
        if n == 0:
            return np.zeros((0, *spec.trailing), dtype=spec.dtype)  # type: ignore[return-value]
        return np.memmap(p, dtype=spec.dtype, mode="r", shape=(n, *spec.trailing))

    # -- access -----------------------------------------------------------------
    def __len__(self) -> int:
        return self.n_molecules

    def has(self, key: str) -> bool:
        """Whether the optional array ``key`` (``"F"``, ``"D"``,
        ``"E_dispersion"``) is present."""
        return self._arrays.get(key) is not None

    def array(self, key: str) -> np.ndarray:
        """The array ``key`` as stored (memory-mapped, in :attr:`units`; multiply by
        :meth:`scale` for canonical units); raises KeyError when absent."""
        arr = self._arrays[key]
        if arr is None:
            raise KeyError(f"{self.path}: no {ARRAYS[key].file} in this dataset")
        return arr

    def scale(self, key: str) -> float:
        """Factor from the stored unit of array ``key`` to the canonical one:
        E → eV, R → Å, F → eV/Å, D → e·Å; 1.0 for Z, Qtot and for directories
        stored in canonical units."""
        if key not in ARRAYS:
            raise KeyError(f"{self.path}: no array {key!r} in the packed format")
        return unit_scale(self._units, key)

    def canonical(
        self, key: str, start: int = 0, stop: int | None = None
    ) -> np.ndarray:
        """Rows ``start:stop`` of array ``key`` in canonical units: as stored when
        :meth:`scale` is 1, else a float64 copy multiplied by it."""
        rows = np.asarray(self.array(key)[start:stop])
        factor = self.scale(key)
        return rows if factor == 1.0 else rows.astype(np.float64) * factor

    @property
    def keys(self) -> list[str]:
        """Keys of the arrays present, in format order."""
        return [k for k, v in self._arrays.items() if v is not None]

    Z = property(lambda self: self.array("Z"))
    R = property(lambda self: self.array("R"))
    E = property(lambda self: self.array("E"))
    Qtot = property(lambda self: self.array("Qtot"))
    F = property(lambda self: self._arrays["F"])
    D = property(lambda self: self._arrays["D"])

    @property
    def units(self) -> dict[str, str]:
        """Units of the stored arrays: the manifest's, else the declared ones, else
        canonical (``energy``, ``length``, ``forces``, ``dipole``, ``charge``)."""
        return dict(self._units)

    def molecule(self, i: int) -> dict[str, np.ndarray]:
        """Molecule ``i`` unpadded, as stored: per-atom arrays (n, ...) and
        per-molecule values."""
        if not -self.n_molecules <= i < self.n_molecules:
            raise IndexError(f"molecule {i} out of range for {self.n_molecules}")
        i %= self.n_molecules
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        out: dict[str, np.ndarray] = {}
        for key, spec in ARRAYS.items():
            arr = self._arrays[key]
            if arr is None:
                continue
            out[key] = np.array(arr[a:b] if spec.per == "atom" else arr[i])
        return out

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.n_molecules):
            yield self.molecule(i)

    def chunks(self, max_atoms: int = 1 << 20) -> Iterator[tuple[int, int]]:
        """Consecutive molecule ranges ``(start, stop)`` of at most ``max_atoms``
        atoms each (at least one molecule), for streaming passes over the data."""
        return molecule_chunks(np.asarray(self.offsets), max_atoms)

    def atom_chunks(self, max_atoms: int = 1 << 20) -> Iterator[AtomChunk]:
        """The ranges of :meth:`chunks` with their atom range and per-atom molecule
        index: the one walk over the offsets that every streaming pass uses."""
        offsets = np.asarray(self.offsets)
        for start, stop in molecule_chunks(offsets, max_atoms):
            yield AtomChunk(start, stop, offsets[start : stop + 1])

    def stored_bytes(self) -> int:
        """Bytes of every file of the directory (arrays, offsets, manifest)."""
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def checksums(self) -> dict[str, str] | None:
        """sha256 of every array file, by key, from the manifest; ``None`` when the
        manifest lacks them (older directories)."""
        arrays = (self.manifest or {}).get("arrays")
        if arrays and all("sha256" in v for v in arrays.values()):
            return {k: v["sha256"] for k, v in arrays.items()}
        return None

    def content_digests(self) -> list[str]:
        """sha256 of ``offsets.npy`` and of ``E.f64`` (read in full): a content
        identity for directories without checksums."""
        return [sha256_file(self.file_paths()[name]) for name in ("offsets", "E")]

    def file_paths(self) -> dict[str, Path]:
        """Every file of the dataset that exists, by key (plus offsets, n_atoms)."""
        files = {"offsets": self.path / OFFSETS}
        if (self.path / N_ATOMS).exists():
            files["n_atoms"] = self.path / N_ATOMS
        for key, spec in ARRAYS.items():
            if (self.path / spec.file).exists():
                files[key] = self.path / spec.file
        return files


class _Sink:
    """Writes and hashes appended arrays in a background thread (file writes and
    sha256 release the GIL), so that they overlap the reading and unpadding of the
    next chunk. At most ``depth`` arrays wait, which bounds the memory."""

    def __init__(self, handles: dict[str, Any], hashes: dict[str, Any], depth: int = 8):
        self._handles, self._hashes = handles, hashes
        self._queue: queue.Queue[tuple[str, np.ndarray] | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain after a failure
            key, data = item
            try:
                view = memoryview(data).cast("B")
                self._handles[key].write(view)
                self._hashes[key].update(view)
            except Exception as exc:  # noqa: BLE001  (re-raised in the caller's thread)
                self._error = exc

    def put(self, key: str, data: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((key, data))

    def close(self) -> None:
        """Wait until everything is written; raise what failed."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


def _sync(fh: Any) -> None:
    """Flush ``fh`` and fsync its file: its content is on disk when this returns."""
    fh.flush()
    os.fsync(fh.fileno())


def _sync_dir(path: Path) -> None:
    """fsync directory ``path``, so that the entries created or renamed in it
    survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _all_zero(arr: np.ndarray) -> bool:
    """Whether every value of ``arr`` is 0 (streamed; stops at the first non-zero)."""
    for a in range(0, arr.shape[0], _SCAN_ROWS):
        if np.any(np.asarray(arr[a : a + _SCAN_ROWS])):
            return False
    return True


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


class PackedWriter:
    """Stream molecules into a new packed directory, atomically and durably.

    Files are written into a hidden temporary sibling ``.<name>.tmp-<pid>``; checksums
    are computed while writing; :meth:`close` writes ``offsets.npy``, ``n_atoms.npy``
    and ``manifest.json``, fsyncs every file and the directory, and renames it into
    place (then fsyncs the parent): after a crash ``path`` is either absent (or its
    older version) or complete. If anything fails before the rename, the temporary
    directory is removed and ``path`` is untouched.

    Use as a context manager::

        with PackedWriter(out, has_forces=True, has_dipoles=False) as w:
            w.append(n_atoms=..., Z=..., R=..., F=..., E=..., Qtot=...)
            w.source = {"file": "data.npz", "sha256": "..."}

    ``has_dispersion`` adds the ``E_dispersion`` array (the caller records the
    settings in :attr:`extra`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        has_forces: bool,
        has_dipoles: bool,
        has_dispersion: bool = False,
        overwrite: bool = False,
    ):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise InputError(
                f"{self.path}: already exists; remove it or pass overwrite=True"
            )
        self.keys = [
            k
            for k, s in ARRAYS.items()
            # Qtot is optional to read (older directories), always written
            if s.required
            or k == "Qtot"
            or (k == "F" and has_forces)
            or (k == "D" and has_dipoles)
            or (k == "E_dispersion" and has_dispersion)
        ]
        self.overwrite = overwrite
        self.tmp = temporary_sibling(self.path)
        self.source: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self._counts: list[np.ndarray] = []
        self._handles: dict[str, Any] = {}
        self._hashes: dict[str, Any] = {}
        self._n_atoms_total = 0

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        for key in self.keys:
            self._handles[key] = open(self.tmp / ARRAYS[key].file, "wb")
            self._hashes[key] = hashlib.sha256()
        self._sink = _Sink(self._handles, self._hashes)
        return self

    def append(self, n_atoms: np.ndarray, **arrays: np.ndarray) -> None:
        """Append a chunk of molecules.

        Args:
            n_atoms: int (m,) atoms of each molecule in the chunk.
            **arrays: every key of :attr:`keys`; per-atom arrays concatenated over
                the chunk's molecules, (sum(n_atoms), ...); per-molecule arrays (m, ...).
                Values must already be in canonical units. They are written and
                hashed by a background thread: do not modify them afterwards.
        """
        n_atoms = np.asarray(n_atoms, dtype=np.int32)
        total = int(n_atoms.sum())
        missing = set(self.keys) - set(arrays)
        if missing:
            raise ValueError(f"append() lacks {sorted(missing)}")
        for key in self.keys:
            spec = ARRAYS[key]
            n = total if spec.per == "atom" else n_atoms.size
            data = np.ascontiguousarray(arrays[key], dtype=spec.dtype)
            if data.shape != (n, *spec.trailing):
                raise ValueError(
                    f"append(): {key} has shape {data.shape}, expected {(n, *spec.trailing)}"
                )
            self._sink.put(key, data)
        self._counts.append(n_atoms)
        self._n_atoms_total += total

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._sink.close()  # what failed in the writing thread is raised here
            if exc_type is None:  # on disk before the rename makes them visible
                for fh in self._handles.values():
                    _sync(fh)
        except Exception:
            if exc_type is None:
                self._discard()
                raise
        finally:
            for fh in self._handles.values():
                fh.close()
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            self._finish()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def _discard(self) -> None:
        for fh in self._handles.values():
            fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _finish(self) -> None:
        n_atoms = (
            np.concatenate(self._counts) if self._counts else np.zeros(0, np.int32)
        ).astype(np.int32)
        offsets = np.zeros(n_atoms.size + 1, dtype=np.int64)
        np.cumsum(n_atoms, out=offsets[1:])
        for name, arr in ((OFFSETS, offsets), (N_ATOMS, n_atoms)):
            with open(self.tmp / name, "wb") as fh:
                np.save(fh, arr)
                _sync(fh)
        arrays: dict[str, Any] = {}
        for name, arr in ((OFFSETS, offsets), (N_ATOMS, n_atoms)):
            arrays[name.removesuffix(".npy")] = {
                "file": name,
                "dtype": arr.dtype.str,
                "shape": list(arr.shape),
                "bytes": (self.tmp / name).stat().st_size,
                "sha256": sha256_file(self.tmp / name),
            }
        for key in self.keys:
            spec = ARRAYS[key]
            n = self._n_atoms_total if spec.per == "atom" else n_atoms.size
            arrays[key] = {
                "file": spec.file,
                "dtype": spec.dtype,
                "shape": [n, *spec.trailing],
                "bytes": (self.tmp / spec.file).stat().st_size,
                "sha256": self._hashes[key].hexdigest(),
            }
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created_by": f"physpack {__version__}",
            "n_molecules": int(n_atoms.size),
            "n_atoms_total": int(self._n_atoms_total),
            "max_atoms": int(n_atoms.max()) if n_atoms.size else 0,
            "units": dict(CANONICAL_UNITS),
            "optional": {"F": "F" in self.keys, "D": "D" in self.keys},
            "arrays": arrays,
            "source": self.source,
            **self.extra,
        }
        with open(self.tmp / MANIFEST, "w") as fh:
            fh.write(json.dumps(manifest, indent=2) + "\n")
            _sync(fh)
        _sync_dir(self.tmp)
        replace_dir(self.tmp, self.path)
        _sync_dir(self.path.parent)
