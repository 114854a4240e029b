"""One definition of the loss and the metrics: the validation loss is the training
loss of the same batch, sums over batches give the loss of their union, and the
evaluation's MAE/RMSE is the same formula."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_fixtures import TINY_MODEL, write_toy
from physpack.data.loader import PackedMemmapLoader
from physpack.model.physnet import energy_and_forces, init_params, model_from_config
from physpack.training.losses import (
    LossWeights,
    combine_loss,
    eval_sums,
    loss_partials,
    mae_rmse,
    metrics_from_sums,
)
from physpack.training.reference import fit_energy_constants
from physpack.training.steps import prepare_batch

MODEL = dataclasses.replace(TINY_MODEL, max_degree=0)
WEIGHTS = LossWeights(energy=100.0, forces=10.0, dipole=0.0)


@pytest.mark.slow
def test_validation_loss_is_the_training_loss(tmp_path):
    packed, _ = write_toy(tmp_path, n_mol=30)
    loader = PackedMemmapLoader(packed, 8, shuffle=False)
    constants, _ = fit_energy_constants(loader, MODEL.max_atomic_number)
    model = model_from_config(MODEL)
    batches = [prepare_batch(b, constants) for b in loader.packed_batches()]
    params = init_params(model, jax.random.PRNGKey(1), batches[0])
    # perturb the zero-initialised heads so that forces are not all zero
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree.unflatten(
        tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    )
    scale = jnp.float32(constants.scale)
    total_sums: dict[str, float] = {}
    total_counts: dict[str, float] = {}
    totals: dict[str, float] = {}
    for batch in batches:
        s, c = loss_partials(params, model, batch, scale, WEIGHTS)
        one = metrics_from_sums(
            {k: float(v) for k, v in eval_sums(params, model, batch, scale).items()},
            WEIGHTS,
        )
        assert one["valid_loss"] == pytest.approx(
            float(combine_loss(s, c, WEIGHTS)), rel=1e-5
        )
        for k in s:
            total_sums[k] = total_sums.get(k, 0.0) + float(s[k])
            total_counts[k] = total_counts.get(k, 0.0) + float(c[k])
        for k, v in eval_sums(params, model, batch, scale).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    m = metrics_from_sums(totals, WEIGHTS)
    assert m["valid_loss"] == pytest.approx(
        combine_loss(total_sums, total_counts, WEIGHTS), rel=1e-5
    )
    assert m["valid_forces_rmse_eV_per_A"] > 0
    # the same numbers as the evaluation's formula on the concatenated errors
    errors = []
    for batch in batches:
        out = energy_and_forces(params, model, batch, scale)
        mask = np.asarray(batch["molecule_mask"])
        errors.append(np.asarray(out["energy_residual"] - batch["E_res"])[mask])
    mae, rmse = mae_rmse(np.concatenate(errors))
    assert m["valid_energy_mae_eV"] == pytest.approx(mae, rel=1e-5)
    assert m["valid_energy_rmse_eV"] == pytest.approx(rmse, rel=1e-5)


def test_mae_rmse():
    assert mae_rmse(np.array([3.0, -4.0])) == pytest.approx((3.5, np.sqrt(12.5)))
    assert all(np.isnan(mae_rmse(np.zeros(0))))


@pytest.mark.slow
def test_nh_term_is_the_weighted_penalty_of_the_model(tmp_path):
    """train.nh_weight adds nh_weight · nh_penalty (the model's definition) to the
    loss, normalised by the batch's real atoms."""
    from physpack.model.physnet import nh_penalty

    packed, _ = write_toy(tmp_path, n_mol=12)
    loader = PackedMemmapLoader(packed, 6, shuffle=False)
    constants, _ = fit_energy_constants(loader, MODEL.max_atomic_number)
    model = model_from_config(dataclasses.replace(MODEL, num_iterations=2))
    batch = prepare_batch(next(iter(loader.packed_batches())), constants)
    params = init_params(model, jax.random.PRNGKey(0), batch)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
    params = jax.tree.unflatten(
        tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    )
    scale = jnp.float32(constants.scale)
    with_nh = dataclasses.replace(WEIGHTS, nh=0.5)
    plain = combine_loss(*loss_partials(params, model, batch, scale, WEIGHTS), WEIGHTS)
    s, c = loss_partials(params, model, batch, scale, with_nh)
    out = energy_and_forces(params, model, batch, scale)
    penalty = float(nh_penalty(out["module_outputs"], batch["atom_mask"]))
    assert penalty > 0
    assert float(combine_loss(s, c, with_nh)) == pytest.approx(
        float(plain) + 0.5 * penalty, rel=1e-5
    )


def test_the_loss_does_not_depend_on_the_order_of_its_terms() -> None:
    """float32 sums round differently in another order: the loss adds its terms
    in a fixed order, so two runs (with different hash seeds, which reorder sets)
    give the same loss to the last bit."""
    import jax.numpy as jnp
    from physpack.training.losses import LossWeights, combine_loss

    weights = LossWeights(energy=1.0, forces=1.0, dipole=1.0)
    values = {"energy": 1.0e8, "forces": 1.0, "dipole": -1.0e8}
    sums = {k: jnp.float32(v) for k, v in values.items()}
    counts = {k: jnp.float32(1.0) for k in values}
    losses = {
        float(combine_loss(dict(reversed(list(sums.items()))), counts, weights)),
        float(combine_loss(sums, counts, weights)),
        float(combine_loss(dict(sorted(sums.items())), counts, weights)),
    }
    assert len(losses) == 1, losses
