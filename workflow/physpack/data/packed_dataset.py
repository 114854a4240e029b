"""Reading a packed directory: :class:`PackedDataset`, a memory-mapped view.

The directory's files, dtypes, shapes and units are those of
:mod:`physpack.data.packed_format`. Directories written by the older packed-memmap
tooling (no ``manifest.json``) are read too, in the units declared for them
(``units=``); the arrays stay as stored and :meth:`PackedDataset.scale` gives the
factor to eV, Å. Without ``Qtot.f64`` molecules are neutral; an all-zero
``F_pack.f32`` (what the older converter writes for data without forces) is not
taken for forces.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from physpack.data.manifest import MANIFEST, read_manifest
from physpack.data.packed_format import (
    ARRAYS,
    N_ATOMS,
    OFFSETS,
    ArraySpec,
    AtomChunk,
    full_units,
    molecule_chunks,
    sha256_file,
    size_problem,
    unit_scale,
)
from physpack.errors import ConfigError, InputError

#: rows checked per step when scanning offsets or forces
_SCAN_ROWS = 1 << 20


class PackedDataWarning(UserWarning):
    """Data that is read, but not as it is stored (e.g. all-zero forces dropped)."""


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


def _all_zero(arr: np.ndarray) -> bool:
    """Whether every value of ``arr`` is 0 (streamed; stops at the first non-zero)."""
    for a in range(0, arr.shape[0], _SCAN_ROWS):
        if np.any(np.asarray(arr[a : a + _SCAN_ROWS])):
            return False
    return True
