"""physpack predict: NPZ, packed and extxyz input; one model or a committee."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from model_fixtures import make_checkpoint, make_packed
from physpack.data.packed import PackedDataset
from physpack.evaluation.predict import main, predict


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("predict")
    packed, _ = make_packed(root, n_mol=12)
    ckpts = []
    for seed in range(3):
        path = root / f"m{seed}.ckpt"
        make_checkpoint(path, packed, seed=seed)
        ckpts.append(path)
    return packed, ckpts


def test_committee_mean_and_std_equal_numpy_over_single_models(
    models: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    packed, ckpts = models
    singles = [
        predict([c], packed, tmp_path / f"s{i}.npz") for i, c in enumerate(ckpts)
    ]
    both = predict(ckpts, packed, tmp_path / "all.npz")
    e = np.stack([s["energy"] for s in singles])
    f = np.stack([s["forces"] for s in singles])
    np.testing.assert_allclose(both["energy"], e.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(both["energy_std"], e.std(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(both["forces"], f.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both["forces_std"], f.std(0), rtol=1e-5, atol=1e-7)
    assert both["energy_members"].shape == (3, 12)
    assert "energy_std" not in singles[0]
    # molecules in input order, with the input's own reference values
    ds = PackedDataset(packed)
    np.testing.assert_array_equal(both["mol_index"], np.arange(12))
    np.testing.assert_allclose(both["E_ref"], ds.array("E"))
    np.testing.assert_array_equal(both["Z"], ds.array("Z"))
    saved = np.load(tmp_path / "all.npz")
    assert json.loads(str(saved["units"]))["forces"] == "eV/Angstrom"
    assert list(saved["checkpoints"]) == [str(c) for c in ckpts]


def test_npz_and_extxyz_inputs_predict_what_the_packed_input_does(
    models: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    packed, ckpts = models
    ref = predict(ckpts[:1], packed, tmp_path / "ref.npz", progress=False)
    npz = predict(ckpts[:1], packed.parent / "data.npz", tmp_path / "n.npz")
    np.testing.assert_allclose(npz["energy"], ref["energy"], rtol=1e-6, atol=1e-6)
    ds = PackedDataset(packed)
    offsets = ds.offsets
    frames = []
    for i in range(len(ds)):
        a, b = offsets[i], offsets[i + 1]
        atoms = Atoms(numbers=ds.array("Z")[a:b], positions=ds.array("R")[a:b])
        atoms.calc = SinglePointCalculator(atoms, energy=float(ds.array("E")[i]))
        frames.append(atoms)
    xyz = tmp_path / "mols.extxyz"
    write(xyz, frames, format="extxyz")
    got = predict(ckpts[:1], xyz, tmp_path / "x.npz")
    np.testing.assert_allclose(got["energy"], ref["energy"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["forces"], ref["forces"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["E_ref"], ds.array("E"), rtol=1e-9)
    assert "F_ref" not in got  # the file has no forces


def test_cli_refuses_periodic_input_in_one_line(
    models: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, ckpts = models
    xyz = tmp_path / "pbc.extxyz"
    write(
        xyz,
        [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[5, 5, 5], pbc=True)],
    )
    out = tmp_path / "p.npz"
    assert main([str(ckpts[0]), str(xyz), "--output", str(out)]) == 2
    errors = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("physpack predict: error:")
    ]
    assert len(errors) == 1 and "structure 0 is periodic" in errors[0]
    assert not out.exists()
