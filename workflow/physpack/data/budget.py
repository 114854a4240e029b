"""Fixed batch budgets and greedy packing into them.

A :class:`Budget` is the slot counts of one compiled batch shape: ``A`` atoms,
``P`` pairs, ``M`` molecules, with slot ``A-1`` and ``M-1`` reserved for padding
(as jraph's ``dynamically_batch`` does). :func:`derive_budget` sizes it from the
subset's statistics, :func:`greedy_bounds` packs molecules into it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from physpack.errors import ConfigError

#: molecules per packing window (bounds transient memory)
WINDOW = 1 << 15
#: bytes of host memory per pair slot of a batch (dst, src int32; mask bool)
PAIR_BYTES = 9


@dataclasses.dataclass(frozen=True)
class Budget:
    """Fixed slot counts of every packed batch of one shape.

    Attributes:
        max_atoms: atom slots ``A``; slot ``A-1`` is always padding.
        max_pairs: pair slots ``P``.
        max_molecules: molecule slots ``M``; slot ``M-1`` is always padding.
    """

    max_atoms: int
    max_pairs: int
    max_molecules: int

    def fits(self, atoms: int, pairs: int) -> bool:
        """Whether one molecule of ``atoms`` atoms and ``pairs`` pairs fits."""
        return atoms <= self.max_atoms - 1 and pairs <= self.max_pairs


@dataclasses.dataclass(frozen=True)
class SizeStats:
    """Size statistics of a set of molecules (the input of :func:`derive_budget`).

    Attributes:
        count: molecules.
        atoms, pairs: total atoms and pairs.
        largest_atoms, largest_pairs: of the largest molecule (by each measure).
    """

    count: int
    atoms: int
    pairs: int
    largest_atoms: int
    largest_pairs: int

    @property
    def mean_atoms(self) -> float:
        return self.atoms / max(self.count, 1)

    @property
    def mean_pairs(self) -> float:
        return self.pairs / max(self.count, 1)


def round_friendly(x: float, coarse_above: int) -> int:
    """``x`` rounded up to a multiple of 8, or of 64 once above ``coarse_above``
    (tile-friendly shapes for accelerators)."""
    step = 64 if x > coarse_above else 8
    return int(max(step, math.ceil(x / step) * step))


def derive_budget(
    stats: SizeStats,
    batch_size: int,
    max_atoms: int | None = None,
    max_pairs: int | None = None,
    max_molecules: int | None = None,
    *,
    grow: bool = True,
) -> Budget:
    """Budgets for ``batch_size`` molecules per batch on average.

    ``A`` = batch_size × mean atoms + 1, ``P`` = (A - 1) × the mean pairs per atom,
    ``M`` = 1.25 × the mean molecules per batch + 1, rounded up to multiples of 8
    (64 for large ``A`` and ``P``); derived budgets grow to hold the largest
    molecule (unless ``grow`` is False), overrides are taken as given (check them
    with :meth:`Budget.fits`).

    Raises:
        ConfigError: a budget without room for one atom and one molecule.
    """
    mean_n, mean_p = stats.mean_atoms, stats.mean_pairs
    atoms = round_friendly(batch_size * mean_n + 1, 256)
    if grow:
        atoms = max(atoms, round_friendly(stats.largest_atoms + 1, 256))
    atoms = int(max_atoms) if max_atoms is not None else atoms
    # pair slots in the subset's own pair/atom ratio: both budgets fill together
    pairs = round_friendly((atoms - 1) * mean_p / mean_n, 512)
    if grow:
        pairs = max(pairs, round_friendly(stats.largest_pairs, 512))
    pairs = int(max_pairs) if max_pairs is not None else pairs
    mols = round_friendly(1.25 * (atoms - 1) / mean_n + 1, 1 << 30)
    mols = int(max_molecules) if max_molecules is not None else mols
    if mols < 2 or atoms < 2 or pairs < 0:
        raise ConfigError(
            f"loader: budget max_atoms={atoms}, max_pairs={pairs}, "
            f"max_molecules={mols} leaves no room (need >= 2 atoms and molecules: "
            "one slot of each is reserved for padding)"
        )
    return Budget(atoms, pairs, mols)


def batch_bytes(budget: Budget, atom_bytes: int, molecule_bytes: int) -> int:
    """Host bytes of one batch of ``budget`` with ``atom_bytes`` per atom slot and
    ``molecule_bytes`` per molecule slot (see the batch contract)."""
    return (
        budget.max_atoms * atom_bytes
        + budget.max_pairs * PAIR_BYTES
        + budget.max_molecules * molecule_bytes
    )


def greedy_bounds(
    sizes: np.ndarray,
    order: np.ndarray,
    atom_cap: int,
    pair_cap: int,
    mol_cap: int,
    window: int = WINDOW,
    pairs: np.ndarray | None = None,
) -> np.ndarray:
    """Batch boundaries of greedy packing: molecules are taken in ``order`` until
    the next one would exceed ``atom_cap`` atoms, ``pair_cap`` pairs or ``mol_cap``
    molecules. Works through windows of ``window`` molecules (bounded memory).

    Args:
        sizes: atoms per molecule (n,), indexed by the entries of ``order``.
        order: int (L,) molecules in packing order; each must fit the caps alone.
        pairs: pairs per molecule (n,), indexed like ``sizes`` (default: all
            ordered pairs, n·(n-1)).

    Returns:
        int64 (n_batches + 1,) boundaries into ``order``, from 0 to L.
    """
    window = max(window, 2 * mol_cap + 2)
    L = order.size
    parts = [np.zeros(1, dtype=np.int64)]
    s = 0
    while s < L:
        ends: list[int] = []
        end = min(L, s + window)
        w = sizes[order[s:end]].astype(np.int64)
        ca = np.cumsum(w)
        cp = np.cumsum(
            w * (w - 1) if pairs is None else pairs[order[s:end]].astype(np.int64)
        )
        j, base_a, base_p = 0, 0, 0
        while True:
            k = min(
                int(np.searchsorted(ca, base_a + atom_cap, side="right")),
                int(np.searchsorted(cp, base_p + pair_cap, side="right")),
                j + mol_cap,
            )
            if k == j:
                raise ValueError(
                    f"greedy_bounds: molecule at order position {s + j} does not fit "
                    "the caps on its own"
                )
            if k >= w.size and end < L:
                break  # the open batch may continue in the next window
            k = min(k, w.size)
            ends.append(s + k)
            j = k
            if k >= w.size:
                break
            base_a, base_p = int(ca[k - 1]), int(cp[k - 1])
        parts.append(np.asarray(ends, dtype=np.int64))
        s += j
    return np.concatenate(parts)
