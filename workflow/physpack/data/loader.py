"""Streaming batches for PhysNet from a memory-mapped packed directory.

Two batch forms are offered by :class:`PackedMemmapLoader`:

* :meth:`~PackedMemmapLoader.packed_batches`, the form the model trains on: every
  batch has the same shapes for the whole run, a budget of ``A`` atom slots, ``P``
  pair slots and ``M`` molecule slots (:class:`Budget`), so one compilation serves
  every step. Molecules are concatenated from slot 0; the rest is padding. Atom
  slot ``A-1`` and molecule slot ``M-1`` are always padding (the budgets reserve
  them, as jraph's ``dynamically_batch`` does) and every padding atom and pair
  points there, so once a model masks atoms, pairs and molecules the padding
  changes nothing.
* :meth:`~PackedMemmapLoader.batches`, the older dense form kept for custom
  training loops: a fixed number of molecules per batch, each padded to
  ``num_atoms``.

Only index arrays live in RAM: the molecule sizes (1 byte per molecule while
sizes fit uint8), the epoch's order (4 bytes) and, for a subset, its indices (4
bytes); ``offsets.npy`` is read through its memory map (8 bytes per molecule of
page cache). No transient array grows with the dataset beyond 1 byte per molecule
(subset checks), and the atom and molecule data stay memory-mapped, read batch by
batch.

Values are in the canonical units eV, Å, eV/Å and e·Å whatever the directory
stores: arrays of a directory in other declared units (older tooling) are multiplied
by :meth:`~physpack.data.packed.PackedDataset.scale` as they are gathered.

Packed batch contract (numpy arrays; shapes fixed for the run)::

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
    dst_idx        int32   (P,)    all ordered pairs i != j inside each molecule,
    src_idx        int32   (P,)    as batch atom indices; padding pairs -> A-1
    batch_segments int32   (A,)    molecule slot of each atom; padding atoms -> M-1
    mol_index      int64   (M,)    dataset index of each molecule, -1 for padding
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from physpack.config import LoaderConfig
from physpack.data.packed import PackedDataset
from physpack.data.pairs import all_pairs, pair_template
from physpack.errors import ConfigError, InputError

Batch = dict[str, np.ndarray]
#: molecules whose sizes are read from ``offsets`` per chunk (bounds transient memory)
_CHUNK = 1 << 15
_BUDGET_KEYS = ("max_atoms", "max_pairs", "max_molecules")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Fixed slot counts of every packed batch.

    Attributes:
        max_atoms: atom slots ``A``; slot ``A-1`` is always padding.
        max_pairs: pair slots ``P``.
        max_molecules: molecule slots ``M``; slot ``M-1`` is always padding.
    """

    max_atoms: int
    max_pairs: int
    max_molecules: int


@dataclasses.dataclass(frozen=True)
class _Plan:
    """One epoch's packing: batch ``b`` holds subset positions
    ``order[bounds[batches[b]]:bounds[batches[b] + 1]]``."""

    order: np.ndarray  # int32/int64 (n,) subset positions in packing order
    bounds: np.ndarray  # int64 (n_batches + 1,)
    batches: np.ndarray  # int64 (n_batches,) batch visiting order

    def __len__(self) -> int:
        return int(self.batches.size)

    def positions(self, b: int) -> np.ndarray:
        k = int(self.batches[b])
        return self.order[self.bounds[k] : self.bounds[k + 1]]


def _repeated(values: np.ndarray) -> np.ndarray:
    """bool (n,): entries equal to an earlier entry of ``values``."""
    order = np.argsort(values, kind="stable")
    s = values[order]
    out = np.zeros(values.size, dtype=bool)
    out[order[1:]] = s[1:] == s[:-1]
    return out


class _Failure:
    """An exception raised in the prefetch thread, handed to the consumer."""

    def __init__(self, exc: Exception):
        self.exc = exc


_END = object()


def _round_friendly(x: float, coarse_above: int) -> int:
    """``x`` rounded up to a multiple of 8, or of 64 once above ``coarse_above``
    (tile-friendly shapes for accelerators)."""
    step = 64 if x > coarse_above else 8
    return int(max(step, math.ceil(x / step) * step))


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
        max_atoms, max_pairs, max_molecules: override the derived budgets.
        prefetch: batches assembled ahead in a background thread (0: none).
        device_put: ``True`` to move each batch with ``jax.device_put`` in the
            prefetch thread, or a callable applied to each batch dict there.
        num_atoms: default padded width of :meth:`batches` (``None``: batch maximum).
        mix_sizes: stratify sizes inside each batch (see above).

    Budgets (:attr:`budget`): ``A`` = batch_size × mean atoms + 1, ``P`` = (A - 1) ×
    the subset's mean pairs per atom, ``M`` = 1.25 × the mean molecules per batch +
    1, rounded up to multiples of 8 (64 for large ``A`` and ``P``); derived budgets
    grow to hold the largest molecule, overridden ones are checked against it.

    Attributes:
        budget: the :class:`Budget` of every packed batch.
        epoch, position: the iteration state (see :meth:`state_dict`).
        n_molecules: molecules in the subset.
        has_forces, has_dipoles: whether batches carry ``F`` / ``D``.

    Raises:
        ConfigError: a non-positive batch/bucket size, negative prefetch or a budget
            override below 2 molecules.
        InputError: an unreadable directory, an empty, duplicated or out-of-range
            subset, or a molecule that does not fit an overridden budget (named).
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
    ):
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("bucket_size", bucket_size, 1),
            ("prefetch", prefetch, 0),
        ):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(
                    f"loader.{name}: got {value!r}, expected int >= {low}"
                )
        self.dataset = path if isinstance(path, PackedDataset) else PackedDataset(path)
        self.path = self.dataset.path
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.bucket_size = int(bucket_size)
        self.seed = int(seed)
        self.prefetch = int(prefetch)
        self.num_atoms = num_atoms
        self.mix_sizes = bool(mix_sizes)
        self._device_put = device_put
        self._indices = self._check_indices(indices)
        self.n_molecules = (
            self.dataset.n_molecules if self._indices is None else self._indices.size
        )
        if self.n_molecules == 0:
            raise InputError(f"{self.path}: empty subset, no molecules to load")
        self._sizes, self._size_hist = self._read_sizes()
        counts = np.arange(self._size_hist.size, dtype=np.float64)
        self._mean_atoms = float(counts @ self._size_hist) / self.n_molecules
        self._mean_pairs = (
            float((counts * (counts - 1)) @ self._size_hist) / self.n_molecules
        )
        self.budget = self._derive_budget(max_atoms, max_pairs, max_molecules)
        self._check_fits(self.budget)
        self.has_forces = self.dataset.has("F")
        self.has_dipoles = self.dataset.has("D")
        # plain ndarray views: np.memmap's subclass hooks cost more than the copies
        self._data = {
            k: self.dataset.array(k).view(np.ndarray) for k in self.dataset.keys
        }
        self._offsets = self.dataset.offsets.view(np.ndarray)
        # stored → canonical unit factors (eV, Å, eV/Å, e·Å), only those != 1: data
        # written by this package are canonical and are copied without arithmetic
        self._scale = {
            k: f for k in self.dataset.keys if (f := self.dataset.scale(k)) != 1.0
        }
        b = self.budget
        self._arange = np.arange(max(b.max_atoms, b.max_pairs), dtype=np.int64)
        self._arange32 = np.arange(max(b.max_atoms, b.max_molecules), dtype=np.int32)
        self.epoch = 0
        self.position = 0
        self._plan_cache: tuple[int, _Plan] | None = None

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

    def _read_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Atoms per subset molecule (smallest unsigned dtype) and the size histogram
        int64 (max_size + 1,), read from ``offsets`` chunk by chunk so that no
        transient array grows with the dataset (``n_atoms.npy`` may be absent)."""
        off = self.dataset.offsets.view(np.ndarray)
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

    def _derive_budget(
        self, max_atoms: int | None, max_pairs: int | None, max_molecules: int | None
    ) -> Budget:
        mean_n, mean_p = self._mean_atoms, self._mean_pairs
        if mean_n == 0:
            raise InputError(f"{self.path}: every molecule of the subset has 0 atoms")
        big = self._size_hist.size - 1
        atoms = _round_friendly(self.batch_size * mean_n + 1, 256)
        atoms = max(atoms, _round_friendly(big + 1, 256))
        atoms = int(max_atoms) if max_atoms is not None else atoms
        # pair slots in the dataset's own pair/atom ratio: both budgets fill together
        pairs = _round_friendly((atoms - 1) * mean_p / mean_n, 512)
        pairs = max(pairs, _round_friendly(big * (big - 1), 512))
        pairs = int(max_pairs) if max_pairs is not None else pairs
        mols = _round_friendly(1.25 * (atoms - 1) / mean_n + 1, 1 << 30)
        mols = int(max_molecules) if max_molecules is not None else mols
        if mols < 2 or atoms < 2 or pairs < 0:
            raise ConfigError(
                f"loader: budget max_atoms={atoms}, max_pairs={pairs}, "
                f"max_molecules={mols} leaves no room (need >= 2 atoms and molecules: "
                "one slot of each is reserved for padding)"
            )
        return Budget(atoms, pairs, mols)

    def _check_fits(self, budget: Budget) -> None:
        n = np.arange(self._size_hist.size)
        fits = (n <= budget.max_atoms - 1) & (n * (n - 1) <= budget.max_pairs)
        if (self._size_hist[~fits] == 0).all():
            return
        limit = int(np.argmin(fits)) - 1  # the largest size that fits
        pos = int(np.argmax(self._sizes > limit))
        i = int(pos if self._indices is None else self._indices[pos])
        n_i = int(self._sizes[pos])
        raise InputError(
            f"{self.path}: molecule {i} has {n_i} atoms and {n_i * (n_i - 1)} pairs, "
            f"more than the budget max_atoms={budget.max_atoms} (one slot reserved "
            f"for padding) / max_pairs={budget.max_pairs}; raise the budget"
        )

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

    def __len__(self) -> int:
        return self.n_molecules

    def __repr__(self) -> str:
        b = self.budget
        return (
            f"PackedMemmapLoader({str(self.path)!r}, n_molecules={self.n_molecules}, "
            f"batch_size={self.batch_size}, budget=(A={b.max_atoms}, "
            f"P={b.max_pairs}, M={b.max_molecules}), shuffle={self.shuffle})"
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

    def batch_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shape and dtype of every key of a packed batch (for model initialisation
        without reading data)."""
        A, P, M = (
            self.budget.max_atoms,
            self.budget.max_pairs,
            self.budget.max_molecules,
        )
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

    def _plan(self, epoch: int) -> _Plan:
        """The packed-batch plan of ``epoch`` (the current epoch's is cached)."""
        key = epoch if self.shuffle else 0
        if self._plan_cache is not None and self._plan_cache[0] == key:
            return self._plan_cache[1]
        b = self.budget
        rng = self._rng(key, 0)
        per_batch = min(b.max_molecules - 1, (b.max_atoms - 1) / self._mean_atoms)
        order = self._bucketed_order(rng, self.mix_sizes, per_batch)
        bounds = greedy_bounds(
            self._sizes, order, b.max_atoms - 1, b.max_pairs, b.max_molecules - 1
        )
        n_batches = bounds.size - 1
        visit = rng.permutation(n_batches) if self.shuffle else np.arange(n_batches)
        plan = _Plan(order, bounds, visit)
        if key == (self.epoch if self.shuffle else 0):
            self._plan_cache = (key, plan)
        return plan

    def num_batches(self, epoch: int | None = None) -> int:
        """Packed batches in ``epoch`` (default: the current one). Varies by a
        fraction of a percent between shuffled epochs."""
        return len(self._plan(self.epoch if epoch is None else epoch))

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
        on) and what must match on restore (subset checksum, budget, options).
        Plain ints/bools/lists: JSON-serialisable."""
        self._normalise()
        return {
            "epoch": int(self.epoch),
            "position": int(self.position),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "bucket_size": self.bucket_size,
            "mix_sizes": self.mix_sizes,
            "n_molecules": int(self.n_molecules),
            "subset_crc32": self._fingerprint(),
            "budget": [
                self.budget.max_atoms,
                self.budget.max_pairs,
                self.budget.max_molecules,
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next packed batches are exactly those
        the saved loader would have produced.

        Raises:
            InputError: the state belongs to another subset, budget or ordering.
        """
        mine = self.state_dict()
        for key in (
            "shuffle",
            "bucket_size",
            "mix_sizes",
            "n_molecules",
            "subset_crc32",
        ):
            if key in state and state[key] != mine[key]:
                raise InputError(
                    f"loader state: {key}={state[key]!r} but this loader has "
                    f"{mine[key]!r} (saved from another subset or configuration)"
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
    def packed_batches(self, epoch: int | None = None) -> Iterator[Batch]:
        """The rest of the current epoch (or of ``epoch``, from its start when it is
        not the current one) as fixed-shape packed batches (module docstring).

        The position advances as batches are handed out, so :meth:`state_dict` taken
        between batches resumes after the last batch received; when the epoch is
        exhausted the loader moves to the next one.
        """
        if epoch is not None and epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0
        self._normalise()
        current = self.epoch
        plan = self._plan(current)
        start = self.position
        produced = (self.assemble(plan.positions(b)) for b in range(start, len(plan)))
        ahead = self._ahead(produced)
        try:
            for b, batch in enumerate(ahead, start + 1):
                self.position = b
                yield batch
        finally:
            ahead.close()  # stops the prefetch thread when the consumer stops early
        if self.epoch == current:
            self.epoch, self.position = current + 1, 0

    def __iter__(self) -> Iterator[Batch]:
        return self.packed_batches()

    def assemble(self, positions: np.ndarray) -> Batch:
        """One packed batch of the subset molecules at ``positions`` (int (k,)),
        which must fit the budget. Vectorised: a few gathers per key."""
        A, P, M = (
            self.budget.max_atoms,
            self.budget.max_pairs,
            self.budget.max_molecules,
        )
        ids = positions if self._indices is None else self._indices[positions]
        ns = self._sizes[positions].astype(np.int32)
        k = ids.size
        t = int(ns.sum())
        starts = np.zeros(k, dtype=np.int32)
        np.cumsum(ns[:-1], out=starts[1:])
        atom_src = np.repeat(self._offsets[ids] - starts, ns)
        atom_src += self._arange[:t]

        out: Batch = {}
        # per-atom arrays gather atom rows, per-molecule arrays molecule rows
        gathers = ((("Z", "R", "F"), A, atom_src, t), (("E", "Qtot", "D"), M, ids, k))
        for keys, slots, rows, used in gathers:
            for key in keys:
                if key not in self._data:
                    continue
                src = self._data[key]
                arr = np.zeros((slots, *src.shape[1:]), dtype=src.dtype)
                np.take(src, rows, axis=0, out=arr[:used], mode="clip")
                if key in self._scale:
                    arr[:used] *= arr.dtype.type(self._scale[key])
                out[key] = arr
        N = np.zeros(M, dtype=np.int32)
        N[:k] = ns
        out["N"] = N

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
        segments[:t] = np.repeat(self._arange32[:k], ns)
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
        yield from self._ahead(produced)
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

    # -- prefetch ---------------------------------------------------------------------
    def _transfer(self) -> Callable[[Batch], Any] | None:
        if self._device_put is True:
            import jax  # only when asked: the loader itself needs no JAX

            return jax.device_put
        if callable(self._device_put):
            return self._device_put
        return None

    def _ahead(self, produced: Iterator[Batch]) -> Iterator[Any]:
        """``produced`` (optionally transferred), assembled up to ``prefetch``
        batches ahead in a background thread; exceptions reach the consumer."""
        transfer = self._transfer()
        if transfer is not None:
            produced = (transfer(b) for b in produced)
        if self.prefetch == 0:
            yield from produced
            return
        slots: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    slots.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for item in produced:
                    if not put(item):
                        return
                put(_END)
            except Exception as exc:  # noqa: BLE001 (re-raised in the consumer)
                put(_Failure(exc))

        worker = threading.Thread(target=work, name="physpack-prefetch", daemon=True)
        worker.start()
        try:
            while True:
                item = slots.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
        finally:
            stop.set()
            worker.join()


def greedy_bounds(
    sizes: np.ndarray,
    order: np.ndarray,
    atom_cap: int,
    pair_cap: int,
    mol_cap: int,
    window: int = _CHUNK,
) -> np.ndarray:
    """Batch boundaries of greedy packing: molecules are taken in ``order`` until
    the next one would exceed ``atom_cap`` atoms, ``pair_cap`` pairs or ``mol_cap``
    molecules. Works through windows of ``window`` molecules (bounded memory).

    Args:
        sizes: atoms per molecule (n,), indexed by the entries of ``order``.
        order: int (L,) molecules in packing order; each must fit the caps alone.

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
        cp = np.cumsum(w * (w - 1))
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
    **kwargs: Any,
) -> PackedMemmapLoader:
    """A loader configured by the ``loader`` section, optionally over one subset of
    a split file (both ``split_path`` and ``split_name`` given)."""
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
    } | kwargs
    if split_path is not None:
        return PackedMemmapLoader.from_split(
            path, split_path, str(split_name), **options
        )
    return PackedMemmapLoader(path, **options)


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
    **budget_overrides: int | None,
) -> dict[str, float | int]:
    """Padding of one epoch (epoch 0) of packed batches, from the plan alone (no
    atom data read), next to the dense form's.

    Args:
        dataset: packed directory or an open dataset.
        indices, batch_size, bucket_size, seed, shuffle, mix_sizes: as for
            :class:`PackedMemmapLoader`.
        num_atoms: padded width of the dense comparison (default: largest molecule).
        **budget_overrides: ``max_atoms``, ``max_pairs``, ``max_molecules``.

    Returns:
        ``atom_efficiency``, ``pair_efficiency``, ``molecule_efficiency`` (real
        atoms / atom slots, etc., over the epoch), ``n_batches``, ``max_atoms``,
        ``max_pairs``, ``max_molecules``, ``n_molecules``, ``real_atoms``,
        ``real_pairs``, ``mean_molecules_per_batch``, and the dense form's
        ``dense_num_atoms``, ``dense_n_batches``, ``dense_atom_efficiency``,
        ``dense_pair_efficiency`` (``batch_size`` molecules padded to
        ``dense_num_atoms``, pairs W·(W-1) per molecule slot).
    """
    unknown = sorted(set(budget_overrides) - set(_BUDGET_KEYS))
    if unknown:
        raise ConfigError(
            f"epoch_padding_stats: unknown budget key(s) {', '.join(unknown)}; "
            f"known: {', '.join(_BUDGET_KEYS)}"
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
        **budget_overrides,
    )
    b = loader.budget
    n_batches = loader.num_batches(0)
    sizes = loader.sizes.astype(np.int64)
    atoms, pairs, mols = int(sizes.sum()), int((sizes * (sizes - 1)).sum()), sizes.size
    width = int(sizes.max()) if num_atoms is None else int(num_atoms)
    dense_batches = -(-mols // batch_size)
    dense_slots = dense_batches * batch_size
    return {
        "n_molecules": mols,
        "n_batches": n_batches,
        "max_atoms": b.max_atoms,
        "max_pairs": b.max_pairs,
        "max_molecules": b.max_molecules,
        "real_atoms": atoms,
        "real_pairs": pairs,
        "mean_molecules_per_batch": mols / n_batches,
        "atom_efficiency": atoms / (n_batches * b.max_atoms),
        "pair_efficiency": pairs / (n_batches * b.max_pairs) if b.max_pairs else 1.0,
        "molecule_efficiency": mols / (n_batches * b.max_molecules),
        "dense_num_atoms": width,
        "dense_n_batches": dense_batches,
        "dense_atom_efficiency": atoms / (dense_slots * width),
        "dense_pair_efficiency": (
            pairs / (dense_slots * width * (width - 1)) if width > 1 else 1.0
        ),
    }
