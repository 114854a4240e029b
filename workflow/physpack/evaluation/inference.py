"""Inference over a subset of a packed dataset: every molecule through the packed
loader's fixed-shape batches (one compilation), predictions in dataset order.

:mod:`physpack.evaluation.evaluate` and :mod:`physpack.evaluation.predict` share
it; :func:`shared_budget_loaders` gives several subsets the same batch budget,
so that one compilation serves all of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from physpack.config import LoaderConfig, ModelConfig
from physpack.data.assembly import molecule_atom_rows
from physpack.data.loader import PackedMemmapLoader, from_config, read_split
from physpack.data.packed import PackedDataset
from physpack.errors import InputError
from physpack.evaluation.predictions import SplitPredictions
from physpack.model.checkpoint import Checkpoint


def predict_split(
    ckpt: Checkpoint,
    loader: PackedMemmapLoader,
    *,
    with_dipoles: bool,
    where: str,
    progress: Callable[[int], None] | None = None,
) -> SplitPredictions:
    """Predictions for every molecule of ``loader``'s subset, in dataset order.

    Args:
        ckpt: the model.
        loader: an unshuffled loader over the subset (its packed batches are used).
        with_dipoles: keep reference dipoles (the model must predict dipoles and
            the data must have them).
        where: name of the data in error messages (path and split).
        progress: called with the number of molecules done after each batch.

    Returns:
        The split's reference values (from the batches, i.e. the packed data as
        stored) and predictions (forces always; dipoles and atomic charges when
        the model predicts them); atoms keep their order within each molecule.
    """
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("mol", "n", "Z", "E", "Ep", "F", "Fp", "D", "Dp", "Qp")
    }
    has_f = loader.has_forces
    done = 0
    for batch in loader.packed_batches(epoch=0):
        ckpt.constants.check_batch(batch, where)
        out = ckpt.predict(batch)
        slots = np.flatnonzero(batch["molecule_mask"])
        # atoms grouped by molecule slot; stable, so in-molecule order is kept
        atoms = np.flatnonzero(batch["atom_mask"])
        atoms = atoms[np.argsort(batch["batch_segments"][atoms], kind="stable")]
        parts["mol"].append(batch["mol_index"][slots])
        parts["n"].append(batch["N"][slots])
        parts["Z"].append(batch["Z"][atoms])
        parts["E"].append(batch["E"][slots])
        parts["Ep"].append(out["energy"][slots])
        parts["Fp"].append(out["forces"][atoms])
        if has_f:
            parts["F"].append(batch["F"][atoms])
        if with_dipoles:
            parts["D"].append(batch["D"][slots])
        if "dipole" in out:
            parts["Dp"].append(out["dipole"][slots])
        if "charges" in out:
            parts["Qp"].append(out["charges"][atoms])
        done += slots.size
        if progress is not None:
            progress(done)
    return _in_dataset_order(parts)


def _in_dataset_order(parts: Mapping[str, list[np.ndarray]]) -> SplitPredictions:
    """The per-batch pieces of :func:`predict_split` (``mol``, ``n``, ``Z``,
    ``E``, ``Ep``, ``F``, ``Fp``, ``D``, ``Dp``, ``Qp``; absent ones empty) as
    one :class:`SplitPredictions`, molecules sorted by dataset index."""
    mol = np.concatenate(parts["mol"]).astype(np.int64)
    n = np.concatenate(parts["n"]).astype(np.int32)
    # batches visit molecules in packing order: restore dataset order
    order = np.argsort(mol, kind="stable")
    starts = np.concatenate([[0], np.cumsum(n, dtype=np.int64)])[:-1]
    offsets = np.zeros(n.size + 1, np.int64)
    np.cumsum(n[order], out=offsets[1:])
    # sorted molecule k's atoms are the rows from starts[order[k]] of the batches'
    atom_order = molecule_atom_rows(starts[order], n[order])

    def cat(key: str, dtype: type, per_atom: bool) -> np.ndarray | None:
        if not parts[key]:
            return None
        arr = np.concatenate(parts[key]).astype(dtype)
        return arr[atom_order] if per_atom else arr[order]

    return SplitPredictions(
        mol_index=mol[order],
        n_atoms=n[order],
        offsets=offsets,
        Z=cat("Z", np.int32, True),
        E_true=cat("E", np.float64, False),
        E_pred=cat("Ep", np.float64, False),
        F_true=cat("F", np.float64, True),
        F_pred=cat("Fp", np.float64, True),
        D_true=cat("D", np.float64, False),
        D_pred=cat("Dp", np.float64, False),
        Q_pred=cat("Qp", np.float64, True),
    )


def shared_budget_loaders(
    dataset: PackedDataset,
    split: Path,
    names: Sequence[str],
    loader_cfg: LoaderConfig,
    model: ModelConfig | None = None,
) -> dict[str, PackedMemmapLoader]:
    """Unshuffled loaders over the non-empty subsets ``names`` of ``split``, all
    with the same batch budget (the largest of their own), so that prediction
    compiles once for every split; ``model`` decides ``loader.pairs``."""
    loaders: dict[str, PackedMemmapLoader] = {}
    for name in names:
        try:
            if read_split(split, name).size == 0:
                continue
        except InputError:
            if name == names[0]:
                raise
            continue  # an optional split missing from the file
        loaders[name] = from_config(
            dataset, loader_cfg, split, name, shuffle=False, model=model
        )
    if not loaders:
        raise InputError(f"{split}: the subsets {', '.join(names)} are all empty")
    budgets = [dataclasses.astuple(lo.budget) for lo in loaders.values()]
    shared = tuple(max(b[k] for b in budgets) for k in range(3))
    for name, lo in loaders.items():
        if dataclasses.astuple(lo.budget) != shared:
            loaders[name] = from_config(
                dataset,
                loader_cfg,
                split,
                name,
                shuffle=False,
                model=model,
                max_atoms=shared[0],
                max_pairs=shared[1],
                max_molecules=shared[2],
            )
    return loaders
