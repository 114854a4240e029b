"""physpack.data.plausibility through ``physpack validate``: a unit error stops the
stage with one line naming the key to set, unless ``validate.allow_implausible_units``
accepts the values; implausible scales that real data can have stay warnings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from physpack.config import DataConfig, ValidateConfig
from physpack.data import plausibility, validate
from physpack.data.convert import convert_npz
from physpack.units import ENERGY_TO_EV

DEMO = ROOT / "data" / "demo.npz"
PER_KCAL = 1.0 / ENERGY_TO_EV["kcal/mol"]  # kcal/mol per eV


def _kcal_demo(tmp_path: Path) -> Path:
    """The issue's case: every second molecule of the demo data (1,575) with
    energies and forces in kcal/mol (and kcal/mol/Å), converted with the default units (eV): what a
    config that omits ``data.energy_unit`` does to such a file."""
    with np.load(DEMO) as demo:
        data = {k: demo[k][::2] for k in ("R", "Z", "N", "E", "F", "Q", "D")}
    data["E"] = data["E"] * PER_KCAL
    data["F"] = (data["F"] * PER_KCAL).astype(np.float32)
    np.savez(tmp_path / "kcal.npz", **data)
    return convert_npz(tmp_path / "kcal.npz", tmp_path / "packed").path


def _validate(packed: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    code = validate.main([str(packed), "--output", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_kcal_per_mol_declared_as_ev_stops(tmp_path: Path, capsys) -> None:
    """Reference energies of H near −319 eV and a median force of 33 eV/Å are a
    unit error: non-zero exit, one line naming the dataset, the key to set, the
    figure found and the override; no validation.json that looks complete."""
    packed = _kcal_demo(tmp_path)
    out = tmp_path / "validation.json"
    code, output = _validate(packed, out, capsys)
    assert code != 0
    (line,) = [ln for ln in output.splitlines() if ln.startswith("physpack validate")]
    assert line.startswith(f"physpack validate: error: {packed}: "), line
    assert "fitted per-element reference energies beyond atomic scales" in line
    assert "H -318.9 eV" in line and "data.energy_unit (stored as eV)" in line
    assert "validate.allow_implausible_units: true" in line
    assert not out.exists()
    failed = json.loads(validate.failed_report_path(out).read_text())
    assert failed["error_counts"] == {"plausible_energies": 1, "plausible_forces": 1}
    (forces,) = [e for e in failed["errors"] if e["check"] == "plausible_forces"]
    assert "median atomic force magnitude 33" in forces["message"]


def test_the_override_accepts_implausible_units_with_the_warning(
    tmp_path: Path, capsys
) -> None:
    """``validate.allow_implausible_units: true``: the stage passes, and the same
    findings are warnings, printed to its log and kept in the report."""
    packed = _kcal_demo(tmp_path)
    out = tmp_path / "validation.json"
    code, output = _validate(
        packed, out, capsys, "--config", '{"allow_implausible_units": true}'
    )
    assert code == 0, output
    report = json.loads(out.read_text())
    assert report["ok"] and report["error_counts"] == {}
    assert report["warning_counts"]["plausible_energies"] == 1
    assert report["warning_counts"]["plausible_forces"] == 1
    printed = [ln for ln in output.splitlines() if ln.startswith("warning: ")]
    energies = [ln for ln in printed if ln.startswith("warning: plausible_energies")]
    assert len(energies) == 1 and "H -318.9 eV" in energies[0]
    assert "accepted by validate.allow_implausible_units" in energies[0]


def test_ev_data_of_the_demo_does_not_stop(tmp_path: Path) -> None:
    """The demo in its own units (eV): no plausibility finding at all."""
    with np.load(DEMO) as demo:
        data = {k: demo[k][:600] for k in ("R", "Z", "N", "E", "F", "Q", "D")}
    np.savez(tmp_path / "ev.npz", **data)
    packed = convert_npz(tmp_path / "ev.npz", tmp_path / "packed").path
    report = validate.validate_packed(packed)
    assert report.ok, report.errors
    assert not [w for w in report.warnings if w.check.startswith("plausible_")]


# -- one formula (MD17-like): the per-element fit is not determined ----------------

#: all-electron free-atom energies [eV] (H 0.5, C 37.8, O 75.0 Hartree)
ATOM_EV = {1: -13.6, 6: -1028.6, 8: -2041.0}


def _one_formula_npz(path: Path, per_ev: float, n_mol: int = 40) -> Path:
    """Conformations of one formula (ethanol, C2H6O) with all-electron total
    energies, in a unit of ``per_ev`` per eV: an MD17-like dataset."""
    rng = np.random.default_rng(0)
    z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1], np.int32)
    grid = np.stack(np.meshgrid(*(np.arange(3),) * 3, indexing="ij"), -1)
    base = grid.reshape(-1, 3)[:9] * 1.4
    R = base + rng.uniform(-0.1, 0.1, size=(n_mol, 9, 3))
    F = rng.normal(0.0, 1.0, size=(n_mol, 9, 3))
    E = sum(ATOM_EV[int(a)] for a in z) - 30.0 + rng.normal(0.0, 0.1, size=n_mol)
    np.savez(
        path,
        R=R.astype(np.float32),
        Z=np.tile(z, (n_mol, 1)),
        N=np.full(n_mol, 9, np.int32),
        E=E * per_ev,
        F=(F * per_ev).astype(np.float32),
        Q=np.zeros(n_mol),
    )
    return path


def test_one_formula_in_ev_does_not_stop(tmp_path: Path) -> None:
    """One formula: the fitted per-element energies are a minimum-norm solution
    (H near −600 eV here), not atom energies; they stop nothing, while the
    molecules' energies are within what their atoms allow."""
    npz = _one_formula_npz(tmp_path / "md.npz", 1.0)
    report = validate.validate_packed(convert_npz(npz, tmp_path / "packed").path)
    assert report.ok, report.errors
    assert report.summary["element_reference_energy_eV"]["H"] < -100
    assert "plausible_energies" not in report.warning_counts
    assert report.warning_counts.get("energy_reference") == 1  # rank deficient


def test_one_formula_in_kcal_per_mol_stops(tmp_path: Path) -> None:
    """The same data in kcal/mol, declared as eV: each molecule's |E| is more
    than ten times what the free atoms of its formula can hold."""
    npz = _one_formula_npz(tmp_path / "md.npz", PER_KCAL)
    packed = convert_npz(npz, tmp_path / "packed").path
    report = validate.validate_packed(packed)
    assert report.error_counts.get("plausible_energies") == 1, report.errors
    (error,) = [e for e in report.errors if e.check == "plausible_energies"]
    assert "molecular energies beyond atomic scales" in error.message
    assert "data.energy_unit (stored as eV)" in error.message
    allowed = ValidateConfig(allow_implausible_units=True)
    assert validate.validate_packed(packed, allowed).ok


def test_implausible_scales_that_real_data_can_have_are_warnings() -> None:
    """Small forces (relaxed structures) and unusual neighbour distances are
    warnings; only scales no chemistry gives are unit errors."""
    units = DataConfig().declared_units() | {"energy": "eV", "length": "Angstrom"}
    small = plausibility.check_force_magnitude(1e-4, units)
    assert small is not None and not small.unit_error
    large = plausibility.check_force_magnitude(33.2, units)
    assert large is not None and large.unit_error
    assert plausibility.check_force_magnitude(4.0, units) is None
    far = plausibility.check_neighbour_distance(2.5, units)
    assert far is not None and not far.unit_error


@pytest.mark.parametrize(("z", "energy"), [(1, -13.6), (6, -1028.6), (79, -5.2e5)])
def test_free_atom_energies_are_within_the_bound(z: int, energy: float) -> None:
    """All-electron total energies of H, C and Au (19,000 Hartree) are within
    the bound with room to spare; 23 times H's (kcal/mol read as eV) is not."""
    assert abs(energy) < plausibility.atom_energy_bound(z) / 1.3
    assert 23 * 13.6 > plausibility.atom_energy_bound(1)
