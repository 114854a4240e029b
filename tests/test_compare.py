"""physpack.evaluation.compare: one comparison of several runs and committees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from physpack.evaluation.compare import compare, main
from physpack.evaluation.ensemble import calibration
from physpack.evaluation.evaluate import SplitPredictions, compute_metrics


def _run_files(tmp: Path, name: str, force_error: float) -> tuple[Path, Path]:
    rng = np.random.default_rng(len(name))
    n = np.array([2, 3])
    f_true = rng.normal(size=(5, 3))
    pred = SplitPredictions(
        mol_index=np.arange(2),
        n_atoms=n.astype(np.int32),
        offsets=np.array([0, 2, 5]),
        Z=np.ones(5, np.int32),
        E_true=np.zeros(2),
        E_pred=np.array([0.01, -0.02]),
        F_true=f_true,
        F_pred=f_true + force_error,
    )
    metrics = tmp / f"{name}_metrics.json"
    metrics.write_text(json.dumps({"splits": {"test": compute_metrics(pred)}}))
    history = tmp / f"{name}_history.csv"
    history.write_text(
        "epoch,train_loss,valid_forces_mae_eV_per_A\n1,2.0,0.3\n2,1.0,0.2\n"
    )
    return metrics, history


def test_comparison_tables_and_figures(tmp_path: Path) -> None:
    runs = {
        "base": _run_files(tmp_path, "base", 0.05),
        "wide": _run_files(tmp_path, "wide", 0.02),
    }
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.01, 0.1, 500)
    ens = tmp_path / "ens.json"
    ens.write_text(
        json.dumps(
            {
                "members": 3,
                "energy": {
                    "mae": 0.01,
                    "mean_std": 0.004,
                    "calibration": calibration(rng.normal(0, 2 * sigma), sigma),
                },
            }
        )
    )
    stability = tmp_path / "base_md" / "stability.json"
    stability.parent.mkdir()
    molecules = [
        {"stable": True, "energy_drift_meV_per_atom_ps": d, "max_bond_stretch": s}
        for d, s in ((-0.02, 1.1), (0.04, 1.2))
    ]
    molecules.append(
        {"stable": False, "energy_drift_meV_per_atom_ps": 9.0, "max_bond_stretch": 1.6}
    )
    record = {
        "settings": {"temperature_K": 300.0, "picoseconds": 5.0},
        "stable": 2,
        "molecules": molecules,
    }
    stability.write_text(json.dumps({"runs": {"T300K": record}}))
    stability.with_suffix(".png").write_bytes(b"\x89PNG-of-base")
    out = tmp_path / "out"
    compare(
        runs,
        params={"model.features": {"base": 64, "wide": 128}},
        ensembles={"committee": ens},
        stability={"base": stability},
        markdown=out / "comparison.md",
        html_path=out / "comparison.html",
        figures=out / "figures",
    )
    md = (out / "comparison.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| base | 64")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == "64"
    # force MAE [meV/Å] of the base run: every component off by 0.05 eV/Å
    assert float(cells[5]) == pytest.approx(50.0)
    assert "| wide | 128 |" in md
    assert "| committee | 3 |" in md
    assert "model.features" in md
    assert "<table>" in (out / "comparison.html").read_text()
    for name in ("learning_curves.png", "calibration.png"):
        assert (out / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    # MD stability: intact count, mean |drift| of the intact ones, largest stretch
    assert "| base | 300 | 5 | 2/3 | 0.03 | 1.6 |" in md
    assert (
        out / "figures" / "md_stability_base.png"
    ).read_bytes() == b"\x89PNG-of-base"


def test_cli_refuses_a_bad_run_spec_and_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "c.md"
    rc = main(
        [
            "--run",
            f"a={tmp_path / 'missing.json'},{tmp_path / 'h.csv'}",
            "--markdown",
            str(out),
            "--html",
            str(tmp_path / "c.html"),
            "--figures",
            str(tmp_path / "figs"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "missing.json: cannot read run metrics" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "figs").exists()
