"""ASE calculator: matches batched predictions, conserves energy, refuses bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from model_fixtures import make_checkpoint, make_packed
from physpack.data.packed import PackedDataset
from physpack.errors import InputError
from physpack.model.calculator import PhysNetCalculator
from physpack.model.physnet import molecules_to_batch


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A packed set, checkpoints of a tiny model with and without charges, and one
    calculator of each (shared, so that each molecule size compiles once)."""
    root = tmp_path_factory.mktemp("calc")
    packed, _ = make_packed(root, n_mol=24)
    out = {
        "packed": PackedDataset(packed),
        "plain": root / "plain.ckpt",
        "plain_ckpt": make_checkpoint(
            root / "plain.ckpt", packed, seed=1, scale_factor=30.0
        ),
        "charged": root / "charged.ckpt",
        "charged_ckpt": make_checkpoint(root / "charged.ckpt", packed, charges=True),
    }
    out["plain_calc"] = PhysNetCalculator(out["plain"])
    out["charged_calc"] = PhysNetCalculator(out["charged"])
    return out


def smallest(data: dict) -> Atoms:
    ds = data["packed"]
    return atoms_of(ds.molecule(int(np.argmin(ds.n_atoms))))


def atoms_of(mol: dict) -> Atoms:
    return Atoms(numbers=mol["Z"], positions=mol["R"].astype(np.float64))


@pytest.mark.slow
def test_calculator_equals_batched_predictions(data: dict) -> None:
    ds, ckpt = data["packed"], data["charged_ckpt"]
    sizes = ds.n_atoms
    # two molecules of different sizes: one compilation each
    i = int(np.argmin(sizes))
    j = int(np.flatnonzero(sizes != sizes[i])[0])
    mols = [ds.molecule(i), ds.molecule(j)]
    batched = ckpt.predict(molecules_to_batch(mols))
    calc = data["charged_calc"]
    a = 0
    for k, mol in enumerate(mols):
        atoms = atoms_of(mol)
        atoms.calc = calc
        n = len(atoms)
        assert atoms.get_potential_energy() == pytest.approx(
            batched["energy"][k], abs=2e-4
        )
        np.testing.assert_allclose(
            atoms.get_forces(), batched["forces"][a : a + n], atol=2e-4, rtol=1e-4
        )
        np.testing.assert_allclose(
            atoms.get_dipole_moment(), batched["dipole"][k], atol=2e-4, rtol=1e-4
        )
        np.testing.assert_allclose(
            atoms.get_charges(), batched["charges"][a : a + n], atol=2e-5
        )
        a += n
    assert set(calc.compiled_sizes) == {int(sizes[i]), int(sizes[j])}
    # new positions of an already seen size: no new compilation, new results
    moved = atoms_of(mols[0])
    moved.positions[0] += 0.1
    moved.calc = calc
    assert moved.get_potential_energy() != pytest.approx(batched["energy"][0], abs=1e-6)
    assert set(calc.compiled_sizes) == {int(sizes[i]), int(sizes[j])}


def test_forces_match_finite_differences(data: dict) -> None:
    atoms = smallest(data)
    atoms.calc = data["plain_calc"]
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 0.1  # a non-trivial force field (FD tol: 5e-3)
    h = 1e-3  # Å; energies are float32 residuals of a few eV: noise ≈ 1e-6 eV / h
    for atom in range(min(len(atoms), 4)):
        for axis in range(3):
            e = []
            for sign in (1, -1):
                displaced = atoms.copy()
                displaced.positions[atom, axis] += sign * h
                displaced.calc = atoms.calc
                e.append(displaced.get_potential_energy())
            fd = -(e[0] - e[1]) / (2 * h)
            assert fd == pytest.approx(forces[atom, axis], abs=5e-3, rel=1e-2)


#: NVE tolerance: max |E_total(t) − E_total(0)| per atom over 100 steps of 0.25 fs
#: [eV/atom]. Velocity Verlet's total energy oscillates with an amplitude ∝ dt²;
#: for this model (forces up to ~2 eV/Å) it stays below 2e-4 eV/atom.
NVE_TOLERANCE = 1e-3


def test_short_nve_md_conserves_energy(data: dict) -> None:
    atoms = smallest(data)
    atoms.calc = data["plain_calc"]
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    totals = []
    dyn = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    dyn.attach(lambda: totals.append(atoms.get_total_energy()), interval=1)
    dyn.run(100)
    totals = np.asarray(totals)
    kinetic_scale = 1.5 * units.kB * 300  # eV per atom at 300 K
    drift = np.abs(totals - totals[0]).max() / len(atoms)
    assert len(totals) == 101
    assert drift < NVE_TOLERANCE, f"energy drift {drift:.2e} eV/atom"
    assert NVE_TOLERANCE < 0.05 * kinetic_scale  # the bound is meaningful
    assert atoms.calc.compiled_sizes == (len(atoms),)  # compiled once for the run


def test_dipole_only_with_charges(data: dict) -> None:
    atoms = smallest(data)
    atoms.calc = data["plain_calc"]
    assert "dipole" not in atoms.calc.implemented_properties
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_dipole_moment()


def test_total_charge_is_used(data: dict) -> None:
    atoms = smallest(data)
    atoms.calc = data["charged_calc"]
    assert atoms.get_charges().sum() == pytest.approx(0.0, abs=1e-4)
    neutral = atoms.get_potential_energy()
    atoms.info["charge"] = 1.0  # no reset(): the change alone invalidates the cache
    assert atoms.get_charges().sum() == pytest.approx(1.0, abs=1e-4)
    assert atoms.get_potential_energy() != neutral
    del atoms.info["charge"]
    atoms.set_initial_charges([0.5] + [0.0] * (len(atoms) - 1))
    assert atoms.get_charges().sum() == pytest.approx(0.5, abs=1e-4)
    atoms.set_initial_charges(None)
    assert atoms.get_charges().sum() == pytest.approx(0.0, abs=1e-4)


def test_coincident_atoms_are_refused(data: dict) -> None:
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0]])
    atoms.calc = data["plain_calc"]
    with pytest.raises(InputError, match=r"atoms 0 \(H\) and 1 \(H\) are 0 Å apart"):
        atoms.get_potential_energy()


def test_coincident_atoms_in_a_packed_batch_are_named() -> None:
    from physpack.model.geometry import check_batch_coincident_atoms

    mols = [
        {"Z": np.array([8, 1, 1]), "R": np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0.0]])},
        {"Z": np.array([6, 1, 1]), "R": np.array([[0, 0, 0], [1, 0, 0], [1, 0, 0.0]])},
    ]
    batch = molecules_to_batch(mols)
    with pytest.raises(InputError, match=r"molecule 1: atoms 1 \(H\) and 2 \(H\)"):
        check_batch_coincident_atoms(batch, "predict")
    check_batch_coincident_atoms(molecules_to_batch(mols[:1]), "predict")


def test_predict_refuses_coincident_atoms(data: dict) -> None:
    mol = data["packed"].molecule(0)
    mol["R"] = mol["R"].copy()
    mol["R"][1] = mol["R"][0]
    with pytest.raises(InputError, match=r"predict: molecule 0: atoms 0 \(.*\) and 1"):
        data["plain_ckpt"].predict(molecules_to_batch([mol]))
    # the model's own predict, which evaluation and physpack predict go through
    from physpack.model.physnet import predict

    ckpt = data["plain_ckpt"]
    with pytest.raises(InputError, match=r"predict: molecule 0: atoms 0 \(.*\) and 1"):
        predict(ckpt.params, molecules_to_batch([mol]), ckpt.model, ckpt.constants)


def test_unknown_element_is_refused(data: dict) -> None:
    calc = data["plain_calc"]
    atoms = Atoms("HCl", positions=[[0, 0, 0], [0, 0, 1.3]])
    atoms.calc = calc
    with pytest.raises(InputError, match=r"Cl \(Z=17\) never seen in training"):
        atoms.get_potential_energy()
    periodic = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[5] * 3, pbc=True)
    periodic.calc = calc
    with pytest.raises(InputError, match="periodic"):
        periodic.get_potential_energy()


def test_bad_checkpoints_are_refused(data: dict, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        PhysNetCalculator(tmp_path / "missing.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    blob = Path(data["plain"]).read_bytes()
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match="truncated"):
        PhysNetCalculator(truncated)


@pytest.mark.slow
def test_committee_mean_and_spread_equal_numpy_over_single_models(
    tmp_path: Path,
) -> None:
    """Several checkpoints: the mean of the members, and their std (ddof 0)."""
    packed, _ = make_packed(tmp_path, n_mol=8)
    paths = []
    for seed in range(3):
        paths.append(tmp_path / f"m{seed}.ckpt")
        make_checkpoint(paths[-1], packed, seed=seed)
    atoms = atoms_of(PackedDataset(packed).molecule(0))
    singles = []
    for p in paths:
        a = atoms.copy()
        a.calc = PhysNetCalculator(p)
        singles.append((a.get_potential_energy(), a.get_forces()))
    e = np.array([s[0] for s in singles])
    f = np.stack([s[1] for s in singles])
    assert e.std() > 0  # the members differ
    committee = atoms.copy()
    committee.calc = PhysNetCalculator(paths)
    assert committee.calc.committee_size == 3
    np.testing.assert_allclose(committee.get_potential_energy(), e.mean(), rtol=1e-6)
    np.testing.assert_allclose(committee.get_forces(), f.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(committee.calc.results["energy_std"], e.std(), rtol=1e-5)
    np.testing.assert_allclose(
        committee.calc.results["forces_std"], f.std(0), rtol=1e-4, atol=1e-7
    )
    assert committee.calc.results["forces_std"].shape == (len(atoms), 3)
