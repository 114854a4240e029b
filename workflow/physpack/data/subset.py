"""A loader's subset: its indices checked, its molecule sizes and pair counts read.

Only index arrays are built here, in chunks of :data:`CHUNK` molecules, so that no
transient array grows with the dataset beyond 1 byte per molecule (the duplicate
check); atom data are read only for the cutoff pair counts, a batch at a time.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

from physpack.data.assembly import molecule_atom_rows
from physpack.data.budget import PAIR_BYTES, greedy_bounds
from physpack.data.pairs import cutoff_pair_counts
from physpack.data.shards import ShardedArray
from physpack.errors import InputError

#: molecules per chunk (bounds transient memory)
CHUNK = 1 << 15
#: pairs per chunk of the cutoff-count pass (bounds its transient memory)
COUNT_PAIRS = 1 << 22
#: device memory estimate of the size-limit message: float32 features per pair
ESTIMATE_FEATURES = 64


def size_limit_error(where: Path, i: int, n: int, limit: int) -> InputError:
    """The refusal of molecule ``i`` of ``n`` atoms above ``loader.max_molecule_atoms
    = limit``, with the host and device memory a batch holding it would need."""
    pairs = n * (n - 1)
    host = pairs * PAIR_BYTES
    device = pairs * ESTIMATE_FEATURES * 4
    return InputError(
        f"{where}: molecule {i} has {n} atoms, more than "
        f"loader.max_molecule_atoms={limit}; a batch holding it needs up to "
        f"{pairs:,} pair slots: {host / 1e9:.2f} GB of host pair indices and "
        f"about {device / 1e9:.1f} GB of device memory per {ESTIMATE_FEATURES}"
        "-wide float32 pair feature (several per message-passing layer); raise "
        "the limit if that memory is available, or leave the molecule out"
    )


def repeated(values: np.ndarray) -> np.ndarray:
    """bool (n,): entries equal to an earlier entry of ``values``."""
    order = np.argsort(values, kind="stable")
    s = values[order]
    out = np.zeros(values.size, dtype=bool)
    out[order[1:]] = s[1:] == s[:-1]
    return out


def check_indices(indices: np.ndarray, n_molecules: int, where: Path) -> np.ndarray:
    """``indices`` as int32 (int64 from 2³¹ molecules) (k,) after checking that
    they are 1-D integers, unique and in ``[0, n_molecules)``.

    Raises:
        InputError: another dtype or shape, an index out of range or twice (named).
    """
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise InputError(
            f"{where}: indices must be a 1-D integer array, got "
            f"{idx.dtype} with shape {idx.shape}"
        )
    n = n_molecules
    seen = np.zeros(n, dtype=bool)  # 1 byte per dataset molecule, transient
    for a in range(0, idx.size, CHUNK):
        part = idx[a : a + CHUNK]
        lo, hi = int(part.min()), int(part.max())
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            raise InputError(
                f"{where}: subset index {bad} out of range for {n} molecules"
            )
        twice = seen[part] | repeated(part)
        if twice.any():
            raise InputError(
                f"{where}: molecule {int(part[np.argmax(twice)])} appears "
                "twice in the subset"
            )
        seen[part] = True
    return idx.astype(np.int32 if n < 2**31 else np.int64)


def read_sizes(
    offsets: np.ndarray, indices: np.ndarray | None, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Atoms per subset molecule (smallest unsigned dtype, (n,)) and the size
    histogram int64 (largest + 1,), from ``offsets`` (int64 (N + 1,)) at the
    subset ``indices`` (``None``: the first ``n`` molecules), chunk by chunk
    (``n_atoms.npy`` may be absent)."""

    def chunk(a: int) -> np.ndarray:
        if indices is None:
            return np.diff(offsets[a : min(n, a + CHUNK) + 1])
        ids = indices[a : a + CHUNK].astype(np.int64)
        return offsets[ids + 1] - offsets[ids]

    biggest = max(int(chunk(a).max()) for a in range(0, n, CHUNK))
    sizes = np.empty(n, dtype=np.min_scalar_type(biggest))
    hist = np.zeros(biggest + 1, dtype=np.int64)
    for a in range(0, n, CHUNK):
        part = chunk(a)
        sizes[a : a + part.size] = part
        hist += np.bincount(part, minlength=biggest + 1)
    return sizes, hist


def count_cutoff_pairs(
    positions_array: np.ndarray | ShardedArray,
    offsets: np.ndarray,
    ids_of: np.ndarray | None,
    sizes: np.ndarray,
    cutoff: float,
    scale: float = 1.0,
) -> np.ndarray:
    """Pairs closer than ``cutoff`` [Å] of every subset molecule, smallest
    unsigned dtype (n,), counted in chunks of about :data:`COUNT_PAIRS` pairs.

    Args:
        positions_array: the dataset's ``R`` (t, 3), stored units.
        offsets: int64 (N + 1,) first atom of each dataset molecule.
        ids_of: dataset indices of the subset (``None``: the first n molecules).
        sizes: atoms per subset molecule (n,).
        cutoff: [Å].
        scale: stored → Å factor of ``R``.
    """
    n = sizes.size
    largest = int(sizes.max())
    counts = np.empty(n, dtype=np.min_scalar_type(largest * (largest - 1)))
    order = np.arange(n, dtype=np.int64)
    cap = max(COUNT_PAIRS, largest * (largest - 1))
    bounds = greedy_bounds(sizes, order, 1 << 62, cap, CHUNK)
    factor = np.float32(scale)
    for a, b in itertools.pairwise(bounds):
        ids = order[a:b] if ids_of is None else ids_of[a:b]
        ns = sizes[a:b].astype(np.int64)
        positions = positions_array[molecule_atom_rows(offsets[ids], ns)] * factor
        counts[a:b] = cutoff_pair_counts(positions, ns, cutoff)
    return counts


def read_split(split_path: str | os.PathLike, split_name: str) -> np.ndarray:
    """Dataset indices int64 (n,) of subset ``split_name`` of an NPZ split file.

    Raises:
        InputError: an unreadable file, a missing key or a non-integer array.
    """
    p = Path(split_path)
    try:
        with np.load(p) as npz:
            if split_name not in npz.files:
                raise InputError(
                    f"{p}: no subset '{split_name}' (has: {', '.join(npz.files)})"
                )
            idx = npz[split_name]
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: unreadable split file ({exc})") from exc
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise InputError(
            f"{p}: '{split_name}' must be a 1-D integer array, got {idx.dtype} "
            f"with shape {idx.shape}"
        )
    return idx.astype(np.int64)
