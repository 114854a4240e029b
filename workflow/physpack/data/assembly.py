"""Batch assembly: gathering molecules' rows from packed arrays into batches.

:func:`molecule_atom_rows` is the one recipe for "the atom rows of these molecules,
concatenated"; :class:`BatchAssembler` builds the loader's packed batches (fixed
budget ``A`` atoms, ``P`` pairs, ``M`` molecules; contract in
:mod:`physpack.data.loader`) and dense batches (``B`` molecules × ``W`` atoms) from
the memory-mapped arrays of one dataset, converting to eV, Å, eV/Å and e·Å.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from physpack.data.budget import Budget
from physpack.data.pairs import all_pairs, cutoff_pairs, pair_template
from physpack.data.shards import ShardedArray, gather

Batch = dict[str, np.ndarray]
PairMode = Literal["all", "cutoff"]
#: per-atom and per-molecule arrays of a packed directory
ATOM_KEYS = ("Z", "R", "F")
MOLECULE_KEYS = ("E", "Qtot", "D")


def molecule_atom_rows(first_rows: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The rows of several molecules' atoms, molecule after molecule.

    Molecule ``m`` owns the ``sizes[m]`` consecutive rows from ``first_rows[m]``
    (e.g. ``offsets[ids]`` of a packed directory, or its first slot in a padded
    layout); the result lists them in order: ``first_rows[0] … first_rows[0] +
    sizes[0] - 1``, then molecule 1's, and so on.

    Args:
        first_rows: int (k,) first row of each molecule.
        sizes: int (k,) atoms of each molecule (>= 0).

    Returns:
        int64 (Σ sizes,) row indices.
    """
    ns = np.asarray(sizes, dtype=np.int64)
    starts = np.cumsum(ns) - ns  # position of each molecule's first atom in the result
    rows = np.repeat(np.asarray(first_rows, dtype=np.int64) - starts, ns)
    rows += np.arange(rows.size, dtype=np.int64)
    return rows


def packed_batch_shapes(
    budget: Budget, has_forces: bool, has_dipoles: bool
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every key of a packed batch of ``budget`` (the contract
    in :mod:`physpack.data.loader`); ``F`` and ``D`` only when the data have them."""
    A, P, M = budget.max_atoms, budget.max_pairs, budget.max_molecules
    spec: dict[str, tuple[tuple[int, ...], Any]] = {
        "Z": ((A,), np.int32),
        "R": ((A, 3), np.float32),
    }
    if has_forces:
        spec["F"] = ((A, 3), np.float32)
    spec |= {"E": ((M,), np.float64), "Qtot": ((M,), np.float64)}
    if has_dipoles:
        spec["D"] = ((M, 3), np.float64)
    spec |= {
        "N": ((M,), np.int32),
        "atom_mask": ((A,), np.bool_),
        "molecule_mask": ((M,), np.bool_),
        "pair_mask": ((P,), np.bool_),
        "dst_idx": ((P,), np.int32),
        "src_idx": ((P,), np.int32),
        "batch_segments": ((A,), np.int32),
        "mol_index": ((M,), np.int64),
    }
    return {k: (shape, np.dtype(dt)) for k, (shape, dt) in spec.items()}


def plain(arr: np.ndarray | ShardedArray) -> np.ndarray | ShardedArray:
    """A plain ndarray view of a memory map (np.memmap's subclass hooks cost more
    than the copies); sharded arrays as they are."""
    return arr.view(np.ndarray) if isinstance(arr, np.ndarray) else arr


class BatchAssembler:
    """Packed and dense batches of molecules given by dataset index.

    Args:
        data: the dataset's arrays by key (``Z``, ``R``, ``F`` per atom; ``E``,
            ``Qtot``, ``D`` per molecule), plain ndarrays or sharded arrays.
        offsets: int64 (n_molecules + 1,) first atom row of each molecule.
        scale: stored → canonical unit factor of the keys whose factor is not 1.
        pairs: ``"all"`` ordered pairs of each molecule, or ``"cutoff"``.
        cutoff: [Å] for ``pairs="cutoff"``.
    """

    def __init__(
        self,
        data: Mapping[str, np.ndarray | ShardedArray],
        offsets: np.ndarray,
        scale: Mapping[str, float],
        pairs: PairMode = "all",
        cutoff: float | None = None,
    ):
        self.data = dict(data)
        self.offsets = offsets
        self.scale = dict(scale)
        self.pairs = pairs
        self.cutoff = cutoff
        self._sharded = any(isinstance(a, ShardedArray) for a in self.data.values())

    def _gather(self, keys: tuple[str, ...], rows: np.ndarray, slots: int) -> Batch:
        """``keys`` gathered at ``rows`` into arrays of ``slots`` rows, zero after
        the ``rows.size`` used ones, scaled to canonical units."""
        out: Batch = {}
        used = rows.size
        cache: dict[str, Any] = {}  # the rows' partition into shards
        for key in keys:
            src = self.data.get(key)
            if src is None:
                continue
            arr = np.zeros((slots, *src.shape[1:]), dtype=src.dtype)
            if self._sharded:
                gather(src, rows, arr[:used], cache)
            else:  # mode="clip" writes into the slice directly (rows are in range)
                np.take(src, rows, axis=0, out=arr[:used], mode="clip")
            factor = self.scale.get(key)
            if factor is not None:
                arr[:used] *= arr.dtype.type(factor)
            out[key] = arr
        return out

    def packed(self, ids: np.ndarray, sizes: np.ndarray, budget: Budget) -> Batch:
        """One packed batch of budget ``budget`` (contract in
        :mod:`physpack.data.loader`) holding molecules ``ids`` (int (k,), dataset
        indices) of ``sizes`` atoms (int (k,)); they must fit the budget."""
        A, P, M = budget.max_atoms, budget.max_pairs, budget.max_molecules
        ns = sizes.astype(np.int32)
        k = ids.size
        out = self._gather(ATOM_KEYS, molecule_atom_rows(self.offsets[ids], ns), A)
        t = int(ns.sum())
        out |= self._gather(MOLECULE_KEYS, ids, M)
        N = np.zeros(M, dtype=np.int32)
        N[:k] = ns
        out["N"] = N
        if self.pairs == "cutoff":
            found = cutoff_pairs(out["R"][:t], ns, self.cutoff)
            n_pairs = found[0].size
            dst = np.full(P, A - 1, dtype=np.int32)
            src = np.full(P, A - 1, dtype=np.int32)
            dst[:n_pairs], src[:n_pairs] = found
        else:  # the padding slots filled in the same passes
            n_pairs = int((ns.astype(np.int64) * (ns - 1)).sum())
            dst, src = all_pairs(ns, P, A - 1)
        atom_mask = np.zeros(A, dtype=bool)
        atom_mask[:t] = True
        molecule_mask = np.zeros(M, dtype=bool)
        molecule_mask[:k] = True
        pair_mask = np.zeros(P, dtype=bool)
        pair_mask[:n_pairs] = True
        segments = np.empty(A, dtype=np.int32)
        segments[:t] = np.repeat(np.arange(k, dtype=np.int32), ns)
        segments[t:] = M - 1
        mol_index = np.full(M, -1, dtype=np.int64)
        mol_index[:k] = ids
        out |= {
            "atom_mask": atom_mask,
            "molecule_mask": molecule_mask,
            "pair_mask": pair_mask,
            "dst_idx": dst,
            "src_idx": src,
            "batch_segments": segments,
            "mol_index": mol_index,
        }
        return out

    def dense(
        self, ids: np.ndarray, sizes: np.ndarray, B: int, W: int, physnet: bool
    ) -> Batch:
        """One dense batch: molecules ``ids`` (int (k,), k <= B) of ``sizes`` atoms
        (int (k,), each <= W) in slots of ``W`` atoms, ``B`` molecule slots (keys in
        :meth:`physpack.data.loader.PackedMemmapLoader.batches`)."""
        ns = sizes.astype(np.int32)
        k = ids.size
        flat = molecule_atom_rows(np.arange(k, dtype=np.int64) * W, ns)
        rows = molecule_atom_rows(self.offsets[ids], ns)
        out: Batch = {}
        for key, atoms in self._gather(ATOM_KEYS, rows, rows.size).items():
            arr = np.zeros((B * W, *atoms.shape[1:]), dtype=atoms.dtype)
            arr[flat] = atoms
            out[key] = arr.reshape(B, W, *atoms.shape[1:])
        out |= self._gather(MOLECULE_KEYS, ids, B)
        N = np.zeros(B, dtype=np.int32)
        N[:k] = ns
        mask = np.arange(W)[None, :] < N[:, None]
        molecule_mask = np.zeros(B, dtype=bool)
        molecule_mask[:k] = True
        mol_index = np.full(B, -1, dtype=np.int64)
        mol_index[:k] = ids
        out |= {"N": N, "molecule_mask": molecule_mask, "mol_index": mol_index}
        if not physnet:
            out["mask"] = mask
            return out
        d, s = pair_template(W)
        shift = (np.arange(B, dtype=np.int32) * W)[:, None]
        out |= {
            "atom_mask": mask,
            "batch_segments": np.repeat(np.arange(B, dtype=np.int32), W),
            "dst_idx": (d[None, :] + shift).ravel(),
            "src_idx": (s[None, :] + shift).ravel(),
            "pair_mask": (mask[:, d] & mask[:, s]).ravel(),
        }
        return out
