"""``physpack convert``: a padded NPZ → a packed directory, streamed in chunks.

The NPZ (a zip of ``.npy`` members) is never loaded whole: each member is opened
inside the zip, its ``.npy`` header is parsed with :mod:`numpy.lib.format`, and rows
(molecules) are read a chunk at a time, from stored and deflated members alike
(:mod:`physpack.data.npz_stream`). Peak memory is a few chunks (``chunk_mb``, 32 MB
by default) whatever the input size.

Input keys (``n`` molecules padded to ``A`` atoms, any numeric dtypes):

    R     (n, A, 3)   positions                  [length_unit]      required
    Z     (n, A)      atomic numbers, 0 = padding                   required
    E     (n,)        total energies             [energy_unit]      required
    F     (n, A, 3)   forces                     [energy/length]    optional
    N     (n,)        atoms per molecule (else counted from Z > 0)  optional
    Q | Qtot (n,)     total charge               [e]   optional (zeros when absent)
    D     (n, 3)      dipole moments             [dipole_unit]      optional

Values are converted to eV, Å, eV/Å, e·Å in float64 and stored at the format's
dtypes (positions and forces float32; :mod:`physpack.data.padded_input` checks,
unpads and converts each chunk). Every inconsistency stops the conversion
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
import contextlib
import dataclasses
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from physpack import config as cfg
from physpack.data.npz_stream import (
    InputDigest,
    MappedFile,
    NpyHeader,
    NpyRowReader,
    StoredRowReader,
    open_npz,
)
from physpack.data.packed import PackedWriter
from physpack.data.packed_dataset import PackedDataset
from physpack.data.padded_input import (
    CHARGE_KEYS,
    REQUIRED_KEYS,
    UnitFactors,
    check_shapes,
    input_members,
    input_units,
    unpad_chunk,
)
from physpack.data.progress import Progress
from physpack.dispersion import D3
from physpack.errors import ConfigError, InputError, cli_entry


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

    @classmethod
    def of(cls, npz: Path, out: Path) -> ConvertResult:
        """What the conversion of ``npz`` wrote to the packed directory ``out``."""
        packed_bytes = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
        ds = PackedDataset(out)
        return cls(
            path=out,
            n_molecules=ds.n_molecules,
            n_atoms_total=ds.n_atoms_total,
            max_atoms=int(ds.n_atoms.max()),
            input_bytes=npz.stat().st_size,
            packed_bytes=packed_bytes,
            keys=tuple(ds.keys),
        )


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
    with open_npz(npz) as zf, _open_members(npz, zf, direct) as members:
        n_mol, _ = check_shapes(npz, members.headers)
        rows_per_chunk = members.rows_per_chunk(chunk_mb)
        digest = members.digest()
        with (
            PackedWriter(
                out,
                has_forces="F" in members.readers,
                has_dipoles="D" in members.readers,
                has_dispersion=d3 is not None,
                overwrite=overwrite,
            ) as writer,
            Progress(n_mol, f"convert {npz.name}", bar=progress) as bar,
        ):
            writer.extra = {
                "input_units": input_units(data),
                "dispersion": None if d3 is None else d3.record(),
            }
            for start in range(0, n_mol, rows_per_chunk):
                rows = min(rows_per_chunk, n_mol - start)
                _convert_chunk(npz, members, writer, start, rows, units, d3)
                bar.update(rows)
            # before the writer renames: a corrupt input leaves nothing
            writer.source = _source_record(
                npz, members.headers, members.charge_key, digest.result(npz)
            )
    return ConvertResult.of(npz, out)


@dataclasses.dataclass(frozen=True)
class _Members:
    """The members of the NPZ that a conversion reads.

    Attributes:
        readers: key -> row reader of each member used (``R Z E``, and ``F``,
            ``N``, ``D`` and the charge member when present).
        charge_key: the member of total charges (``Qtot`` or ``Q``) or ``None``.
        mapped: the memory map of the NPZ that the stored-member readers and the
            digest share.
    """

    readers: dict[str, NpyRowReader | StoredRowReader]
    charge_key: str | None
    mapped: MappedFile

    @property
    def headers(self) -> dict[str, NpyHeader]:
        """key -> ``.npy`` header of each member used."""
        return {k: r.header for k, r in self.readers.items()}

    @property
    def stored(self) -> dict[str, StoredRowReader]:
        """The readers of stored members read straight from the mapped file."""
        return {k: r for k, r in self.readers.items() if isinstance(r, StoredRowReader)}

    def rows_per_chunk(self, chunk_mb: float) -> int:
        """Molecules per chunk: ``chunk_mb`` MB of padded input, all members
        together (at least one)."""
        row_bytes = sum(h.row_bytes for h in self.headers.values())
        return max(1, int(chunk_mb * 1e6) // row_bytes)

    def digest(self) -> InputDigest:
        """Start the background sha256 of the file and CRC-32 of stored members."""
        stored = self.stored
        return InputDigest(
            self.mapped,
            {k: r.span for k, r in stored.items()},
            {k: r.crc for k, r in stored.items()},
        )


@contextlib.contextmanager
def _open_members(npz: Path, zf: zipfile.ZipFile, direct: bool) -> Iterator[_Members]:
    """A row reader for each member the conversion uses, closed (with the mapping
    of the file) on leaving: stored members read from the mapping when
    ``direct``, the others through ``zipfile``."""
    members = input_members(npz, zf)
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
        yield _Members(readers, charge_key, mapped)
    finally:
        for reader in readers.values():
            reader.close()
        mapped.close()


def _convert_chunk(
    npz: Path,
    members: _Members,
    writer: PackedWriter,
    start: int,
    rows: int,
    units: UnitFactors,
    d3: D3 | None,
) -> None:
    """Molecules ``start .. start + rows - 1`` unpadded, converted and handed to
    the writer; the pages of the stored members they came from released."""
    chunk = unpad_chunk(
        npz, members.readers, start, rows, units, members.charge_key, d3
    )
    writer.append(**chunk)
    for reader in members.stored.values():
        reader.done(start, rows)


def _source_record(
    npz: Path, headers: dict[str, NpyHeader], charge_key: str | None, sha256: str
) -> dict[str, Any]:
    """The manifest's ``source``: the input's name, sha256 and size [bytes], the
    charge member, whether atom counts came from Z > 0, and each member's dtype,
    shape and compression."""
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
