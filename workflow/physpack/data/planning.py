"""Epoch planning of packed batches: size buckets, budgets and giant molecules.

Everything here works on a subset's molecule sizes alone (:class:`SubsetSizes`),
never on atom data: which molecules are giants (:func:`giant_threshold`), the
budgets of the normal and giant batches (:func:`subset_budgets`), and the order in
which one epoch visits the molecules and cuts them into batches (:func:`plan_epoch`,
with :func:`~physpack.data.budget.greedy_bounds`). Memory: a few index arrays of the
subset's size; statistics are gathered in chunks of :data:`CHUNK` molecules.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from physpack.data.budget import Budget, SizeStats, derive_budget, greedy_bounds

#: normal and giant budgets (index into the loader's ``budgets``)
NORMAL, GIANT = 0, 1
#: molecules per chunk of the statistics passes (bounds transient memory)
CHUNK = 1 << 15


@dataclasses.dataclass(frozen=True)
class SubsetSizes:
    """Sizes of a subset's molecules, indexed by subset position.

    Attributes:
        atoms: unsigned int (n,) atoms per molecule.
        hist: int64 (largest + 1,) molecules of each size.
        pair_counts: unsigned int (n,) pairs within the cutoff per molecule, or
            ``None`` when batches hold all ordered pairs (n·(n-1)).
    """

    atoms: np.ndarray
    hist: np.ndarray
    pair_counts: np.ndarray | None = None

    @classmethod
    def of(
        cls, atoms: np.ndarray, pair_counts: np.ndarray | None = None
    ) -> SubsetSizes:
        """Sizes from ``atoms`` (int (n,)), the histogram computed here."""
        return cls(atoms, np.bincount(atoms), pair_counts)

    @property
    def n(self) -> int:
        return int(self.atoms.size)

    def pairs(self, positions: np.ndarray) -> np.ndarray:
        """int64 (k,): pairs of the molecules at subset ``positions`` as batches
        hold them."""
        if self.pair_counts is not None:
            return self.pair_counts[positions].astype(np.int64)
        n = self.atoms[positions].astype(np.int64)
        return n * (n - 1)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One epoch's packing: batch ``b`` holds subset positions
    ``order[bounds[batches[b]]:bounds[batches[b] + 1]]`` (empty for the padding
    batches that complete a step of giants) in budget ``kinds[batches[b]]``.

    Attributes:
        order: int32/int64 (n,) subset positions in packing order.
        bounds: int64 (n_batch_ids + 1,) batch boundaries into ``order``.
        batches: int64 (n_batches,) batch visiting order.
        kinds: uint8 (n_batch_ids,) budget of each batch (:data:`NORMAL`,
            :data:`GIANT`).
    """

    order: np.ndarray
    bounds: np.ndarray
    batches: np.ndarray
    kinds: np.ndarray

    def __len__(self) -> int:
        return int(self.batches.size)

    def positions(self, b: int) -> np.ndarray:
        """Subset positions of stream batch ``b``, int (k,)."""
        k = int(self.batches[b])
        return self.order[self.bounds[k] : self.bounds[k + 1]]

    def kind(self, b: int) -> int:
        """Budget of stream batch ``b``."""
        return int(self.kinds[self.batches[b]])


def kinds_of(atoms: np.ndarray, giant_atoms: int | None) -> np.ndarray:
    """uint8 (k,): budget of molecules of ``atoms`` atoms (int (k,))."""
    if giant_atoms is None:
        return np.zeros(atoms.size, dtype=np.uint8)
    return (atoms > giant_atoms).astype(np.uint8)


def subset_stats(
    sizes: SubsetSizes, giant_atoms: int | None = None, giant: bool | None = None
) -> SizeStats:
    """Size statistics of the whole subset (``giant`` None), of its normal
    molecules (False) or of its giants (True, those above ``giant_atoms``)."""
    count = atoms = pairs = big_a = big_p = 0
    for a in range(0, sizes.n, CHUNK):
        pos = np.arange(a, min(sizes.n, a + CHUNK))
        n = sizes.atoms[pos].astype(np.int64)
        if giant is not None:
            keep = (n > giant_atoms) == giant
            pos, n = pos[keep], n[keep]
        if not n.size:
            continue
        p = sizes.pairs(pos)
        count += n.size
        atoms += int(n.sum())
        pairs += int(p.sum())
        big_a, big_p = max(big_a, int(n.max())), max(big_p, int(p.max()))
    return SizeStats(count, atoms, pairs, big_a, big_p)


def giant_threshold(
    sizes: SubsetSizes, batch_size: int, giant_atoms: int | Literal["auto"] | None
) -> int | None:
    """``giant_atoms`` when the subset has molecules on both sides of it;
    ``"auto"``: the largest size that fits the budget derived from the mean size
    (of all ordered pairs) without growing it to the largest molecule."""
    if giant_atoms is None:
        return None
    hist = sizes.hist
    if giant_atoms == "auto":
        plain = derive_budget(subset_stats(sizes), batch_size, grow=False)
        n = np.arange(hist.size, dtype=np.int64)
        fits = (n <= plain.max_atoms - 1) & (n * (n - 1) <= plain.max_pairs)
        if fits.all():
            return None
        giant_atoms = int(np.argmin(fits)) - 1  # fits is True, then False
    if hist[giant_atoms + 1 :].any() and hist[: giant_atoms + 1].any():
        return int(giant_atoms)
    return None


def subset_budgets(
    sizes: SubsetSizes,
    batch_size: int,
    giant_atoms: int | None,
    max_atoms: int | None = None,
    max_pairs: int | None = None,
    max_molecules: int | None = None,
) -> tuple[Budget, ...]:
    """``(normal,)``, or ``(normal, giant)`` with a giant threshold: the normal
    budget from the normal molecules and ``batch_size`` (the overrides replace
    it), the giant one with batch size 1 (it holds the largest giant)."""
    normal = subset_stats(sizes, giant_atoms, None if giant_atoms is None else False)
    budgets = (derive_budget(normal, batch_size, max_atoms, max_pairs, max_molecules),)
    if giant_atoms is not None:
        budgets += (derive_budget(subset_stats(sizes, giant_atoms, True), 1),)
    return budgets


def first_misfit(
    sizes: SubsetSizes, budgets: tuple[Budget, ...], giant_atoms: int | None
) -> tuple[int, int] | None:
    """``(subset position, kind)`` of the first molecule that does not fit the
    budget of its kind (overridden budgets are not grown), or ``None``."""
    for kind, budget in enumerate(budgets):
        for a in range(0, sizes.n, CHUNK):
            pos = np.arange(a, min(sizes.n, a + CHUNK))
            pos = pos[kinds_of(sizes.atoms[pos], giant_atoms) == kind]
            n = sizes.atoms[pos].astype(np.int64)
            bad = (n > budget.max_atoms - 1) | (sizes.pairs(pos) > budget.max_pairs)
            if bad.any():
                return int(pos[np.argmax(bad)]), kind
    return None


def bucketed_order(
    atoms: np.ndarray,
    rng: np.random.Generator | None,
    bucket_size: int,
    mix: bool,
    per_batch: float,
) -> np.ndarray:
    """Subset positions shuffled by ``rng`` (``None``: not shuffled), then sorted
    by size inside each bucket of ``bucket_size`` and, with ``mix``, read with a
    stride so that consecutive runs of ``per_batch`` molecules span the bucket's
    sizes.

    Returns:
        int32 (int64 from 2³¹ molecules) (n,) subset positions.
    """
    n = atoms.size
    order = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    if rng is not None:
        rng.shuffle(order)
    for a in range(0, n, bucket_size):
        chunk = order[a : a + bucket_size]
        chunk[:] = chunk[np.argsort(atoms[chunk], kind="stable")]
        if mix:
            strata = max(1, round(chunk.size / per_batch))
            stride = np.arange(chunk.size) % strata
            chunk[:] = chunk[np.argsort(stride, kind="stable")]
    return order


def batch_bounds(sizes: SubsetSizes, order: np.ndarray, budget: Budget) -> np.ndarray:
    """int64 (n_batches + 1,): greedy batch boundaries of ``order`` in ``budget``
    (slot ``A-1`` and ``M-1`` left for padding)."""
    return greedy_bounds(
        sizes.atoms,
        order,
        budget.max_atoms - 1,
        budget.max_pairs,
        budget.max_molecules - 1,
        pairs=sizes.pair_counts,
    )


def padded_to(bounds: np.ndarray, group: int) -> np.ndarray:
    """``bounds`` with empty batches appended up to a multiple of ``group``."""
    missing = -(bounds.size - 1) % group
    return np.concatenate([bounds, np.full(missing, bounds[-1], dtype=np.int64)])


def plan_epoch(
    sizes: SubsetSizes,
    order: np.ndarray,
    budgets: tuple[Budget, ...],
    giant_atoms: int | None,
    rng: np.random.Generator | None,
    group: int = 1,
) -> Plan:
    """The packed batches of ``order`` (from :func:`bucketed_order`), visited in an
    order shuffled by ``rng`` (``None``: in packing order).

    Without giants, one greedy packing into the normal budget. With giants, normal
    and giant molecules are packed apart, each kind completed with empty batches
    to whole steps of ``group`` batches, and the steps shuffled: every step's
    batches share one budget.
    """
    if giant_atoms is None:
        bounds = batch_bounds(sizes, order, budgets[NORMAL])
        n_batches = bounds.size - 1
        visit = rng.permutation(n_batches) if rng is not None else np.arange(n_batches)
        return Plan(order, bounds, visit, np.zeros(n_batches, dtype=np.uint8))
    giant = kinds_of(sizes.atoms[order], giant_atoms).astype(bool)
    parts = (order[~giant], order[giant])
    bounds_of = [
        padded_to(batch_bounds(sizes, part, budgets[k]), group)
        for k, part in enumerate(parts)
    ]
    n_normal = bounds_of[0].size - 1
    all_bounds = np.concatenate([bounds_of[0], bounds_of[1][1:] + parts[0].size])
    kinds = np.repeat(
        np.array([NORMAL, GIANT], dtype=np.uint8), [n_normal, bounds_of[1].size - 1]
    )
    n_steps = kinds.size // group
    steps = rng.permutation(n_steps) if rng is not None else np.arange(n_steps)
    visit = (steps[:, None] * group + np.arange(group)[None, :]).ravel()
    return Plan(np.concatenate(parts), all_bounds, visit, kinds)
