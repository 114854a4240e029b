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

The loader composes modules with one job each: :mod:`~physpack.data.subset` (the
subset's indices, sizes and cutoff pair counts), :mod:`~physpack.data.planning`
(giants, budgets, each epoch's plan), :mod:`~physpack.data.assembly` (the batches),
:mod:`~physpack.data.iteration` (resume state, the stream by batch or by step),
:mod:`~physpack.data.prefetch` and :mod:`~physpack.data.options` (the schema's
defaults and ranges; ``loader.pairs``).

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

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import numpy as np

from physpack.config import LoaderConfig, ModelConfig
from physpack.data.assembly import (
    Batch,
    BatchAssembler,
    PairMode,
    packed_batch_shapes,
    plain,
)
from physpack.data.budget import Budget, greedy_bounds
from physpack.data.descriptor import open_dataset
from physpack.data.iteration import ProcessSlots, StreamIteration
from physpack.data.options import check_option, pair_options
from physpack.data.packed import PackedDataset
from physpack.data.pairs import pair_template
from physpack.data.planning import (
    GIANT,
    NORMAL,
    Plan,
    SubsetSizes,
    bucketed_order,
    first_misfit,
    giant_threshold,
    plan_epoch,
    subset_budgets,
    subset_stats,
)
from physpack.data.prefetch import prefetched
from physpack.data.subset import (
    check_indices,
    count_cutoff_pairs,
    read_sizes,
    read_split,
    size_limit_error,
)
from physpack.errors import ConfigError, InputError

__all__ = [
    "GIANT",
    "NORMAL",
    "Batch",
    "Budget",
    "PackedMemmapLoader",
    "ProcessSlots",
    "from_config",
    "greedy_bounds",
    "pair_options",
    "pair_template",
    "read_split",
]


class PackedMemmapLoader(StreamIteration):
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
        prefetch: batches assembled ahead in a background thread (0: none). With
            a transfer (``device_put``, a step ``transfer``) the thread always runs;
            without, it starts once the consumer spends at least half the
            assembly time per batch (:func:`~physpack.data.prefetch.prefetched`):
            before that it could only add handoffs.
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
        bucket_size: int = LoaderConfig.bucket_size,
        seed: int = 0,
        indices: np.ndarray | None = None,
        max_atoms: int | None = LoaderConfig.max_atoms,
        max_pairs: int | None = LoaderConfig.max_pairs,
        max_molecules: int | None = LoaderConfig.max_molecules,
        prefetch: int = LoaderConfig.prefetch,
        *,
        device_put: bool | Callable[[Batch], Any] = False,
        num_atoms: int | None = LoaderConfig.num_atoms,
        mix_sizes: bool = True,
        pairs: PairMode = "all",
        cutoff: float | None = None,
        giant_atoms: int | Literal["auto"] | None = LoaderConfig.giant_atoms,
        max_molecule_atoms: int | None = LoaderConfig.max_molecule_atoms,
        process_slots: ProcessSlots | None = None,
    ):
        for name in ("batch_size", "bucket_size", "prefetch", "giant_atoms"):
            check_option(name, locals()[name])
        check_option("max_molecule_atoms", max_molecule_atoms)
        # "auto" of the schema is resolved with the model (pair_options)
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
        self._indices = (
            None
            if indices is None
            else check_indices(indices, self.dataset.n_molecules, self.path)
        )
        self.n_molecules = (
            self.dataset.n_molecules if self._indices is None else self._indices.size
        )
        if self.n_molecules == 0:
            raise InputError(f"{self.path}: empty subset, no molecules to load")
        self.has_forces = self.dataset.has("F")
        self.has_dipoles = self.dataset.has("D")
        self._assembler = self._make_assembler()
        self._sizes, self._size_hist = read_sizes(
            self._assembler.offsets, self._indices, self.n_molecules
        )
        if self._size_hist.size == 1:
            raise InputError(f"{self.path}: every molecule of the subset has 0 atoms")
        self._check_limit()
        self._subset = SubsetSizes(
            self._sizes,
            self._size_hist,
            self._count_cutoff_pairs() if pairs == "cutoff" else None,
        )
        self._plan_budgets(giant_atoms, (max_atoms, max_pairs, max_molecules))
        self._check_fits()
        self.epoch = 0
        self.position = 0
        self._plan_cache: tuple[int, Plan] | None = None

    def _plan_budgets(
        self,
        giant_atoms: int | Literal["auto"] | None,
        overrides: tuple[int | None, int | None, int | None],
    ) -> None:
        """The giant threshold, the budgets (``overrides``: ``max_atoms``,
        ``max_pairs``, ``max_molecules`` of the normal one) and the mean size of
        the normal molecules, from the subset's sizes."""
        self._giant_atoms = giant_threshold(self._subset, self.batch_size, giant_atoms)
        self.budgets: tuple[Budget, ...] = subset_budgets(
            self._subset, self.batch_size, self._giant_atoms, *overrides
        )
        giant = None if self._giant_atoms is None else False
        normal = subset_stats(self._subset, self._giant_atoms, giant)
        self._mean_atoms = normal.mean_atoms

    def _make_assembler(self) -> BatchAssembler:
        """The batch assembler over plain views of the dataset's arrays, with the
        stored → canonical unit factors (eV, Å, eV/Å, e·Å) that are not 1: data
        written by this package are canonical and are copied without arithmetic."""
        ds = self.dataset
        scale = {k: f for k in ds.keys if (f := ds.scale(k)) != 1.0}
        data = {k: plain(ds.array(k)) for k in ds.keys}
        return BatchAssembler(data, plain(ds.offsets), scale, self.pairs, self.cutoff)

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

    def _ids(self, positions: np.ndarray) -> np.ndarray:
        """Dataset indices of subset ``positions``."""
        return positions if self._indices is None else self._indices[positions]

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
        raise size_limit_error(self.path, i, n, limit)

    def _count_cutoff_pairs(self) -> np.ndarray:
        """Pairs closer than the cutoff of every subset molecule (unsigned (n,))."""
        a = self._assembler
        return count_cutoff_pairs(
            a.data["R"],
            a.offsets,
            self._indices,
            self._sizes,
            self.cutoff,
            a.scale.get("R", 1.0),
        )

    def _check_fits(self) -> None:
        """Every molecule fits the budget of its kind (overrides are not grown)."""
        misfit = first_misfit(self._subset, self.budgets, self._giant_atoms)
        if misfit is None:
            return
        pos, kind = misfit
        budget = self.budgets[kind]
        i = int(self._ids(np.array([pos]))[0])
        n, p = int(self._sizes[pos]), int(self._subset.pairs(np.array([pos]))[0])
        what = "pairs" if self.pairs == "all" else "pairs within the cutoff"
        raise InputError(
            f"{self.path}: molecule {i} has {n} atoms and {p} {what}, more than the "
            f"budget max_atoms={budget.max_atoms} (one slot reserved for padding) / "
            f"max_pairs={budget.max_pairs}; raise the budget"
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

    @property
    def pair_counts(self) -> np.ndarray:
        """Pairs per molecule of the subset as batches hold them (all ordered pairs,
        or those within the cutoff), int64 (n_molecules,)."""
        return self._subset.pairs(np.arange(self.n_molecules))

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
        return packed_batch_shapes(
            self.budgets[kind], self.has_forces, self.has_dipoles
        )

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

    def _plan(self, epoch: int) -> Plan:
        """The packed-batch plan of ``epoch`` (the current epoch's is cached)."""
        key = epoch if self.shuffle else 0
        if self._plan_cache is not None and self._plan_cache[0] == key:
            return self._plan_cache[1]
        b = self.budget
        rng = self._rng(key, 0) if self.shuffle else None
        per_batch = min(b.max_molecules - 1, (b.max_atoms - 1) / self._mean_atoms)
        order = bucketed_order(
            self._sizes, rng, self.bucket_size, self.mix_sizes, per_batch
        )
        slots = self.process_slots
        group = 1 if slots is None else slots.batches_per_step
        plan = plan_epoch(
            self._subset, order, self.budgets, self._giant_atoms, rng, group
        )
        if key == (self.epoch if self.shuffle else 0):
            self._plan_cache = (key, plan)
        return plan

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

    def assemble(self, positions: np.ndarray, kind: int = NORMAL) -> Batch:
        """One packed batch of budget ``kind`` of the subset molecules at
        ``positions`` (int (k,), which must fit the budget). Vectorised: a few
        gathers per key."""
        return self._assembler.packed(
            self._ids(positions), self._sizes[positions], self.budgets[kind]
        )

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
        order = bucketed_order(
            self._sizes, rng if self.shuffle else None, self.bucket_size, False, 0
        )
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
        yield from prefetched(produced, self.prefetch, adaptive=transfer is None)
        if use_state and self.epoch == e:
            self.epoch, self.position = e + 1, 0

    def _dense(self, positions: np.ndarray, width: int | None, physnet: bool) -> Batch:
        ns = self._sizes[positions]
        W = int(ns.max()) if width is None else int(width)
        return self._assembler.dense(
            self._ids(positions), ns, self.batch_size, W, physnet
        )

    # -- transfer -------------------------------------------------------------------
    def _transfer(self) -> Callable[[Batch], Any] | None:
        if self._device_put is True:
            import jax  # only when asked: the loader itself needs no JAX

            return jax.device_put
        if callable(self._device_put):
            return self._device_put
        return None


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
