"""Packed directories of the older tooling used as input: declared units, neutral
molecules without Qtot, zero-filled forces, and dataset descriptors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase import units as ase_units
from conftest import TINY_N_MOL, make_workdir, snakemake
from physpack.data.convert import convert_npz
from physpack.data.descriptor import open_dataset, read_descriptor, write_descriptor
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
    ds = open_dataset(desc)
    assert ds.path == path.resolve() and ds.units["energy"] == "kcal/mol"
    assert ds.scale("E") == pytest.approx(KCAL, rel=1e-12)


def test_descriptor_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="packed directory not found"):
        write_descriptor(tmp_path / "d.json", tmp_path / "missing", {})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="bad.json: not a dataset descriptor"):
        open_dataset(bad)
    bad.write_text("{")
    with pytest.raises(InputError, match="bad.json: not a packed directory nor"):
        open_dataset(bad)


# -- the workflow with data.packed ------------------------------------------------


def _snapshot(path: Path) -> dict[str, tuple[int, int, str]]:
    """name -> (size, mtime_ns, sha256) of every file below ``path``, and the
    directory itself: anything written into it changes this."""
    snap = {".": (0, path.stat().st_mtime_ns, "")}
    for p in sorted(path.rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        snap[str(p.relative_to(path))] = (st.st_size, st.st_mtime_ns, digest)
    return snap


def _use_packed(workdir: Path, packed: Path | None, **data: object) -> None:
    """Point the workflow copy's config at ``packed`` instead of the NPZ."""
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["data"] = {"npz": None, "packed": None if packed is None else str(packed)}
    config["data"].update(data)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"npz": "data/tiny.npz"}, "set exactly one of data.npz"),
        ({"packed": None}, "set exactly one of data.npz"),
        ({"energy_unit": None}, "has no manifest.json, so its units must be declared"),
    ],
)
def test_workflow_refuses_ambiguous_data(
    tmp_path: Path, data: dict[str, object], message: str
) -> None:
    workdir = make_workdir(tmp_path / "wf")
    legacy = write_legacy_packed(tmp_path / "old", 10, seed=1, energy_unit="kcal/mol")
    base = {"energy_unit": "kcal/mol", "length_unit": "Angstrom"}
    _use_packed(workdir, legacy, **base)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["data"].update(data)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(workdir, "--dry-run", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


@pytest.mark.slow
def test_workflow_on_older_directory_in_kcal_mol(tmp_path: Path) -> None:
    """The whole pipeline on a directory the older converter wrote in kcal/mol and
    kcal/mol/Å: the directory is read in place, never written into, and the
    evaluated reference values are the source's in eV and eV/Å."""
    workdir = make_workdir(tmp_path / "wf")
    shared = tmp_path / "shared"
    legacy = write_legacy_packed(
        shared / "old", TINY_N_MOL, seed=3, energy_unit="kcal/mol"
    )
    _use_packed(workdir, legacy, energy_unit="kcal/mol", length_unit="Angstrom")
    before, beside = _snapshot(legacy), sorted(shared.iterdir())
    subprocess.run(["chmod", "-R", "a-w", str(legacy)], check=True)
    try:
        snakemake(workdir, "--cores", "2")
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(legacy)], check=True)
    assert _snapshot(legacy) == before and sorted(shared.iterdir()) == beside
    assert not (workdir / "results/data/packed").exists()  # not copied

    src = _source(TINY_N_MOL, seed=3)
    offsets = np.concatenate([[0], np.cumsum([len(m["Z"]) for m in src])])
    f_ev = np.concatenate([m["F"] for m in src]).astype(np.float64)
    with np.load(workdir / "results/eval/predictions.npz") as pred:
        for split in ("test", "valid"):
            idx = pred[f"{split}_mol_index"]
            assert idx.size > 0
            e_ev = np.array([src[i]["E"] for i in idx])
            np.testing.assert_allclose(pred[f"{split}_E_true"], e_ev, rtol=1e-9)
            f_true = np.concatenate([f_ev[offsets[i] : offsets[i + 1]] for i in idx])
            np.testing.assert_allclose(pred[f"{split}_F_true"], f_true, atol=1e-4)
    report = json.loads((workdir / "results/data/validation.json").read_text())
    assert report["ok"] and report["summary"]["stored_units"]["energy"] == "kcal/mol"
    refs = report["summary"]["element_reference_energy_eV"]
    assert refs["C"] == pytest.approx(-48.8, abs=1.0)  # eV, not kcal/mol
    stats = json.loads((workdir / "results/reports/packing_stats.json").read_text())
    mean = np.mean([m["E"] for m in src])
    assert stats["energy"]["mean"] == pytest.approx(mean, rel=1e-9)


def _as_padded_npz(packed: Path, npz: Path, factor_e: float) -> Path:
    """The molecules of ``packed`` as a padded NPZ, energies and forces × factor_e."""
    ds = PackedDataset(packed)
    n, width = len(ds), int(np.max(ds.n_atoms))
    arrays = {
        "R": np.zeros((n, width, 3), np.float32),
        "F": np.zeros((n, width, 3), np.float32),
        "Z": np.zeros((n, width), np.int32),
        "E": np.asarray(ds.E) * factor_e,
    }
    for i, mol in enumerate(ds):
        k = len(mol["Z"])
        arrays["Z"][i, :k], arrays["R"][i, :k] = mol["Z"], mol["R"]
        arrays["F"][i, :k] = mol["F"].astype(np.float64) * factor_e
    np.savez(npz, **arrays)
    return npz


def test_older_directory_in_kcal_mol_equals_the_npz_in_ev(tmp_path: Path) -> None:
    """Validation and statistics of an older directory in kcal/mol, read in place
    with declared units, equal those of the same data converted from an NPZ in eV."""
    from physpack.data import stats, validate

    legacy = write_legacy_packed(tmp_path / "old", 40, seed=8, energy_unit="kcal/mol")
    npz = _as_padded_npz(legacy, tmp_path / "same.npz", KCAL)
    converted = convert_npz(npz, tmp_path / "converted").path
    desc = write_descriptor(tmp_path / "dataset.json", legacy, {"energy": "kcal/mol"})
    a, b = (validate.validate_packed(p).summary for p in (desc, converted))
    for e, ref in b["element_reference_energy_eV"].items():
        assert a["element_reference_energy_eV"][e] == pytest.approx(ref, rel=1e-9)
    sa, sb = (stats.packing_stats(p) for p in (desc, converted))
    for key in ("energy", "energy_per_atom"):
        assert sa[key]["mean"] == pytest.approx(sb[key]["mean"], rel=1e-12)
        assert sa[key]["std"] == pytest.approx(sb[key]["std"], rel=1e-9)
    assert sa["force_magnitude"]["exact"]["mean"] == pytest.approx(
        sb["force_magnitude"]["exact"]["mean"], rel=1e-6
    )


def test_describe_needs_declared_units_without_manifest(tmp_path: Path) -> None:
    from physpack.config import DataConfig
    from physpack.data.descriptor import describe_packed, main

    legacy = write_legacy_packed(tmp_path / "old", 4, seed=1, energy_unit="kcal/mol")
    out = tmp_path / "d.json"
    with pytest.raises(ConfigError, match="set data.energy_unit, data.length_unit"):
        describe_packed(DataConfig(packed=str(legacy)), out)
    with pytest.raises(ConfigError, match="exactly one of data.npz"):
        describe_packed(DataConfig(npz="x.npz", packed=str(legacy)), out)
    assert not out.exists()
    config = '{"packed": "%s", "energy_unit": "kcal/mol", "length_unit": "Angstrom"}'
    assert main(["--output", str(out), "--config", config % legacy]) == 0
    assert open_dataset(out).scale("E") == pytest.approx(KCAL, rel=1e-12)


def test_data_source_is_the_one_input_rule(tmp_path: Path) -> None:
    """Exactly one input, a packed directory, units declared without a manifest:
    said once, in physpack.data.descriptor.data_source, which the workflow calls."""
    from physpack.config import DataConfig
    from physpack.data.descriptor import data_source

    legacy = write_legacy_packed(tmp_path / "old", 4, seed=1, energy_unit="kcal/mol")
    with pytest.raises(ConfigError, match="set exactly one of data.npz"):
        data_source(DataConfig())
    with pytest.raises(ConfigError, match="set exactly one of data.npz"):
        data_source(DataConfig(npz="x.npz", packed=str(legacy)))
    assert data_source(DataConfig(npz="x.npz")) == ("npz", "x.npz")
    with pytest.raises(ConfigError, match="set data.energy_unit, data.length_unit"):
        data_source(DataConfig(packed=str(legacy)))
    with pytest.raises(ConfigError, match="set data.length_unit"):
        data_source(DataConfig(packed=str(legacy), energy_unit="kcal/mol"))
    units = {"energy_unit": "kcal/mol", "length_unit": "Angstrom"}
    assert data_source(DataConfig(packed=str(legacy), **units)) == ("packed", legacy)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a packed directory .no offsets.npy"):
        data_source(DataConfig(packed=str(tmp_path / "empty"), **units))
    with pytest.raises(InputError, match="packed directory not found"):
        data_source(DataConfig(packed=str(tmp_path / "missing"), **units))
    converted = convert_npz(
        write_padded_npz(tmp_path / "a.npz", 4, seed=2), tmp_path / "c"
    ).path
    assert data_source(DataConfig(packed=str(converted)))[0] == "packed"


def test_the_workflow_names_no_file_of_the_packed_format() -> None:
    """The rules ask the package (data_source) instead of repeating its rule and
    the format's file names."""
    from conftest import ROOT

    text = "\n".join(
        p.read_text()
        for p in [ROOT / "Snakefile", *(ROOT / "workflow/rules").glob("*.smk")]
    )
    for name in ("offsets.npy", "manifest.json", "D.f64", "exactly one"):
        assert name not in text, name
