"""physpack.evaluation.ensemble: committee mean/spread and calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from physpack.errors import InputError
from physpack.evaluation.ensemble import calibration, combine, ensemble_metrics


def _member_file(path: Path, rng: np.random.Generator, e_true, f_true, n) -> Path:
    offsets = np.concatenate([[0], np.cumsum(n)])
    np.savez(
        path,
        test_mol_index=np.arange(n.size, dtype=np.int64),
        test_n_atoms=n.astype(np.int32),
        test_offsets=offsets.astype(np.int64),
        test_Z=np.ones(int(n.sum()), np.int32),
        test_E_true=e_true,
        test_E_pred=e_true + rng.normal(0, 0.1, e_true.shape),
        test_F_true=f_true,
        test_F_pred=f_true + rng.normal(0, 0.05, f_true.shape),
    )
    return path


def test_mean_and_std_equal_numpy_over_the_members(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = np.array([3, 5, 2])
    e_true = rng.normal(size=3)
    f_true = rng.normal(size=(int(n.sum()), 3))
    paths = [
        _member_file(tmp_path / f"m{i}.npz", rng, e_true, f_true, n) for i in range(4)
    ]
    pred = combine(paths)
    e = np.stack([np.load(p)["test_E_pred"] for p in paths])
    f = np.stack([np.load(p)["test_F_pred"] for p in paths])
    np.testing.assert_allclose(pred.E_mean, e.mean(0))
    np.testing.assert_allclose(pred.E_std, e.std(0))
    np.testing.assert_allclose(pred.F_mean, f.mean(0))
    np.testing.assert_allclose(pred.F_std, f.std(0))
    m = ensemble_metrics(pred)
    assert m["members"] == 4 and m["n_molecules"] == 3
    np.testing.assert_allclose(m["energy"]["mae"], np.abs(e.mean(0) - e_true).mean())
    np.testing.assert_allclose(
        m["forces"]["rmse"], np.sqrt(((f.mean(0) - f_true) ** 2).mean())
    )


def test_members_on_different_molecules_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = _member_file(
        tmp_path / "a.npz", rng, np.zeros(2), np.zeros((3, 3)), np.array([1, 2])
    )
    b = _member_file(
        tmp_path / "b.npz", rng, np.zeros(2), np.zeros((3, 3)), np.array([2, 1])
    )
    with pytest.raises(InputError, match=r"b\.npz: test_n_atoms differs"):
        combine([a, b])
    with pytest.raises(InputError, match="no valid_mol_index"):
        combine([a], split="valid")


def test_calibration_recovers_the_scale_of_gaussian_errors() -> None:
    rng = np.random.default_rng(2)
    sigma = rng.uniform(0.1, 2.0, 200_000)
    error = rng.normal(0.0, 2.5 * sigma)
    c = calibration(error, sigma)
    assert c["scale"] == pytest.approx(2.5, rel=0.01)
    assert c["within_1sigma"] == pytest.approx(0.683, abs=0.01)
    assert c["within_2sigma"] == pytest.approx(0.954, abs=0.01)
    assert c["spearman"] > 0.3  # larger sigma, larger errors
    rmse, srms = np.array(c["curve"]["error_rmse"]), np.array(c["curve"]["sigma_rms"])
    np.testing.assert_allclose(rmse / srms, 2.5, rtol=0.05)
    assert np.all(np.diff(srms) > 0)


def test_spearman_is_a_rank_correlation() -> None:
    sigma = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert calibration(sigma**3, sigma)["spearman"] == pytest.approx(1.0)
    assert calibration(sigma[::-1], sigma)["spearman"] == pytest.approx(-1.0)
    # with ties: average ranks (hand computation: ranks 1.5, 1.5, 3 vs 1, 2, 3)
    c = calibration(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0]))
    assert c["spearman"] == pytest.approx(0.8660254, rel=1e-6)


def test_cli_writes_the_ensemble_metrics(tmp_path: Path) -> None:
    from physpack.evaluation.ensemble import main

    rng = np.random.default_rng(3)
    n = np.array([2, 2])
    paths = [
        str(_member_file(tmp_path / f"m{i}.npz", rng, np.zeros(2), np.zeros((4, 3)), n))
        for i in range(3)
    ]
    out = tmp_path / "ens" / "metrics.json"
    assert main([*paths, "--output", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["members"] == 3 and m["units"]["forces"] == "eV/Angstrom"
    assert m["forces"]["calibration"]["n"] == 12
    assert main([*paths, "--split", "valid", "--output", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_dipoles_and_charges_are_kept(tmp_path: Path) -> None:
    """Members that predict dipoles and charges: the committee has them (mean and
    std over members, as physpack predict's), and the dipole errors of the mean."""
    rng = np.random.default_rng(4)
    n = np.array([2, 3])
    d_true = rng.normal(size=(2, 3))
    paths = []
    for i in range(3):
        path = _member_file(
            tmp_path / f"m{i}.npz", rng, np.zeros(2), np.zeros((5, 3)), n
        )
        arrays = dict(np.load(path))
        arrays["test_D_true"] = d_true
        arrays["test_D_pred"] = d_true + rng.normal(0, 0.1, (2, 3))
        arrays["test_Q_pred"] = rng.normal(0, 0.3, 5)
        np.savez(path, **arrays)
        paths.append(path)
    pred = combine(paths)
    d = np.stack([np.load(p)["test_D_pred"] for p in paths])
    q = np.stack([np.load(p)["test_Q_pred"] for p in paths])
    np.testing.assert_allclose(pred.committee("dipole").mean, d.mean(0))
    np.testing.assert_allclose(pred.committee("dipole").std, d.std(0))
    np.testing.assert_allclose(pred.committee("charges").mean, q.mean(0))
    np.testing.assert_allclose(pred.committee("charges").std, q.std(0))
    m = ensemble_metrics(pred)
    assert m["units"]["dipole"] == "e*Angstrom"
    np.testing.assert_allclose(m["dipole"]["mae"], np.abs(d.mean(0) - d_true).mean())
    np.testing.assert_allclose(m["dipole"]["mean_std"], d.std(0).mean())
    # without dipoles in one member, the committee has none
    arrays = dict(np.load(paths[0]))
    del arrays["test_D_pred"], arrays["test_D_true"]
    np.savez(paths[0], **arrays)
    pred = combine(paths)
    assert pred.committee("dipole") is None and "dipole" not in ensemble_metrics(pred)
