"""Every parameter learns: from the shipped initialisation, for every model option.

A parameter whose gradient is exactly zero for every input never moves under
Adam/AMSGrad (the update of a zero gradient is zero), so a path of the model that
starts at a saddle (a product of two factors that are both zero) is dead: the
option that switched it on silently trains the model without it. This test builds
the shipped ``model:`` section of ``config.yaml`` with each option switched on,
initialises it exactly as ``physpack train`` does (``init_params`` with
``train.seed``), takes a few optimiser steps of the shipped ``train:`` recipe (without weight
decay) on demo molecules, and asks that every parameter leaf has moved. It
also checks PhysNet's zero start: the untrained model adds nothing to the
reference energies, whatever the option.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from physpack.config import (
    ModelConfig,
    TrainConfig,
    section_from_mapping,
    with_defaults,
)
from physpack.model.physnet import (
    init_params,
    model_from_config,
    molecules_to_batch,
    predict,
)
from physpack.training.losses import LossWeights
from physpack.training.optim import initial_schedule, make_optimizer
from physpack.training.reference import fit_energy_constants
from physpack.training.state import create_train_state
from physpack.training.steps import build_steps, prepare_batch

#: end-to-end runs (minutes): outside the quick loop (-m 'not slow')
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: the demo's config.yaml as the workflow sees it (schema defaults filled in)
SHIPPED = with_defaults(yaml.safe_load((ROOT / "config.yaml").read_text()))

#: Each model option, switched on in the shipped model section.
OPTIONS = {
    "shipped": {},  # with the angular block (the schema's default)
    "published_physnet": {"angular_degree": 0, "n_res": 2, "n_res_interaction": 2},
    "max_degree_1": {"max_degree": 1},
    "angular_and_max_degree_2_bernstein": {
        "angular_degree": 2,
        "max_degree": 2,
        "radial_basis": "bernstein",
    },
    "mlp_filter_charges_zbl_bessel": {
        "radial_filter": "mlp",
        "charges": True,
        "zbl": True,
        "radial_basis": "bessel",
    },
}


def _demo_molecules(count: int = 12) -> list[dict[str, np.ndarray]]:
    """``count`` demo molecules of different compounds (eV, Å, e·Å), and one with
    a C–H pair pushed to 0.5 Å, where ZBL's repulsion acts (it is switched off at
    bonding distances, so its parameter only learns from such contacts)."""
    with np.load(ROOT / "data" / "demo.npz") as npz:
        mol_id, N = npz["mol_id"], npz["N"]
        first = np.unique(mol_id, return_index=True)[1][:count]
        molecules = [
            {
                "Z": npz["Z"][i, : N[i]],
                "R": npz["R"][i, : N[i]],
                "E": npz["E"][i],
                "F": npz["F"][i, : N[i]],
                "D": npz["D"][i],
            }
            for i in first
        ]
    squeezed = None
    for mol in molecules:
        carbons, hydrogens = (
            np.flatnonzero(mol["Z"] == 6),
            np.flatnonzero(mol["Z"] == 1),
        )
        if len(carbons) and len(hydrogens):
            c, h = carbons[0], hydrogens[0]
            R = mol["R"].copy()
            direction = R[h] - R[c]
            R[h] = R[c] + 0.5 * direction / np.linalg.norm(direction)
            squeezed = {**mol, "R": R}
            break
    assert squeezed is not None
    return [*molecules, squeezed]


@pytest.fixture(scope="module")
def demo_batch() -> dict[str, np.ndarray]:
    return molecules_to_batch(_demo_molecules())


def _constants(batch: dict[str, np.ndarray], max_z: int):
    class OneBatch:  # the loader interface fit_energy_constants streams over
        path = "demo molecules"

        def packed_batches(self, epoch: int):
            return iter([batch])

    return fit_energy_constants(OneBatch(), max_z)[0]


@pytest.mark.parametrize("option", OPTIONS)
def test_every_parameter_leaf_learns_from_the_shipped_initialisation(
    option: str, demo_batch: dict[str, np.ndarray]
):
    model_cfg = section_from_mapping(
        ModelConfig, {**SHIPPED["model"], **OPTIONS[option]}, "model"
    )
    # the shipped recipe without weight decay, which would move a dead kernel too
    train_cfg = section_from_mapping(
        TrainConfig, {**SHIPPED["train"], "weight_decay": 0.0}, "train"
    )
    model = model_from_config(model_cfg)
    constants = _constants(demo_batch, model_cfg.max_atomic_number)
    params = init_params(model, jax.random.PRNGKey(train_cfg.seed), demo_batch)
    params = jax.tree.map(np.array, params)  # the state is donated to the step

    # PhysNet's zero start: the untrained network adds nothing but the physical
    # terms (ZBL only on the squeezed pair, Coulomb with charges that start at 0)
    start = predict(params, demo_batch, model, constants)
    real = demo_batch["molecule_mask"]
    if not (model_cfg.zbl or model_cfg.charges):
        np.testing.assert_array_equal(start["energy_residual"][real], 0.0)

    weights = LossWeights(
        energy=train_cfg.energy_weight,
        forces=train_cfg.forces_weight,
        dipole=train_cfg.dipole_weight if model_cfg.charges else 0.0,
    )
    tx = make_optimizer(train_cfg)
    steps = build_steps(model, tx, train_cfg, weights)
    state = create_train_state(params, tx, initial_schedule(train_cfg, 1000))
    prepared = jax.tree.map(jnp.asarray, prepare_batch(demo_batch, constants))
    scale = jnp.float32(constants.scale)
    for _ in range(6):  # the first at rate 0 (warmup), then five
        state, info = steps.train(state, prepared, scale)
        assert bool(info["finite"])

    # a leaf learns if training moved it: AMSGrad moves a leaf exactly when one of
    # its gradients so far was non-zero (weight decay is off, see above)
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), params, state.params)
    flat = jax.tree_util.tree_flatten_with_path(moved)[0]
    dead = [jax.tree_util.keystr(path) for path, ok in flat if not ok]
    assert not dead, f"{option}: {len(dead)} of {len(flat)} leaves never learn: {dead}"


def test_the_options_build_different_models():
    """The cases above are different models (an option that a refactor dropped on
    the way to the model would make two of them equal)."""
    batch = molecules_to_batch(_demo_molecules(2))
    shapes = {}
    for option, changes in OPTIONS.items():
        cfg = section_from_mapping(
            ModelConfig, {**SHIPPED["model"], **changes}, "model"
        )
        params = jax.eval_shape(
            lambda cfg=cfg: init_params(
                model_from_config(cfg), jax.random.PRNGKey(0), batch
            )
        )
        shapes[option] = str(jax.tree.map(lambda a: a.shape, params))
    assert len(set(shapes.values())) == len(OPTIONS)
    assert dataclasses.fields(ModelConfig)  # the section is a dataclass
