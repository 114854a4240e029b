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
from physpack.config import ModelConfig, SplitConfig
from physpack.data.convert import convert_npz
from physpack.data.loader import PackedMemmapLoader
from physpack.data.split import make_split, save_split
from physpack.data.synthetic import write_padded_npz
from physpack.model import checkpoint as ckpt_io
from physpack.model.physnet import device_inputs, model_from_config
from physpack.training.reference import fit_energy_constants

TINY_MODEL = ModelConfig(
    features=8,
    max_degree=1,
    num_iterations=1,
    num_basis_functions=8,
    cutoff=4.0,
    max_atomic_number=9,
    n_res=1,
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
