"""``physpack split``: deterministic train/valid/test split of a packed directory.

Molecules are shuffled with ``numpy.random.default_rng(seed)``; the first ones in
that order become ``test`` (the test fraction rounded to whole molecules), the next
ones ``valid``, the rest ``train``. With ``group_by: formula`` whole compositions
(every conformation of one sum formula) are the units: the shuffled groups go one
by one to the subset with the largest remaining deficit (target size minus size so
far), so every subset ends within one group's size of its target whatever the seed,
and a valid split is found whenever there are groups enough (one per non-empty
subset). The subsets are disjoint and together cover every molecule exactly once.

Output NPZ (written to a temporary name, then renamed):

    train, valid, test   int64 (n_subset,)  sorted dataset indices
    seed                 int64 ()
    valid_fraction, test_fraction  float64 ()  as configured
    group_by             str ()             "none" | "formula"
    n_molecules, n_groups  int64 ()
    offsets_sha256       str ()             sha256 of the dataset's offsets (int64
                                            little-endian): ties the split to it
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols
from ase.formula import Formula

from physpack import __version__
from physpack import config as cfg
from physpack.atomic import StagedOutputs
from physpack.data.descriptor import open_dataset
from physpack.data.packed_dataset import PackedDataset
from physpack.data.packed_format import MAX_Z
from physpack.errors import ConfigError, InputError, cli_entry

SUBSETS = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class Split:
    """A train/valid/test split.

    Attributes:
        train, valid, test: int64 sorted dataset indices.
        config: the ``split`` section that made it.
        n_molecules: molecules of the dataset.
        n_groups: groups shuffled (molecules, or distinct formulas).
        offsets_sha256: fingerprint of the dataset's ``offsets``.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    config: cfg.SplitConfig
    n_molecules: int
    n_groups: int
    offsets_sha256: str


def _check_fractions(config: cfg.SplitConfig) -> None:
    for name in ("valid", "test"):
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"split.{name} = {value}: expected 0 <= fraction < 1")
    if config.valid + config.test >= 1.0:
        raise ConfigError(
            f"split.valid + split.test = {config.valid + config.test}: nothing left "
            "for training (must be < 1)"
        )


def _cut(cumulative: np.ndarray, target: float) -> int:
    """Number of leading groups whose total size is closest to ``target`` (ties:
    fewer groups); ``cumulative`` is the running total of the group sizes."""
    totals = np.concatenate([[0], cumulative])
    return int(np.argmin(np.abs(totals - target)))


def assign_groups(
    sizes: np.ndarray, targets: np.ndarray, required: np.ndarray
) -> np.ndarray:
    """Greedy assignment of groups, in the given order, to subsets.

    Each group goes to the subset with the largest remaining deficit (target minus
    the size assigned so far; ties: the first subset). Every subset then ends within
    the largest group's size of its target: a subset only receives a group while
    its deficit is the largest, hence positive. When only as many groups are left
    as ``required`` subsets are still empty, each of those gets one, so no required
    subset stays empty while there are groups enough.

    Args:
        sizes: int (G,) molecules per group, in assignment order.
        targets: float (S,) target size of each subset (summing to ``sizes.sum()``).
        required: bool (S,) subsets that must not end empty.

    Returns:
        int8 (G,) subset of each group.
    """
    deficit = [float(t) for t in targets]
    empty = [bool(r) for r in required]
    out = np.empty(len(sizes), np.int8)
    for k, size in enumerate(sizes.tolist()):
        waiting = [j for j, e in enumerate(empty) if e]
        if waiting and len(sizes) - k <= len(waiting):
            j = max(waiting, key=lambda i: deficit[i])
        else:
            j = max(range(len(deficit)), key=lambda i: deficit[i])
        out[k] = j
        deficit[j] -= size
        empty[j] = False
    return out


def split_indices(
    n_molecules: int,
    config: cfg.SplitConfig,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``n_molecules`` indices into sorted int64 (train, valid, test).

    Args:
        n_molecules: dataset size.
        config: fractions and seed.
        groups: int (n_molecules,) group id per molecule, ids ``0..G-1``; a group
            never straddles two subsets. ``None``: every molecule its own group.

    Raises:
        ConfigError: fractions out of range, or a subset with a positive fraction
            (or train) that would be empty.
    """
    _check_fractions(config)
    if n_molecules < 1:
        raise InputError("cannot split an empty dataset")
    rng = np.random.default_rng(config.seed)
    if groups is None:  # whole molecules: the nearest counts, cut from one shuffle
        order = rng.permutation(n_molecules)
        cumulative = np.arange(1, n_molecules + 1)
        n_groups = n_molecules
        k_test = _cut(cumulative, config.test * n_molecules)
        k_valid = max(
            k_test, _cut(cumulative, (config.test + config.valid) * n_molecules)
        )
        per_molecule = np.zeros(n_molecules, np.int8)
        per_molecule[order[:k_test]] = 2  # 0: train, 1: valid, 2: test
        per_molecule[order[k_test:k_valid]] = 1
    else:
        groups = np.asarray(groups, dtype=np.int64)
        if groups.shape != (n_molecules,) or groups.min() < 0:
            raise ValueError("groups must be non-negative ids, one per molecule")
        sizes = np.bincount(groups)
        present = np.flatnonzero(sizes)
        order = present[rng.permutation(present.size)]
        n_groups = present.size
        fractions = np.array(
            [1.0 - config.valid - config.test, config.valid, config.test]
        )
        label = np.zeros(sizes.size, np.int8)
        label[order] = assign_groups(
            sizes[order], fractions * n_molecules, fractions > 0
        )
        per_molecule = label[groups]
    subsets = tuple(
        np.flatnonzero(per_molecule == code).astype(np.int64) for code in (0, 1, 2)
    )
    grouping = "" if groups is None else f" in {n_groups} formula group(s)"
    for name, subset in zip(SUBSETS, subsets):
        wanted = name == "train" or getattr(config, name) > 0
        if wanted and subset.size == 0:
            raise ConfigError(
                f"split: the {name} subset would be empty ({n_molecules} molecules"
                f"{grouping}, valid={config.valid}, test={config.test}); "
                "change the fractions or use more data"
            )
    return subsets  # type: ignore[return-value]


def formula_groups(
    ds: PackedDataset, atoms_per_chunk: int = 1 << 20
) -> tuple[np.ndarray, list[str]]:
    """Group molecules by composition (sum formula).

    Returns:
        (groups, formulas): int64 (n_mol,) group id of each molecule, and the Hill
        formula of each group id.
    """
    seen = np.zeros(MAX_Z + 1, dtype=bool)
    for chunk in ds.atom_chunks(atoms_per_chunk):
        seen[np.asarray(ds.Z[chunk.lo : chunk.hi]).clip(0, MAX_Z)] = True
    elements = np.flatnonzero(seen)
    column = np.full(MAX_Z + 1, -1, dtype=np.int64)
    column[elements] = np.arange(elements.size)
    # one row per molecule: the narrowest dtype keeps this small for big datasets
    small = int(np.max(ds.n_atoms)) < np.iinfo(np.int16).max
    counts = np.zeros((ds.n_molecules, elements.size), np.int16 if small else np.int32)
    for chunk in ds.atom_chunks(atoms_per_chunk):
        a, b = chunk.start, chunk.stop
        z = np.asarray(ds.Z[chunk.lo : chunk.hi]).clip(0, MAX_Z)
        mol = chunk.atom_molecule
        k = elements.size
        counts[a:b] = np.bincount(mol * k + column[z], minlength=(b - a) * k).reshape(
            b - a, k
        )
    rows, groups = np.unique(counts, axis=0, return_inverse=True)
    formulas = [
        Formula.from_dict(
            {chemical_symbols[int(e)]: int(c) for e, c in zip(elements, row) if c}
        ).format("hill")
        for row in rows
    ]
    return groups.reshape(-1).astype(np.int64), formulas


def offsets_fingerprint(ds: PackedDataset, chunk: int = 1 << 20) -> str:
    """sha256 of the dataset's offsets as little-endian int64 (header-independent)."""
    h = hashlib.sha256()
    for a in range(0, ds.offsets.size, chunk):
        h.update(np.asarray(ds.offsets[a : a + chunk], dtype="<i8").tobytes())
    return h.hexdigest()


def make_split(path: str | os.PathLike, config: cfg.SplitConfig | None = None) -> Split:
    """The split of the packed directory ``path`` for ``config``."""
    config = config or cfg.SplitConfig()
    _check_fractions(config)
    ds = open_dataset(path)
    if ds.n_molecules == 0:
        raise InputError(f"{ds.path}: empty dataset, nothing to split")
    groups = None
    n_groups = ds.n_molecules
    if config.group_by == "formula":
        groups, formulas = formula_groups(ds)
        n_groups = len(formulas)
    train, valid, test = split_indices(ds.n_molecules, config, groups)
    return Split(
        train=train,
        valid=valid,
        test=test,
        config=config,
        n_molecules=ds.n_molecules,
        n_groups=n_groups,
        offsets_sha256=offsets_fingerprint(ds),
    )


def save_split(split: Split, output: str | os.PathLike) -> Path:
    """Write ``split`` as an NPZ (layout in the module docstring), atomically."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with StagedOutputs() as staged, open(staged.file(output), "wb") as fh:
        np.savez(
            fh,
            train=split.train,
            valid=split.valid,
            test=split.test,
            seed=np.int64(split.config.seed),
            valid_fraction=np.float64(split.config.valid),
            test_fraction=np.float64(split.config.test),
            group_by=np.str_(split.config.group_by),
            n_molecules=np.int64(split.n_molecules),
            n_groups=np.int64(split.n_groups),
            offsets_sha256=np.str_(split.offsets_sha256),
            created_by=np.str_(f"physpack {__version__}"),
        )
    return output


@cli_entry("physpack split")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="physpack split",
        description="Deterministic train/valid/test split of a packed directory.",
    )
    parser.add_argument("packed", type=Path, help="packed directory")
    parser.add_argument("--output", type=Path, required=True, help="split NPZ")
    cfg.add_section_arguments(parser, cfg.SplitConfig, "split")
    args = parser.parse_args(argv)
    config = cfg.section_from_args(cfg.SplitConfig, args, "split")
    split = make_split(args.packed, config)
    save_split(split, args.output)
    print(
        f"{args.output}: train {split.train.size}, valid {split.valid.size}, test "
        f"{split.test.size} of {split.n_molecules} molecules "
        f"({split.n_groups} groups, group_by={config.group_by}, seed={config.seed})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
