"""Pair indices of packed batches: all ordered pairs, or those within a cutoff.

Molecules are concatenated from atom 0 in the order of ``sizes``; pairs never cross
molecules. Both builders return batch atom indices in destination-major order (the
order of ``e3x.ops.sparse_pairwise_indices`` inside each molecule), computed
directly from the sizes: no per-size templates, so memory is a few int32 arrays of
the batch's pair count whatever sizes the dataset holds.
"""

from __future__ import annotations

import numpy as np


def pair_template(n: int) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs ``i != j`` of ``n`` atoms, destination-major.

    The same order as ``e3x.ops.sparse_pairwise_indices(n)``, built in numpy so that
    the loader does not need JAX.

    Returns:
        ``(dst, src)``, int32 (n·(n-1),) each.
    """
    i, j = np.divmod(np.arange(n * n, dtype=np.int32), np.int32(max(n, 1)))
    keep = i != j
    return i[keep], j[keep]


def all_pairs(
    sizes: np.ndarray, slots: int | None = None, pad: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered pair ``i != j`` inside each molecule of a batch.

    Atom ``a`` (local index ``l`` in a molecule of ``n`` atoms starting at batch
    atom ``s``) is the destination of the ``n - 1`` consecutive pairs ``r = 0 …
    n - 2`` of its run, whose sources are ``s + r + (r >= l)``: every atom of the
    molecule but ``a``, in increasing order.

    Args:
        sizes: int (k,) atoms per molecule, molecules contiguous from atom 0.
        slots: length of the returned arrays (``None``: the pair count); the
            slots after the pairs hold ``pad``. Filling them here, in the same
            passes, spares a packed batch two copies of its pair arrays.
        pad: index of the padding slots.

    Returns:
        ``(dst, src)``, int32 (slots,) each (default (Σ n·(n-1),)), batch atom
        indices.

    Raises:
        ValueError: ``slots`` below the pair count.
    """
    ns = np.asarray(sizes, dtype=np.int64)
    n_pairs = int((ns * (ns - 1)).sum())
    slots = n_pairs if slots is None else int(slots)
    if slots < n_pairs:
        raise ValueError(f"all_pairs: {n_pairs} pairs do not fit {slots} slots")
    # int32 arithmetic while the pair count allows (half the memory traffic)
    it = np.int32 if slots < 2**31 - 1 else np.int64
    ns = ns.astype(it)
    t = int(ns.sum())
    # per atom, and one more "atom" whose run is the padding slots
    deg = np.empty(t + 1, dtype=it)  # pairs of each atom
    deg[:t] = np.repeat(np.maximum(ns - 1, 0), ns)
    deg[t] = slots - n_pairs
    mol_start = np.repeat(np.cumsum(ns, dtype=it) - ns, ns)  # molecule's 1st atom
    run = np.cumsum(deg[:t], dtype=it) - deg[:t]  # first pair of each atom's run
    shift = np.zeros(t + 1, dtype=it)
    shift[:t] = mol_start - run
    skip = np.empty(t + 1, dtype=it)
    skip[:t] = run + np.arange(t, dtype=it) - mol_start  # run + local index
    skip[t] = slots
    p = np.arange(slots, dtype=it)
    # src = p - run + mol_start + (p - run >= local), as two per-atom repeats
    src = np.repeat(shift, deg)
    src += p
    src += p >= np.repeat(skip, deg)
    src[n_pairs:] = pad
    atoms = np.arange(t + 1, dtype=np.int32)
    atoms[t] = pad
    dst = np.repeat(atoms, deg)
    return dst, src.astype(np.int32, copy=False)


def pair_counts(sizes: np.ndarray) -> np.ndarray:
    """int64 (k,): all ordered pairs ``n·(n-1)`` of each molecule."""
    ns = np.asarray(sizes, dtype=np.int64)
    return ns * (ns - 1)


#: molecules above this many atoms get their cutoff pairs from a k-d tree
#: (O(n log n)) instead of a distance filter over all n·(n-1) pairs
TREE_ATOMS = 100


def cutoff_pairs(
    positions: np.ndarray,
    sizes: np.ndarray,
    cutoff: float,
    tree_above: int = TREE_ATOMS,
) -> tuple[np.ndarray, np.ndarray]:
    """Ordered pairs ``i != j`` of each molecule with ``|R_i - R_j| < cutoff``.

    The all-pairs list of :func:`all_pairs` (same destination-major order) without
    the pairs at or beyond the cutoff. Runs of molecules of up to ``tree_above``
    atoms are filtered from their all pairs (vectorised); larger molecules are
    searched with a k-d tree (``scipy.spatial.cKDTree``), so their cost grows with
    the pairs found rather than as n². Distances are compared in float32, as the
    model computes them, on both paths.

    Args:
        positions: float (t, 3) positions [Å] of the batch's atoms (t = Σ sizes).
        sizes: int (k,) atoms per molecule, molecules contiguous from atom 0.
        cutoff: [Å].
        tree_above: molecules with more atoms use the k-d tree.

    Returns:
        ``(dst, src)``, int32 (p,) each, batch atom indices.
    """
    ns = np.asarray(sizes, dtype=np.int64)
    r = np.asarray(positions, dtype=np.float32)
    starts = np.cumsum(ns) - ns
    big = np.flatnonzero(ns > tree_above)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    done = 0  # molecules handled so far
    for m in [*big.tolist(), ns.size]:
        if m > done:  # a run of small molecules
            a, b = int(starts[done]), int(starts[m - 1] + ns[m - 1])
            dst, src = all_pairs(ns[done:m])
            keep = within(r[a:b], dst, src, cutoff)
            parts.append((dst[keep] + a, src[keep] + a))
        if m < ns.size:
            a = int(starts[m])
            dst, src = _tree_pairs(r[a : a + int(ns[m])], cutoff)
            parts.append((dst + a, src + a))
        done = m + 1
    if not parts:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    dst = np.concatenate([d for d, _ in parts]).astype(np.int32, copy=False)
    src = np.concatenate([s for _, s in parts]).astype(np.int32, copy=False)
    return dst, src


def _tree_pairs(r: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Cutoff pairs of one molecule (positions float32 (n, 3)) from a k-d tree,
    destination-major: candidates within a slightly larger radius in float64,
    then the float32 test of :func:`within`."""
    from scipy.spatial import cKDTree  # only for large molecules

    ij = cKDTree(r.astype(np.float64)).query_pairs(
        cutoff * (1 + 1e-5), output_type="ndarray"
    )
    ij = ij[within(r, ij[:, 0], ij[:, 1], cutoff)]
    dst = np.concatenate([ij[:, 0], ij[:, 1]])
    src = np.concatenate([ij[:, 1], ij[:, 0]])
    order = np.lexsort((src, dst))
    return dst[order], src[order]


def within(
    positions: np.ndarray, dst: np.ndarray, src: np.ndarray, cutoff: float
) -> np.ndarray:
    """bool (p,): pairs ``(dst, src)`` closer than ``cutoff`` [Å] (float32 distances,
    as the model computes them)."""
    r = np.asarray(positions, dtype=np.float32)
    d = r[src] - r[dst]
    return np.einsum("ij,ij->i", d, d) < np.float32(cutoff) ** 2


def cutoff_pair_counts(
    positions: np.ndarray,
    sizes: np.ndarray,
    cutoff: float,
    tree_above: int = TREE_ATOMS,
) -> np.ndarray:
    """int64 (k,): ordered pairs within ``cutoff`` [Å] of each molecule (arguments as
    :func:`cutoff_pairs`)."""
    ns = np.asarray(sizes, dtype=np.int64)
    dst, _ = cutoff_pairs(positions, ns, cutoff, tree_above)
    mol_of_atom = np.repeat(np.arange(ns.size), ns)
    return np.bincount(mol_of_atom[dst], minlength=ns.size).astype(np.int64)
