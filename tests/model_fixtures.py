"""Tiny packed datasets and checkpoints for the evaluation and calculator tests.

A checkpoint here is built with :mod:`physpack.model.checkpoint`'s save API from random
parameters of the model's shapes (a real initialisation zeroes the output heads,
which would make every force zero), with reference energies fitted on the data as
training does. Seconds to make (shapes are traced, nothing is compiled), and its
energies and forces are smooth, non-trivial functions of the positions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
from physpack.config import LoaderConfig, ModelConfig, SplitConfig, TrainConfig
from physpack.data.convert import convert_npz
from physpack.data.loader import PackedMemmapLoader
from physpack.data.packed import PackedWriter
from physpack.data.split import make_split, save_split
from physpack.data.synthetic import molecules, write_padded_npz
from physpack.model import checkpoint as ckpt_io
from physpack.model.physnet import device_inputs, model_from_config
from physpack.training.reference import fit_energy_constants

TINY_MODEL = ModelConfig(
    features=8,
    max_degree=1,
    vector_features=8,
    num_iterations=2,
    num_basis_functions=8,
    cutoff=4.0,
    max_atomic_number=9,
    n_res=1,
    # 2, the schema's default until it became 1: the seeded models (and the MD
    # tests' trajectories) stay what they were
    n_res_interaction=2,
)

# the training tests' toy recipe (tests/test_train.py, tests/test_resume.py): the
# invariant tiny model, small batches, a short warmup and a high rate
TOY_MODEL = dataclasses.replace(TINY_MODEL, max_degree=0)
TOY_LOADER = LoaderConfig(batch_size=8, bucket_size=64, prefetch=1)
TOY_TRAIN = TrainConfig(
    epochs=3,
    warmup_steps=3,
    learning_rate=2e-2,
    state_every_steps=4,
    patience=10,
    ema_decay=0.9,
    forces_weight=10.0,
)


def make_packed(root: Path, n_mol: int = 40, seed: int = 3) -> tuple[Path, Path]:
    """A packed directory of ``n_mol`` synthetic molecules (H C N O F, forces and
    dipoles) and its split file (20 % valid, 20 % test)."""
    npz = write_padded_npz(root / "data.npz", n_mol, seed=seed)
    packed = root / "packed"
    convert_npz(npz, packed)
    split = save_split(
        make_split(packed, SplitConfig(valid=0.2, test=0.2, seed=1)), root / "split.npz"
    )
    return packed, split


def make_checkpoint(
    path: Path,
    packed: Path,
    *,
    charges: bool = False,
    seed: int = 0,
    noise: float = 0.3,
    elements: tuple[int, ...] | None = None,
    scale_factor: float = 1.0,
) -> ckpt_io.Checkpoint:
    """Save a checkpoint of :data:`TINY_MODEL` with randomised parameters.

    Args:
        path: file to write.
        packed: data for the reference energies (all of it) and the init batch.
        charges: build the model with the charge head (dipole output).
        noise: standard deviation of vector parameters; matrices get
            N(0, 1/fan_in) entries.
        elements: override the trained-elements list (to test refusals).
        scale_factor: multiplies the fitted energy scale (stiffer force fields).
    """
    cfg = dataclasses.replace(TINY_MODEL, charges=charges)
    loader = PackedMemmapLoader(packed, batch_size=8, shuffle=False)
    constants, stats = fit_energy_constants(loader, cfg.max_atomic_number)
    constants = dataclasses.replace(
        constants,
        scale=constants.scale * scale_factor,
        elements=constants.elements if elements is None else tuple(elements),
    )
    model = model_from_config(cfg)
    x = device_inputs(loader.assemble(np.arange(2)))
    shapes = jax.eval_shape(
        model.init,
        jax.random.PRNGKey(seed),
        *(x[k] for k in ("Z", "R", "dst_idx", "src_idx", "batch_segments")),
        *(x[k] for k in ("atom_mask", "pair_mask", "Qtot")),
    )["params"]
    leaves, tree = jax.tree.flatten(shapes)
    rng = np.random.default_rng(seed)
    leaves = [
        (
            rng.normal(
                0.0, s.shape[-2] ** -0.5 if len(s.shape) >= 2 else noise, s.shape
            )
        ).astype(s.dtype)
        for s in leaves
    ]
    ckpt = ckpt_io.Checkpoint(
        params=jax.tree.unflatten(tree, leaves),
        model_config=cfg,
        constants=constants,
        metrics={"valid_forces_mae_eV_per_A": 1.0},
        training={"epoch": 1, "step": 1, "data_stats": stats},
    )
    ckpt_io.save(path, ckpt)
    return ckpt


REFERENCE = {1: -13.6, 6: -1030.0, 7: -1480.0, 8: -2040.0, 9: -2710.0}


def morse(Z: np.ndarray, R: np.ndarray) -> tuple[float, np.ndarray]:
    """A Morse pair potential (eV, Å): energies whose forces a model can learn."""
    d = R[:, None, :] - R[None, :, :]
    r = np.sqrt((d**2).sum(-1)) + np.eye(len(Z))
    eps = 0.3 + 0.02 * (Z[:, None] + Z[None, :])
    x = np.exp(-1.6 * (r - 1.5))
    e = eps * (x**2 - 2 * x)
    dedr = eps * 3.2 * (x - x**2)
    np.fill_diagonal(e, 0.0)
    np.fill_diagonal(dedr, 0.0)
    return 0.5 * e.sum(), -((dedr / r)[:, :, None] * d).sum(1)


def write_toy(root: Path, n_mol: int = 90, seed: int = 0) -> tuple[Path, Path]:
    """A packed directory of small molecules (3–8 atoms) with Morse energies on top
    of per-element reference energies, and a split file (60/15/15 %)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 9, n_mol)
    packed = root / "packed"
    with PackedWriter(packed, has_forces=True, has_dipoles=False) as w:
        for m in molecules(sizes, rng, with_dipoles=False):
            e, F = morse(m["Z"], m["R"].astype(np.float64))
            E = e + sum(REFERENCE[int(z)] for z in m["Z"])
            w.append(
                np.array([len(m["Z"])]),
                Z=m["Z"],
                R=m["R"],
                F=F.astype(np.float32),
                E=np.array([E]),
                Qtot=np.zeros(1),
            )
    order = rng.permutation(n_mol)
    k = int(0.15 * n_mol)
    split = root / "split.npz"
    np.savez(
        split,
        valid=np.sort(order[:k]),
        test=np.sort(order[k : 2 * k]),
        train=np.sort(order[2 * k :]),
    )
    return packed, split
