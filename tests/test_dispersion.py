"""D3 dispersion (data.dispersion): subtracted at conversion, recorded in the
manifest and the checkpoint, added back by the calculator and predict; D3 itself is
checked against dftd3's own ASE calculator and against finite differences."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import dftd3
import numpy as np
import pytest
from ase import Atoms
from ase import units as ase_units
from dftd3.ase import DFTD3
from model_fixtures import make_checkpoint
from physpack import config as cfg
from physpack.data.convert import convert_npz
from physpack.data.convert import main as convert_main
from physpack.data.descriptor import describe_packed, describe_shards, open_dataset
from physpack.data.packed import PackedDataset
from physpack.data.split import make_split, save_split
from physpack.data.synthetic import write_padded_npz
from physpack.dispersion import D3, DispersionSettings
from physpack.errors import ConfigError, InputError
from physpack.evaluation import ensemble
from physpack.evaluation.evaluate import evaluate
from physpack.evaluation.predict import predict
from physpack.model import checkpoint as ckpt_io
from physpack.model.calculator import PhysNetCalculator

SETTINGS = {"damping": "bj", "functional": "pbe0"}
#: dftd3's ASE calculator names the damping differently: the independent check
ASE_DAMPING = {"bj": "d3bj", "zero": "d3zero"}
N_MOL = 12


def data_section(**keys) -> cfg.DataConfig:
    """The ``data`` section as the workflow and the command line build it."""
    return cfg.section_from_mapping(cfg.DataConfig, keys, "data")


def dftd3_reference(
    numbers: np.ndarray, positions: np.ndarray, settings: dict = SETTINGS
) -> tuple[float, np.ndarray]:
    """D3 energy [eV] and forces [eV/Å] from dftd3's own ASE calculator."""
    atoms = Atoms(numbers=numbers, positions=np.asarray(positions, np.float64))
    atoms.calc = DFTD3(
        method=settings["functional"], damping=ASE_DAMPING[settings["damping"]]
    )
    return atoms.get_potential_energy(), atoms.get_forces()


def npz_molecules(npz: Path) -> list[dict[str, np.ndarray]]:
    """The NPZ's molecules, unpadded, as written (input units)."""
    with np.load(npz) as f:
        src = {k: f[k] for k in f.files}
    return [
        {
            "Z": src["Z"][i, :n],
            "R": src["R"][i, :n].astype(np.float64),
            "F": src["F"][i, :n].astype(np.float64),
            "E": float(src["E"][i]),
        }
        for i, n in enumerate(src["N"])
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One NPZ converted without and with D3(BJ)/pbe0, a split, and checkpoints of
    the same parameters without and with dispersion."""
    root = tmp_path_factory.mktemp("d3")
    npz = write_padded_npz(root / "data.npz", N_MOL, seed=7)
    plain = convert_npz(npz, root / "plain").path
    with_d3 = convert_npz(npz, root / "d3", data_section(dispersion=SETTINGS)).path
    split = save_split(
        make_split(with_d3, cfg.SplitConfig(valid=0.25, test=0.25, seed=1)),
        root / "split.npz",
    )
    plain_ckpt = make_checkpoint(root / "plain.ckpt", plain, seed=1, scale_factor=10)
    record = PackedDataset(with_d3).dispersion
    ckpt_io.save(root / "d3.ckpt", dataclasses.replace(plain_ckpt, dispersion=record))
    return {
        "root": root,
        "npz": npz,
        "plain": plain,
        "d3": with_d3,
        "split": split,
        "plain_ckpt": root / "plain.ckpt",
        "d3_ckpt": root / "d3.ckpt",
    }


# --------------------------------------------------------------------------------
# Conversion


def test_conversion_subtracts_d3_exactly(data: dict) -> None:
    plain, ds = PackedDataset(data["plain"]), PackedDataset(data["d3"])
    e_d3 = np.asarray(ds.array("E_dispersion"))
    assert e_d3.dtype == np.float64 and e_d3.shape == (N_MOL,)
    # stored E + E_dispersion is the input energy (eV)
    np.testing.assert_allclose(ds.E + e_d3, plain.E, rtol=1e-13, atol=0)
    for i, mol in enumerate(npz_molecules(data["npz"])):
        energy, forces = dftd3_reference(mol["Z"], mol["R"])
        assert e_d3[i] == pytest.approx(energy, rel=1e-10, abs=1e-12)
        assert abs(energy) > 1e-3  # a term large enough for the test to mean it
        stored = ds.molecule(i)["F"].astype(np.float64)
        # float32 storage: a few ulp of the force components (≈ 1 eV/Å)
        np.testing.assert_allclose(stored + forces, mol["F"], rtol=0, atol=2e-6)
    manifest = ds.manifest
    assert manifest["dispersion"] == {
        "damping": "bj",
        "functional": "pbe0",
        "label": "D3(BJ)/pbe0",
        "dftd3_version": dftd3.__version__,
    }
    assert manifest["arrays"]["E_dispersion"]["dtype"] == "<f8"
    assert plain.dispersion is None and not plain.has("E_dispersion")


def test_d3_is_computed_on_positions_in_angstrom(data: dict, tmp_path: Path) -> None:
    """The same molecules in Hartree and Bohr: D3 is that of the geometry, and it is
    subtracted after the energies and forces are converted to eV and eV/Å."""
    with np.load(data["npz"]) as f:
        src = {k: f[k] for k in f.files}
    bohr, hartree = ase_units.Bohr, ase_units.Hartree
    src["R"] = src["R"].astype(np.float64) / bohr
    src["E"] = src["E"] / hartree
    src["F"] = src["F"].astype(np.float64) * (bohr / hartree)
    atomic = tmp_path / "atomic.npz"
    np.savez(atomic, **src)
    section = data_section(
        energy_unit="Hartree", length_unit="Bohr", dispersion=SETTINGS
    )
    ds = PackedDataset(convert_npz(atomic, tmp_path / "packed", section).path)
    e_d3 = np.asarray(ds.array("E_dispersion"))
    np.testing.assert_allclose(ds.E + e_d3, src["E"] * hartree, rtol=1e-13)
    for i, mol in enumerate(npz_molecules(data["npz"])):
        assert e_d3[i] == pytest.approx(
            dftd3_reference(mol["Z"], mol["R"])[0], rel=1e-6
        )


def test_zero_damping_is_another_correction(data: dict, tmp_path: Path) -> None:
    zero = {"damping": "zero", "functional": "pbe0"}
    out = convert_npz(data["npz"], tmp_path / "zero", data_section(dispersion=zero))
    ds = PackedDataset(out.path)
    mol = npz_molecules(data["npz"])[0]
    energy, _ = dftd3_reference(mol["Z"], mol["R"], zero)
    assert ds.array("E_dispersion")[0] == pytest.approx(energy, rel=1e-10)
    bj = PackedDataset(data["d3"]).array("E_dispersion")[0]
    assert abs(energy - bj) > 1e-4
    assert ds.dispersion["label"] == "D3(0)/pbe0"


def test_d3_forces_are_minus_the_gradient_of_its_energy(data: dict) -> None:
    mol = npz_molecules(data["npz"])[0]
    d3 = D3(DispersionSettings(**SETTINGS))
    _, forces = d3.molecule(mol["Z"], mol["R"])
    assert np.abs(forces).max() > 1e-4
    h = 1e-4  # Å; D3 is float64 throughout
    for atom in range(min(len(mol["Z"]), 3)):
        for axis in range(3):
            e = []
            for sign in (1, -1):
                moved = mol["R"].copy()
                moved[atom, axis] += sign * h
                e.append(d3.molecule(mol["Z"], moved)[0])
            fd = -(e[0] - e[1]) / (2 * h)
            assert fd == pytest.approx(forces[atom, axis], abs=1e-8, rel=1e-5)


def write_npz(path: Path, Z: np.ndarray, R: np.ndarray) -> Path:
    """A padded NPZ of the molecules ``Z`` (n, A), ``R`` (n, A, 3), E = 0."""
    np.savez(path, Z=Z, R=R, E=np.zeros(len(Z)))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("heavy", r"key 'Z', molecule 1, atom 1: atomic number 104"),
        ("coincident", r"key 'R', molecule 1: dftd3 failed"),
    ],
)
def test_bad_molecules_are_named_and_nothing_is_left(
    tmp_path: Path, change: str, message: str
) -> None:
    Z = np.array([[8, 1, 1], [6, 1, 1]], np.int32)
    R = np.array([[[0, 0, 0], [0, 0, 0.96], [0.93, 0, -0.24]]] * 2, np.float64)
    if change == "heavy":
        Z[1, 1] = 104
    else:
        R[1, 2] = R[1, 0]
    npz = write_npz(tmp_path / "bad.npz", Z, R)
    out = tmp_path / "packed"
    with pytest.raises(InputError, match=message) as info:
        convert_npz(npz, out, data_section(dispersion=SETTINGS))
    assert str(npz) in str(info.value) and "\n" not in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == [npz]


def test_unknown_functional_is_a_config_error(data: dict, tmp_path: Path) -> None:
    section = data_section(dispersion={"damping": "bj", "functional": "nonsense"})
    with pytest.raises(ConfigError, match=r"data\.dispersion\.functional.*nonsense"):
        convert_npz(data["npz"], tmp_path / "out", section)
    assert not (tmp_path / "out").exists()


def test_cli_flag(data: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "packed"
    flag = json.dumps({"damping": "bj", "functional": "PBE0"})
    assert convert_main([str(data["npz"]), str(out), "--dispersion", flag]) == 0
    # the functional's spelling does not matter: dftd3 reads it case-insensitively
    assert PackedDataset(out).dispersion == PackedDataset(data["d3"]).dispersion
    err = capsys.readouterr().err
    assert '"dispersion": {"damping": "bj", "functional": "pbe0"}' in err


# --------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    "value",
    [
        None,
        {"damping": "bj", "functional": "pbe0"},
        {"damping": "zero", "functional": "b3lyp"},
    ],
)
def test_config_accepts(value) -> None:
    section = data_section(dispersion=value)
    if value is None:
        assert section.dispersion is None
    else:
        assert section.dispersion == DispersionSettings(**value)
        assert json.loads(cfg.section_to_json(section))["dispersion"] == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"damping": "d3bj", "functional": "pbe0"}, r"dispersion\.damping: 'd3bj'"),
        ({"damping": "bj"}, r"dispersion: 'functional' is a required"),
        ({"damping": "bj", "functional": ""}, r"dispersion\.functional"),
        ({"damping": "bj", "functional": "pbe0", "atm": True}, r"unknown key.*atm"),
        ("pbe0", r"data\.dispersion: 'pbe0' is not of type"),
    ],
)
def test_config_refuses(value, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        data_section(dispersion=value)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="data.dispersion"):
        cfg.check_workflow_config({"data": {"dispersion": value}})


def test_packed_input_refuses_dispersion(data: dict, tmp_path: Path) -> None:
    """A packed directory is read as it is: its manifest says whether D3 was
    subtracted; data.dispersion applies to conversion only."""
    section = data_section(packed=str(data["d3"]), dispersion=SETTINGS)
    with pytest.raises(ConfigError, match="data.dispersion.*set data.dispersion to"):
        describe_packed(section, tmp_path / "dataset.json")
    described = describe_packed(
        data_section(packed=str(data["d3"])), tmp_path / "dataset.json"
    )
    assert open_dataset(described).dispersion["label"] == "D3(BJ)/pbe0"


def test_missing_dftd3_names_the_key_and_the_extra(
    data: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "dftd3", None)
    monkeypatch.setitem(sys.modules, "dftd3.interface", None)
    out = tmp_path / "packed"
    with pytest.raises(ConfigError) as info:
        convert_npz(data["npz"], out, data_section(dispersion=SETTINGS))
    message = str(info.value)
    assert "data.dispersion" in message and "pip install 'physpack[d3]'" in message
    assert "\n" not in message and not out.exists()
    flag = json.dumps(SETTINGS)
    assert convert_main([str(data["npz"]), str(out), "--dispersion", flag]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line == f"physpack convert: error: {message}"
    with pytest.raises(ConfigError, match=r"d3\.ckpt.*pip install 'physpack\[d3\]'"):
        PhysNetCalculator(data["d3_ckpt"])
    # without dispersion nothing needs dftd3
    assert convert_npz(data["npz"], out).n_molecules == N_MOL


# --------------------------------------------------------------------------------
# Shards


def test_shards_share_their_dispersion(data: dict, tmp_path: Path) -> None:
    npzs = [write_padded_npz(tmp_path / f"s{k}.npz", 4, seed=20 + k) for k in (0, 1)]
    zero = {"damping": "zero", "functional": "pbe0"}
    same = [
        convert_npz(n, tmp_path / f"bj{k}", data_section(dispersion=SETTINGS)).path
        for k, n in enumerate(npzs)
    ]
    ds = open_dataset(describe_shards(tmp_path / "same.json", same))
    assert ds.dispersion["label"] == "D3(BJ)/pbe0"
    assert ds.array("E_dispersion").shape == (8,)
    for other in (
        convert_npz(npzs[1], tmp_path / "zero1", data_section(dispersion=zero)).path,
        convert_npz(npzs[1], tmp_path / "none1").path,
    ):
        with pytest.raises(InputError, match="share their data.dispersion") as info:
            describe_shards(tmp_path / "mixed.json", [same[0], other])
        assert str(other) in str(info.value) and "D3(BJ)/pbe0" in str(info.value)
        assert not (tmp_path / "mixed.json").exists()


# --------------------------------------------------------------------------------
# The model carries it: checkpoint, calculator, predict, evaluate


@pytest.mark.slow
def test_training_copies_the_dispersion_into_the_checkpoint(
    data: dict, tmp_path: Path
) -> None:
    from model_fixtures import TINY_MODEL
    from physpack.training.train import train

    # every element in train (12 molecules; overlapping subsets are fine here)
    split = tmp_path / "split.npz"
    np.savez(split, train=np.arange(N_MOL), valid=np.arange(4), test=np.arange(4))
    train(
        data["d3"],
        split,
        tmp_path / "best.ckpt",
        tmp_path / "history.csv",
        tmp_path / "state",
        dataclasses.replace(TINY_MODEL, max_degree=0),
        cfg.TrainConfig(epochs=1, warmup_steps=1, devices=1),
        cfg.LoaderConfig(batch_size=4, bucket_size=16, prefetch=0),
        progress=False,
        log=lambda msg: None,
    )
    ckpt = ckpt_io.load(tmp_path / "best.ckpt")
    assert ckpt.dispersion == PackedDataset(data["d3"]).dispersion
    assert ckpt_io.load(data["plain_ckpt"]).dispersion is None


def test_checkpoint_round_trip_and_bad_record(data: dict, tmp_path: Path) -> None:
    ckpt = ckpt_io.load(data["d3_ckpt"])
    assert ckpt.dispersion["label"] == "D3(BJ)/pbe0"
    bad = dataclasses.replace(ckpt, dispersion={"damping": "bj"})
    ckpt_io.save(tmp_path / "bad.ckpt", bad)
    with pytest.raises(InputError, match=r"bad\.ckpt: key dispersion"):
        ckpt_io.load(tmp_path / "bad.ckpt")


def smallest_molecule(packed: Path) -> Atoms:
    ds = PackedDataset(packed)
    mol = ds.molecule(int(np.argmin(ds.n_atoms)))
    return Atoms(numbers=mol["Z"], positions=mol["R"].astype(np.float64))


@pytest.mark.slow
def test_calculator_adds_d3_to_the_network(data: dict) -> None:
    atoms = smallest_molecule(data["plain"])
    plain, with_d3 = atoms.copy(), atoms.copy()
    plain.calc = PhysNetCalculator(data["plain_ckpt"])
    with_d3.calc = calc = PhysNetCalculator(data["d3_ckpt"])
    energy, forces = dftd3_reference(atoms.numbers, atoms.positions)
    assert with_d3.get_potential_energy() == pytest.approx(
        plain.get_potential_energy() + energy, abs=1e-9, rel=1e-12
    )
    np.testing.assert_allclose(
        with_d3.get_forces(), plain.get_forces() + forces, atol=1e-9
    )
    assert calc.results["energy_dispersion"] == pytest.approx(energy, rel=1e-10)
    np.testing.assert_allclose(calc.results["forces_dispersion"], forces, atol=1e-12)
    assert calc.dispersion_label == "D3(BJ)/pbe0"
    assert PhysNetCalculator(data["plain_ckpt"]).dispersion_label is None
    # its forces are minus the gradient of its energy (network float32: 5e-3)
    h = 1e-3
    total = with_d3.get_forces()
    for atom in range(min(len(atoms), 3)):
        for axis in range(3):
            e = []
            for sign in (1, -1):
                moved = with_d3.copy()
                moved.positions[atom, axis] += sign * h
                moved.calc = calc
                e.append(moved.get_potential_energy())
            fd = -(e[0] - e[1]) / (2 * h)
            assert fd == pytest.approx(total[atom, axis], abs=5e-3, rel=1e-2)


def test_committee_members_share_their_dispersion(data: dict, tmp_path: Path) -> None:
    mixed = [data["d3_ckpt"], data["plain_ckpt"]]
    with pytest.raises(InputError, match="members of a committee share"):
        PhysNetCalculator(mixed)
    with pytest.raises(InputError, match="members of a committee share"):
        predict(mixed, data["plain"], tmp_path / "p.npz")
    assert not (tmp_path / "p.npz").exists()


def independent_d3(packed: Path) -> tuple[np.ndarray, np.ndarray]:
    """dftd3's ASE calculator on every molecule of ``packed`` as stored."""
    ds = PackedDataset(packed)
    parts = [dftd3_reference(m["Z"], m["R"]) for m in ds]
    return np.array([e for e, _ in parts]), np.concatenate([f for _, f in parts])


def test_predict_adds_d3_and_labels_it(data: dict, tmp_path: Path) -> None:
    plain = predict([data["plain_ckpt"]], data["plain"], tmp_path / "p.npz")
    got = predict([data["d3_ckpt"]], data["plain"], tmp_path / "d.npz")
    energy, forces = independent_d3(data["plain"])
    np.testing.assert_allclose(got["energy"], plain["energy"] + energy, atol=1e-8)
    np.testing.assert_allclose(got["forces"], plain["forces"] + forces, atol=1e-8)
    np.testing.assert_allclose(got["energy_dispersion"], energy, rtol=1e-10)
    np.testing.assert_allclose(got["forces_dispersion"], forces, atol=1e-12)
    saved = np.load(tmp_path / "d.npz")
    note = json.loads(str(saved["dispersion"]))
    assert note["label"] == "D3(BJ)/pbe0" and "include D3(BJ)/pbe0" in note["note"]
    assert json.loads(str(saved["units"]))["energy_dispersion"] == "eV"
    assert json.loads(str(np.load(tmp_path / "p.npz")["dispersion"])) is None
    assert "energy_dispersion" not in plain


def test_predict_references_are_totals(data: dict, tmp_path: Path) -> None:
    """Input whose E and F had D3 subtracted: E_ref and F_ref get it back."""
    total = PackedDataset(data["plain"])
    got = {}
    for ckpt in ("d3_ckpt", "plain_ckpt"):
        got[ckpt] = predict([data[ckpt]], data["d3"], tmp_path / f"{ckpt}.npz")
        np.testing.assert_allclose(got[ckpt]["E_ref"], total.E, rtol=1e-13)
        np.testing.assert_allclose(got[ckpt]["F_ref"], total.F, atol=2e-5)
    # the predictions do not depend on what the input had subtracted
    on_plain = predict([data["d3_ckpt"]], data["plain"], tmp_path / "same.npz")
    np.testing.assert_allclose(got["d3_ckpt"]["energy"], on_plain["energy"])


def test_evaluation_compares_residuals_and_says_so(data: dict, tmp_path: Path) -> None:
    kw = {"loader_cfg": cfg.LoaderConfig(batch_size=4, bucket_size=16)}
    result = evaluate(
        data["d3"],
        data["split"],
        data["d3_ckpt"],
        metrics=tmp_path / "metrics.json",
        metrics_md=tmp_path / "metrics.md",
        predictions=tmp_path / "predictions.npz",
        log=lambda line: None,
        **kw,
    )
    note = result.metrics["dispersion"]["note"]
    assert "subtracted from reference and prediction alike" in note
    assert "D3(BJ)/pbe0" in note and note in (tmp_path / "metrics.md").read_text()
    saved = np.load(tmp_path / "predictions.npz")
    assert json.loads(str(saved["dispersion"]))["note"] == note
    members = [str(tmp_path / "predictions.npz")] * 2
    assert ensemble.main([*members, "--output", str(tmp_path / "ens.json")]) == 0
    assert json.loads((tmp_path / "ens.json").read_text())["dispersion"]["note"] == note
    # residual against residual is total against total: predict's totals agree
    test = np.load(data["split"])["test"]
    totals = predict([data["d3_ckpt"]], data["plain"], tmp_path / "t.npz")
    mae = np.abs(totals["energy"] - totals["E_ref"])[test].mean()
    got = result.metrics["splits"]["test"]["energy"]["per_molecule"]["mae"]["eV"]
    assert got == pytest.approx(mae, rel=1e-6)
    # a model without dispersion on D3-subtracted data (and the reverse): refused
    for packed, ckpt in ((data["d3"], "plain_ckpt"), (data["plain"], "d3_ckpt")):
        with pytest.raises(InputError, match="evaluated on data with the D3"):
            evaluate(
                packed, data["split"], data[ckpt], metrics=tmp_path / "x.json", **kw
            )
    assert not (tmp_path / "x.json").exists()
