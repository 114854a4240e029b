"""``physpack convert``: a padded NPZ → a packed directory, streamed in chunks.

The NPZ (a zip of ``.npy`` members) is never loaded whole: each member is opened
inside the zip, its ``.npy`` header is parsed with :mod:`numpy.lib.format`, and rows
(molecules) are read a chunk at a time, from stored and deflated members alike. Peak
memory is a few chunks (``chunk_mb``, 32 MB by default) whatever the input size.

Input keys (``n`` molecules padded to ``A`` atoms, any numeric dtypes):

    R     (n, A, 3)   positions                  [length_unit]      required
    Z     (n, A)      atomic numbers, 0 = padding                   required
    E     (n,)        total energies             [energy_unit]      required
    F     (n, A, 3)   forces                     [energy/length]    optional
    N     (n,)        atoms per molecule (else counted from Z > 0)  optional
    Q | Qtot (n,)     total charge               [e]   optional (zeros when absent)
    D     (n, 3)      dipole moments             [dipole_unit]      optional

Values are converted to eV, Å, eV/Å, e·Å in float64 and stored at the format's
dtypes (positions and forces float32). Every inconsistency stops the conversion
with an :class:`~physpack.errors.InputError` naming the file, key and molecule, and
nothing is left at the output path (see :class:`~physpack.data.packed.PackedWriter`).

With ``data.dispersion`` set, the D3 energy and forces of every molecule
(:class:`~physpack.dispersion.D3`, from the float64 positions in Å) are subtracted
from ``E`` and ``F`` after their conversion to eV and eV/Å; the energies
subtracted are stored as ``E_dispersion`` float64 (n,) [eV] and the settings, with
the dftd3 version, as the manifest's ``dispersion``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import mmap
import struct
import sys
import threading
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib import format as npformat

from physpack import config as cfg
from physpack.data.packed import (
    MAX_Z,
    PackedDataset,
    PackedWriter,
    full_units,
)
from physpack.data.progress import Progress
from physpack.dispersion import D3
from physpack.errors import ConfigError, InputError, cli_entry
from physpack.units import dipole_factor, energy_factor, length_factor

REQUIRED_KEYS = ("R", "Z", "E")
CHARGE_KEYS = ("Qtot", "Q")  # first one present wins
#: errors raised by zipfile/zlib while reading a damaged member
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)
#: a zip local file header: signature … file name length, extra field length
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")


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
        units = _input_units(data)
        return cls(
            energy=energy_factor(units["energy"]),
            length=length_factor(units["length"]),
            dipole=dipole_factor(units["dipole"]),
        )


@dataclasses.dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert_npz` wrote.

    Attributes:
        path: the packed directory.
        n_molecules, n_atoms_total, max_atoms: counts of the packed dataset.
        input_bytes: size of the NPZ file [bytes].
        packed_bytes: total size of the packed directory's files [bytes].
        keys: keys stored (``Z R E Qtot`` plus ``F``/``D`` when present, and
            ``E_dispersion`` with ``data.dispersion``).
    """

    path: Path
    n_molecules: int
    n_atoms_total: int
    max_atoms: int
    input_bytes: int
    packed_bytes: int
    keys: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class NpyHeader:
    """Header of one ``.npy`` member of an NPZ."""

    key: str
    member: str
    dtype: np.dtype
    shape: tuple[int, ...]
    compressed: bool

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def row_bytes(self) -> int:
        return int(self.dtype.itemsize * np.prod(self.row_shape, dtype=np.int64))


def _read_npy_header(
    npz: Path, key: str, member: str, fh: IO[bytes], compressed: bool
) -> NpyHeader:
    """Parse the ``.npy`` header at ``fh``'s position (left at the data)."""
    try:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(fh)
        else:
            raise ValueError(f".npy format version {version} is not supported")
    except _READ_ERRORS as exc:
        raise InputError(
            f"{npz}: key {key!r}: unreadable .npy member ({_reason(exc)})"
        ) from exc
    if dtype.hasobject or dtype.kind not in "biuf":
        raise InputError(f"{npz}: key {key!r}: dtype {dtype} is not numeric")
    if fortran and len(shape) > 1:
        raise InputError(
            f"{npz}: key {key!r}: Fortran-ordered array; save it in C order "
            "(np.ascontiguousarray) to stream it"
        )
    return NpyHeader(key, member, dtype, tuple(shape), compressed)


class NpyRowReader:
    """Reads one NPZ member row by row (first axis), never holding the whole array.

    ``zipfile`` decompresses deflated members incrementally and checks the CRC when
    the member's end is reached, so corruption surfaces as an :class:`InputError`.
    """

    def __init__(self, npz: Path, zf: zipfile.ZipFile, key: str, member: str):
        self.npz = npz
        self.key = key
        try:
            info = zf.getinfo(member)
            self._fh: IO[bytes] = zf.open(info)
        except _READ_ERRORS as exc:
            raise InputError(
                f"{npz}: key {key!r}: unreadable .npy member ({_reason(exc)})"
            ) from exc
        compressed = info.compress_type != zipfile.ZIP_STORED
        self.header = _read_npy_header(npz, key, member, self._fh, compressed)

    def read(self, start: int, rows: int) -> np.ndarray:
        """The next ``rows`` rows (``start`` is only used in messages)."""
        want = rows * self.header.row_bytes
        try:
            buf = self._fh.read(want)
        except _READ_ERRORS as exc:
            raise InputError(
                f"{self.npz}: key {self.key!r}, molecules {start}..{start + rows - 1}: "
                f"corrupt or truncated data ({_reason(exc)})"
            ) from exc
        if len(buf) != want:
            raise InputError(
                f"{self.npz}: key {self.key!r}: truncated at molecule "
                f"{start + len(buf) // max(self.header.row_bytes, 1)} "
                f"({len(buf)} of {want} bytes in this chunk)"
            )
        return np.frombuffer(buf, dtype=self.header.dtype).reshape(
            rows, *self.header.row_shape
        )

    def close(self) -> None:
        self._fh.close()


class MappedFile:
    """A read-only memory map of the NPZ shared by the stored-member readers and
    :class:`InputDigest`. Pages that have been used are released
    (``madvise(MADV_DONTNEED)``; they stay in the page cache), so the mapping does
    not accumulate in RSS: memory stays bounded by the chunk."""

    def __init__(self, path: Path):
        with open(path, "rb") as fh:
            self.map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.size = len(self.map)

    def release(self, first: int, end: int) -> None:
        """Drop the pages wholly inside bytes ``first .. end`` from this process."""
        a = -(-first // mmap.PAGESIZE) * mmap.PAGESIZE
        b = end // mmap.PAGESIZE * mmap.PAGESIZE
        if b > a:
            self.map.madvise(mmap.MADV_DONTNEED, a, b - a)

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:  # a view still alive: unmapped when it is collected
            pass


class StoredRowReader:
    """Rows of a stored (uncompressed) member, read straight from the mapped NPZ.

    A chunk is a view of the mapped file, so unpadding (``np.take``) is the only
    copy: none through ``zipfile``, no per-block CRC on this thread. The member's
    CRC-32 is checked by :class:`InputDigest`, in the same pass as the file's
    sha256, on another core.

    Attributes:
        header: the member's ``.npy`` header.
        span: (first, end) byte offsets of the member's data in the NPZ (what the
            zip CRC covers).
        crc: the CRC-32 the zip directory records for the member.
    """

    def __init__(
        self, npz: Path, zf: zipfile.ZipFile, key: str, member: str, mapped: MappedFile
    ):
        self.npz, self.key, self._mapped = npz, key, mapped
        info = zf.getinfo(member)
        try:
            with open(npz, "rb") as fh:
                fh.seek(info.header_offset)
                local = fh.read(_LOCAL_HEADER.size)
                if len(local) != _LOCAL_HEADER.size or local[:4] != b"PK\x03\x04":
                    raise zipfile.BadZipFile("bad local file header")
                name_len, extra_len = _LOCAL_HEADER.unpack(local)[-2:]
                first = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
                fh.seek(first)
                self.header = _read_npy_header(npz, key, member, fh, False)
                data = fh.tell()
        except _READ_ERRORS as exc:
            raise InputError(
                f"{npz}: key {key!r}: unreadable .npy member ({_reason(exc)})"
            ) from exc
        self.span = (first, first + info.compress_size)
        self.crc = info.CRC
        n = self.header.shape[0] if self.header.shape else 0
        end = data + n * self.header.row_bytes
        if end > self.span[1] or end > mapped.size:
            raise InputError(
                f"{npz}: key {key!r}: truncated member ({self.span[1] - data} of "
                f"{end - data} data bytes)"
            )
        self._data = data

    def read(self, start: int, rows: int) -> np.ndarray:
        """Rows ``start .. start + rows - 1``: a read-only view of the mapping."""
        first = self._data + start * self.header.row_bytes
        count = rows * int(np.prod(self.header.row_shape, dtype=np.int64))
        flat = np.frombuffer(
            self._mapped.map, self.header.dtype, count=count, offset=first
        )
        return flat.reshape(rows, *self.header.row_shape)

    def done(self, start: int, rows: int) -> None:
        """Rows up to ``start + rows`` are used: release their pages."""
        first = self._data + start * self.header.row_bytes
        self._mapped.release(first, first + rows * self.header.row_bytes)

    def close(self) -> None:
        pass


class InputDigest:
    """sha256 of the whole NPZ and CRC-32 of its stored members, computed in one
    sequential pass over the mapped file by a background thread (hashlib and zlib
    release the GIL), so that it overlaps the conversion.

    Args:
        mapped: the mapped NPZ.
        spans: key -> (first, end) byte range whose CRC-32 must equal ``crcs[key]``.
        crcs: key -> expected CRC-32.
    """

    def __init__(
        self,
        mapped: MappedFile,
        spans: dict[str, tuple[int, int]],
        crcs: dict[str, int],
        block: int = 1 << 23,
    ):
        self._mapped, self._spans, self._crcs = mapped, spans, crcs
        self._block = block
        self._sha = hashlib.sha256()
        self._got = dict.fromkeys(spans, 0)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with memoryview(self._mapped.map) as whole:
                for pos in range(0, self._mapped.size, self._block):
                    end = min(pos + self._block, self._mapped.size)
                    view = whole[pos:end]
                    self._sha.update(view)
                    for key, (first, last) in self._spans.items():
                        a, b = max(first, pos), min(last, end)
                        if a < b:
                            part = view[a - pos : b - pos]
                            self._got[key] = zlib.crc32(part, self._got[key])
                    view.release()
                    self._mapped.release(pos, end)
        except Exception as exc:  # noqa: BLE001  (re-raised by result())
            self._error = exc

    def result(self, npz: Path) -> str:
        """Wait for the pass; the hex sha256. Raises InputError when a stored
        member's data does not match its CRC-32 (corrupt NPZ)."""
        self._thread.join()
        if self._error is not None:
            raise InputError(f"{npz}: unreadable ({_reason(self._error)})")
        for key, want in self._crcs.items():
            if self._got[key] != want:
                raise InputError(
                    f"{npz}: key {key!r}: corrupt data (CRC-32 "
                    f"{self._got[key]:08x} differs from the zip directory's "
                    f"{want:08x})"
                )
        return self._sha.hexdigest()


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _open_npz(npz: Path) -> zipfile.ZipFile:
    if not npz.is_file():
        raise InputError(f"{npz}: file not found")
    try:
        return zipfile.ZipFile(npz)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(
            f"{npz}: not a readable NPZ (zip) file; truncated or corrupt? "
            f"({_reason(exc)})"
        ) from exc


def _members(npz: Path, zf: zipfile.ZipFile) -> dict[str, str]:
    """key -> member name, for every ``.npy`` member."""
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


def _check_shapes(npz: Path, headers: dict[str, NpyHeader]) -> tuple[int, int]:
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


def _chunk(
    npz: Path,
    readers: dict[str, NpyRowReader],
    start: int,
    rows: int,
    units: UnitFactors,
    charge_key: str | None,
    d3: D3 | None = None,
) -> dict[str, np.ndarray]:
    """Read, check, unpad and convert molecules ``start .. start + rows - 1``
    (and subtract ``d3`` from their energies and forces)."""
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


def convert_npz(
    npz: str | Path,
    out: str | Path,
    data: cfg.DataConfig | None = None,
    *,
    progress: bool = False,
    chunk_mb: float = 32.0,
    overwrite: bool = False,
    direct: bool = True,
) -> ConvertResult:
    """Convert a padded NPZ into a packed directory, streaming.

    Three things overlap: reading, checking and unpadding a chunk (this thread);
    writing and hashing the previous chunks (:class:`PackedWriter`'s thread); the
    sha256 of the input and the CRC-32 of its stored members (:class:`InputDigest`).

    Args:
        npz: the padded NPZ (keys in the module docstring).
        out: the packed directory to create (written to a temporary sibling and
            renamed when complete).
        data: the ``data`` config section (input units, dispersion); defaults when
            ``None``.
        progress: show a tqdm progress bar on stderr; otherwise a progress line
            is logged every 10 s (:class:`~physpack.data.progress.Progress`).
        chunk_mb: padded input bytes read per chunk, all members together [MB];
            peak memory is a small multiple of it.
        overwrite: replace an existing ``out`` (atomically, after success).
        direct: read stored members straight from the file
            (:class:`StoredRowReader`); ``False`` reads every member through
            ``zipfile`` (as deflated ones always are).

    Raises:
        InputError: unreadable/corrupt NPZ, missing key, inconsistent shapes or
            values (the message names file, key and molecule).
        ConfigError: unknown unit; ``data.dispersion`` set without dftd3 installed,
            or with a functional dftd3 does not know.
    """
    data = data or cfg.DataConfig()
    units = UnitFactors.from_config(data)
    d3 = None if data.dispersion is None else D3(data.dispersion, "conversion")
    npz, out = Path(npz), Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists; remove it or pass --overwrite")
    with _open_npz(npz) as zf:
        members = _members(npz, zf)
        charge_key = next((k for k in CHARGE_KEYS if k in members), None)
        used = [*REQUIRED_KEYS, *(k for k in ("F", "N", "D") if k in members)]
        if charge_key is not None:
            used.append(charge_key)
        readers: dict[str, NpyRowReader | StoredRowReader] = {}
        mapped = MappedFile(npz)
        try:
            for key in used:
                stored = zf.getinfo(members[key]).compress_type == zipfile.ZIP_STORED
                if direct and stored:
                    readers[key] = StoredRowReader(npz, zf, key, members[key], mapped)
                else:
                    readers[key] = NpyRowReader(npz, zf, key, members[key])
            headers = {k: r.header for k, r in readers.items()}
            n_mol, _ = _check_shapes(npz, headers)
            row_bytes = sum(h.row_bytes for h in headers.values())
            rows_per_chunk = max(1, int(chunk_mb * 1e6) // row_bytes)
            direct_readers = {
                k: r for k, r in readers.items() if isinstance(r, StoredRowReader)
            }
            digest = InputDigest(
                mapped,
                {k: r.span for k, r in direct_readers.items()},
                {k: r.crc for k, r in direct_readers.items()},
            )
            with (
                PackedWriter(
                    out,
                    has_forces="F" in readers,
                    has_dipoles="D" in readers,
                    has_dispersion=d3 is not None,
                    overwrite=overwrite,
                ) as writer,
                Progress(n_mol, f"convert {npz.name}", bar=progress) as bar,
            ):
                writer.extra = {
                    "input_units": _input_units(data),
                    "dispersion": None if d3 is None else d3.record(),
                }
                for start in range(0, n_mol, rows_per_chunk):
                    rows = min(rows_per_chunk, n_mol - start)
                    chunk = _chunk(npz, readers, start, rows, units, charge_key, d3)
                    writer.append(**chunk)
                    for reader in direct_readers.values():
                        reader.done(start, rows)
                    bar.update(rows)
                del chunk
                # before the writer renames: a corrupt input leaves nothing
                writer.source = _source_record(
                    npz, headers, charge_key, digest.result(npz)
                )
        finally:
            for reader in readers.values():
                reader.close()
            mapped.close()
    packed_bytes = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    ds = PackedDataset(out)
    return ConvertResult(
        path=out,
        n_molecules=ds.n_molecules,
        n_atoms_total=ds.n_atoms_total,
        max_atoms=int(ds.n_atoms.max()),
        input_bytes=npz.stat().st_size,
        packed_bytes=packed_bytes,
        keys=tuple(ds.keys),
    )


def _source_record(
    npz: Path, headers: dict[str, NpyHeader], charge_key: str | None, sha256: str
) -> dict[str, Any]:
    return {
        "file": npz.name,
        "sha256": sha256,
        "bytes": npz.stat().st_size,
        "charge_key": charge_key,
        "n_inferred_from_Z": "N" not in headers,
        "members": {
            k: {
                "dtype": h.dtype.str,
                "shape": list(h.shape),
                "compressed": h.compressed,
            }
            for k, h in headers.items()
        },
    }


def _input_units(data: cfg.DataConfig) -> dict[str, str]:
    """Full unit labels of the NPZ (undeclared kinds: eV, Å, e·Å)."""
    try:
        return full_units(data.declared_units())
    except ConfigError as exc:
        raise ConfigError(f"data: {exc}") from exc


@cli_entry("physpack convert")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="physpack convert",
        description="Convert a padded NPZ into a packed memory-mapped directory.",
    )
    parser.add_argument("npz", type=Path, help="padded input NPZ")
    parser.add_argument("output", type=Path, help="packed directory to create")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (for logs)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output"
    )
    parser.add_argument(
        "--chunk-mb",
        type=float,
        default=32.0,
        help="padded input read per chunk [MB] (default: 32)",
    )
    cfg.add_section_arguments(parser, cfg.DataConfig, "data")
    args = parser.parse_args(argv)
    if args.chunk_mb <= 0:
        raise ConfigError(f"--chunk-mb must be positive, got {args.chunk_mb}")
    data = cfg.section_from_args(cfg.DataConfig, args, "data")
    result = convert_npz(
        args.npz,
        args.output,
        data,
        progress=not args.no_progress,
        chunk_mb=args.chunk_mb,
        overwrite=args.overwrite,
    )
    print(
        f"{result.path}: {result.n_molecules} molecules, {result.n_atoms_total} atoms "
        f"(max {result.max_atoms}/molecule); {result.input_bytes / 1e6:.1f} MB NPZ → "
        f"{result.packed_bytes / 1e6:.1f} MB packed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
