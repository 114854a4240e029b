"""Checkpoints and training states: round trips, atomic writes, bad files refused."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import optax
import pytest
from flax import serialization
from model_fixtures import TINY_MODEL
from physpack.errors import InputError
from physpack.model import checkpoint as ckpt_io
from physpack.model.physnet import (
    EnergyConstants,
    init_params,
    model_from_config,
    molecules_to_batch,
    predict,
)

CONFIG = dataclasses.replace(
    TINY_MODEL, max_degree=0, num_basis_functions=4, cutoff=5.0
)


@pytest.fixture(scope="module")
def trained():
    """A checkpoint with non-trivial parameters and constants, and a batch."""
    rng = np.random.default_rng(0)
    mols = [
        {
            "Z": np.array(z, np.int32),
            "R": rng.normal(size=(len(z), 3)).astype(np.float32) * 1.5,
        }
        for z in ([6, 1, 1, 1, 1], [8, 1, 1])
    ]
    batch = molecules_to_batch(mols, max_atoms=16, max_pairs=40, max_molecules=4)
    model = model_from_config(CONFIG)
    params = jax.tree.map(
        lambda x: np.asarray(x) + rng.normal(size=x.shape).astype(np.float32),
        init_params(model, jax.random.PRNGKey(0), batch),
    )
    ref = np.zeros(10)
    ref[[1, 6, 8]] = [-13.6 + 1e-9, -1030.123456789012, -2040.5]
    ckpt = ckpt_io.Checkpoint(
        params=params,
        model_config=CONFIG,
        constants=EnergyConstants(ref, 0.37, (1, 6, 8)),
        metrics={"valid_forces_mae_eV_per_A": 0.05},
        training={"epoch": 3, "step": 42, "train_config": {"max_minutes": None}},
    )
    return ckpt, batch


def test_round_trip_is_exact(tmp_path, trained):
    ckpt, batch = trained
    path = ckpt_io.save(tmp_path / "best.ckpt", ckpt)
    back = ckpt_io.load(path)
    assert back.model_config == CONFIG
    assert back.constants.elements == (1, 6, 8) and back.constants.scale == 0.37
    np.testing.assert_array_equal(
        back.constants.reference_energies, ckpt.constants.reference_energies
    )
    assert back.constants.reference_energies.dtype == np.float64
    for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(ckpt.params)):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(back.params) == jax.tree.structure(ckpt.params)
    assert back.metrics == {"valid_forces_mae_eV_per_A": 0.05}
    assert (
        back.training["epoch"] == 3
        and back.training["train_config"]["max_minutes"] is None
    )
    assert back.units["forces"] == "eV/Angstrom"
    assert back.format_version == ckpt_io.FORMAT_VERSION and back.created_utc
    out_a, out_b = ckpt.predict(batch), back.predict(batch)
    np.testing.assert_array_equal(out_a["energy"], out_b["energy"])
    np.testing.assert_array_equal(out_a["forces"], out_b["forces"])
    assert np.ptp(out_a["forces"][:8]) > 0  # the comparison is not between zeros


def test_failed_save_leaves_nothing(tmp_path, trained):
    ckpt, _ = trained
    bad = ckpt_io.Checkpoint(**{**ckpt.__dict__, "params": {"w": object()}})
    with pytest.raises(ValueError, match="not supported"):  # an unserialisable leaf
        ckpt_io.save(tmp_path / "best.ckpt", bad)
    assert os.listdir(tmp_path) == []


def test_existing_checkpoint_replaced_only_when_complete(
    tmp_path, trained, monkeypatch
):
    ckpt, _ = trained
    path = ckpt_io.save(tmp_path / "best.ckpt", ckpt)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_io.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt_io.save(path, ckpt)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["best.ckpt"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[: len(b) // 2], "unreadable checkpoint"),
        (
            lambda b: b"not a checkpoint at all",
            "unreadable checkpoint|not a checkpoint",
        ),
        (
            lambda b: serialization.msgpack_serialize(
                {**serialization.msgpack_restore(b), "format_version": 99}
            ),
            "format_version 99 is newer",
        ),
        (
            lambda b: serialization.msgpack_serialize(
                {**serialization.msgpack_restore(b), "format_version": 1}
            ),
            "format_version 1 holds a model of an older physpack",
        ),
        (
            lambda b: serialization.msgpack_serialize(
                {**serialization.msgpack_restore(b), "format": "something-else"}
            ),
            "not a checkpoint",
        ),
    ],
)
def test_bad_files_are_refused(tmp_path, trained, damage, message):
    path = ckpt_io.save(tmp_path / "best.ckpt", trained[0])
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(InputError, match=message):
        ckpt_io.load(path)


def test_missing_file_and_incomplete_payload(tmp_path, trained):
    with pytest.raises(InputError, match="not found"):
        ckpt_io.load(tmp_path / "nope.ckpt")
    path = ckpt_io.save(tmp_path / "best.ckpt", trained[0])
    payload = serialization.msgpack_restore(path.read_bytes())
    del payload["constants"]
    path.write_bytes(serialization.msgpack_serialize(payload))
    with pytest.raises(InputError, match="incomplete checkpoint"):
        ckpt_io.load(path)
    payload = serialization.msgpack_restore(ckpt_io.save(path, trained[0]).read_bytes())
    payload["model_config"]["features"] = "many"
    path.write_bytes(serialization.msgpack_serialize(payload))
    with pytest.raises(InputError, match="features"):
        ckpt_io.load(path)


def test_state_round_trip_with_optimizer_state(tmp_path, trained):
    params = trained[0].params
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_amsgrad())
    opt_state = tx.init(params)
    _, opt_state = jax.jit(tx.update)(
        jax.tree.map(np.ones_like, params), opt_state, params
    )
    state = {
        "train_state": serialization.to_state_dict(
            {"params": params, "opt_state": jax.device_get(opt_state)}
        ),
        "history": [{"epoch": 1, "train_loss": 0.5}],
        "loader": {"epoch": 1, "position": 3, "budget": [16, 40, 4]},
        "best": {"epoch": 0, "ema": None, "metrics": {}},
    }
    assert ckpt_io.load_state(tmp_path) is None
    ckpt_io.save_state(tmp_path, state)
    back = ckpt_io.load_state(tmp_path)
    template = {"params": params, "opt_state": tx.init(params)}
    restored = serialization.from_state_dict(template, back["train_state"])
    for a, b in zip(jax.tree.leaves(restored["opt_state"]), jax.tree.leaves(opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert back["loader"] == {"epoch": 1, "position": 3, "budget": [16, 40, 4]}
    assert back["history"] == [{"epoch": 1, "train_loss": 0.5}]
    assert back["best"]["ema"] is None
    (tmp_path / ckpt_io.STATE_FILE).write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="training state"):
        ckpt_io.load_state(tmp_path)


def test_shape_mismatch_between_config_and_constants(tmp_path, trained):
    ckpt = trained[0]
    bad = ckpt_io.Checkpoint(
        **{**ckpt.__dict__, "constants": EnergyConstants(np.zeros(5), 1.0, (1,))}
    )
    path = ckpt_io.save(tmp_path / "best.ckpt", bad)
    with pytest.raises(InputError, match="reference_energies has shape"):
        ckpt_io.load(path)


def _as_version_2(path, **model_changes):
    """Rewrite a checkpoint as format 2 wrote it: no keys for the radial basis
    and the angular block in its model section."""
    payload = serialization.msgpack_restore(path.read_bytes())
    model = {
        k: v
        for k, v in payload["model_config"].items()
        if k not in ckpt_io.VERSION_2_MODEL
    }
    payload.update(format_version=2, model_config={**model, **model_changes})
    path.write_bytes(serialization.msgpack_serialize(payload))


def test_a_version_2_checkpoint_is_read_as_the_model_it_held(tmp_path, trained):
    """Model keys added since format 2 take the values of the model format 2
    held (no angular block, PhysNet's basis), not today's schema defaults: the
    same parameters give the same predictions."""
    trained_ckpt, batch = trained
    old_model = dataclasses.replace(CONFIG, **ckpt_io.VERSION_2_MODEL)
    assert old_model != CONFIG  # today's defaults differ from format 2's model
    rng = np.random.default_rng(1)
    params = jax.tree.map(
        lambda x: np.asarray(x) + rng.normal(size=x.shape).astype(np.float32),
        init_params(model_from_config(old_model), jax.random.PRNGKey(0), batch),
    )
    ckpt = dataclasses.replace(trained_ckpt, params=params, model_config=old_model)
    path = ckpt_io.save(tmp_path / "best.ckpt", ckpt)
    _as_version_2(path)
    back = ckpt_io.load(path)
    assert back.format_version == 2
    assert back.model_config == old_model
    np.testing.assert_array_equal(
        predict(back.params, batch, back.model, back.constants)["energy"],
        predict(ckpt.params, batch, ckpt.model, ckpt.constants)["energy"],
    )


def test_a_version_2_equivariant_checkpoint_is_refused(tmp_path, trained):
    """Format 2's max_degree >= 1 models never trained their vector features (a
    saddle of zero gradient at initialisation): refused with the reason."""
    path = ckpt_io.save(tmp_path / "best.ckpt", trained[0])
    _as_version_2(path, max_degree=1, num_iterations=2)
    with pytest.raises(InputError, match="equivariant features never trained"):
        ckpt_io.load(path)
