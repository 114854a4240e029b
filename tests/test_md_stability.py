"""``physpack md-stability``: the workflow's stability stage on a tiny set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from model_fixtures import make_checkpoint, make_packed
from physpack.data.packed import PackedDataset
from physpack.simulation import stability_stage
from physpack.simulation.stability_stage import largest_molecules


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("stage")
    packed, split = make_packed(root, n_mol=30)
    ckpt = root / "best.ckpt"
    make_checkpoint(ckpt, packed, seed=0, scale_factor=1e-3)
    out = root / "md"
    argv = [
        str(packed),
        "--split",
        str(split),
        "--checkpoint",
        str(ckpt),
        "--json",
        str(out / "stability.json"),
        "--markdown",
        str(out / "stability.md"),
        "--html",
        str(out / "stability.html"),
        "--figure",
        str(out / "stability.png"),
        "--trajectories",
        str(out / "trajectories"),
        "--md-config",
        json.dumps({"molecules": 3, "picoseconds": 0.02, "interval": 10}),
        "--temperatures",
        "[100, 200]",
    ]
    assert stability_stage.main(argv) == 0
    return {"packed": packed, "split": split, "out": out}


def test_the_largest_test_molecules_one_per_composition(tmp_path: Path) -> None:
    packed, split = make_packed(tmp_path, n_mol=30)
    data = PackedDataset(packed)
    test = np.load(split)["test"]
    chosen = largest_molecules(data, test, 3)
    sizes = np.diff(data.offsets)
    assert set(chosen) <= set(test.tolist())
    assert list(sizes[chosen]) == sorted(sizes[test], reverse=True)[: len(chosen)]
    formulas = [
        tuple(np.bincount(data.molecule(int(i))["Z"], minlength=10)) for i in chosen
    ]
    assert len(set(formulas)) == len(formulas)
    # two conformations of one composition: only the first is taken
    twice = np.array([chosen[0], chosen[0]])
    assert list(largest_molecules(data, twice, 2)) == [chosen[0]]


def test_stage_writes_record_table_figure_and_trajectories(stage: dict) -> None:
    out = stage["out"]
    record = json.loads((out / "stability.json").read_text())
    assert list(record["runs"]) == ["T100K", "T200K"]
    assert record["md"]["picoseconds"] == 0.02 and record["md"]["temperatures"] == [
        100,
        200,
    ]
    for name, run in record["runs"].items():
        assert run["settings"]["temperature_K"] == float(name[1:-1])
        assert len(run["molecules"]) == 3 and run["stable"] == 3
        for m in run["molecules"]:
            frames = read(out / "trajectories" / name / m["trajectory"], index=":")
            assert len(frames) == 5  # 0, 10, ..., 40 steps
            assert frames[-1].info["time_ps"] == pytest.approx(0.02)
            assert m["energy_drift_meV_per_atom_ps"] is not None
    table = (out / "stability.md").read_text()
    assert table.startswith("# Is the model usable in simulation?")
    assert table.count("| yes |") == 6
    assert "3 of 3 largest test molecules stayed intact" in table
    assert "<table>" in (out / "stability.html").read_text()
    assert (out / "stability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stage_refuses_an_empty_test_split(stage: dict, tmp_path: Path, capsys) -> None:
    split = tmp_path / "split.npz"
    with np.load(stage["split"]) as old:
        np.savez(
            split, train=old["train"], valid=old["valid"], test=np.zeros(0, np.int64)
        )
    argv = [str(stage["packed"]), "--split", str(split), "--checkpoint", "x.ckpt"]
    for name in ("json", "markdown", "html", "figure", "trajectories"):
        argv += [f"--{name}", str(tmp_path / name)]
    assert stability_stage.main(argv) == 2
    assert "test split is empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split.npz"]
