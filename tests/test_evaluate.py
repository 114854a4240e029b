"""Evaluation: metrics against direct computation, tables, figures, bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from ase import units as ase_units
from flax import serialization
from model_fixtures import make_checkpoint, make_packed
from physpack.errors import InputError
from physpack.evaluation import evaluate, plots
from physpack.model.checkpoint import load as load_checkpoint
from physpack.model.physnet import molecules_to_batch

KCAL_MOL = ase_units.kcal / ase_units.mol  # eV per kcal/mol
DEBYE = ase_units.Debye  # e·Å per Debye


def random_predictions(seed: int = 0, n_mol: int = 7, dipoles: bool = True):
    rng = np.random.default_rng(seed)
    n_atoms = rng.integers(2, 6, size=n_mol).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64)
    a = int(offsets[-1])
    Z = rng.choice([1, 6, 8], size=a).astype(np.int32)
    E_true = rng.normal(-100, 10, n_mol)
    F_true = rng.normal(0, 1.0, (a, 3))
    D_true = rng.normal(0, 0.5, (n_mol, 3)) if dipoles else None
    return evaluate.SplitPredictions(
        mol_index=np.sort(rng.choice(10 * n_mol, n_mol, replace=False)).astype(
            np.int64
        ),
        n_atoms=n_atoms,
        offsets=offsets,
        Z=Z,
        E_true=E_true,
        E_pred=E_true + rng.normal(0, 0.05, n_mol),
        F_true=F_true,
        F_pred=F_true + rng.normal(0, 0.1, (a, 3)),
        D_true=D_true,
        D_pred=None if D_true is None else D_true + rng.normal(0, 0.02, (n_mol, 3)),
    )


def test_compute_metrics_matches_direct_loops():
    p = random_predictions()
    m = evaluate.compute_metrics(p)
    # direct computation, molecule by molecule and atom by atom
    e_err = [p.E_pred[i] - p.E_true[i] for i in range(p.n_molecules)]
    per_atom = [e_err[i] / p.n_atoms[i] for i in range(p.n_molecules)]
    comps = [p.F_pred[a, k] - p.F_true[a, k] for a in range(len(p.Z)) for k in range(3)]
    mae = lambda xs: sum(abs(x) for x in xs) / len(xs)
    rmse = lambda xs: math.sqrt(sum(x * x for x in xs) / len(xs))
    all_f = [p.F_true[a, k] for a in range(len(p.Z)) for k in range(3)]
    mean_f = sum(all_f) / len(all_f)
    std_f = math.sqrt(sum((f - mean_f) ** 2 for f in all_f) / len(all_f))

    e = m["energy"]
    assert e["per_molecule"]["mae"]["eV"] == pytest.approx(mae(e_err))
    assert e["per_molecule"]["rmse"]["meV"] == pytest.approx(1e3 * rmse(e_err))
    assert e["per_molecule"]["mae"]["kcal/mol"] == pytest.approx(mae(e_err) / KCAL_MOL)
    assert e["per_atom"]["mae"]["meV/atom"] == pytest.approx(1e3 * mae(per_atom))
    assert e["per_atom"]["rmse"]["eV/atom"] == pytest.approx(rmse(per_atom))
    f = m["forces"]
    assert f["n_components"] == 3 * len(p.Z)
    assert f["mae"]["eV/Angstrom"] == pytest.approx(mae(comps))
    assert f["rmse"]["kcal/mol/Angstrom"] == pytest.approx(rmse(comps) / KCAL_MOL)
    assert f["std_reference"]["eV/Angstrom"] == pytest.approx(std_f)
    assert f["mae_relative"] == pytest.approx(mae(comps) / std_f)
    for sym, z in (("H", 1), ("C", 6), ("O", 8)):
        atoms = [a for a in range(len(p.Z)) if p.Z[a] == z]
        errs = [p.F_pred[a, k] - p.F_true[a, k] for a in atoms for k in range(3)]
        assert f["per_element"][sym]["n_atoms"] == len(atoms)
        assert f["per_element"][sym]["mae"]["meV/Angstrom"] == pytest.approx(
            1e3 * mae(errs)
        )
    d_comp = [
        p.D_pred[i, k] - p.D_true[i, k] for i in range(p.n_molecules) for k in range(3)
    ]
    norms = [
        math.dist(p.D_pred[i], (0, 0, 0)) - math.dist(p.D_true[i], (0, 0, 0))
        for i in range(p.n_molecules)
    ]
    d = m["dipole"]
    assert d["mae"]["e*Angstrom"] == pytest.approx(mae(d_comp))
    assert d["rmse"]["Debye"] == pytest.approx(rmse(d_comp) / DEBYE)
    assert d["norm_mae"]["e*Angstrom"] == pytest.approx(mae(norms))


def test_metrics_without_dipoles_have_no_dipole_block():
    m = evaluate.compute_metrics(random_predictions(dipoles=False))
    assert "dipole" not in m and "forces" in m


def test_split_predictions_refuses_inconsistent_shapes():
    p = random_predictions()
    with pytest.raises(ValueError, match="E_pred"):
        evaluate.SplitPredictions(
            mol_index=p.mol_index,
            n_atoms=p.n_atoms,
            offsets=p.offsets,
            Z=p.Z,
            E_true=p.E_true,
            E_pred=p.E_pred[:-1],
        )


def test_tables_show_every_split_and_element():
    splits = {
        "test": evaluate.compute_metrics(random_predictions(1)),
        "valid": evaluate.compute_metrics(random_predictions(2)),
    }
    metrics = {"splits": splits, "checkpoint": {"path": "best.ckpt"}}
    md = evaluate.metrics_markdown(metrics)
    page = evaluate.metrics_html_page(metrics)
    header = md.splitlines()[2]
    assert "test" in header and "valid" in header
    mae_mev = splits["test"]["forces"]["mae"]["meV/Angstrom"]
    row = next(r for r in md.splitlines() if r.startswith("| Force MAE | meV/"))
    assert f"{mae_mev:.4g}" in row
    for sym in ("H", "C", "O"):
        assert f"Force MAE, {sym} atoms" in md and f"Force MAE, {sym} atoms" in page
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert "Dipole MAE" in md


def _png_ok(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_figures_are_png(tmp_path):
    p, q = random_predictions(1), random_predictions(2)
    out = plots.parity_plot(
        tmp_path / "energy_parity.png",
        [("test", p.E_true, p.E_pred), ("valid", q.E_true, q.E_pred)],
        quantity="Energy",
        unit="eV",
        error_unit="meV",
        error_scale=1e3,
    )
    assert _png_ok(out)
    out = plots.error_histograms(
        tmp_path / "error_histograms.png",
        [
            ("Energy", "meV", [("test", 1e3 * (p.E_pred - p.E_true))]),
            ("Forces", "meV/Å", [("test", 1e3 * (p.F_pred - p.F_true))]),
        ],
    )
    assert _png_ok(out)
    out = plots.element_bars(
        tmp_path / "force_mae_by_element.png",
        {"test": {"H": 1.0, "C": 2.0}, "valid": {"H": 1.5}},
        unit="meV/Å",
    )
    assert _png_ok(out)


def test_history_is_read_and_plotted(tmp_path):
    csv_path = tmp_path / "history.csv"
    csv_path.write_text(
        "epoch,train_loss,valid_energy_mae_eV,valid_forces_mae_eV_per_A,lr,note\n"
        "1,2.0,0.5,0.3,0.001,a\n2,1.0,0.4,0.2,0.0005,b\n"
    )
    h = plots.read_history(csv_path)
    assert set(h) == {
        "epoch",
        "train_loss",
        "valid_energy_mae_eV",
        "valid_forces_mae_eV_per_A",
        "lr",
    }
    np.testing.assert_array_equal(h["train_loss"], [2.0, 1.0])
    titles = [t for t, _ in plots._learning_panels(h)]
    assert titles == ["Loss", "Energy error", "Force error", "Learning rate"]
    assert _png_ok(plots.learning_curves(tmp_path / "lc.png", h))
    (tmp_path / "empty.csv").write_text("")
    assert plots._unit_of("valid_forces_mae_eV_per_A") == "eV/Å"
    assert plots._unit_of("valid_energy_mae_eV_per_atom") == "eV/atom"
    with pytest.raises(InputError, match="empty.csv"):
        plots.read_history(tmp_path / "empty.csv")


# --------------------------------------------------------------------------------
# End to end: physpack evaluate on a tiny packed dataset
# --------------------------------------------------------------------------------
FIGURES = {
    "energy_parity.png",
    "force_parity.png",
    "dipole_parity.png",
    "error_histograms.png",
    "force_mae_by_element.png",
    "learning_curves.png",
}


def cli_args(d: dict, out: Path, checkpoint: Path | None = None) -> list[str]:
    """The arguments the Snakemake rule passes, with outputs under ``out``."""
    return [
        str(d["packed"]),
        "--split", str(d["split"]),
        "--checkpoint", str(checkpoint or d["ckpt"]),
        "--history", str(d["history"]),
        "--metrics", str(out / "metrics.json"),
        "--metrics-md", str(out / "metrics.md"),
        "--metrics-html", str(out / "metrics.html"),
        "--predictions", str(out / "predictions.npz"),
        "--figures", str(out / "figures"),
        "--loader-config", json.dumps({"batch_size": 4, "bucket_size": 16}),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny packed set (with forces and dipoles), a checkpoint of a model with
    charges, a history, and the outputs of ``physpack evaluate`` on them."""
    root = tmp_path_factory.mktemp("eval")
    packed, split = make_packed(root, n_mol=40)
    make_checkpoint(root / "best.ckpt", packed, charges=True)
    history = root / "history.csv"
    history.write_text(
        "epoch,train_loss,valid_loss,valid_energy_mae_eV,valid_forces_mae_eV_per_A,lr\n"
        "1,3.0,2.5,0.9,0.5,0.001\n2,2.0,1.9,0.7,0.4,0.0005\n3,1.5,1.6,0.6,0.35,1e-4\n"
    )
    d = {
        "root": root,
        "npz": root / "data.npz",
        "packed": packed,
        "split": split,
        "ckpt": root / "best.ckpt",
        "history": history,
        "out": root / "out",
    }
    assert evaluate.main(cli_args(d, d["out"])) == 0
    return d


def direct_predictions(d: dict, name: str) -> dict[str, np.ndarray]:
    """Reference values straight from the source NPZ and predictions of the subset
    ``name`` packed into one batch by ``molecules_to_batch`` (not the loader); the
    batch is sized for the whole dataset, so every subset compiles the same."""
    idx = np.load(d["split"])[name]
    with np.load(d["npz"]) as src:
        sizes = src["N"].astype(np.int64)
        mols = []
        for i in idx:
            n = int(src["N"][i])
            mols.append(
                {
                    "Z": src["Z"][i, :n],
                    "R": src["R"][i, :n],
                    "F": src["F"][i, :n],
                    "E": src["E"][i],
                    "D": src["D"][i],
                    "Qtot": src["Q"][i],
                }
            )
    ckpt = load_checkpoint(d["ckpt"])
    budget = {
        "max_atoms": int(sizes.sum()) + 1,
        "max_pairs": int((sizes * (sizes - 1)).sum()),
        "max_molecules": len(sizes) + 1,
    }
    out = ckpt.predict(molecules_to_batch(mols, **budget))
    real_atoms = sum(len(m["Z"]) for m in mols)
    return {
        "idx": idx,
        "N": np.array([len(m["Z"]) for m in mols]),
        "Z": np.concatenate([m["Z"] for m in mols]),
        "E": np.array([m["E"] for m in mols]),
        "F": np.concatenate([m["F"] for m in mols]).astype(np.float64),
        "D": np.array([m["D"] for m in mols]),
        "E_pred": out["energy"][: len(mols)],
        "F_pred": out["forces"][:real_atoms].astype(np.float64),
        "D_pred": out["dipole"][: len(mols)].astype(np.float64),
    }


@pytest.fixture(scope="module")
def direct(run: dict) -> dict[str, dict[str, np.ndarray]]:
    return {name: direct_predictions(run, name) for name in ("test", "valid")}


@pytest.mark.parametrize("name", ["test", "valid"])
def test_metrics_agree_with_direct_computation(
    run: dict, direct: dict, name: str
) -> None:
    metrics = json.loads((run["out"] / "metrics.json").read_text())
    m = metrics["splits"][name]
    d = direct[name]
    dE = d["E_pred"] - d["E"]
    dF = d["F_pred"] - d["F"]
    dD = d["D_pred"] - d["D"]
    approx = lambda x: pytest.approx(x, rel=1e-3, abs=1e-6)
    assert m["n_molecules"] == len(d["idx"]) and m["n_atoms"] == len(d["Z"])
    assert m["energy"]["per_molecule"]["mae"]["eV"] == approx(np.abs(dE).mean())
    assert m["energy"]["per_molecule"]["rmse"]["meV"] == approx(
        1e3 * np.sqrt((dE**2).mean())
    )
    assert m["energy"]["per_molecule"]["mae"]["kcal/mol"] == approx(
        np.abs(dE).mean() / KCAL_MOL
    )
    assert m["energy"]["per_atom"]["mae"]["eV/atom"] == approx(
        np.abs(dE / d["N"]).mean()
    )
    assert m["forces"]["mae"]["eV/Angstrom"] == approx(np.abs(dF).mean())
    assert m["forces"]["rmse"]["eV/Angstrom"] == approx(np.sqrt((dF**2).mean()))
    assert m["forces"]["std_reference"]["eV/Angstrom"] == approx(d["F"].std())
    assert m["forces"]["mae_relative"] == approx(np.abs(dF).mean() / d["F"].std())
    for sym, e in m["forces"]["per_element"].items():
        sel = d["Z"] == e["atomic_number"]
        assert e["n_atoms"] == sel.sum()
        assert e["mae"]["eV/Angstrom"] == approx(np.abs(dF[sel]).mean()), sym
    assert m["dipole"]["mae"]["Debye"] == approx(np.abs(dD).mean() / DEBYE)


def test_predictions_file_holds_dataset_indices_and_values(
    run: dict, direct: dict
) -> None:
    d = direct["test"]
    with np.load(run["out"] / "predictions.npz") as p:
        assert list(p["splits"]) == ["test", "valid"]
        assert json.loads(str(p["units"]))["forces"] == "eV/Angstrom"
        np.testing.assert_array_equal(p["test_mol_index"], np.sort(d["idx"]))
        order = np.argsort(d["idx"])  # the file is in dataset order
        np.testing.assert_array_equal(p["test_n_atoms"], d["N"][order])
        np.testing.assert_array_equal(p["test_E_true"], d["E"][order])
        np.testing.assert_allclose(p["test_E_pred"], d["E_pred"][order], atol=1e-4)
        offsets = p["test_offsets"]
        starts = np.concatenate([[0], np.cumsum(d["N"])])
        for k, i in enumerate(order):  # forces of the k-th molecule in the file
            a, b = starts[i], starts[i + 1]
            np.testing.assert_array_equal(
                p["test_F_true"][offsets[k] : offsets[k + 1]], d["F"][a:b]
            )
            np.testing.assert_allclose(
                p["test_F_pred"][offsets[k] : offsets[k + 1]], d["F_pred"][a:b],
                atol=1e-4,
            )  # fmt: skip
        assert p["test_D_pred"].shape == (len(d["idx"]), 3)


def test_tables_and_figures_are_written(run: dict) -> None:
    out = run["out"]
    assert {p.name for p in (out / "figures").iterdir()} == FIGURES
    for png in (out / "figures").iterdir():
        assert _png_ok(png), png
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["format"] == "physpack-metrics"
    assert metrics["units"]["energy"] == "eV"
    assert metrics["model_config"]["charges"] is True
    md = (out / "metrics.md").read_text()
    assert "| Quantity | Unit | test | valid |" in md
    assert "<table>" in (out / "metrics.html").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp left


def _newer_version(src: Path, dst: Path) -> Path:
    payload = serialization.msgpack_restore(src.read_bytes())
    payload["format_version"] = 99
    dst.write_bytes(serialization.msgpack_serialize(payload))
    return dst


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "checkpoint not found"),
        ("truncated", "truncated"),
        ("newer", "format_version 99 is newer"),
        ("elements", "contains element .* which the model was not trained for"),
    ],
)
def test_bad_checkpoints_are_refused_without_outputs(
    run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, case: str, message: str
) -> None:
    ckpt = tmp_path / "bad.ckpt"
    if case == "truncated":
        blob = run["ckpt"].read_bytes()
        ckpt.write_bytes(blob[: len(blob) * 2 // 3])
    elif case == "newer":
        _newer_version(run["ckpt"], ckpt)
    elif case == "elements":  # a model that knows H and C only
        make_checkpoint(ckpt, run["packed"], elements=(1, 6))
    out = tmp_path / "out"
    assert evaluate.main(cli_args(run, out, ckpt)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # the effective loader section first, as every stage logs it, then one error
    assert len(lines) == 2 and lines[0].startswith("config loader: {")
    err = lines[-1]
    assert err.startswith("physpack evaluate: error:")
    assert str(ckpt if case != "elements" else run["packed"]) in err
    assert re.search(message, err), err
    assert not out.exists() or not any(out.iterdir())


def test_failure_while_writing_leaves_previous_outputs(
    run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("old")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "learning_curves", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        evaluate.main(cli_args(run, out))
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    assert (out / "metrics.json").read_text() == "old"
