"""Sharded datasets: several packed directories read as one dataset.

A dataset of many files (``data.npz: [a.npz, b.npz]`` or a glob) is converted
shard by shard, each into a packed directory as for one file, and described by a
dataset descriptor listing them in order (:mod:`physpack.data.descriptor`,
``"shards"``). :class:`ShardedDataset` reads them as one
:class:`~physpack.data.packed_dataset.PackedDataset`: molecule ``i`` of the dataset is
molecule ``i - start[s]`` of shard ``s``, where ``start`` is the cumulative count
of molecules, and atom rows are numbered the same way. Nothing is concatenated on
disk or in memory: every array is a :class:`ShardedArray` over the shards' memory
maps, and ``offsets`` is the shards' own offsets with each shard's first global
atom added on reading, so opening a dataset of any size costs a few numbers per
shard.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from physpack.data.packed_dataset import PackedDataset
from physpack.data.packed_format import ARRAYS, AtomChunk, molecule_chunks
from physpack.dispersion import check_same
from physpack.errors import InputError


class ShardedArray:
    """Arrays with the same trailing shape seen as their concatenation along axis 0.

    Supports what the streaming passes and the loader use: ``len``, ``shape``,
    ``dtype``, ``a[i]``, ``a[start:stop]`` (step 1), ``a[rows]`` with an integer
    array (a gather, shard by shard), :meth:`take` into a given buffer, and
    ``np.asarray(a)`` (a full copy: only for arrays the caller would read whole).

    Args:
        parts: the arrays (memory maps), in order.
        shifts: added to the rows of each part on reading (the atom offsets of the
            shards: each shard's offsets start at 0); ``None``: nothing added.
    """

    def __init__(
        self, parts: Sequence[np.ndarray], shifts: Sequence[int] | None = None
    ):
        if not parts:
            raise ValueError("ShardedArray needs at least one part")
        self.parts = [
            p.view(np.ndarray) if isinstance(p, np.memmap) else p for p in parts
        ]
        trailing = {p.shape[1:] for p in self.parts}
        dtypes = {np.dtype(p.dtype) for p in self.parts}
        if len(trailing) != 1 or len(dtypes) != 1:
            raise ValueError(
                f"parts differ in trailing shape or dtype: {trailing}, {dtypes}"
            )
        self.dtype = dtypes.pop()
        self._trailing = trailing.pop()
        lengths = np.array([p.shape[0] for p in self.parts], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)])
        self.shifts = None if shifts is None else np.asarray(shifts, dtype=self.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.starts[-1]), *self._trailing)

    @property
    def ndim(self) -> int:
        return 1 + len(self._trailing)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[0 : len(self)]
        return out if dtype is None else out.astype(dtype, copy=False)

    def _part(self, s: int, rows: Any) -> np.ndarray:
        values = self.parts[s][rows]
        if self.shifts is not None:
            values = values + self.shifts[s]
        return values

    def __getitem__(self, key: Any) -> Any:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {int(key)} out of range for {n} rows")
            s = int(np.searchsorted(self.starts, i, side="right")) - 1
            return self._part(s, i - int(self.starts[s]))
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise IndexError("ShardedArray slices must have step 1")
            stop = max(stop, start)
            first = int(np.searchsorted(self.starts, start, side="right")) - 1
            pieces = []
            s = max(first, 0)
            while s < len(self.parts) and self.starts[s] < stop:
                lo = max(start, int(self.starts[s])) - int(self.starts[s])
                hi = min(stop, int(self.starts[s + 1])) - int(self.starts[s])
                if hi > lo:
                    pieces.append(self._part(s, slice(lo, hi)))
                s += 1
            if not pieces:
                return np.empty((0, *self._trailing), dtype=self.dtype)
            return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        rows = np.asarray(key)
        if rows.dtype == bool or not np.issubdtype(rows.dtype, np.integer):
            raise IndexError("ShardedArray takes ints, slices or integer arrays")
        out = np.empty((*rows.shape, *self._trailing), dtype=self.dtype)
        self.take(rows.reshape(-1), out.reshape(-1, *self._trailing))
        return out

    def partition(self, rows: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``[(shard, where, local), ...]``: the positions ``where`` of ``rows``
        (int (k,)) that lie in each shard and their rows there. Arrays with the
        same shard sizes share it (one partition per batch for Z, R and F)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return []
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        lo, hi = int(shard.min()), int(shard.max())
        if lo == hi:
            return [(lo, slice(None), rows - self.starts[lo])]
        order = np.argsort(shard, kind="stable")
        bounds = np.searchsorted(shard[order], np.arange(lo, hi + 2))
        parts = []
        for s in range(lo, hi + 1):
            a, b = bounds[s - lo], bounds[s - lo + 1]
            if b > a:
                where = order[a:b]
                parts.append((s, where, rows[where] - self.starts[s]))
        return parts

    def take(
        self,
        rows: np.ndarray,
        out: np.ndarray,
        parts: list[tuple[int, np.ndarray, np.ndarray]] | None = None,
    ) -> np.ndarray:
        """``out[j] = self[rows[j]]`` for int ``rows`` (k,) in range; ``out``
        (k, ...) of this dtype. One gather per shard the rows touch; ``parts``:
        :meth:`partition` of ``rows``, when already made for another array."""
        if parts is None:
            parts = self.partition(rows)
        for s, where, local in parts:
            if isinstance(where, slice):
                np.take(self.parts[s], local, axis=0, out=out, mode="clip")
            else:
                out[where] = np.take(self.parts[s], local, axis=0, mode="clip")
            if self.shifts is not None:
                out[where] += self.shifts[s]
        return out


def gather(
    src: np.ndarray | ShardedArray,
    rows: np.ndarray,
    out: np.ndarray,
    cache: dict[str, Any] | None = None,
) -> None:
    """``out[:] = src[rows]`` without temporaries, for arrays and sharded arrays
    (``rows`` int (k,) in range). ``cache``: a dict kept for the gathers of one
    set of ``rows`` from arrays with the same shard sizes, in which their
    partition into shards (:meth:`ShardedArray.partition`) is made once."""
    if not isinstance(src, ShardedArray):
        # mode="clip" writes into out directly (rows are in range by contract)
        np.take(src, rows, axis=0, out=out, mode="clip")
        return
    parts = None
    if cache is not None:
        if "parts" not in cache:
            cache["parts"] = src.partition(rows)
        parts = cache["parts"]
    src.take(rows, out, parts)


class ShardedDataset(PackedDataset):
    """Packed directories (shards) read as one :class:`PackedDataset`, with global
    molecule and atom indices in the order of ``shards``.

    Args:
        path: the dataset descriptor listing the shards (for messages, and
            :attr:`path`).
        shards: the shards' packed directories, in order.
        units: their stored units (all shards share them; ``None``: each one's
            manifest's, which must agree).

    Attributes:
        shards: the open shards (:class:`PackedDataset`).
        molecule_starts: int64 (S + 1,) first global molecule of each shard.
        atom_starts: int64 (S + 1,) first global atom of each shard.
        dispersion: the shards' D3 record (the first one's; every shard has the
            same settings).

    Raises:
        InputError: a shard that cannot be opened, or shards that differ in units,
            in D3 dispersion settings or in which arrays they have (named).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shards: Sequence[str | os.PathLike],
        units: Mapping[str, str] | None = None,
    ):
        if not shards:
            raise InputError(f"{path}: the dataset lists no shards")
        self.path = Path(path)
        self.shards = [PackedDataset(p, units=units) for p in shards]
        first = self.shards[0]
        for shard in self.shards[1:]:
            check_same(
                shard.dispersion,
                first.dispersion,
                (str(shard.path), str(first.path)),
                "the shards of one dataset share their data.dispersion",
            )
            if shard.units != first.units:
                raise InputError(
                    f"{shard.path}: stored in {shard.units}, but {first.path} in "
                    f"{first.units}; the shards of one dataset share their units"
                )
            if shard.keys != first.keys:
                raise InputError(
                    f"{shard.path}: has arrays {shard.keys}, but {first.path} has "
                    f"{first.keys}; every shard of a dataset has the same arrays"
                )
        self.manifest = None
        self.dispersion = first.dispersion
        self._units = first.units
        self.molecule_starts = np.concatenate(
            [[0], np.cumsum([s.n_molecules for s in self.shards])]
        ).astype(np.int64)
        self.atom_starts = np.concatenate(
            [[0], np.cumsum([s.n_atoms_total for s in self.shards])]
        ).astype(np.int64)
        self.n_molecules = int(self.molecule_starts[-1])
        self.n_atoms_total = int(self.atom_starts[-1])
        # offsets: every shard's first n entries, then the total
        self.offsets = ShardedArray(
            [s.offsets[:-1] for s in self.shards] + [np.zeros(1, np.int64)],
            shifts=[*self.atom_starts[:-1], self.n_atoms_total],
        )
        self.n_atoms = ShardedArray([s.n_atoms for s in self.shards])
        self._arrays = {
            key: None
            if first._arrays[key] is None
            else ShardedArray([s._arrays[key] for s in self.shards])
            for key in ARRAYS
        }

    def shard_of(self, i: int) -> tuple[int, int]:
        """``(shard, local index)`` of global molecule ``i``."""
        if not 0 <= i < self.n_molecules:
            raise IndexError(f"molecule {i} out of range for {self.n_molecules}")
        s = int(np.searchsorted(self.molecule_starts, i, side="right")) - 1
        return s, i - int(self.molecule_starts[s])

    def molecule(self, i: int) -> dict[str, np.ndarray]:
        if -self.n_molecules <= i < 0:
            i += self.n_molecules
        s, local = self.shard_of(i)
        return self.shards[s].molecule(local)

    def chunks(self, max_atoms: int = 1 << 20) -> Iterator[tuple[int, int]]:
        """Consecutive molecule ranges of at most ``max_atoms`` atoms, each inside
        one shard (global indices)."""
        for chunk in self.atom_chunks(max_atoms):
            yield chunk.start, chunk.stop

    def atom_chunks(self, max_atoms: int = 1 << 20) -> Iterator[AtomChunk]:
        for s, shard in enumerate(self.shards):
            offsets = np.asarray(shard.offsets)
            m0, a0 = int(self.molecule_starts[s]), int(self.atom_starts[s])
            for start, stop in molecule_chunks(offsets, max_atoms):
                yield AtomChunk(m0 + start, m0 + stop, offsets[start : stop + 1] + a0)

    def stored_bytes(self) -> int:
        return sum(shard.stored_bytes() for shard in self.shards)

    def checksums(self) -> dict[str, str] | None:
        parts: dict[str, str] = {}
        for s, shard in enumerate(self.shards):
            sums = shard.checksums()
            if sums is None:
                return None
            parts |= {f"{s}:{k}": v for k, v in sums.items()}
        return parts

    def file_paths(self) -> dict[str, Path]:
        """The files of every shard, keyed ``"<shard>:<key>"``."""
        return {
            f"{s}:{k}": p
            for s, shard in enumerate(self.shards)
            for k, p in shard.file_paths().items()
        }

    def content_digests(self) -> list[str]:
        """Every shard's :meth:`PackedDataset.content_digests`, in order."""
        return [d for shard in self.shards for d in shard.content_digests()]
