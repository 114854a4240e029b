"""Reading the members of an NPZ a chunk of rows at a time, never a member whole.

An NPZ is a zip of ``.npy`` members. Each member's ``.npy`` header is parsed with
:mod:`numpy.lib.format` (:class:`NpyHeader`: dtype, shape, bytes per row) and its
rows (first axis) are read in chunks: through ``zipfile`` for deflated members
(:class:`NpyRowReader`, which checks the CRC-32 at the member's end), or straight
from a memory map of the file for stored ones (:class:`StoredRowReader`, whose
CRC-32 :class:`InputDigest` checks in the same background pass as the file's
sha256). Peak memory is the chunk, whatever the file size. Every damage surfaces
as an :class:`~physpack.errors.InputError` naming the file and key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import mmap
import struct
import threading
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npformat

from physpack.errors import InputError

#: errors raised by zipfile/zlib while reading a damaged member
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)
#: a zip local file header: signature … file name length, extra field length
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")


@dataclasses.dataclass(frozen=True)
class NpyHeader:
    """Header of one ``.npy`` member of an NPZ.

    Attributes:
        key: the member's name without ``.npy`` (``R``, ``Z``, ...).
        member: the member's name in the zip.
        dtype: the stored numeric dtype.
        shape: the array's shape; its first axis runs over rows (molecules).
        compressed: whether the member is deflated (else stored).
    """

    key: str
    member: str
    dtype: np.dtype
    shape: tuple[int, ...]
    compressed: bool

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one row (the shape without its first axis)."""
        return self.shape[1:]

    @property
    def row_bytes(self) -> int:
        """Bytes of one row."""
        return int(self.dtype.itemsize * np.prod(self.row_shape, dtype=np.int64))


def read_npy_header(
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
        self.header = read_npy_header(npz, key, member, self._fh, compressed)

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
                self.header = read_npy_header(npz, key, member, fh, False)
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
    """The first line of ``exc``'s message (its type's name when it has none)."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def open_npz(npz: Path) -> zipfile.ZipFile:
    """The NPZ opened as a zip (its directory read); InputError when it is missing
    or not a readable zip file."""
    if not npz.is_file():
        raise InputError(f"{npz}: file not found")
    try:
        return zipfile.ZipFile(npz)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(
            f"{npz}: not a readable NPZ (zip) file; truncated or corrupt? "
            f"({_reason(exc)})"
        ) from exc
