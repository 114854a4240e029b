"""Evaluation: metrics against direct computation, tables, figures, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import units as ase_units

from physpack import evaluate, plots

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
        mol_index=np.sort(rng.choice(10 * n_mol, n_mol, replace=False)).astype(np.int64),
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
    comps = [
        p.F_pred[a, k] - p.F_true[a, k] for a in range(len(p.Z)) for k in range(3)
    ]
    mae = lambda xs: sum(abs(x) for x in xs) / len(xs)  # noqa: E731
    rmse = lambda xs: math.sqrt(sum(x * x for x in xs) / len(xs))  # noqa: E731
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
    page = evaluate.metrics_html(metrics)
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
        quantity="Energy", unit="eV", error_unit="meV", error_scale=1e3,
    )
    assert _png_ok(out)
    out = plots.error_histograms(
        tmp_path / "error_histograms.png",
        [("Energy", "meV", [("test", 1e3 * (p.E_pred - p.E_true))]),
         ("Forces", "meV/Å", [("test", 1e3 * (p.F_pred - p.F_true))])],
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
        "epoch", "train_loss", "valid_energy_mae_eV", "valid_forces_mae_eV_per_A", "lr"
    }
    np.testing.assert_array_equal(h["train_loss"], [2.0, 1.0])
    titles = [t for t, _ in plots._learning_panels(h)]
    assert titles == ["Loss", "Energy error", "Force error", "Learning rate"]
    assert _png_ok(plots.learning_curves(tmp_path / "lc.png", h))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(evaluate.InputError, match="empty.csv"):
        plots.read_history(tmp_path / "empty.csv")
