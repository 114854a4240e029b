"""Packed directories of the older tooling used as input: declared units, neutral
molecules without Qtot, zero-filled forces, and dataset descriptors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import units as ase_units
from physpack.data.convert import convert_npz
from physpack.data.descriptor import read_descriptor, write_descriptor
from physpack.data.packed import PackedDataset, PackedDataWarning
from physpack.data.synthetic import (
    molecules,
    qm9_like_sizes,
    write_legacy_packed,
    write_padded_npz,
)
from physpack.errors import ConfigError, InputError

KCAL = ase_units.kcal / ase_units.mol  # eV per kcal/mol, straight from ASE


@pytest.fixture
def packed_dir(tmp_path: Path) -> Path:
    """A directory physpack wrote (with manifest, canonical units)."""
    npz = write_padded_npz(tmp_path / "in.npz", 8, seed=5)
    return convert_npz(npz, tmp_path / "packed").path


def _source(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """The molecules write_legacy_packed stores (eV, Å), drawn the same way."""
    rng = np.random.default_rng(seed)
    return list(molecules(qm9_like_sizes(n, rng), rng, with_dipoles=False))


def test_declared_kcal_mol_scales_to_ev(tmp_path: Path) -> None:
    path = write_legacy_packed(tmp_path / "old", 12, seed=3, energy_unit="kcal/mol")
    ds = PackedDataset(path, units={"energy": "kcal/mol", "length": "Angstrom"})
    src = _source(12, seed=3)
    assert ds.units["energy"] == "kcal/mol"
    assert ds.units["forces"] == "kcal/mol/Angstrom"
    assert ds.scale("E") == pytest.approx(KCAL, rel=1e-12)
    assert ds.scale("F") == pytest.approx(KCAL, rel=1e-12)
    assert ds.scale("R") == 1.0 and ds.scale("Z") == 1.0 and ds.scale("Qtot") == 1.0
    # array() stays raw (what the loader gathers and then multiplies by scale())
    np.testing.assert_allclose(ds.array("E"), [m["E"] / KCAL for m in src])
    np.testing.assert_allclose(
        ds.array("E") * ds.scale("E"), [m["E"] for m in src], rtol=1e-12
    )
    f_ev = np.concatenate([m["F"] for m in src])
    np.testing.assert_allclose(ds.array("F") * ds.scale("F"), f_ev, rtol=1e-6)


def test_undeclared_directory_reads_as_canonical(tmp_path: Path) -> None:
    ds = PackedDataset(write_legacy_packed(tmp_path / "old", 4, seed=1))
    assert ds.units["energy"] == "eV" and ds.scale("E") == 1.0


@pytest.mark.parametrize(
    ("units", "key", "factor"),
    [
        ({"length": "Bohr"}, "R", ase_units.Bohr),
        ({"length": "nm", "energy": "Hartree"}, "F", ase_units.Hartree / 10.0),
        ({"dipole": "Debye"}, "D", ase_units.Debye),
        ({"energy": "kJ/mol"}, "E", ase_units.kJ / ase_units.mol),
    ],
)
def test_scale_of_each_kind(
    tmp_path: Path, units: dict[str, str], key: str, factor: float
) -> None:
    ds = PackedDataset(write_legacy_packed(tmp_path / "old", 3, seed=1), units=units)
    assert ds.scale(key) == pytest.approx(factor, rel=1e-12)


def test_unknown_unit_is_refused(tmp_path: Path) -> None:
    path = write_legacy_packed(tmp_path / "old", 3, seed=1)
    with pytest.raises(ConfigError, match="unknown energy unit 'kcal'"):
        PackedDataset(path, units={"energy": "kcal"})
    with pytest.raises(ConfigError, match="unknown kind"):
        PackedDataset(path, units={"temperature": "K"})


def test_manifest_units_win_over_conflicting_declaration(
    tmp_path: Path, packed_dir: Path
) -> None:
    assert PackedDataset(packed_dir, units={"energy": "eV"}).scale("E") == 1.0
    with pytest.raises(InputError, match="manifest.json: stored in"):
        PackedDataset(packed_dir, units={"energy": "kcal/mol"})


def test_no_qtot_means_neutral(tmp_path: Path) -> None:
    path = write_legacy_packed(tmp_path / "old", 7, seed=2, with_charges=False)
    assert not (path / "Qtot.f64").exists()
    ds = PackedDataset(path)
    assert "Qtot" in ds.keys
    np.testing.assert_array_equal(ds.Qtot, np.zeros(7))
    np.testing.assert_array_equal(ds.array("Qtot")[[0, 6, 3]], 0.0)
    assert ds.molecule(3)["Qtot"] == 0.0


def test_zero_filled_forces_are_not_forces(tmp_path: Path) -> None:
    path = write_legacy_packed(tmp_path / "old", 9, seed=2, with_forces=False)
    with pytest.warns(PackedDataWarning, match="F_pack.f32: every force is exactly"):
        ds = PackedDataset(path)
    assert not ds.has("F") and ds.F is None and "F" not in ds.keys
    with pytest.raises(KeyError):
        ds.array("F")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # real forces: no warning
        assert PackedDataset(write_legacy_packed(tmp_path / "f", 9, seed=2)).has("F")


def test_offsets_must_increase(tmp_path: Path) -> None:
    path = write_legacy_packed(tmp_path / "old", 6, seed=2)
    offsets = np.load(path / "offsets.npy")
    offsets[3] = offsets[2]  # molecule 2 empty, molecule 3 twice as large
    np.save(path / "offsets.npy", offsets)
    (path / "n_atoms.npy").unlink()
    with pytest.raises(InputError, match="offsets do not increase at molecule 2"):
        PackedDataset(path)


def test_descriptor_round_trip(tmp_path: Path) -> None:
    path = write_legacy_packed(tmp_path / "old", 5, seed=4, energy_unit="kcal/mol")
    desc = write_descriptor(
        tmp_path / "d" / "dataset.json", path, {"energy": "kcal/mol"}
    )
    assert read_descriptor(desc).packed == path.resolve()
    ds = PackedDataset(desc)
    assert ds.path == path.resolve() and ds.units["energy"] == "kcal/mol"
    assert ds.scale("E") == pytest.approx(KCAL, rel=1e-12)


def test_descriptor_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="packed directory not found"):
        write_descriptor(tmp_path / "d.json", tmp_path / "missing", {})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="bad.json: not a dataset descriptor"):
        PackedDataset(bad)
    bad.write_text("{")
    with pytest.raises(InputError, match="bad.json: not a packed directory nor"):
        PackedDataset(bad)
