"""Streaming batches for PhysNet from a memory-mapped packed directory.

Two batch forms are offered by :class:`PackedMemmapLoader`:

* :meth:`~PackedMemmapLoader.packed_batches`, the form the model trains on: every
  batch has the shapes of a fixed budget of ``A`` atom slots, ``P`` pair slots and
  ``M`` molecule slots (:class:`~physpack.data.budget.Budget`), so one compilation
  serves every step. Molecules are concatenated from slot 0; the rest is padding.
  Atom slot ``A-1`` and molecule slot ``M-1`` are always padding (the budgets
  reserve them, as jraph's ``dynamically_batch`` does) and every padding atom and
  pair points there, so once a model masks atoms, pairs and molecules the padding
  changes nothing.
* :meth:`~PackedMemmapLoader.batches`, the older dense form kept for custom
  training loops: a fixed number of molecules per batch, each padded to
  ``num_atoms``.

Molecules of any size: pair indices are computed per batch from the sizes (no
per-size templates). With ``giant_atoms``, molecules above that size go into
batches of a second, "giant" budget (a second compiled shape), so that a few large
molecules do not inflate the budget of every other batch; ``max_molecule_atoms``
refuses larger molecules with a memory estimate. With ``pairs="cutoff"`` a batch
holds only the pairs closer than ``cutoff`` (a neighbour list built on the host
per batch; the budgets are derived from each molecule's count of such pairs).

Data parallelism: with ``process_slots`` every optimisation step takes
``batches_per_step`` consecutive batches of the one epoch stream (the same in every
process) and each process assembles only its own slots; the others are ``None``
(:meth:`~PackedMemmapLoader.packed_batches`), or a process receives its share of
each step at once, optionally transferred to its devices in the prefetch thread
(:meth:`~PackedMemmapLoader.packed_steps`). With giants, batches of one budget come
in whole steps, so every device of a step has the same shape.

Only index arrays live in RAM: the molecule sizes (1 byte per molecule while
sizes fit uint8), the epoch's order (4 bytes), for a subset its indices (4 bytes),
and with cutoff pairs each molecule's pair count (2–4 bytes); ``offsets.npy`` is
read through its memory map (8 bytes per molecule of page cache). No transient
array grows with the dataset beyond 1 byte per molecule (subset checks), and the
atom and molecule data stay memory-mapped, read batch by batch.

Values are in the canonical units eV, Å, eV/Å and e·Å whatever the directory
stores: arrays of a directory in other declared units (older tooling) are multiplied
by :meth:`~physpack.data.packed.PackedDataset.scale` as they are gathered.

Packed batch contract (numpy arrays; shapes fixed per budget)::

    Z              int32   (A,)    atomic numbers, 0 for padding
    R              float32 (A, 3)  positions [Å], 0 for padding
    F              float32 (A, 3)  forces [eV/Å]            (only if the data have F)
    E              float64 (M,)    total energies [eV]
    Qtot           float64 (M,)    total charges [e]
    D              float64 (M, 3)  dipole moments [e·Å]     (only if the data have D)
    N              int32   (M,)    atoms per molecule, 0 for padding
    atom_mask      bool    (A,)
    molecule_mask  bool    (M,)
    pair_mask      bool    (P,)
    dst_idx        int32   (P,)    ordered pairs i != j inside each molecule (all, or
    src_idx        int32   (P,)    those closer than the cutoff), destination-major,
                                   as batch atom indices; padding pairs -> A-1
    batch_segments int32   (A,)    molecule slot of each atom; padding atoms -> M-1
    mol_index      int64   (M,)    dataset index of each molecule, -1 for padding
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from physpack.config import LoaderConfig, ModelConfig
from physpack.data.budget import (
    PAIR_BYTES,
    Budget,
    SizeStats,
    derive_budget,
    greedy_bounds,
)
from physpack.data.descriptor import open_dataset
from physpack.data.packed import PackedDataset
from physpack.data.pairs import (
    all_pairs,
    cutoff_pair_counts,
    cutoff_pairs,
    pair_template,
)
from physpack.data.prefetch import prefetched
from physpack.data.shards import ShardedArray, gather
from physpack.errors import ConfigError, InputError

__all__ = [
    "Batch",
    "Budget",
    "PackedMemmapLoader",
    "ProcessSlots",
    "epoch_padding_stats",
    "from_config",
    "greedy_bounds",
    "pair_template",
    "read_split",
]

Batch = dict[str, np.ndarray]
PairMode = Literal["all", "cutoff"]
#: molecules whose sizes are read from ``offsets`` per chunk (bounds transient memory)
_CHUNK = 1 << 15
#: pairs per chunk of the cutoff-count pass (bounds its transient memory)
_COUNT_PAIRS = 1 << 22
_BUDGET_KEYS = ("max_atoms", "max_pairs", "max_molecules")
#: normal and giant budgets (index into :attr:`PackedMemmapLoader.budgets`)
NORMAL, GIANT = 0, 1
#: device memory estimate of the size-limit message: float32 features per pair
_ESTIMATE_FEATURES = 64


@dataclasses.dataclass(frozen=True)
class ProcessSlots:
    """This process's share of each optimisation step under data parallelism.

    Step ``s`` takes batches ``s·B … s·B + B − 1`` of the epoch stream (``B =
    batches_per_step``, over all processes) and this process owns the slots
    ``first … first + count − 1`` of it: the layout of
    :func:`physpack.training.parallel.step_batches`.

    Attributes:
        batches_per_step: ``B``.
        first: this process's first slot.
        count: its number of slots (``None``: all ``B``).
    """

    batches_per_step: int
    first: int = 0
    count: int | None = None

    def __post_init__(self) -> None:
        B, count = self.batches_per_step, self.n_slots
        if B < 1 or self.first < 0 or count < 1 or self.first + count > B:
            raise ConfigError(
                f"loader.process_slots: slots {self.first}..{self.first + count - 1}"
                f" outside a step of {B} batch(es)"
            )

    @property
    def n_slots(self) -> int:
        return self.batches_per_step if self.count is None else int(self.count)

    def owns(self, b: int) -> bool:
        """Whether stream batch ``b`` belongs to this process."""
        return self.first <= b % self.batches_per_step < self.first + self.n_slots


@dataclasses.dataclass(frozen=True)
class _Plan:
    """One epoch's packing: batch ``b`` holds subset positions
    ``order[bounds[batches[b]]:bounds[batches[b] + 1]]`` (empty for the padding
    batches that complete a step of giants) in budget ``kinds[batches[b]]``."""

    order: np.ndarray  # int32/int64 (n,) subset positions in packing order
    bounds: np.ndarray  # int64 (n_batch_ids + 1,)
    batches: np.ndarray  # int64 (n_batches,) batch visiting order
    kinds: np.ndarray  # uint8 (n_batch_ids,) budget of each batch

    def __len__(self) -> int:
        return int(self.batches.size)

    def positions(self, b: int) -> np.ndarray:
        k = int(self.batches[b])
        return self.order[self.bounds[k] : self.bounds[k + 1]]

    def kind(self, b: int) -> int:
        return int(self.kinds[self.batches[b]])


def _plain(arr: np.ndarray | ShardedArray) -> np.ndarray | ShardedArray:
    """A plain ndarray view of a memory map (np.memmap's subclass hooks cost more
    than the copies); sharded arrays as they are."""
    return arr.view(np.ndarray) if isinstance(arr, np.ndarray) else arr


def _repeated(values: np.ndarray) -> np.ndarray:
    """bool (n,): entries equal to an earlier entry of ``values``."""
    order = np.argsort(values, kind="stable")
    s = values[order]
    out = np.zeros(values.size, dtype=bool)
    out[order[1:]] = s[1:] == s[:-1]
    return out


def _padded_to(bounds: np.ndarray, group: int) -> np.ndarray:
    """``bounds`` with empty batches appended up to a multiple of ``group``."""
    missing = -(bounds.size - 1) % group
    return np.concatenate([bounds, np.full(missing, bounds[-1], dtype=np.int64)])


class PackedMemmapLoader:
    """Fixed-shape batches from a packed directory, streamed from memory maps.

    Epoch ``e``'s order depends only on ``(seed, e)``: the subset is shuffled, sorted
    by size inside buckets of ``bucket_size`` molecules and packed greedily into
    batches until one of the budgets would overflow; the batches are then shuffled.
    With ``mix_sizes`` (default) each sorted bucket is read with a stride of about
    the number of batches it fills, so every batch is a stratified sample of the
    bucket's sizes; contiguous sorted runs give batches of one size, which cannot
    fill both the atom and the pair budget (pairs grow as n²), while stratified
    batches fill both to within a few percent. ``shuffle=False`` skips both
    shuffles (same order every epoch).

    Args:
        path: packed directory, or an open :class:`~physpack.data.packed.PackedDataset`.
        batch_size: molecules per batch; for packed batches the mean, from which the
            budgets are derived; for dense batches the exact count.
        shuffle: shuffle molecules and batches every epoch.
        bucket_size: molecules per size-sorting bucket.
        seed: seed of every epoch's order.
        indices: dataset indices of the subset to load (default: all), int (n,),
            unique, each in ``[0, n_molecules)``.
        max_atoms, max_pairs, max_molecules: override the derived (normal) budget.
        prefetch: batches assembled ahead in a background thread (0: none).
        device_put: ``True`` to move each batch with ``jax.device_put`` in the
            prefetch thread, or a callable applied to each batch dict there.
        num_atoms: default padded width of :meth:`batches` (``None``: batch maximum).
        mix_sizes: stratify sizes inside each batch (see above).
        pairs: ``"all"`` (every ordered pair of each molecule) or ``"cutoff"``
            (pairs closer than ``cutoff``; the Coulomb term of a model with
            charges needs ``"all"``).
        cutoff: [Å], for ``pairs="cutoff"`` (the model's cutoff).
        giant_atoms: molecules with more atoms go into batches of the giant budget
            (:data:`GIANT`); ``"auto"``: those that do not fit the budget derived
            from ``batch_size`` and the mean size (so only outliers, and none when
            every molecule fits); ``None``: one budget that holds every molecule.
        max_molecule_atoms: refuse a molecule with more atoms (``None``: no limit).
        process_slots: this process's share of every step (:class:`ProcessSlots`);
            other processes' batches are not assembled, and giant batches come in
            whole steps.

    Budgets (:attr:`budgets`, :func:`~physpack.data.budget.derive_budget`): ``A`` =
    batch_size × mean atoms + 1, ``P`` = (A - 1) × the mean pairs per atom, ``M`` =
    1.25 × the mean molecules per batch + 1, rounded to tile-friendly sizes, grown
    to hold the largest molecule, from the molecules of each budget (the giant
    budget with batch size 1: it holds the largest giant). Overridden budgets are
    checked against the molecules.

    Attributes:
        budget: the normal :class:`Budget` (the only one without giants).
        budgets: ``(normal,)``, or ``(normal, giant)`` when the subset has giants.
        epoch, position: the iteration state (see :meth:`state_dict`).
        n_molecules: molecules in the subset.
        has_forces, has_dipoles: whether batches carry ``F`` / ``D``.

    Raises:
        ConfigError: a non-positive batch/bucket size, negative prefetch, a budget
            override below 2 molecules, an unknown pair mode or a missing cutoff.
        InputError: an unreadable directory, an empty, duplicated or out-of-range
            subset, a molecule above ``max_molecule_atoms`` or one that does not fit
            an overridden budget (named).
    """

    def __init__(
        self,
        path: str | os.PathLike | PackedDataset,
        batch_size: int,
        shuffle: bool = True,
        bucket_size: int = 8192,
        seed: int = 0,
        indices: np.ndarray | None = None,
        max_atoms: int | None = None,
        max_pairs: int | None = None,
        max_molecules: int | None = None,
        prefetch: int = 2,
        *,
        device_put: bool | Callable[[Batch], Any] = False,
        num_atoms: int | None = None,
        mix_sizes: bool = True,
        pairs: PairMode = "all",
        cutoff: float | None = None,
        giant_atoms: int | Literal["auto"] | None = None,
        max_molecule_atoms: int | None = None,
        process_slots: ProcessSlots | None = None,
    ):
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("bucket_size", bucket_size, 1),
            ("prefetch", prefetch, 0),
            ("giant_atoms", 1 if giant_atoms in (None, "auto") else giant_atoms, 1),
            (
                "max_molecule_atoms",
                1 if max_molecule_atoms is None else max_molecule_atoms,
                1,
            ),
        ):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(
                    f"loader.{name}: got {value!r}, expected int >= {low}"
                )
        if pairs not in ("all", "cutoff"):
            raise ConfigError(f"loader.pairs: got {pairs!r}, expected all or cutoff")
        if pairs == "cutoff" and not (cutoff is not None and cutoff > 0):
            raise ConfigError(
                f"loader.pairs=cutoff needs a positive cutoff [Å], got {cutoff!r}"
            )
        self.dataset = path if isinstance(path, PackedDataset) else open_dataset(path)
        self.path = self.dataset.path
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.bucket_size = int(bucket_size)
        self.seed = int(seed)
        self.prefetch = int(prefetch)
        self.num_atoms = num_atoms
        self.mix_sizes = bool(mix_sizes)
        self.pairs: PairMode = pairs
        self.cutoff = None if cutoff is None else float(cutoff)
        self.process_slots = process_slots
        self.max_molecule_atoms = max_molecule_atoms
        self._device_put = device_put
        self._indices = self._check_indices(indices)
        self.n_molecules = (
            self.dataset.n_molecules if self._indices is None else self._indices.size
        )
        if self.n_molecules == 0:
            raise InputError(f"{self.path}: empty subset, no molecules to load")
        self.has_forces = self.dataset.has("F")
        self.has_dipoles = self.dataset.has("D")
        # plain ndarray views: np.memmap's subclass hooks cost more than the copies
        self._data = {k: _plain(self.dataset.array(k)) for k in self.dataset.keys}
        self._offsets = _plain(self.dataset.offsets)
        # stored → canonical unit factors (eV, Å, eV/Å, e·Å), only those != 1: data
        # written by this package are canonical and are copied without arithmetic
        self._scale = {
            k: f for k in self.dataset.keys if (f := self.dataset.scale(k)) != 1.0
        }
        self._sizes, self._size_hist = self._read_sizes()
        if self._size_hist.size == 1:
            raise InputError(f"{self.path}: every molecule of the subset has 0 atoms")
        self._check_limit()
        self._pair_counts = self._count_cutoff_pairs() if pairs == "cutoff" else None
        self._giant_atoms = self._giant_threshold(giant_atoms)
        normal = self._stats(None if self._giant_atoms is None else False)
        self._mean_atoms = normal.mean_atoms
        self.budgets: tuple[Budget, ...] = (
            derive_budget(normal, self.batch_size, max_atoms, max_pairs, max_molecules),
        )
        if self._giant_atoms is not None:  # one giant per batch at least
            self.budgets += (derive_budget(self._stats(True), 1),)
        self._check_fits()
        self.epoch = 0
        self.position = 0
        self._plan_cache: tuple[int, _Plan] | None = None

    @property
    def budget(self) -> Budget:
        """The normal budget (see :attr:`budgets`)."""
        return self.budgets[NORMAL]

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_split(
        cls,
        path: str | os.PathLike | PackedDataset,
        split_path: str | os.PathLike,
        split_name: str,
        **kwargs: Any,
    ) -> PackedMemmapLoader:
        """A loader over one subset of a split file (NPZ with int arrays ``train``,
        ``valid``, ``test`` of dataset indices)."""
        return cls(path, indices=read_split(split_path, split_name), **kwargs)

    def _check_indices(self, indices: np.ndarray | None) -> np.ndarray | None:
        if indices is None:
            return None
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise InputError(
                f"{self.path}: indices must be a 1-D integer array, got "
                f"{idx.dtype} with shape {idx.shape}"
            )
        n = self.dataset.n_molecules
        seen = np.zeros(n, dtype=bool)  # 1 byte per dataset molecule, transient
        for a in range(0, idx.size, _CHUNK):
            part = idx[a : a + _CHUNK]
            lo, hi = int(part.min()), int(part.max())
            if lo < 0 or hi >= n:
                bad = lo if lo < 0 else hi
                raise InputError(
                    f"{self.path}: subset index {bad} out of range for {n} molecules"
                )
            twice = seen[part] | _repeated(part)
            if twice.any():
                raise InputError(
                    f"{self.path}: molecule {int(part[np.argmax(twice)])} appears "
                    "twice in the subset"
                )
            seen[part] = True
        return idx.astype(np.int32 if n < 2**31 else np.int64)

    def _ids(self, positions: np.ndarray) -> np.ndarray:
        """Dataset indices of subset ``positions``."""
        return positions if self._indices is None else self._indices[positions]

    def _read_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Atoms per subset molecule (smallest unsigned dtype) and the size histogram
        int64 (max_size + 1,), read from ``offsets`` chunk by chunk so that no
        transient array grows with the dataset (``n_atoms.npy`` may be absent)."""
        off = self._offsets
        n = self.n_molecules

        def chunk(a: int) -> np.ndarray:
            if self._indices is None:
                return np.diff(off[a : min(n, a + _CHUNK) + 1])
            ids = self._indices[a : a + _CHUNK].astype(np.int64)
            return off[ids + 1] - off[ids]

        biggest = max(int(chunk(a).max()) for a in range(0, n, _CHUNK))
        sizes = np.empty(n, dtype=np.min_scalar_type(biggest))
        hist = np.zeros(biggest + 1, dtype=np.int64)
        for a in range(0, n, _CHUNK):
            part = chunk(a)
            sizes[a : a + part.size] = part
            hist += np.bincount(part, minlength=biggest + 1)
        return sizes, hist

    def _first_above(self, limit: int) -> tuple[int, int]:
        """Dataset index and size of the first subset molecule above ``limit``."""
        pos = int(np.argmax(self._sizes > limit))
        return int(self._ids(np.array([pos]))[0]), int(self._sizes[pos])

    def _check_limit(self) -> None:
        """Refuse a molecule above ``max_molecule_atoms``, with what it would cost."""
        limit = self.max_molecule_atoms
        if limit is None or not self._size_hist[limit + 1 :].any():
            return
        i, n = self._first_above(limit)
        pairs = n * (n - 1)
        host = pairs * PAIR_BYTES
        device = pairs * _ESTIMATE_FEATURES * 4
        raise InputError(
            f"{self.path}: molecule {i} has {n} atoms, more than "
            f"loader.max_molecule_atoms={limit}; a batch holding it needs up to "
            f"{pairs:,} pair slots: {host / 1e9:.2f} GB of host pair indices and "
            f"about {device / 1e9:.1f} GB of device memory per {_ESTIMATE_FEATURES}"
            "-wide float32 pair feature (several per message-passing layer); raise "
            "the limit if that memory is available, or leave the molecule out"
        )

    def _count_cutoff_pairs(self) -> np.ndarray:
        """Pairs closer than the cutoff of every subset molecule, smallest unsigned
        dtype (n_molecules,), counted in chunks of about ``_COUNT_PAIRS`` pairs."""
        largest = self._size_hist.size - 1
        counts = np.empty(
            self.n_molecules, dtype=np.min_scalar_type(largest * (largest - 1))
        )
        order = np.arange(self.n_molecules, dtype=np.int64)
        cap = max(_COUNT_PAIRS, largest * (largest - 1))
        bounds = greedy_bounds(self._sizes, order, 1 << 62, cap, _CHUNK)
        scale = np.float32(self._scale.get("R", 1.0))
        R = self._data["R"]
        for a, b in itertools.pairwise(bounds):
            ids = self._ids(order[a:b])
            ns = self._sizes[a:b].astype(np.int64)
            rows = np.repeat(self._offsets[ids] - (np.cumsum(ns) - ns), ns)
            rows += np.arange(int(ns.sum()))
            positions = R[rows] * scale
            counts[a:b] = cutoff_pair_counts(positions, ns, self.cutoff)
        return counts

    def _molecule_pairs(self, positions: np.ndarray) -> np.ndarray:
        """int64 (k,): pairs of the subset molecules at ``positions`` (all ordered
        pairs, or those within the cutoff)."""
        if self._pair_counts is not None:
            return self._pair_counts[positions].astype(np.int64)
        n = self._sizes[positions].astype(np.int64)
        return n * (n - 1)

    def _giant_threshold(self, giant_atoms: int | Literal["auto"] | None) -> int | None:
        """``giant_atoms`` when the subset has molecules on both sides of it;
        ``"auto"``: the largest size that fits the budget derived from the mean
        size without growing it to the largest molecule."""
        if giant_atoms is None:
            return None
        hist = self._size_hist
        if giant_atoms == "auto":
            plain = derive_budget(self._stats(None), self.batch_size, grow=False)
            n = np.arange(hist.size, dtype=np.int64)
            fits = (n <= plain.max_atoms - 1) & (n * (n - 1) <= plain.max_pairs)
            if fits.all():
                return None
            giant_atoms = int(np.argmin(fits)) - 1  # fits is True, then False
        if hist[giant_atoms + 1 :].any() and hist[: giant_atoms + 1].any():
            return int(giant_atoms)
        return None

    def _stats(self, giant: bool | None) -> SizeStats:
        """Size statistics of the subset (``None``), of its normal molecules
        (``False``) or of its giants (``True``), chunk by chunk."""
        count = atoms = pairs = big_a = big_p = 0
        for a in range(0, self.n_molecules, _CHUNK):
            pos = np.arange(a, min(self.n_molecules, a + _CHUNK))
            n = self._sizes[pos].astype(np.int64)
            if giant is not None:
                keep = (n > self._giant_atoms) == giant
                pos, n = pos[keep], n[keep]
            if not n.size:
                continue
            p = self._molecule_pairs(pos)
            count += n.size
            atoms += int(n.sum())
            pairs += int(p.sum())
            big_a, big_p = max(big_a, int(n.max())), max(big_p, int(p.max()))
        return SizeStats(count, atoms, pairs, big_a, big_p)

    def _check_fits(self) -> None:
        """Every molecule fits the budget of its kind (overrides are not grown)."""
        for kind, budget in enumerate(self.budgets):
            for a in range(0, self.n_molecules, _CHUNK):
                pos = np.arange(a, min(self.n_molecules, a + _CHUNK))
                mine = self._kinds_of(pos) == kind
                pos = pos[mine]
                n = self._sizes[pos].astype(np.int64)
                p = self._molecule_pairs(pos)
                bad = (n > budget.max_atoms - 1) | (p > budget.max_pairs)
                if not bad.any():
                    continue
                j = int(np.argmax(bad))
                i = int(self._ids(pos[j : j + 1])[0])
                what = "pairs" if self.pairs == "all" else "pairs within the cutoff"
                raise InputError(
                    f"{self.path}: molecule {i} has {int(n[j])} atoms and "
                    f"{int(p[j])} {what}, more than the budget "
                    f"max_atoms={budget.max_atoms} (one slot reserved for padding) / "
                    f"max_pairs={budget.max_pairs}; raise the budget"
                )

    def _kinds_of(self, positions: np.ndarray) -> np.ndarray:
        """uint8 (k,): budget of the subset molecules at ``positions``."""
        if self._giant_atoms is None:
            return np.zeros(positions.size, dtype=np.uint8)
        return (self._sizes[positions] > self._giant_atoms).astype(np.uint8)

    # -- public properties ------------------------------------------------------
    @property
    def indices(self) -> np.ndarray:
        """Dataset indices of the subset, int (n_molecules,)."""
        if self._indices is None:
            return np.arange(self.n_molecules, dtype=np.int64)
        return self._indices.astype(np.int64)

    @property
    def sizes(self) -> np.ndarray:
        """Atoms per molecule of the subset, unsigned int (n_molecules,), read-only."""
        view = self._sizes.view()
        view.flags.writeable = False
        return view

    @property
    def pair_counts(self) -> np.ndarray:
        """Pairs per molecule of the subset as batches hold them (all ordered pairs,
        or those within the cutoff), int64 (n_molecules,)."""
        return self._molecule_pairs(np.arange(self.n_molecules))

    @property
    def giant_atoms(self) -> int | None:
        """Molecules with more atoms are in giant batches (``None``: no giants)."""
        return self._giant_atoms

    def __len__(self) -> int:
        return self.n_molecules

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"(A={b.max_atoms}, P={b.max_pairs}, M={b.max_molecules})"
            for b in self.budgets
        )
        return (
            f"PackedMemmapLoader({str(self.path)!r}, n_molecules={self.n_molecules}, "
            f"batch_size={self.batch_size}, budgets=[{shapes}], pairs={self.pairs}, "
            f"shuffle={self.shuffle})"
        )

    @property
    def device_put(self) -> bool | Callable[[Batch], Any]:
        """Transfer applied to each batch in the prefetch thread: ``False`` (none),
        ``True`` (``jax.device_put``) or a callable on the batch dict. Settable
        between epochs."""
        return self._device_put

    @device_put.setter
    def device_put(self, value: bool | Callable[[Batch], Any]) -> None:
        if not (isinstance(value, bool) or callable(value)):
            raise ConfigError(
                f"loader.device_put: got {value!r}, expected bool or callable"
            )
        self._device_put = value

    def batch_shapes(
        self, kind: int = NORMAL
    ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shape and dtype of every key of a packed batch of budget ``kind``
        (:data:`NORMAL` or :data:`GIANT`), for model initialisation without reading
        data."""
        b = self.budgets[kind]
        A, P, M = b.max_atoms, b.max_pairs, b.max_molecules
        spec: dict[str, tuple[tuple[int, ...], Any]] = {
            "Z": ((A,), np.int32),
            "R": ((A, 3), np.float32),
        }
        if self.has_forces:
            spec["F"] = ((A, 3), np.float32)
        spec |= {"E": ((M,), np.float64), "Qtot": ((M,), np.float64)}
        if self.has_dipoles:
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

    def kind_of(self, batch: Mapping[str, Any]) -> int:
        """The budget (:data:`NORMAL` or :data:`GIANT`) of a packed batch (numpy or
        JAX arrays), from its shapes.

        Raises:
            ValueError: shapes of no budget of this loader.
        """
        shape = (
            batch["Z"].shape[-1],
            batch["pair_mask"].shape[-1],
            batch["N"].shape[-1],
        )
        for kind, b in enumerate(self.budgets):
            if shape == (b.max_atoms, b.max_pairs, b.max_molecules):
                return kind
        raise ValueError(f"kind_of: batch shapes (A, P, M) = {shape} of no budget")

    def empty_batch(self, kind: int = NORMAL) -> Batch:
        """A batch of budget ``kind`` without molecules (every mask False): it
        contributes nothing, e.g. to complete the last step of an epoch."""
        return self.assemble(np.zeros(0, dtype=np.int64), kind)

    # -- epoch planning -----------------------------------------------------------
    def _rng(self, epoch: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, epoch, stream]))

    def _bucketed_order(self, rng: np.random.Generator, mix: bool, per_batch: float):
        """Subset positions shuffled, then sorted by size inside each bucket (and,
        with ``mix``, read with a stride so that consecutive runs of ``per_batch``
        molecules span the bucket's sizes)."""
        n = self.n_molecules
        order = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
        if self.shuffle:
            rng.shuffle(order)
        for a in range(0, n, self.bucket_size):
            chunk = order[a : a + self.bucket_size]
            chunk[:] = chunk[np.argsort(self._sizes[chunk], kind="stable")]
            if mix:
                strata = max(1, round(chunk.size / per_batch))
                stride = np.arange(chunk.size) % strata
                chunk[:] = chunk[np.argsort(stride, kind="stable")]
        return order

    def _bounds(self, order: np.ndarray, kind: int) -> np.ndarray:
        b = self.budgets[kind]
        return greedy_bounds(
            self._sizes,
            order,
            b.max_atoms - 1,
            b.max_pairs,
            b.max_molecules - 1,
            pairs=self._pair_counts,
        )

    def _plan(self, epoch: int) -> _Plan:
        """The packed-batch plan of ``epoch`` (the current epoch's is cached)."""
        key = epoch if self.shuffle else 0
        if self._plan_cache is not None and self._plan_cache[0] == key:
            return self._plan_cache[1]
        b = self.budget
        rng = self._rng(key, 0)
        per_batch = min(b.max_molecules - 1, (b.max_atoms - 1) / self._mean_atoms)
        order = self._bucketed_order(rng, self.mix_sizes, per_batch)
        if self._giant_atoms is None:
            bounds = self._bounds(order, NORMAL)
            n_batches = bounds.size - 1
            visit = rng.permutation(n_batches) if self.shuffle else np.arange(n_batches)
            plan = _Plan(order, bounds, visit, np.zeros(n_batches, dtype=np.uint8))
        else:
            plan = self._plan_with_giants(order, rng)
        if key == (self.epoch if self.shuffle else 0):
            self._plan_cache = (key, plan)
        return plan

    def _plan_with_giants(self, order: np.ndarray, rng: np.random.Generator) -> _Plan:
        """Normal and giant molecules packed apart, each kind completed with empty
        batches to whole steps (``process_slots.batches_per_step``), and the steps
        shuffled: every step's batches share one budget."""
        group = 1 if self.process_slots is None else self.process_slots.batches_per_step
        giant = self._kinds_of(order).astype(bool)
        parts = (order[~giant], order[giant])
        bounds = [
            _padded_to(self._bounds(part, k), group) for k, part in enumerate(parts)
        ]
        n_normal = bounds[0].size - 1
        all_bounds = np.concatenate([bounds[0], bounds[1][1:] + parts[0].size])
        kinds = np.repeat(
            np.array([NORMAL, GIANT], dtype=np.uint8),
            [n_normal, bounds[1].size - 1],
        )
        n_steps = kinds.size // group
        steps = rng.permutation(n_steps) if self.shuffle else np.arange(n_steps)
        visit = (steps[:, None] * group + np.arange(group)[None, :]).ravel()
        return _Plan(np.concatenate(parts), all_bounds, visit, kinds)

    def num_batches(self, epoch: int | None = None) -> int:
        """Packed batches in ``epoch`` (default: the current one), including those of
        other processes and the empty batches that complete steps of giants. Varies
        by a fraction of a percent between shuffled epochs."""
        return len(self._plan(self.epoch if epoch is None else epoch))

    def batch_kinds(self, epoch: int | None = None) -> np.ndarray:
        """uint8 (num_batches,): the budget of each batch of ``epoch`` in stream
        order (default: the current epoch)."""
        plan = self._plan(self.epoch if epoch is None else epoch)
        return plan.kinds[plan.batches]

    # -- state ----------------------------------------------------------------------
    def _normalise(self) -> None:
        if self.position >= self.num_batches():
            self.epoch, self.position = self.epoch + 1, 0

    def _fingerprint(self) -> int:
        crc = zlib.crc32(memoryview(self._sizes))
        if self._indices is not None:
            crc = zlib.crc32(memoryview(self._indices), crc)
        return crc

    def state_dict(self) -> dict[str, Any]:
        """The iteration state: ``epoch``, ``position`` (packed batches of the epoch
        already handed out), ``seed`` (with the epoch, everything the order depends
        on) and what must match on restore (subset checksum, budgets, options).
        Plain ints/bools/lists: JSON-serialisable."""
        self._normalise()
        state: dict[str, Any] = {
            "epoch": int(self.epoch),
            "position": int(self.position),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "bucket_size": self.bucket_size,
            "mix_sizes": self.mix_sizes,
            "n_molecules": int(self.n_molecules),
            "subset_crc32": self._fingerprint(),
            "budget": list(dataclasses.astuple(self.budget)),
        }
        # only where they differ from the defaults: older states stay valid
        if self.pairs != "all":
            state |= {"pairs": self.pairs, "cutoff": self.cutoff}
        if len(self.budgets) > 1:
            state["budgets"] = [list(dataclasses.astuple(b)) for b in self.budgets]
        if self.process_slots is not None and len(self.budgets) > 1:
            state["batches_per_step"] = self.process_slots.batches_per_step
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next packed batches are exactly those
        the saved loader would have produced.

        Raises:
            InputError: the state belongs to another subset, budget or ordering.
        """
        mine = self.state_dict()
        # keys of every state, and keys written only when not the default
        always = ("shuffle", "bucket_size", "mix_sizes", "n_molecules", "subset_crc32")
        optional = ("pairs", "cutoff", "budgets", "batches_per_step")
        for key in always + optional:
            if (key in state or key in optional) and state.get(key) != mine.get(key):
                raise InputError(
                    f"loader state: {key}={state.get(key)!r} but this loader has "
                    f"{mine.get(key)!r} (saved from another subset or configuration)"
                )
        if "budget" in state and list(state["budget"]) != mine["budget"]:
            raise InputError(
                f"loader state: budget {list(state['budget'])} but this loader has "
                f"{mine['budget']}; pass the saved max_atoms/max_pairs/max_molecules"
            )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or position < 0:
            raise InputError(
                f"loader state: negative epoch/position {epoch}/{position}"
            )
        self.seed = int(state.get("seed", self.seed))
        self._plan_cache = None
        self.epoch, self.position = epoch, position
        if position > self.num_batches():
            raise InputError(
                f"loader state: position {position} beyond the "
                f"{self.num_batches()} batches of epoch {epoch}"
            )

    # -- packed batches ---------------------------------------------------------------
    def packed_batches(self, epoch: int | None = None) -> Iterator[Batch | None]:
        """The rest of the current epoch (or of ``epoch``, from its start when it is
        not the current one) as fixed-shape packed batches (module docstring).

        With :attr:`process_slots`, the batches of other processes are ``None``
        (not assembled, not transferred); the stream and its order are the same in
        every process. The position advances as batches are handed out, so
        :meth:`state_dict` taken between batches resumes after the last batch
        received; when the epoch is exhausted the loader moves to the next one.
        """
        if epoch is not None and epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0
        self._normalise()
        current = self.epoch
        plan = self._plan(current)
        start = self.position
        slots = self.process_slots
        transfer = self._transfer()

        def produced() -> Iterator[Any]:
            for b in range(start, len(plan)):
                if slots is not None and not slots.owns(b):
                    yield None
                    continue
                batch = self.assemble(plan.positions(b), plan.kind(b))
                yield batch if transfer is None else transfer(batch)

        ahead = prefetched(produced(), self.prefetch)
        try:
            for b, batch in enumerate(ahead, start + 1):
                self.position = b
                yield batch
        finally:
            ahead.close()  # stops the prefetch thread when the consumer stops early
        if self.epoch == current:
            self.epoch, self.position = current + 1, 0

    def __iter__(self) -> Iterator[Batch | None]:
        return self.packed_batches()

    def packed_steps(
        self,
        transfer: Callable[[list[Any]], Any] | None = None,
        epoch: int | None = None,
    ) -> Iterator[Any]:
        """The rest of the epoch as optimisation steps: for each step, this process's
        batches (``process_slots.n_slots`` of them, after :attr:`device_put`), passed
        to ``transfer`` in the prefetch thread (e.g. stack them and place them on
        the local devices with one ``jax.device_put``); without ``transfer``, the
        list itself.

        Every process yields the same number of steps; a short last step is
        completed with :meth:`empty_batch` of the step's budget, so every molecule
        of the subset is in exactly one yielded batch of one process. The position
        advances by whole steps.

        Raises:
            ConfigError: no :attr:`process_slots`.
            InputError: a position inside a step (a state saved mid-step).
        """
        slots = self.process_slots
        if slots is None:
            raise ConfigError("packed_steps: the loader has no process_slots")
        if epoch is not None and epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0
        self._normalise()
        B = slots.batches_per_step
        if self.position % B:
            raise InputError(
                f"loader state: position {self.position} inside a step of {B} batches"
            )
        current = self.epoch
        plan = self._plan(current)
        start = self.position
        per_batch = self._transfer()
        mine = range(slots.first, slots.first + slots.n_slots)

        def produced() -> Iterator[Any]:
            for s in range(start, len(plan), B):
                kind = plan.kind(s)
                group = []
                for j in mine:
                    b = s + j
                    batch = (
                        self.assemble(plan.positions(b), plan.kind(b))
                        if b < len(plan)
                        else self.empty_batch(kind)
                    )
                    group.append(batch if per_batch is None else per_batch(batch))
                yield group if transfer is None else transfer(group)

        ahead = prefetched(produced(), self.prefetch)
        try:
            for s, step in enumerate(ahead, 1):
                self.position = min(start + s * B, len(plan))
                yield step
        finally:
            ahead.close()
        if self.epoch == current:
            self.epoch, self.position = current + 1, 0

    def assemble(self, positions: np.ndarray, kind: int = NORMAL) -> Batch:
        """One packed batch of budget ``kind`` of the subset molecules at
        ``positions`` (int (k,), which must fit the budget). Vectorised: a few
        gathers per key."""
        budget = self.budgets[kind]
        A, P, M = budget.max_atoms, budget.max_pairs, budget.max_molecules
        ids = self._ids(positions)
        ns = self._sizes[positions].astype(np.int32)
        k = ids.size
        t = int(ns.sum())
        starts = np.cumsum(ns, dtype=np.int64) - ns
        atom_src = np.repeat(self._offsets[ids] - starts, ns)
        atom_src += np.arange(t, dtype=np.int64)

        out: Batch = {}
        # per-atom arrays gather atom rows, per-molecule arrays molecule rows
        gathers = ((("Z", "R", "F"), A, atom_src, t), (("E", "Qtot", "D"), M, ids, k))
        for keys, slots, rows, used in gathers:
            cache: dict[str, Any] = {}  # the rows' partition into shards
            for key in keys:
                if key not in self._data:
                    continue
                src = self._data[key]
                arr = np.zeros((slots, *src.shape[1:]), dtype=src.dtype)
                gather(src, rows, arr[:used], cache)
                if key in self._scale:
                    arr[:used] *= arr.dtype.type(self._scale[key])
                out[key] = arr
        N = np.zeros(M, dtype=np.int32)
        N[:k] = ns
        out["N"] = N

        if self.pairs == "cutoff":
            pair_dst, pair_src = cutoff_pairs(out["R"][:t], ns, self.cutoff)
        else:
            pair_dst, pair_src = all_pairs(ns)
        n_pairs = pair_dst.size
        dst = np.full(P, A - 1, dtype=np.int32)
        src_ = np.full(P, A - 1, dtype=np.int32)
        dst[:n_pairs] = pair_dst
        src_[:n_pairs] = pair_src

        atom_mask = np.zeros(A, dtype=bool)
        atom_mask[:t] = True
        molecule_mask = np.zeros(M, dtype=bool)
        molecule_mask[:k] = True
        pair_mask = np.zeros(P, dtype=bool)
        pair_mask[:n_pairs] = True
        segments = np.full(A, M - 1, dtype=np.int32)
        segments[:t] = np.repeat(np.arange(k, dtype=np.int32), ns)
        mol_index = np.full(M, -1, dtype=np.int64)
        mol_index[:k] = ids
        out |= {
            "atom_mask": atom_mask,
            "molecule_mask": molecule_mask,
            "pair_mask": pair_mask,
            "dst_idx": dst,
            "src_idx": src_,
            "batch_segments": segments,
            "mol_index": mol_index,
        }
        return out

    # -- dense batches ----------------------------------------------------------------
    def batches(
        self,
        num_atoms: int | None = None,
        physnet_format: bool = True,
        epoch: int | None = None,
    ) -> Iterator[Batch]:
        """The older dense form: ``batch_size`` molecules per batch (the last batch
        of the epoch padded with empty molecules), each padded to ``num_atoms``
        atoms (default: the loader's ``num_atoms``, else the batch's largest).

        Order: shuffled, sorted by size inside buckets, cut into batches, batches
        shuffled; it depends on ``(seed, epoch)`` only. Without ``epoch`` the
        loader's current epoch is used and, once exhausted, the loader moves to the
        next epoch (no mid-epoch resume for this form).

        Keys (B = batch_size, W = padded width)::

            Z int32 (B, W); R float32 (B, W, 3) Å; F float32 (B, W, 3) eV/Å (if any)
            E float64 (B,) eV; Qtot float64 (B,) e; D float64 (B, 3) e·Å (if any)
            N int32 (B,); molecule_mask bool (B,); mol_index int64 (B,) (-1: padding)
            physnet_format=True:
              atom_mask bool (B, W); batch_segments int32 (B·W,)
              dst_idx, src_idx int32 (B·W·(W-1),): pairs of each molecule, offset by
                its slot·W into the flattened atoms; pair_mask bool (B·W·(W-1),)
            physnet_format=False:
              mask bool (B, W)

        Raises:
            InputError: a molecule larger than ``num_atoms`` (named).
        """
        width = self.num_atoms if num_atoms is None else num_atoms
        if width is not None and self._size_hist[width + 1 :].any():
            p = int(np.argmax(self._sizes > width))
            i = p if self._indices is None else int(self._indices[p])
            raise InputError(
                f"{self.path}: molecule {i} has {int(self._sizes[p])} atoms, more "
                f"than num_atoms={width}"
            )
        use_state = epoch is None
        e = self.epoch if use_state else int(epoch)
        rng = self._rng(e if self.shuffle else 0, 1)
        order = self._bucketed_order(rng, False, self.batch_size)
        B = self.batch_size
        n_batches = -(-order.size // B)
        visit = rng.permutation(n_batches) if self.shuffle else np.arange(n_batches)
        produced = (
            self._dense(order[b * B : (b + 1) * B], width, physnet_format)
            for b in visit
        )
        transfer = self._transfer()
        if transfer is not None:
            produced = (transfer(b) for b in produced)
        yield from prefetched(produced, self.prefetch)
        if use_state and self.epoch == e:
            self.epoch, self.position = e + 1, 0

    def _dense(self, positions: np.ndarray, width: int | None, physnet: bool) -> Batch:
        B = self.batch_size
        ids = positions if self._indices is None else self._indices[positions]
        ns = self._sizes[positions].astype(np.int32)
        k = ids.size
        W = int(ns.max()) if width is None else int(width)
        t = int(ns.sum())
        slot = np.repeat(np.arange(k, dtype=np.int64) * W, ns)
        starts = np.zeros(k, dtype=np.int64)
        np.cumsum(ns[:-1], out=starts[1:])
        local = np.arange(t, dtype=np.int64) - np.repeat(starts, ns)
        flat = slot + local  # destination slot of each real atom in (B·W,)
        atom_src = np.repeat(self._offsets[ids], ns) + local

        out: Batch = {}
        for key in ("Z", "R", "F"):
            if key in self._data:
                src = self._data[key]
                arr = np.zeros((B * W, *src.shape[1:]), dtype=src.dtype)
                arr[flat] = src[atom_src]
                if key in self._scale:
                    arr *= arr.dtype.type(self._scale[key])
                out[key] = arr.reshape(B, W, *src.shape[1:])
        for key in ("E", "Qtot", "D"):
            if key in self._data:
                src = self._data[key]
                arr = np.zeros((B, *src.shape[1:]), dtype=src.dtype)
                arr[:k] = src[ids]
                if key in self._scale:
                    arr *= arr.dtype.type(self._scale[key])
                out[key] = arr
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

    # -- transfer -------------------------------------------------------------------
    def _transfer(self) -> Callable[[Batch], Any] | None:
        if self._device_put is True:
            import jax  # only when asked: the loader itself needs no JAX

            return jax.device_put
        if callable(self._device_put):
            return self._device_put
        return None


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


def from_config(
    path: str | os.PathLike | PackedDataset,
    cfg: LoaderConfig,
    split_path: str | os.PathLike | None = None,
    split_name: str | None = None,
    shuffle: bool = True,
    seed: int = 0,
    model: ModelConfig | None = None,
    **kwargs: Any,
) -> PackedMemmapLoader:
    """A loader configured by the ``loader`` section, optionally over one subset of
    a split file (both ``split_path`` and ``split_name`` given). ``kwargs`` go to
    :class:`PackedMemmapLoader` (e.g. ``cutoff`` for ``loader.pairs: cutoff``,
    ``process_slots``, ``indices``) and take precedence.

    ``model``, the model the batches are for, decides ``loader.pairs`` (see
    :func:`pair_options`)."""
    if (split_path is None) != (split_name is None):
        raise ConfigError(
            "from_config: give both split_path and split_name, or neither"
        )
    options: dict[str, Any] = {
        "batch_size": cfg.batch_size,
        "shuffle": shuffle,
        "bucket_size": cfg.bucket_size,
        "seed": seed,
        "max_atoms": cfg.max_atoms,
        "max_pairs": cfg.max_pairs,
        "max_molecules": cfg.max_molecules,
        "prefetch": cfg.prefetch,
        "num_atoms": cfg.num_atoms,
    }
    for key in ("giant_atoms", "max_molecule_atoms"):
        if hasattr(cfg, key):
            options[key] = getattr(cfg, key)
    options |= pair_options(getattr(cfg, "pairs", "all"), model)
    options |= kwargs
    if split_path is not None:
        return PackedMemmapLoader.from_split(
            path, split_path, str(split_name), **options
        )
    return PackedMemmapLoader(path, **options)


def pair_options(pairs: str, model: ModelConfig | None) -> dict[str, Any]:
    """The loader's ``pairs``/``cutoff`` for ``loader.pairs`` and the model.

    ``auto``: pairs within ``model.cutoff`` unless the model has charges (its
    Coulomb term needs every pair), all pairs without a model; ``cutoff``: within
    ``model.cutoff`` (refused for a model with charges); ``all``: every pair.

    Raises:
        ConfigError: ``cutoff`` with a model that has charges.
    """
    if pairs == "all" or (pairs == "auto" and (model is None or model.charges)):
        return {"pairs": "all"}
    if model is None:
        return {"pairs": pairs}  # the caller gives the cutoff
    if model.charges:
        raise ConfigError(
            "loader.pairs: cutoff with model.charges: the Coulomb term needs every "
            "atom pair; set loader.pairs to auto or all"
        )
    return {"pairs": "cutoff", "cutoff": float(model.cutoff)}


def epoch_padding_stats(
    dataset: str | os.PathLike | PackedDataset,
    indices: np.ndarray | None = None,
    batch_size: int = 32,
    bucket_size: int = 8192,
    seed: int = 0,
    *,
    shuffle: bool = True,
    mix_sizes: bool = True,
    num_atoms: int | None = None,
    **options: Any,
) -> dict[str, float | int]:
    """Padding of one epoch (epoch 0) of packed batches, from the plan alone (no
    atom data read), next to the dense form's.

    Args:
        dataset: packed directory or an open dataset.
        indices, batch_size, bucket_size, seed, shuffle, mix_sizes: as for
            :class:`PackedMemmapLoader`.
        num_atoms: padded width of the dense comparison (default: largest molecule).
        **options: budget overrides ``max_atoms``, ``max_pairs``, ``max_molecules``
            and the loader options ``pairs``, ``cutoff``, ``giant_atoms``,
            ``max_molecule_atoms``, ``process_slots``.

    Returns:
        ``atom_efficiency``, ``pair_efficiency``, ``molecule_efficiency`` (real
        atoms / atom slots, etc., over the epoch's batches of every budget),
        ``n_batches``, ``max_atoms``, ``max_pairs``, ``max_molecules`` (normal
        budget), ``n_molecules``, ``real_atoms``, ``real_pairs``,
        ``mean_molecules_per_batch``; per budget ``normal_…`` and ``giant_…``
        (``n_batches``, ``n_molecules``, ``atom_efficiency``, ``pair_efficiency``,
        and for giants ``max_atoms``, ``max_pairs``, ``max_molecules``; zeros when
        there are no giants); and the dense form's ``dense_num_atoms``,
        ``dense_n_batches``, ``dense_atom_efficiency``, ``dense_pair_efficiency``
        (``batch_size`` molecules padded to ``dense_num_atoms``, pairs W·(W-1)
        per molecule slot).
    """
    known = set(_BUDGET_KEYS) | {
        "pairs",
        "cutoff",
        "giant_atoms",
        "max_molecule_atoms",
        "process_slots",
    }
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"epoch_padding_stats: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    loader = PackedMemmapLoader(
        dataset,
        batch_size,
        shuffle=shuffle,
        bucket_size=bucket_size,
        seed=seed,
        indices=indices,
        prefetch=0,
        mix_sizes=mix_sizes,
        **options,
    )
    plan = loader._plan(0)
    sizes = loader.sizes.astype(np.int64)
    pair_counts = loader.pair_counts
    cum = {
        "atoms": np.concatenate([[0], np.cumsum(sizes[plan.order])]),
        "pairs": np.concatenate([[0], np.cumsum(pair_counts[plan.order])]),
        "molecules": np.arange(plan.order.size + 1),
    }
    per_batch = {k: c[plan.bounds[1:]] - c[plan.bounds[:-1]] for k, c in cum.items()}
    out: dict[str, float | int] = {}
    totals = {"atoms": 0, "pairs": 0, "molecules": 0}
    slots = {"atoms": 0, "pairs": 0, "molecules": 0}
    for kind, name in ((NORMAL, "normal"), (GIANT, "giant")):
        mine = plan.kinds == kind
        n_b = int(mine.sum())
        real = {k: int(v[mine].sum()) for k, v in per_batch.items()}
        if kind < len(loader.budgets):
            b = loader.budgets[kind]
            cap = {
                "atoms": b.max_atoms,
                "pairs": b.max_pairs,
                "molecules": b.max_molecules,
            }
        else:
            cap = {"atoms": 0, "pairs": 0, "molecules": 0}
        for k in totals:
            totals[k] += real[k]
            slots[k] += n_b * cap[k]
        out[f"{name}_n_batches"] = n_b
        out[f"{name}_n_molecules"] = real["molecules"]
        out[f"{name}_atom_efficiency"] = real["atoms"] / max(n_b * cap["atoms"], 1)
        out[f"{name}_pair_efficiency"] = (
            real["pairs"] / (n_b * cap["pairs"]) if n_b * cap["pairs"] else 1.0
        )
        if kind == GIANT:
            out |= {f"giant_{k}": v for k, v in zip(_BUDGET_KEYS, cap.values())}
    b = loader.budget
    n_batches = len(plan)
    atoms, mols = totals["atoms"], totals["molecules"]
    width = int(sizes.max()) if num_atoms is None else int(num_atoms)
    dense_batches = -(-mols // batch_size)
    dense_slots = dense_batches * batch_size
    all_pairs_total = int((sizes * (sizes - 1)).sum())
    return out | {
        "n_molecules": mols,
        "n_batches": n_batches,
        "max_atoms": b.max_atoms,
        "max_pairs": b.max_pairs,
        "max_molecules": b.max_molecules,
        "real_atoms": atoms,
        "real_pairs": totals["pairs"],
        "mean_molecules_per_batch": mols / n_batches,
        "atom_efficiency": atoms / slots["atoms"],
        "pair_efficiency": totals["pairs"] / slots["pairs"] if slots["pairs"] else 1.0,
        "molecule_efficiency": mols / slots["molecules"],
        "dense_num_atoms": width,
        "dense_n_batches": dense_batches,
        "dense_atom_efficiency": atoms / (dense_slots * width),
        "dense_pair_efficiency": (
            all_pairs_total / (dense_slots * width * (width - 1)) if width > 1 else 1.0
        ),
    }
