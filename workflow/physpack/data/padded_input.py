"""The padded NPZ input: its keys and shapes checked, and one chunk of molecules
checked, unpadded and converted to the packed format's units.

The input keys, their shapes and units are listed in :mod:`physpack.data.convert`
(``R``, ``Z``, ``E`` required; ``F``, ``N``, ``Q`` or ``Qtot``, ``D`` optional).

:func:`unpad_chunk` turns padded molecules into the packed arrays: per atom ``Z``
int32, ``R`` float32 [Å] and ``F`` float32 [eV/Å]; per molecule ``E`` float64
[eV], ``Qtot`` float64 [e] and ``D`` float64 [e·Å]. Values are converted in
float64 (:class:`UnitFactors`) and stored at the format's dtypes.
Every inconsistency raises an :class:`~physpack.errors.InputError` naming the file,
key and molecule.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np

from physpack import config as cfg
from physpack.data.npz_stream import NpyHeader, NpyRowReader, StoredRowReader
from physpack.data.packed_format import MAX_Z, full_units
from physpack.dispersion import D3
from physpack.errors import ConfigError, InputError
from physpack.units import dipole_factor, energy_factor, length_factor

#: members every input has
REQUIRED_KEYS = ("R", "Z", "E")
#: members of total charges; the first one present is read
CHARGE_KEYS = ("Qtot", "Q")


@dataclasses.dataclass(frozen=True)
class UnitFactors:
    """Multiplicative factors from the input units to eV, Å, eV/Å, e·Å."""

    energy: float
    length: float
    dipole: float

    @property
    def forces(self) -> float:
        return self.energy / self.length

    @classmethod
    def from_config(cls, data: cfg.DataConfig) -> UnitFactors:
        """The factors of the units ``data`` declares (canonical when ``None``)."""
        units = input_units(data)
        return cls(
            energy=energy_factor(units["energy"]),
            length=length_factor(units["length"]),
            dipole=dipole_factor(units["dipole"]),
        )


def input_units(data: cfg.DataConfig) -> dict[str, str]:
    """Full unit labels of the NPZ (undeclared kinds: eV, Å, e·Å)."""
    try:
        return full_units(data.declared_units())
    except ConfigError as exc:
        raise ConfigError(f"data: {exc}") from exc


def input_members(npz: Path, zf: zipfile.ZipFile) -> dict[str, str]:
    """key -> member name, for every ``.npy`` member; InputError when a key of
    :data:`REQUIRED_KEYS` is missing."""
    members = {
        name.removesuffix(".npy"): name
        for name in zf.namelist()
        if name.endswith(".npy")
    }
    for key in REQUIRED_KEYS:
        if key not in members:
            present = ", ".join(sorted(members)) or "none"
            raise InputError(
                f"{npz}: missing required key {key!r} (keys present: {present})"
            )
    return members


def check_shapes(npz: Path, headers: dict[str, NpyHeader]) -> tuple[int, int]:
    """(n molecules, padded width A) after checking every key's shape against Z."""
    z = headers["Z"].shape
    if len(z) != 2:
        raise InputError(f"{npz}: key 'Z': shape {z}, expected (n, A)")
    n, width = z
    expected = {
        "R": [(n, width, 3)],
        "F": [(n, width, 3)],
        "E": [(n,), (n, 1)],
        "N": [(n,), (n, 1)],
        "Qtot": [(n,), (n, 1)],
        "Q": [(n,), (n, 1)],
        "D": [(n, 3)],
    }
    for key, header in headers.items():
        if key == "Z":
            continue
        if header.shape not in expected[key]:
            want = " or ".join(str(s) for s in expected[key])
            raise InputError(
                f"{npz}: key {key!r}: shape {header.shape} inconsistent with "
                f"Z {z}; expected {want}"
            )
    if n == 0 or width == 0:
        raise InputError(f"{npz}: empty dataset (Z has shape {z})")
    return n, width


def _atomic_numbers(npz: Path, z: np.ndarray, start: int) -> np.ndarray:
    """Z as int32 after range and integrality checks; z is (rows, A)."""
    if z.dtype.kind == "f":
        bad = ~np.isfinite(z) | (z != np.round(z))
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise InputError(
                f"{npz}: key 'Z', molecule {start + i}, atom {j}: "
                f"non-integer atomic number {z[i, j]}"
            )
    bad = (z < 0) | (z > MAX_Z)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputError(
            f"{npz}: key 'Z', molecule {start + i}, atom {j}: atomic number "
            f"{z[i, j]} outside 1..{MAX_Z} (0 marks padding)"
        )
    return z.astype(np.int32)


def _atom_counts(
    npz: Path, z: np.ndarray, n_given: np.ndarray | None, start: int
) -> np.ndarray:
    """Atoms per molecule int32 (rows,), checked against the padding pattern of Z."""
    width = z.shape[1]
    occupied = z > 0
    if n_given is None:
        # the molecule ends at its first Z == 0; any atom after that is a stray
        counts = np.where(occupied.all(axis=1), width, np.argmin(occupied, axis=1))
        stray = occupied & (np.arange(width) >= counts[:, None])
        if stray.any():
            i, j = np.argwhere(stray)[0]
            raise InputError(
                f"{npz}: key 'Z', molecule {start + i}, atom {j}: non-zero atomic "
                f"number {z[i, j]} in the padding (padding starts at atom {counts[i]})"
            )
        empty = counts == 0
        if empty.any():
            i = int(np.argmax(empty))
            raise InputError(
                f"{npz}: key 'Z', molecule {start + i}: no atoms (Z[0] is 0, padding)"
            )
    else:
        if n_given.dtype.kind == "f" and (n_given != np.round(n_given)).any():
            i = int(np.argmax(n_given != np.round(n_given)))
            raise InputError(
                f"{npz}: key 'N', molecule {start + i}: non-integer count {n_given[i]}"
            )
        counts = n_given.astype(np.int64)
        for bad, what in (
            (counts < 1, "must be at least 1"),
            (counts > width, f"larger than the padded width {width}"),
        ):
            if bad.any():
                i = int(np.argmax(bad))
                raise InputError(
                    f"{npz}: key 'N', molecule {start + i}: N={counts[i]} {what}"
                )
    real = np.arange(width) < counts[:, None]
    hole = real & ~occupied
    if hole.any():
        i, j = np.argwhere(hole)[0]
        raise InputError(
            f"{npz}: key 'Z', molecule {start + i}, atom {j}: Z=0 inside the first "
            f"N={counts[i]} atoms (N disagrees with Z>0)"
        )
    stray = ~real & occupied
    if stray.any():
        i, j = np.argwhere(stray)[0]
        raise InputError(
            f"{npz}: key 'Z', molecule {start + i}, atom {j}: non-zero atomic number "
            f"{z[i, j]} in the padding (molecule has N={counts[i]} atoms)"
        )
    return counts.astype(np.int32)


def _scaled(values: np.ndarray, factor: float, dtype: str) -> np.ndarray:
    """``values`` × ``factor`` computed in float64, stored as ``dtype`` (a new
    array: never a view of the input)."""
    if factor == 1.0:  # same result as the float64 round trip, without it
        return np.array(values, dtype=dtype)
    out = values.astype(np.float64)
    out *= factor
    return out.astype(dtype)


def _check_finite(
    npz: Path, key: str, values: np.ndarray, counts: np.ndarray | None, start: int
) -> None:
    """Raise on the first non-finite row of ``values``: per-molecule rows, or
    per-atom rows of molecules with ``counts`` atoms each."""
    # one cheap pass in the common case: a finite sum means every value is finite
    # (an overflowing sum of finite values falls through to the exact check)
    if np.isfinite(np.sum(values, dtype=np.float64)):
        return
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if finite.all():
        return
    row = int(np.argmin(finite))
    if counts is not None:  # atom row -> molecule
        row = int(np.searchsorted(np.cumsum(counts), row, side="right"))
    raise InputError(
        f"{npz}: key {key!r}, molecule {start + row}: "
        "non-finite value (NaN or inf, after unit conversion)"
    )


def unpad_chunk(
    npz: Path,
    readers: dict[str, NpyRowReader | StoredRowReader],
    start: int,
    rows: int,
    units: UnitFactors,
    charge_key: str | None,
    d3: D3 | None = None,
) -> dict[str, np.ndarray]:
    """Read, check, unpad and convert molecules ``start .. start + rows - 1``
    (and subtract ``d3`` from their energies and forces).

    Args:
        npz: the input file (named in messages).
        readers: key -> row reader of every member used.
        start, rows: the molecules (first row, number of rows).
        units: factors from the input units to eV, Å, e·Å.
        charge_key: the member of total charges (``Qtot`` or ``Q``), ``None``
            when the input has none (the molecules are neutral).
        d3: the dispersion term to subtract, or ``None``.

    Returns:
        The arguments of :meth:`~physpack.data.packed.PackedWriter.append`:
        ``n_atoms`` int32 (rows,); per atom, over the chunk's sum(n_atoms) real
        atoms, ``Z`` int32, ``R`` float32 (·, 3) [Å] and ``F`` float32 (·, 3)
        [eV/Å]; per molecule ``E`` float64 [eV], ``Qtot`` float64 [e] (zeros
        without a charge member), ``D`` float64 (rows, 3) [e·Å] and, with ``d3``,
        ``E_dispersion`` float64 [eV]. ``F`` and ``D`` only when the input has
        them.
    """
    raw = {key: r.read(start, rows) for key, r in readers.items()}
    z = _atomic_numbers(npz, raw["Z"], start)
    n_given = raw["N"].reshape(rows) if "N" in raw else None
    counts = _atom_counts(npz, z, n_given, start)
    # flat indices of the real atoms, computed once for Z, R and F (np.take is
    # cheaper than a boolean mask applied three times)
    real = np.flatnonzero(np.arange(z.shape[1]) < counts[:, None])
    out: dict[str, np.ndarray] = {"n_atoms": counts, "Z": z.reshape(-1)[real]}
    out["R"] = _scaled(
        np.take(raw["R"].reshape(-1, 3), real, axis=0), units.length, "<f4"
    )
    _check_finite(npz, "R", out["R"], counts, start)
    if d3 is not None:
        positions = _scaled(
            np.take(raw["R"].reshape(-1, 3), real, axis=0), units.length, "<f8"
        )
        e_d3, f_d3 = d3.molecules(out["Z"], positions, counts, str(npz), start)
        out["E_dispersion"] = e_d3
    if "F" in raw:
        f = np.take(raw["F"].reshape(-1, 3), real, axis=0)
        if d3 is None:
            out["F"] = _scaled(f, units.forces, "<f4")
        else:  # subtracted in float64, then stored as float32
            out["F"] = (_scaled(f, units.forces, "<f8") - f_d3).astype("<f4")
        _check_finite(npz, "F", out["F"], counts, start)
    out["E"] = _scaled(raw["E"].reshape(rows), units.energy, "<f8")
    _check_finite(npz, "E", out["E"], None, start)
    if d3 is not None:
        out["E"] -= out["E_dispersion"]
    if charge_key is not None:
        out["Qtot"] = _scaled(raw[charge_key].reshape(rows), 1.0, "<f8")
        _check_finite(npz, charge_key, out["Qtot"], None, start)
    else:
        out["Qtot"] = np.zeros(rows, "<f8")
    if "D" in raw:
        out["D"] = _scaled(raw["D"], units.dipole, "<f8")
        _check_finite(npz, "D", out["D"], None, start)
    return out
