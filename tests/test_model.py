"""PhysNet model: forces are −∇E, symmetries hold, padding and packing change
nothing."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.data import atomic_masses
from hypothesis import given, settings
from hypothesis import strategies as st
from model_fixtures import TINY_MODEL
from physpack.errors import InputError
from physpack.model.physnet import (
    EF,
    EnergyConstants,
    PhysNet,
    device_inputs,
    energy_and_forces,
    init_params,
    model_from_config,
    molecules_to_batch,
    predict,
)
from scipy.spatial.transform import Rotation

# One budget for every batch of this module: one compilation per model.
BUDGET = {"max_atoms": 48, "max_pairs": 600, "max_molecules": 6}
# Two modules, so that the vector features of max_degree 1 reach the energy.
TINY = dataclasses.replace(TINY_MODEL, zbl=True, charges=True, num_iterations=2)


def random_molecule(rng: np.random.Generator, n: int, charge: float = 0.0) -> dict:
    """Atoms on a jittered lattice (≥ 1 Å apart) with random H/C/N/O/F."""
    grid = np.stack(np.meshgrid(*(np.arange(3),) * 3, indexing="ij"), -1).reshape(-1, 3)
    R = grid[rng.choice(len(grid), n, replace=False)] * 1.4 + rng.uniform(
        -0.2, 0.2, (n, 3)
    )
    return {
        "Z": rng.choice([1, 6, 7, 8, 9], n).astype(np.int32),
        "R": R.astype(np.float32),
        "Qtot": charge,
    }


def randomised(params, seed: int = 1, noise: float = 0.3):
    """Parameters with noise: the output heads start at zero (E ≡ reference)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: (np.asarray(x) + noise * rng.normal(size=x.shape)).astype(np.float32),
        params,
    )


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    mols = [random_molecule(rng, n, q) for n, q in ((5, 0.0), (9, 1.0), (3, -1.0))]
    model = model_from_config(TINY)
    params = randomised(
        init_params(model, jax.random.PRNGKey(0), molecules_to_batch(mols, **BUDGET))
    )
    ref = np.zeros(TINY.max_atomic_number + 1)
    ref[[1, 6, 7, 8, 9]] = [-13.6, -1030.0, -1480.0, -2040.0, -2710.0]
    constants = EnergyConstants(ref, 0.7, (1, 6, 7, 8, 9))
    return model, params, constants, mols


def run(setup, mols, **budget):
    model, params, constants, _ = setup
    return predict(
        params, molecules_to_batch(mols, **(budget or BUDGET)), model, constants
    )


@pytest.mark.slow
def test_alias_and_outputs(setup):
    _, _, constants, mols = setup
    assert EF is PhysNet
    out = run(setup, mols)
    assert out["energy"].dtype == np.float64 and out["energy"].shape == (6,)
    assert out["forces"].shape == (48, 3) and out["dipole"].shape == (6, 3)
    assert np.all(np.isfinite(out["forces"]))
    assert np.all(out["forces"][sum(len(m["Z"]) for m in mols) :] == 0)
    assert np.all(out["energy"][3:] == 0)
    # energy = float64 reference + residual, the reference summed on the host
    ref = [constants.reference_energies[m["Z"]].sum() for m in mols]
    np.testing.assert_allclose(
        out["energy"][:3] - ref, out["energy_residual"][:3], atol=1e-9
    )
    assert np.ptp(out["forces"][:5]) > 1e-3  # a non-trivial force field


def test_charges_sum_to_total_charge_and_give_the_dipole(setup):
    out = run(setup, setup[3])
    batch = molecules_to_batch(setup[3], **BUDGET)
    seg = batch["batch_segments"]
    sums = np.bincount(seg, weights=out["charges"], minlength=6)
    np.testing.assert_allclose(sums[:3], [0.0, 1.0, -1.0], atol=1e-5)
    # about each molecule's centre of mass (model.dipole_origin's default)
    mass = atomic_masses[batch["Z"]] * batch["atom_mask"]
    centre = (
        np.stack(
            [np.bincount(seg, mass * batch["R"][:, c], minlength=6) for c in range(3)],
            1,
        )
        / np.maximum(np.bincount(seg, mass, minlength=6), 1e-12)[:, None]
    )
    dipole = np.zeros((6, 3))
    np.add.at(dipole, seg, out["charges"][:, None] * (batch["R"] - centre[seg]))
    np.testing.assert_allclose(out["dipole"][:3], dipole[:3], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("origin", ["center_of_mass", "center_of_nuclear_charge"])
def test_dipole_of_ions_does_not_depend_on_where_they_sit(setup, origin):
    _, params, constants, mols = setup
    model = model_from_config(dataclasses.replace(TINY, dipole_origin=origin))
    moved = [{**m, "R": m["R"] + np.float32([7.0, -3.0, 5.0])} for m in mols]
    a = predict(params, molecules_to_batch(mols, **BUDGET), model, constants)
    b = predict(params, molecules_to_batch(moved, **BUDGET), model, constants)
    assert abs(a["charges"][5:14].sum() - 1.0) < 1e-5  # molecule 1 is a cation
    np.testing.assert_allclose(b["dipole"][:3], a["dipole"][:3], atol=2e-4)
    assert np.abs(a["dipole"][1]).max() > 1e-2  # not trivially zero


@pytest.mark.slow
def test_forces_are_minus_gradient_finite_differences(setup):
    model, params, _, mols = setup
    batch = molecules_to_batch(mols[:2], **BUDGET)
    with jax.enable_x64(True):  # float64 context (jax.experimental's in older JAX)
        p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        inputs = device_inputs(batch)
        inputs["R"] = jnp.asarray(batch["R"], jnp.float64)
        inputs["Qtot"] = jnp.asarray(batch["Qtot"], jnp.float64)
        f = jax.jit(lambda R: energy_and_forces(p64, model, {**inputs, "R": R}, 0.7))
        out = f(inputs["R"])
        assert out["forces"].dtype == jnp.float64
        h = 1e-5
        rng = np.random.default_rng(5)
        for a in rng.choice(14, 6, replace=False):
            for c in range(3):
                dR = jnp.zeros_like(inputs["R"]).at[a, c].set(h)
                e_plus = float(jnp.sum(f(inputs["R"] + dR)["energy_residual"]))
                e_minus = float(jnp.sum(f(inputs["R"] - dR)["energy_residual"]))
                numeric = -(e_plus - e_minus) / (2 * h)
                assert float(out["forces"][a, c]) == pytest.approx(
                    numeric, abs=1e-6, rel=1e-5
                )


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_energy_invariant_forces_equivariant_under_rotation_translation(setup, seed):
    rng = np.random.default_rng(seed)
    mols = setup[3]
    rot = Rotation.random(random_state=seed).as_matrix()
    shift = rng.uniform(-10, 10, 3)
    moved = [{**m, "R": (m["R"] @ rot.T + shift).astype(np.float32)} for m in mols]
    a, b = run(setup, mols), run(setup, moved)
    np.testing.assert_allclose(b["energy"], a["energy"], rtol=0, atol=2e-4)
    np.testing.assert_allclose(b["forces"], a["forces"] @ rot.T, atol=2e-4)


@settings(max_examples=8, deadline=None)
@given(perm=st.permutations(range(9)))
def test_energy_invariant_under_atom_permutation(setup, perm):
    mols = list(setup[3])
    perm = np.asarray(perm)
    mols[1] = {**mols[1], "Z": mols[1]["Z"][perm], "R": mols[1]["R"][perm]}
    a, b = run(setup, setup[3]), run(setup, mols)
    np.testing.assert_allclose(b["energy"], a["energy"], atol=2e-4)
    np.testing.assert_allclose(b["forces"][5:14], a["forces"][5:14][perm], atol=2e-4)


@pytest.mark.slow
def test_padding_and_batch_placement_change_nothing(setup):
    mols = setup[3]
    alone = [run(setup, [m]) for m in mols]
    together = run(setup, mols)
    reordered = run(setup, [mols[2], mols[0], mols[1]])
    bigger = run(setup, mols, max_atoms=80, max_pairs=900, max_molecules=9)
    starts = np.cumsum([0] + [len(m["Z"]) for m in mols])
    order = [1, 2, 0]  # slot of each molecule in `reordered`
    ostarts = np.cumsum([0] + [len(mols[i]["Z"]) for i in (2, 0, 1)])
    for i, m in enumerate(mols):
        n = len(m["Z"])
        for out, slot, s in (
            (together, i, starts[i]),
            (bigger, i, starts[i]),
            (reordered, order[i], ostarts[order[i]]),
        ):
            assert out["energy"][slot] == pytest.approx(alone[i]["energy"][0], abs=1e-4)
            np.testing.assert_allclose(
                out["forces"][s : s + n], alone[i]["forces"][:n], atol=1e-5
            )
            np.testing.assert_allclose(
                out["dipole"][slot], alone[i]["dipole"][0], atol=1e-5
            )


@pytest.mark.slow
def test_padding_gets_no_gradient_and_no_nan(setup):
    model, params, _, mols = setup
    batch = molecules_to_batch(mols, **BUDGET)
    inputs = device_inputs(batch)

    def loss(p, R):
        out = energy_and_forces(p, model, {**inputs, "R": R}, jnp.float32(0.7))
        return jnp.sum(out["energy_residual"] ** 2) + jnp.sum(out["forces"] ** 2)

    g_params, g_pos = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, inputs["R"])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(g_params))
    assert bool(jnp.all(jnp.isfinite(g_pos)))
    assert bool(jnp.all(g_pos[17:] == 0))  # padding atoms, incl. the slot A-1


def test_zbl_repels_at_short_range(setup):
    model, _, constants, _ = setup
    energies = []
    for d in (0.3, 0.6, 2.5):
        mol = {
            "Z": np.array([6, 6], np.int32),
            "R": np.array([[0, 0, 0], [d, 0, 0]], np.float32),
        }
        batch = molecules_to_batch([mol], **BUDGET)
        params = init_params(model, jax.random.PRNGKey(0), batch)
        energies.append(predict(params, batch, model, constants)["energy_residual"][0])
    # zero-initialised heads, neutral molecule: the energy is the ZBL term alone
    assert energies[0] > energies[1] > 1.0 and energies[2] == pytest.approx(
        0.0, abs=1e-6
    )


@pytest.mark.parametrize(
    "bond, length",
    [((6, 8), 1.21), ((6, 6), 1.20), ((7, 7), 1.10), ((6, 8), 1.128), ((1, 1), 0.74)],
    ids=["C=O", "C#C", "N#N", "C#O", "H-H"],
)
def test_zbl_is_off_at_bond_lengths(setup, bond, length):
    model, _, constants, _ = setup
    mol = {
        "Z": np.array(bond, np.int32),
        "R": np.array([[0, 0, 0], [length, 0, 0]], np.float32),
    }
    batch = molecules_to_batch([mol], **BUDGET)
    params = init_params(model, jax.random.PRNGKey(0), batch)
    # zero-initialised heads, neutral molecule: the energy is the ZBL term alone
    residual = predict(params, batch, model, constants)["energy_residual"][0]
    assert abs(residual) < 1e-3  # eV


@pytest.mark.slow
def test_vector_features_reach_the_energy(setup):
    model, params, _, mols = setup
    assert model.max_degree == 1
    batch = molecules_to_batch(mols, **BUDGET)
    inputs = device_inputs(batch)

    def energy(p):
        out = energy_and_forces(p, model, inputs, jnp.float32(0.7))
        return jnp.sum(out["energy_residual"])

    grads = jax.grad(energy)(params)
    assert (
        float(jnp.abs(grads["interaction_1"]["vector_to_scalar"]["kernel"]).max())
        > 1e-4
    )


def test_batch_over_budget_is_refused():
    mol = {"Z": np.ones(5, np.int32), "R": np.zeros((5, 3), np.float32)}
    with pytest.raises(InputError, match="do not fit"):
        molecules_to_batch([mol], max_atoms=5)


def test_reference_sum_and_unknown_elements():
    c = EnergyConstants(np.arange(10, dtype=np.float64), 1.0, (1, 6))
    batch = molecules_to_batch(
        [
            {"Z": np.array([1, 6]), "R": np.eye(2, 3)},
            {"Z": np.array([6, 6, 1]), "R": np.eye(3)},
        ]
    )
    np.testing.assert_array_equal(c.reference_sum(batch), [7.0, 13.0, 0.0])
    with pytest.raises(InputError, match=r"element\(s\) \[8\]"):
        c.check_elements(np.array([1, 8, 0]), "atoms")
