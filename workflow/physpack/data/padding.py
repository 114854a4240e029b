"""Padding of batching strategies over one epoch: the dense form, sorted buckets, and
the loader's packed fixed-budget batches as training makes them.

Efficiency = real atoms / atom slots and real pairs / pair slots, where pairs are
the ordered pairs i ≠ j inside one molecule, n·(n-1) per molecule of n atoms (or, for
packed batches with cutoff pairs, the pairs within the cutoff), and a slot padded to
width W holds W·(W-1) pair slots. Used by ``physpack stats``
(:mod:`physpack.data.stats`) and the loader benchmark.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from physpack import config as cfg
from physpack.data.loader import PackedMemmapLoader, pair_options
from physpack.data.packed import PackedDataset
from physpack.data.planning import GIANT, NORMAL, Plan
from physpack.errors import ConfigError

BUDGET_KEYS = ("max_atoms", "max_pairs", "max_molecules")


@dataclasses.dataclass(frozen=True)
class StrategyPadding:
    """Padding of one batching strategy over one epoch.

    Attributes:
        n_batches: batches per epoch.
        atom_slots, pair_slots: slots over the epoch (real + padding).
        atom_efficiency, pair_efficiency: real atoms / atom slots, real pairs /
            pair slots (ordered pairs i ≠ j inside a molecule).
        source: ``"exact"`` (computed here) or ``"loader"``.
        details: strategy parameters (widths, budgets).
    """

    n_batches: int
    atom_slots: int
    pair_slots: int
    atom_efficiency: float
    pair_efficiency: float
    source: str
    details: dict[str, Any]


def _efficiency(real: int, slots: int) -> float:
    return real / slots if slots else 1.0


def dense_padding(sizes: np.ndarray, batch_size: int, width: int) -> StrategyPadding:
    """Every molecule padded to ``width`` atoms, ``batch_size`` molecules per batch.

    Args:
        sizes: int (n_mol,) atoms per molecule.
    """
    sizes = sizes.astype(np.int64)
    if sizes.max() > width:
        raise ConfigError(
            f"loader.num_atoms = {width} is smaller than the largest molecule "
            f"({int(sizes.max())} atoms)"
        )
    n_batches = -(-sizes.size // batch_size)
    slots = n_batches * batch_size
    atom_slots, pair_slots = slots * width, slots * width * (width - 1)
    return StrategyPadding(
        n_batches=n_batches,
        atom_slots=atom_slots,
        pair_slots=pair_slots,
        atom_efficiency=_efficiency(int(sizes.sum()), atom_slots),
        pair_efficiency=_efficiency(int((sizes * (sizes - 1)).sum()), pair_slots),
        source="exact",
        details={"num_atoms": width, "batch_size": batch_size},
    )


def bucketed_padding(
    sizes: np.ndarray, batch_size: int, bucket_size: int, seed: int = 0
) -> StrategyPadding:
    """Shuffled, size-sorted inside buckets of ``bucket_size``, batches of
    ``batch_size`` padded to their largest molecule (and to ``batch_size`` rows).

    Args:
        sizes: int (n_mol,) atoms per molecule.
    """
    sizes = sizes.astype(np.int64)
    order = np.random.default_rng(seed).permutation(sizes.size)
    widths = []
    for a in range(0, sizes.size, bucket_size):
        bucket = np.sort(sizes[order[a : a + bucket_size]])
        starts = np.arange(0, bucket.size, batch_size)
        widths.append(np.maximum.reduceat(bucket, starts))
    w = np.concatenate(widths)
    atom_slots = int(batch_size * w.sum())
    pair_slots = int(batch_size * (w * (w - 1)).sum())
    return StrategyPadding(
        n_batches=int(w.size),
        atom_slots=atom_slots,
        pair_slots=pair_slots,
        atom_efficiency=_efficiency(int(sizes.sum()), atom_slots),
        pair_efficiency=_efficiency(int((sizes * (sizes - 1)).sum()), pair_slots),
        source="exact",
        details={
            "batch_size": batch_size,
            "bucket_size": bucket_size,
            "seed": seed,
            "mean_width": float(w.mean()),
        },
    )


def packed_padding(
    ds: PackedDataset, loader: cfg.LoaderConfig, model: cfg.ModelConfig | None = None
) -> StrategyPadding:
    """The loader's fixed-budget packed batches (epoch 0, seed 0) as training
    makes them: the pairs ``loader.pairs`` gives for ``model`` (within its cutoff,
    or all), and the giant budget of ``loader.giant_atoms``."""
    pairs = pair_options(loader.pairs, model)
    got = epoch_padding_stats(
        ds,
        batch_size=loader.batch_size,
        bucket_size=loader.bucket_size,
        seed=0,
        num_atoms=loader.num_atoms,
        max_atoms=loader.max_atoms,
        max_pairs=loader.max_pairs,
        max_molecules=loader.max_molecules,
        giant_atoms=loader.giant_atoms,
        max_molecule_atoms=loader.max_molecule_atoms,
        **pairs,
    )
    n_batches = int(got["n_batches"])
    return StrategyPadding(
        n_batches=n_batches,
        atom_slots=n_batches * int(got["max_atoms"]),
        pair_slots=n_batches * int(got["max_pairs"]),
        atom_efficiency=float(got["atom_efficiency"]),
        pair_efficiency=float(got["pair_efficiency"]),
        source="loader",
        details={
            k: got[k]
            for k in (
                "max_atoms",
                "max_pairs",
                "max_molecules",
                "mean_molecules_per_batch",
                "giant_n_batches",
                "giant_n_molecules",
                "giant_max_atoms",
            )
            if k in got
        }
        | {"pairs": pairs["pairs"]},
    )


def _padding_by_kind(
    loader: PackedMemmapLoader, plan: Plan, sizes: np.ndarray
) -> tuple[dict[str, float | int], dict[str, int], dict[str, int]]:
    """Per budget (``normal_…``, ``giant_…``) figures of :func:`epoch_padding_stats`
    for ``plan``, and the real and slot totals of atoms, pairs and molecules over
    both budgets."""
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
            out |= {f"giant_{k}": v for k, v in zip(BUDGET_KEYS, cap.values())}
    return out, totals, slots


#: the loader options that change an epoch's plan (``epoch_padding_stats``' keywords)
PLAN_OPTIONS = frozenset(
    {
        *BUDGET_KEYS,
        "pairs",
        "cutoff",
        "giant_atoms",
        "max_molecule_atoms",
        "process_slots",
    }
)


def epoch_padding_stats(
    dataset: str | os.PathLike | PackedDataset,
    indices: np.ndarray | None = None,
    batch_size: int = cfg.LoaderConfig.batch_size,
    bucket_size: int = cfg.LoaderConfig.bucket_size,
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
    unknown = sorted(set(options) - PLAN_OPTIONS)
    if unknown:
        raise ConfigError(
            f"epoch_padding_stats: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(PLAN_OPTIONS))}"
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
    out, totals, slots = _padding_by_kind(loader, plan, sizes)
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


#: packed batches that use fewer of their pair slots than this are worth a warning:
#: most of each step's compute goes to padding
LOW_PAIR_EFFICIENCY = 0.5


def padding_warning(stats: dict[str, Any], loader: cfg.LoaderConfig) -> str | None:
    """One line when the loader settings leave the packed batches' pair efficiency
    (real pairs / pair slots) below :data:`LOW_PAIR_EFFICIENCY`, with the number,
    the cause most often behind it and the setting that helps; None otherwise."""
    packed = stats["padding"]["packed"]
    efficiency = packed["pair_efficiency"]
    if efficiency >= LOW_PAIR_EFFICIENCY:
        return None
    if loader.giant_atoms is None:
        hint = (
            "one budget holds the largest molecule "
            f"({stats['atoms_per_molecule']['max']} atoms): "
            "set loader.giant_atoms: auto (or a number of atoms) to give large "
            "molecules batches of their own"
        )
    else:
        hint = "see the padding table of the packing statistics"
    return (
        f"warning: packed batches use {percent(efficiency)} of their pair slots with "
        f"these loader settings (below {percent(LOW_PAIR_EFFICIENCY)}: about "
        f"{1 / max(efficiency, 1e-9):.1f}x the compute per step); {hint}"
    )


def percent(x: float) -> str:
    """``0.148`` -> ``"14.8 %"``."""
    return f"{100 * x:.1f} %"
