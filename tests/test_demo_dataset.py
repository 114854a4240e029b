"""The committed demo dataset ``data/demo.npz`` and the script that makes it.

Checks on the file need only numpy and ASE; the recomputation of stored labels and
the script's own runs need tblite (``pip install -e .[demo]``) and skip without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from ase import Atoms, units
from ase.data import covalent_radii
from script_loading import load_script

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo.npz"
SCRIPT = ROOT / "scripts" / "make_demo_dataset.py"
KEYS = {"R": np.float32, "Z": np.int32, "N": np.int32, "E": np.float64,
        "F": np.float32, "Q": np.float64, "D": np.float64}  # fmt: skip
#: pyridine's gas-phase dipole moment, 2.19 D (CRC Handbook), in e·Å
PYRIDINE_DIPOLE_E_ANGSTROM = 2.19 * units.Debye


@pytest.fixture(scope="module")
def demo() -> dict[str, np.ndarray]:
    if not DEMO.exists():
        pytest.fail(f"{DEMO} is missing; make it with {SCRIPT.relative_to(ROOT)}")
    with np.load(DEMO, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script("make_demo_dataset")


def _tblite():
    return pytest.importorskip(
        "tblite.ase", reason="tblite not installed (pip install -e .[demo])"
    )


def _atoms(demo: dict[str, np.ndarray], i: int) -> Atoms:
    n = int(demo["N"][i])
    return Atoms(numbers=demo["Z"][i, :n], positions=demo["R"][i, :n].astype(float))


def test_file_is_small_and_compressed() -> None:
    assert DEMO.stat().st_size < 5.5e6


def test_keys_shapes_and_dtypes(demo: dict[str, np.ndarray]) -> None:
    n, amax = demo["Z"].shape
    expected = {"R": (n, amax, 3), "Z": (n, amax), "N": (n,), "E": (n,),
                "F": (n, amax, 3), "Q": (n,), "D": (n, 3), "T": (n,),
                "mol_id": (n,)}  # fmt: skip
    for key, shape in expected.items():
        assert demo[key].shape == shape, key
    for key, dtype in KEYS.items():
        assert demo[key].dtype == dtype, key
    assert 2000 <= n <= 4000
    info = json.loads(str(demo["info"]))
    assert info["units"]["E"] == "eV" and info["units"]["D"] == "e*Angstrom"


def test_padding_is_consistent(demo: dict[str, np.ndarray]) -> None:
    Z, N = demo["Z"], demo["N"]
    np.testing.assert_array_equal(N, (Z > 0).sum(axis=1))
    pad = np.arange(Z.shape[1])[None, :] >= N[:, None]
    assert not Z[pad].any(), "nonzero atomic number in the padding"
    assert not (Z[~pad] == 0).any(), "padding inside a molecule"
    assert not demo["R"][pad].any() and not demo["F"][pad].any()
    assert N.max() == Z.shape[1], "Amax wider than the largest molecule"


def test_values_are_finite_and_neutral(demo: dict[str, np.ndarray]) -> None:
    for key in ("R", "E", "F", "Q", "D", "T"):
        assert np.isfinite(demo[key]).all(), key
    assert (demo["Q"] == 0).all()
    assert (demo["E"] < 0).all()


def test_chemical_variety(demo: dict[str, np.ndarray]) -> None:
    names, mol_id, N = demo["mol_names"], demo["mol_id"], demo["N"]
    assert len(names) >= 20 and set(np.unique(mol_id)) == set(range(len(names)))
    assert {1, 6, 7, 8} <= set(np.unique(demo["Z"])) - {0}
    assert N.min() <= 5 and N.max() >= 20 and (np.unique(N) >= 20).sum() >= 3
    assert len(np.unique(demo["T"])) >= 3
    for m in range(len(names)):  # a molecule keeps its composition and atom order
        Z = demo["Z"][mol_id == m]
        assert (Z == Z[0]).all(), names[m]


def test_geometries_are_intact_molecules(demo: dict[str, np.ndarray]) -> None:
    """No atom pair closer than 0.6 Å; every atom bonded to something (no
    dissociated hydrogens): sampled conformers, not fragments."""
    for i in range(0, len(demo["N"]), 7):
        atoms = _atoms(demo, i)
        d = atoms.get_all_distances()
        np.fill_diagonal(d, np.inf)
        assert d.min() > 0.6, i
        rc = covalent_radii[atoms.numbers]
        assert (d < 1.5 * (rc[:, None] + rc[None, :])).any(axis=1).all(), i


def test_forces_have_no_net_force_or_torque(demo: dict[str, np.ndarray]) -> None:
    """Translation and rotation invariance of the energy: Σ F = 0 and Σ r × F = 0."""
    F, R = demo["F"].astype(float), demo["R"].astype(float)
    scale = np.abs(F).max(axis=(1, 2))
    assert (np.abs(F.sum(axis=1)).max(axis=1) < 1e-4 * scale + 1e-4).all()
    centred = R - R.mean(axis=1, keepdims=True)
    centred[demo["Z"] == 0] = 0.0
    torque = np.cross(centred, F).sum(axis=1)
    assert (np.abs(torque).max(axis=1) < 1e-3 * scale + 1e-3).all()
    assert 0.5 < F[demo["Z"] > 0].std() < 5.0


def test_energy_rises_with_temperature_by_equipartition(
    demo: dict[str, np.ndarray],
) -> None:
    """Classical harmonic estimate: ⟨E⟩ grows by (3N − 6)/2 · k_B · ΔT per
    molecule (3N − 5 for linear ones, a minor correction ignored here)."""
    T = demo["T"]
    lo, hi = T.min(), T.max()
    rise, predicted = 0.0, 0.0
    for m in np.unique(demo["mol_id"]):
        sel = demo["mol_id"] == m
        e_lo = demo["E"][sel & (T == lo)].mean()
        e_hi = demo["E"][sel & (T == hi)].mean()
        rise += e_hi - e_lo
        predicted += (3 * demo["N"][sel][0] - 6) / 2 * units.kB * (hi - lo)
    assert 0.7 < rise / predicted < 1.5


def test_dipoles_are_in_e_angstrom(demo: dict[str, np.ndarray]) -> None:
    """Pyridine's thermal-average dipole is near the experimental 2.19 D = 0.456 e·Å
    (in Debye the stored numbers would be 4.8 times larger); benzene's is near 0."""
    names = list(demo["mol_names"])
    norms = np.linalg.norm(demo["D"], axis=1)
    pyridine = norms[demo["mol_id"] == names.index("C5H5N")].mean()
    benzene = norms[demo["mol_id"] == names.index("C6H6")].mean()
    assert (
        0.6 * PYRIDINE_DIPOLE_E_ANGSTROM < pyridine < 1.4 * PYRIDINE_DIPOLE_E_ANGSTROM
    )
    assert benzene < 0.25 * pyridine


def test_stored_labels_match_tblite(demo: dict[str, np.ndarray]) -> None:
    tblite_ase = _tblite()
    largest = int(np.argmax(demo["N"] + demo["T"] / 1e4))  # hottest, largest
    for i in (0, largest):
        atoms = _atoms(demo, i)
        atoms.calc = tblite_ase.TBLite(method="GFN2-xTB", verbosity=0)
        n = int(demo["N"][i])
        np.testing.assert_allclose(
            atoms.get_potential_energy(), demo["E"][i], atol=1e-3
        )
        np.testing.assert_allclose(atoms.get_forces(), demo["F"][i, :n], atol=2e-3)
        np.testing.assert_allclose(atoms.get_dipole_moment(), demo["D"][i], atol=2e-3)


def test_stored_forces_are_the_energy_gradient(demo: dict[str, np.ndarray]) -> None:
    """Central difference of the tblite energy along the stored force direction."""
    tblite_ase = _tblite()
    i = int(np.argmax(np.abs(demo["F"]).max(axis=(1, 2))))
    n = int(demo["N"][i])
    F = demo["F"][i, :n].astype(float)
    direction = F / np.linalg.norm(F)
    h = 1e-3  # Å, along the unit vector in 3n dimensions
    energies = []
    for sign in (1, -1):
        atoms = _atoms(demo, i)
        atoms.positions += sign * h * direction
        atoms.calc = tblite_ase.TBLite(method="GFN2-xTB", verbosity=0)
        energies.append(atoms.get_potential_energy())
    slope = (energies[0] - energies[1]) / (2 * h)
    np.testing.assert_allclose(-slope, np.linalg.norm(F), rtol=1e-3)


def test_sp3_chain_builds_saturated_molecules(script: ModuleType) -> None:
    atoms = script.sp3_chain("CCOCCOCC")
    assert atoms.get_chemical_formula() == "C6H14O2"
    bonds = script.bond_graph(atoms.numbers, atoms.positions, 1.2)
    H = atoms.numbers == 1
    assert (bonds[H].sum(axis=1) == 1).all()  # every hydrogen on one heavy atom
    heavy_degree = bonds[~H].sum(axis=1)
    valence = np.where(atoms.numbers[~H] == 6, 4, 2)
    np.testing.assert_array_equal(heavy_degree, valence)


def test_script_rejects_bad_options(script: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "x.npz"
    assert script.main(["--output", str(out), "--temperatures", "-5"]) == 2
    assert script.main(["--output", str(out), "--molecules", "unobtainium"]) == 2
    assert not out.exists()


def test_script_is_deterministic(tmp_path: Path) -> None:
    """Same seed, same bits (with one OpenMP thread, as the script documents: threaded
    reductions in tblite change the last bits); another seed, other samples."""
    _tblite()
    args = ["--molecules", "CH4", "HCOOH", "--samples-per-temperature", "2",
            "--temperatures", "300", "900", "--equilibration-steps", "20",
            "--stride", "5"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        path = tmp_path / f"{name}.npz"
        cmd = [
            sys.executable,
            str(SCRIPT),
            *args,
            "--seed",
            seed,
            "--output",
            str(path),
        ]
        proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        with np.load(path) as npz:
            runs[name] = {key: npz[key] for key in npz.files}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz", "c.npz"]
    assert len(runs["a"]["E"]) == 2 * 2 * 2
    for key in runs["a"]:
        np.testing.assert_array_equal(runs["a"][key], runs["b"][key])
    assert not np.array_equal(runs["a"]["R"], runs["c"]["R"])
