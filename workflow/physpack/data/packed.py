"""Writing a packed directory (:class:`PackedWriter`), and the format's one import.

:class:`PackedWriter` streams molecules into a new directory of the format of
:mod:`physpack.data.packed_format`, hashing every array while writing it, and writes
``offsets.npy``, ``n_atoms.npy`` and ``manifest.json`` when it closes. Directories
are written into a temporary sibling and renamed when complete, so a directory that
exists is a finished one.

The format's names (:mod:`physpack.data.packed_format`) and the reader
(:class:`~physpack.data.packed_dataset.PackedDataset`) are importable from here
too (``__all__``): the one import of the format for the layers above ``data/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
from pathlib import Path
from typing import Any, Self

import numpy as np

from physpack import __version__
from physpack.atomic import replace_dir, temporary_sibling
from physpack.data.manifest import FORMAT_NAME, FORMAT_VERSION, MANIFEST
from physpack.data.packed_dataset import PackedDataset, PackedDataWarning
from physpack.data.packed_format import (
    ARRAYS,
    ATOM_SAMPLE,
    MAX_Z,
    N_ATOMS,
    OFFSETS,
    UNIT_KINDS,
    ArraySpec,
    AtomChunk,
    full_units,
    molecule_chunks,
    sample_stride,
    sha256_file,
    size_problem,
    unit_scale,
)
from physpack.errors import InputError
from physpack.units import CANONICAL_UNITS

__all__ = [
    "ARRAYS",
    "ATOM_SAMPLE",
    "MANIFEST",
    "MAX_Z",
    "N_ATOMS",
    "OFFSETS",
    "UNIT_KINDS",
    "ArraySpec",
    "AtomChunk",
    "PackedDataWarning",
    "PackedDataset",
    "PackedWriter",
    "full_units",
    "molecule_chunks",
    "sample_stride",
    "sha256_file",
    "size_problem",
    "unit_scale",
]


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
