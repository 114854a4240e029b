"""physpack.data.validate: clean data passes; every injected defect is caught and named."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from physpack.config import ValidateConfig
from physpack.data import validate
from physpack.data.convert import convert_npz
from physpack.data.synthetic import write_legacy_packed
from scipy.spatial.distance import pdist

BAD = 11  # molecule that gets the defect


@pytest.fixture
def packed(tmp_path: Path, tiny_npz: Path) -> Path:
    return convert_npz(tiny_npz, tmp_path / "packed").path


def _run(packed: Path, out: Path, *extra: str) -> int:
    return validate.main([str(packed), "--output", str(out), *extra])


def _memmap(path: Path, name: str, dtype: str, cols: int | None) -> np.memmap:
    arr = np.memmap(path / name, dtype=dtype, mode="r+")
    return arr.reshape(-1, cols) if cols else arr


def _atom(path: Path, molecule: int, k: int = 0) -> int:
    return int(np.load(path / "offsets.npy")[molecule]) + k


def test_clean_dataset_passes(packed: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "v" / "validation.json"
    assert _run(packed, out, "--config", '{"max_reported": 5}') == 0
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["errors"] == [] and report["n_errors"] == 0
    assert {"checksum", "min_distance", "atomic_numbers"} <= set(report["checks"])
    assert report["summary"]["n_molecules"] == 60
    assert report["config"]["max_reported"] == 5
    # the synthetic energies are sums of these per-element energies plus noise
    ref = report["summary"]["element_reference_energy_eV"]
    assert ref["C"] == pytest.approx(-48.8, abs=0.3)
    assert not validate.failed_report_path(out).exists()
    assert "ok" in capsys.readouterr().out


def test_legacy_directory(tmp_path: Path) -> None:
    old = write_legacy_packed(tmp_path / "old", 40, seed=1)
    config = ValidateConfig(require_manifest=False)
    for report in (
        validate.validate_packed(old, config),
        validate.validate_packed(old, units={"energy": "eV"}),  # declared: data.packed
    ):
        assert report.ok, report.errors
        assert report.summary["has_manifest"] is False
        assert "checksum" in report.skipped


def test_deleted_manifest_does_not_turn_checksums_off(packed: Path) -> None:
    (packed / "manifest.json").unlink()
    report = validate.validate_packed(packed)
    assert not report.ok and report.error_counts == {"manifest": 1}
    assert "manifest.json: missing, so the files' checksums" in report.errors[0].message
    assert "validate.require_manifest: false" in report.errors[0].message
    forced = ValidateConfig(require_manifest=True)
    assert not validate.validate_packed(packed, forced, units={"energy": "eV"}).ok


# -- injected defects ---------------------------------------------------------


def _truncate(p: Path) -> None:
    f = p / "R_pack.f32"
    f.write_bytes(f.read_bytes()[:-12])


def _delete(p: Path) -> None:
    (p / "E.f64").unlink()


def _flip(p: Path) -> None:
    r = _memmap(p, "R_pack.f32", "<f4", 3)
    r[_atom(p, BAD), 0] += 1e-3  # still valid data; only the checksum can tell
    r.flush()


def _nan_force(p: Path) -> None:
    f = _memmap(p, "F_pack.f32", "<f4", 3)
    f[_atom(p, BAD, 2), 1] = np.nan
    f.flush()


def _close_atoms(p: Path) -> None:
    r = _memmap(p, "R_pack.f32", "<f4", 3)
    i = _atom(p, BAD)
    r[i + 3] = r[i] + np.float32(0.1)  # 0.17 Å apart
    r.flush()


def _non_monotonic(p: Path) -> None:
    offsets = np.load(p / "offsets.npy")
    offsets[BAD] = offsets[BAD + 1] + 1
    np.save(p / "offsets.npy", offsets)


def _z_out_of_range(p: Path) -> None:
    z = _memmap(p, "Z_pack.int32", "<i4", None)
    z[_atom(p, BAD, 1)] = 130
    z.flush()


def _z_zero(p: Path) -> None:
    z = _memmap(p, "Z_pack.int32", "<i4", None)
    z[_atom(p, BAD, 0)] = 0
    z.flush()


def _inf_energy(p: Path) -> None:
    e = _memmap(p, "E.f64", "<f8", None)
    e[BAD] = np.inf
    e.flush()


DEFECTS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (inject, check expected in errors, text expected in the first message)
    "truncated_file": (_truncate, "files", "R_pack.f32"),
    "missing_file": (_delete, "files", "E.f64: missing file"),
    "bad_checksum": (_flip, "checksum", "R_pack.f32: sha256"),
    "nan_force": (_nan_force, "finite_F", f"molecule {BAD}:"),
    "too_close": (_close_atoms, "min_distance", f"molecule {BAD}: atoms 0 and 3"),
    "non_monotonic_offsets": (
        _non_monotonic,
        "offsets",
        f"molecule {BAD}: offsets not monotonic",
    ),
    "z_out_of_range": (_z_out_of_range, "atomic_numbers", f"molecule {BAD}, atom 1"),
    "z_zero": (_z_zero, "atomic_numbers", f"molecule {BAD}, atom 0"),
    "inf_energy": (_inf_energy, "finite_E", f"molecule {BAD}:"),
}


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_defect_is_caught(packed: Path, tmp_path: Path, name: str, capsys) -> None:
    inject, check, text = DEFECTS[name]
    inject(packed)
    out = tmp_path / "v" / "validation.json"
    out.parent.mkdir()
    out.write_text("{}")  # a stale report must not survive a failed validation
    assert _run(packed, out) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    err = err.splitlines()[-1]  # after the effective config the stage logs first
    assert err.startswith("physpack validate: error:")
    assert check in err
    assert not out.exists()
    report = json.loads(validate.failed_report_path(out).read_text())
    assert report["ok"] is False
    assert report["error_counts"][check] >= 1
    messages = [e["message"] for e in report["errors"] if e["check"] == check]
    assert any(text in m for m in messages), messages
    molecules = [e.get("molecule") for e in report["errors"] if e["check"] == check]
    if check not in ("files", "checksum"):
        assert molecules[0] == BAD


def test_min_distance_threshold_from_config(packed: Path) -> None:
    _close_atoms(packed)
    loose = validate.validate_packed(packed, ValidateConfig(min_distance=0.1))
    strict = validate.validate_packed(packed, ValidateConfig(min_distance=0.2))
    assert "min_distance" not in loose.error_counts
    assert strict.error_counts["min_distance"] == 1


def test_report_is_capped_but_counts_exact(packed: Path) -> None:
    e = _memmap(packed, "E.f64", "<f8", None)
    e[5:25] = np.nan
    e.flush()
    report = validate.validate_packed(
        packed, ValidateConfig(max_reported=3, checksums=False)
    )
    assert report.error_counts == {"finite_E": 20}
    listed = [p for p in report.errors if p.check == "finite_E"]
    assert [p.molecule for p in listed] == [5, 6, 7]


def test_outliers_are_warnings(packed: Path) -> None:
    e = _memmap(packed, "E.f64", "<f8", None)
    e[BAD] += 500.0
    e.flush()
    f = _memmap(packed, "F_pack.f32", "<f4", 3)
    f[_atom(packed, 3)] = (300.0, 0.0, 0.0)
    f.flush()
    report = validate.validate_packed(packed, ValidateConfig(checksums=False))
    assert report.ok
    assert report.warning_counts == {"energy_outlier": 1, "force_outlier": 1}
    by_check = {w.check: w.molecule for w in report.warnings}
    assert by_check == {"energy_outlier": BAD, "force_outlier": 3}


def test_not_a_directory(tmp_path: Path, capsys) -> None:
    assert _run(tmp_path / "nothing", tmp_path / "v.json") == 2
    assert "packed directory not found" in capsys.readouterr().err
    assert not (tmp_path / "v.json").exists()


def _brute_min_distances(r: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    out = []
    for a, b in itertools.pairwise(offsets):
        out.append(pdist(r[a:b].astype(np.float64)).min() if b - a > 1 else np.inf)
    return np.array(out)


@pytest.mark.parametrize("dense_max", [512, 4], ids=["dense", "kdtree"])
def test_min_distances_match_brute_force(monkeypatch, dense_max: int) -> None:
    monkeypatch.setattr(validate, "DENSE_DISTANCE_MAX_ATOMS", dense_max)
    monkeypatch.setattr(validate, "DISTANCE_BLOCK", 64)  # several blocks per size
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 12, size=80)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    r = rng.uniform(-3, 3, size=(offsets[-1], 3)).astype(np.float32) + 100.0
    dmin, pairs, _ = validate.min_interatomic_distances(r, offsets)
    np.testing.assert_allclose(dmin, _brute_min_distances(r, offsets), rtol=1e-9)
    for i in np.flatnonzero(sizes > 1):
        a, b = offsets[i] + pairs[i]
        assert np.linalg.norm(r[a].astype(float) - r[b]) == pytest.approx(dmin[i])


# -- plausibility: unit mistakes ---------------------------------------------------


def _plausibility_warnings(
    report: validate.ValidationReport,
    problems: tuple[validate.Problem, ...] | None = None,
) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for w in report.warnings if problems is None else problems:
        if w.check.startswith("plausible_"):
            out.setdefault(w.check, []).append(w.message)
    return out


def test_plausible_data_gives_no_plausibility_warning(tmp_path: Path) -> None:
    path = write_legacy_packed(tmp_path / "old", 80, seed=6, energy_unit="kcal/mol")
    report = validate.validate_packed(path, units={"energy": "kcal/mol"})
    assert report.ok and _plausibility_warnings(report) == {}
    assert {"plausible_energies", "plausible_distances", "plausible_forces"} <= set(
        report.checks
    )
    assert 0.6 < report.summary["median_nearest_neighbour_A"] < 2.0


def test_ev_declared_as_hartree_is_flagged(tmp_path: Path) -> None:
    """Energies 27× and forces 27× too large: unit errors, which stop validation
    (tests/test_plausibility.py has the override)."""
    path = write_legacy_packed(tmp_path / "old", 80, seed=6)  # eV, eV/Å
    report = validate.validate_packed(path, units={"energy": "Hartree"})
    assert not report.ok
    found = _plausibility_warnings(report, report.errors)
    (energy,) = found["plausible_energies"]
    assert "beyond atomic scales" in energy and "H " in energy
    assert "data.energy_unit (stored as Hartree)" in energy
    (forces,) = found["plausible_forces"]
    assert "larger than molecular forces" in forces
    assert "plausible_distances" not in found


def test_angstrom_declared_as_nm_is_flagged(tmp_path: Path) -> None:
    path = write_legacy_packed(tmp_path / "old", 80, seed=6)
    report = validate.validate_packed(path, units={"length": "nm"})
    found = _plausibility_warnings(report)
    (distance,) = found["plausible_distances"]
    assert "outside 0.6–2.0 Å" in distance
    assert "data.length_unit (stored as nm)" in distance
    assert "plausible_energies" not in found


def test_progress_lines_in_the_log(packed: Path, monkeypatch, capsys) -> None:
    """A long validation is not silent in its log: progress lines at intervals."""
    from physpack.data import progress

    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    assert validate.validate_packed(packed, atoms_per_chunk=200).ok
    err = capsys.readouterr().err.splitlines()
    content = [line for line in err if line.startswith("validate packed: content: ")]
    sha = [line for line in err if line.startswith("validate packed: sha256: ")]
    assert len(content) >= 3 and "60/60 molecules (100 %)" in content[-1]
    assert sha and "MB (100 %)" in sha[-1]


def test_every_warning_is_printed_to_the_log(packed: Path, tmp_path: Path, capsys):
    """The stage's output (results/logs/validate_packed.log in the workflow) has one
    line per check with warnings: its count and first message, not only
    validation.json."""
    for i in (3, 17, 40):  # energy outliers
        energies = _memmap(packed, "E.f64", "<f8", None)
        energies[i] += 50.0
        energies.flush()
    out = tmp_path / "validation.json"
    config = '{"checksums": false}'
    assert _run(packed, out, "--config", config) == 0
    captured = capsys.readouterr()
    report = json.loads(out.read_text())
    assert report["warning_counts"]["energy_outlier"] == 3
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("warning: ")]
    assert len(lines) == len(report["warning_counts"])
    (outliers,) = [ln for ln in lines if ln.startswith("warning: energy_outlier")]
    (first, *_) = [
        w["message"] for w in report["warnings"] if w["check"] == "energy_outlier"
    ]
    assert outliers == f"warning: energy_outlier (3 in all, see {out}): {first}"
    assert "ok (60 molecules, 3 warning(s))" in captured.out


def test_failed_reference_fit_is_a_warning(packed: Path, monkeypatch) -> None:
    """What the loader refuses (e.g. a molecule beyond its size limit) does not
    turn the report into a traceback: the energy checks are skipped with a reason."""
    from physpack.errors import InputError

    def refuse(*args, **kwargs):
        raise InputError("molecule 3 has 5000 atoms, above loader.max_molecule_atoms")

    monkeypatch.setattr(validate, "fit_energy_constants", refuse)
    report = validate.validate_packed(packed)
    assert report.ok and report.warning_counts.get("energy_reference") == 1
    assert "no reference fit: molecule 3" in report.warnings[0].message


def test_no_shard_reports_validate_the_dataset_itself(packed: Path, tmp_path: Path):
    """``--shard-reports`` with no file (the workflow's rule when the dataset has
    no shards) is the plain validation."""
    plain, empty = tmp_path / "plain.json", tmp_path / "empty.json"
    assert _run(packed, plain) == 0
    assert _run(packed, empty, "--shard-reports") == 0
    assert json.loads(plain.read_text()) == json.loads(empty.read_text())


def test_validate_is_split_by_job() -> None:
    """Shard-report merging and the report format are modules of their own; what
    stays is under 600 lines, no function over 80."""
    import ast

    from physpack.data import shard_reports

    assert validate.combine_shard_reports is shard_reports.combine_shard_reports
    source = Path(validate.__file__).read_text()
    assert len(source.splitlines()) < 600
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
            assert node.end_lineno - node.lineno < 80, node.name
