"""The late energy stage (train.energy_stage_start): where it begins, the weights
the train step and the validation use there, and the best checkpoint of the
stage."""

from __future__ import annotations

import csv
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_fixtures import write_toy
from physpack.model import checkpoint as ckpt_io
from physpack.training.losses import LossWeights, combine_loss, stage_weights
from physpack.training.optim import in_energy_stage, initial_schedule
from test_train import TRAIN, run

pytestmark = [pytest.mark.usefixtures("compilation_cache"), pytest.mark.slow]

STAGED = dataclasses.replace(
    TRAIN,
    epochs=4,
    energy_stage_start=0.5,
    energy_stage_energy_weight=5000.0,
    energy_stage_forces_weight=0.5,
)


def test_the_stage_begins_at_its_fraction_of_the_horizon():
    def staged(start, count, horizon):
        cfg = dataclasses.replace(STAGED, energy_stage_start=start)
        return bool(in_energy_stage(cfg, count, initial_schedule(cfg, horizon)))

    assert not staged(0.5, 49, 100)
    assert staged(0.5, 50, 100)
    assert staged(0.75, 75, 99)
    assert not staged(0.75, 74, 99)
    # without a stage, never
    assert not bool(in_energy_stage(TRAIN, 10**6, initial_schedule(TRAIN, 10)))


def test_stage_weights_replace_energy_and_forces_only_of_terms_that_are_on():
    base = LossWeights(energy=100.0, forces=50.0, dipole=1.0, nh=0.01)
    assert stage_weights(base, STAGED, False) == base
    late = stage_weights(base, STAGED, True)
    assert (late.energy, late.forces, late.dipole, late.nh) == (5000.0, 0.5, 1.0, 0.01)
    no_forces = dataclasses.replace(base, forces=0.0)
    assert stage_weights(no_forces, STAGED, True).forces == 0.0
    assert stage_weights(base, TRAIN, True) == base  # no stage configured

    # traced inside a step: the same numbers, and the loss they give
    sums = {"energy": jnp.float32(2.0), "forces": jnp.float32(3.0)}
    counts = {"energy": jnp.float32(1.0), "forces": jnp.float32(1.0)}

    @jax.jit
    def loss(flag):
        return combine_loss(sums, counts, stage_weights(base, STAGED, flag))

    assert float(loss(jnp.bool_(False))) == pytest.approx(100 * 2 + 50 * 3)
    assert float(loss(jnp.bool_(True))) == pytest.approx(5000 * 2 + 0.5 * 3)


def test_the_late_stage_trains_and_selects_with_its_weights(tmp_path):
    """Steps from half the horizon on use the stage's weights (the training loss
    jumps with the energy weight), the validation loss is the stage's, and the
    best checkpoint is from the stage although its loss is larger in value than
    every earlier epoch's."""
    toy = write_toy(tmp_path / "toy")
    lines: list[str] = []
    result = run(tmp_path / "out", toy, STAGED, log=lines.append)
    with open(tmp_path / "out" / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    stages = [int(r["loss_stage"]) for r in rows]
    assert stages[0] == 1 and stages[-1] == 2 and stages == sorted(stages)
    first_late = stages.index(2)
    loss = np.array([float(r["valid_loss"]) for r in rows])
    e2 = np.array([float(r["valid_energy_rmse_eV_per_atom"]) for r in rows]) ** 2
    f2 = np.array([float(r["valid_forces_rmse_eV_per_A"]) for r in rows]) ** 2
    weights = np.where(np.array(stages) == 2, 5000.0, TRAIN.energy_weight)
    f_weights = np.where(np.array(stages) == 2, 0.5, TRAIN.forces_weight)
    np.testing.assert_allclose(loss, weights * e2 + f_weights * f2, rtol=1e-4)
    # the stage's best, not the smaller numbers of the first stage
    assert result.best_epoch > first_late
    assert loss[result.best_epoch - 1] == loss[first_late:].min()
    assert ckpt_io.load(result.checkpoint).training["epoch"] == result.best_epoch
    assert any("late energy stage" in line for line in lines)
