"""physpack.data.convert: padded NPZ → packed directory (round trips, units, bad input)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ase import units as ase_units
from physpack.config import DataConfig
from physpack.data import convert
from physpack.data.convert import convert_npz, main
from physpack.data.packed import PackedDataset
from physpack.data.synthetic import write_padded_npz


def unpadded(arrays: dict[str, np.ndarray], i: int) -> int:
    """Atoms of molecule i from the NPZ (N when present, else Z > 0)."""
    if "N" in arrays:
        return int(arrays["N"][i])
    return int((arrays["Z"][i] > 0).sum())


def assert_round_trip(
    npz: Path,
    packed: Path,
    *,
    length: float = 1.0,
    energy: float = 1.0,
    dipole: float = 1.0,
) -> None:
    """Every molecule of ``packed`` equals the NPZ's unpadded slice (float32 exact
    after the float64 unit conversion)."""
    with np.load(npz) as f:
        src = {k: f[k] for k in f.files}
    ds = PackedDataset(packed)
    assert len(ds) == len(src["Z"])
    charge = src.get("Qtot", src.get("Q"))
    for i in range(len(ds)):
        n = unpadded(src, i)
        mol = ds.molecule(i)
        np.testing.assert_array_equal(mol["Z"], src["Z"][i, :n])
        want_r = (src["R"][i, :n].astype(np.float64) * length).astype(np.float32)
        np.testing.assert_array_equal(mol["R"], want_r)
        if "F" in src:
            f = src["F"][i, :n].astype(np.float64) * (energy / length)
            np.testing.assert_array_equal(mol["F"], f.astype(np.float32))
        else:
            assert "F" not in mol
        assert mol["E"] == np.float64(src["E"][i]) * energy
        assert mol["Qtot"] == (0.0 if charge is None else charge[i])
        if "D" in src:
            np.testing.assert_array_equal(mol["D"], src["D"][i] * dipole)


@pytest.mark.parametrize("compress", [False, True], ids=["stored", "deflated"])
def test_round_trip_in_small_chunks(tmp_path: Path, compress: bool) -> None:
    npz = write_padded_npz(tmp_path / "in.npz", 37, seed=5, compress=compress, amax=32)
    # ~0.01 MB chunks: a handful of molecules per chunk, so chunk seams are crossed
    result = convert_npz(npz, tmp_path / "packed", chunk_mb=0.01)
    assert result.n_molecules == 37
    assert_round_trip(npz, tmp_path / "packed")
    manifest = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    assert manifest["source"]["file"] == "in.npz"
    assert manifest["source"]["sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    assert manifest["source"]["members"]["R"]["compressed"] is compress
    assert manifest["input_units"]["energy"] == "eV"
    assert manifest["optional"] == {"F": True, "D": True}


def test_round_trip_as_older_tooling_wrote_it(tmp_path: Path, tiny_npz: Path) -> None:
    """Without manifest.json and n_atoms.npy (the older layout) the same molecules
    come back: everything is derived from offsets.npy."""
    packed = convert_npz(tiny_npz, tmp_path / "packed").path
    (packed / "manifest.json").unlink()
    (packed / "n_atoms.npy").unlink()
    assert PackedDataset(packed).manifest is None
    assert_round_trip(tiny_npz, packed)


def test_chunk_size_does_not_change_output(tmp_path: Path, tiny_npz: Path) -> None:
    convert_npz(tiny_npz, tmp_path / "a", chunk_mb=0.003)
    convert_npz(tiny_npz, tmp_path / "b", chunk_mb=100)
    for name in ("Z_pack.int32", "R_pack.f32", "F_pack.f32", "E.f64", "D.f64"):
        assert (tmp_path / "a" / name).read_bytes() == (
            tmp_path / "b" / name
        ).read_bytes()


@pytest.mark.parametrize("direct", [True, False])
def test_reads_are_bounded_by_the_chunk(
    tmp_path: Path, tiny_npz: Path, monkeypatch, direct: bool
) -> None:
    """No member is ever read whole: every read is at most one chunk of rows, by
    the direct reader of stored members and through zipfile alike."""
    reads: list[tuple[str, int]] = []
    cls = convert.StoredRowReader if direct else convert.NpyRowReader
    original = cls.read

    def spy(self, start: int, rows: int) -> np.ndarray:
        reads.append((self.key, rows * self.header.row_bytes))
        return original(self, start, rows)

    monkeypatch.setattr(cls, "read", spy)
    convert_npz(tiny_npz, tmp_path / "p", chunk_mb=0.01, direct=direct)
    r_reads = [size for key, size in reads if key == "R"]
    assert len(r_reads) >= 5  # the 60 molecules came in several pieces
    assert sum(size for _, size in reads[:7]) <= 0.01e6  # one chunk, all keys


def test_unit_conversion(tmp_path: Path, tiny_npz: Path) -> None:
    with np.load(tiny_npz) as f:
        arrays = {k: f[k] for k in f.files}
    npz = tmp_path / "units.npz"
    np.savez(npz, **arrays)
    data = DataConfig(energy_unit="kcal/mol", length_unit="Bohr", dipole_unit="Debye")
    convert_npz(npz, tmp_path / "packed", data)
    # factors straight from ASE, not through physpack.units
    assert_round_trip(
        npz,
        tmp_path / "packed",
        length=ase_units.Bohr,
        energy=ase_units.kcal / ase_units.mol,
        dipole=ase_units.Debye,
    )
    manifest = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    assert manifest["input_units"] == {
        "energy": "kcal/mol",
        "length": "Bohr",
        "forces": "kcal/mol/Bohr",
        "dipole": "Debye",
        "charge": "e",
    }
    assert manifest["units"]["energy"] == "eV"


def test_hartree_bohr_forces(tmp_path: Path, tiny_npz: Path) -> None:
    with np.load(tiny_npz) as f:
        arrays = {k: f[k] for k in f.files}
    npz = tmp_path / "ha.npz"
    np.savez(npz, **arrays)
    convert_npz(
        npz, tmp_path / "p", DataConfig(energy_unit="Hartree", length_unit="Bohr")
    )
    assert_round_trip(
        npz, tmp_path / "p", length=ase_units.Bohr, energy=ase_units.Hartree
    )


def test_optional_keys_and_inferred_n(tmp_path: Path, tiny_npz: Path) -> None:
    """No N (counted from Z > 0), no F, no D, charge under the key Qtot; and a
    dataset without any charge gets zeros."""
    with np.load(tiny_npz) as f:
        arrays = {k: f[k] for k in ("R", "Z", "E")}
        q = f["Q"] + 1.0
    npz = tmp_path / "min.npz"
    np.savez_compressed(npz, Qtot=q, **arrays)
    convert_npz(npz, tmp_path / "p")
    ds = PackedDataset(tmp_path / "p")
    assert ds.keys == ["Z", "R", "E", "Qtot"]
    np.testing.assert_array_equal(ds.Qtot, q)
    assert_round_trip(npz, tmp_path / "p")
    np.savez(tmp_path / "noq.npz", **arrays)
    convert_npz(tmp_path / "noq.npz", tmp_path / "q0")
    np.testing.assert_array_equal(PackedDataset(tmp_path / "q0").Qtot, 0.0)


def test_float_and_int64_inputs(tmp_path: Path, tiny_npz: Path) -> None:
    with np.load(tiny_npz) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["Z"] = arrays["Z"].astype(np.float64)
    arrays["N"] = arrays["N"].astype(np.int64).reshape(-1, 1)
    arrays["R"] = arrays["R"].astype(np.float64)
    np.savez(tmp_path / "f.npz", **arrays)
    convert_npz(tmp_path / "f.npz", tmp_path / "p")
    ref = tmp_path / "ref"
    convert_npz(tiny_npz, ref)
    for name in ("Z_pack.int32", "R_pack.f32", "F_pack.f32"):
        assert (tmp_path / "p" / name).read_bytes() == (ref / name).read_bytes()


def test_cli(tmp_path: Path, tiny_npz: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "packed"
    cfg = json.dumps({"npz": str(tiny_npz), "energy_unit": "eV"})
    assert main([str(tiny_npz), str(out), "--config", cfg, "--no-progress"]) == 0
    assert "60 molecules" in capsys.readouterr().out
    assert PackedDataset(out).n_molecules == 60
    # an existing output is kept unless --overwrite
    assert main([str(tiny_npz), str(out), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([str(tiny_npz), str(out), "--no-progress", "--overwrite"]) == 0


# -- bad input: one case each --------------------------------------------------

Arrays = dict[str, np.ndarray]
BAD = 7  # molecule that gets the defect


def _arrays(tiny_npz: Path) -> Arrays:
    with np.load(tiny_npz) as f:
        return {k: f[k].copy() for k in f.files}


def _save(arrays: Arrays) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        np.savez(path, **arrays)
        return path

    return make


def _mutated(edit: Callable[[Arrays], None]) -> Callable[[Path, Path], Path]:
    def make(path: Path, tiny_npz: Path) -> Path:
        arrays = _arrays(tiny_npz)
        edit(arrays)
        return _save(arrays)(path)

    return make


def _set(key: str, index: tuple, value: float) -> Callable[[Arrays], None]:
    def edit(a: Arrays) -> None:
        a[key][index] = value

    return edit


def _drop(key: str) -> Callable[[Arrays], None]:
    return lambda a: a.pop(key)


def _n_plus(delta: int, key: str = "N") -> Callable[[Arrays], None]:
    def edit(a: Arrays) -> None:
        a[key][BAD] += delta

    return edit


def _n_to_width(a: Arrays) -> None:
    a["N"][BAD] = a["Z"].shape[1] + 1


def _short_e(a: Arrays) -> None:
    a["E"] = a["E"][:-1]


def _stray_atom_without_n(a: Arrays) -> None:
    a.pop("N")
    a["Z"][BAD, -1] = 6  # width > the molecule's size in this fixture (amax 29 vs n)


def _empty(a: Arrays) -> None:
    for k in a:
        a[k] = a[k][:0]


def _not_a_zip(path: Path, tiny_npz: Path) -> Path:
    path.write_text("R,Z,E\n1,2,3\n")
    return path


def _truncated(path: Path, tiny_npz: Path) -> Path:
    data = tiny_npz.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt_member(path: Path, tiny_npz: Path) -> Path:
    """Flip bytes inside the stored R member (central directory intact): the CRC
    check fails while streaming."""
    data = bytearray(tiny_npz.read_bytes())
    with zipfile.ZipFile(tiny_npz) as zf:
        info = zf.getinfo("R.npy")
    middle = info.header_offset + 200 + info.compress_size // 2
    data[middle : middle + 8] = b"\x7f" * 8
    path.write_bytes(bytes(data))
    return path


BAD_INPUTS = {
    "missing_key": (_mutated(_drop("R")), ["'R'", "missing required key"]),
    "not_npz": (_not_a_zip, ["not a readable NPZ"]),
    "truncated_zip": (_truncated, ["not a readable NPZ"]),
    "corrupt_member": (_corrupt_member, ["'R'", "corrupt"]),
    "inconsistent_shapes": (_mutated(_short_e), ["'E'", "inconsistent"]),
    "n_above_width": (_mutated(_n_to_width), ["'N'", f"molecule {BAD}", "width"]),
    "n_below_z": (_mutated(_n_plus(-1)), ["'Z'", f"molecule {BAD}", "in the padding"]),
    "n_above_z": (_mutated(_n_plus(+1)), ["'Z'", f"molecule {BAD}", "N disagrees"]),
    "atom_in_padding": (
        _mutated(_stray_atom_without_n),
        ["'Z'", f"molecule {BAD}", "non-zero atomic number 6 in the padding"],
    ),
    "nan_force": (
        _mutated(_set("F", (BAD, 0, 1), np.nan)),
        ["'F'", f"molecule {BAD}", "NaN"],
    ),
    "inf_position": (
        _mutated(_set("R", (BAD, 2, 0), np.inf)),
        ["'R'", f"molecule {BAD}", "inf"],
    ),
    "nan_energy": (_mutated(_set("E", (BAD,), np.nan)), ["'E'", f"molecule {BAD}"]),
    "negative_z": (_mutated(_set("Z", (BAD, 1), -1)), ["'Z'", f"molecule {BAD}", "-1"]),
    "z_above_118": (
        _mutated(_set("Z", (BAD, 0), 119)),
        ["'Z'", f"molecule {BAD}", "119"],
    ),
    "z_zero_inside": (
        _mutated(_set("Z", (BAD, 0), 0)),
        ["'Z'", f"molecule {BAD}", "Z=0 inside"],
    ),
    "empty_dataset": (_mutated(_empty), ["empty dataset"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input(
    case: str, tmp_path: Path, tiny_npz: Path, capsys: pytest.CaptureFixture
) -> None:
    make, needles = BAD_INPUTS[case]
    bad = make(tmp_path / f"{case}.npz", tiny_npz)
    out = tmp_path / "out" / "packed"
    # small chunks: molecule BAD lies in the second chunk, after one was written
    assert main([str(bad), str(out), "--no-progress", "--chunk-mb", "0.005"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    err = err.splitlines()[-1]  # after the effective config the stage logs first
    assert err.startswith("physpack convert: error: ")
    assert str(bad) in err
    message = err.replace(str(bad), "<npz>")
    for needle in needles:
        assert needle in message, (needle, err)
    # nothing that looks like an output, no temporary directory left behind
    assert not out.exists()
    leftovers = list(out.parent.iterdir()) if out.parent.exists() else []
    assert leftovers == []


def test_unknown_unit(
    tmp_path: Path, tiny_npz: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "p"
    code = main([str(tiny_npz), str(out), "--config", '{"energy_unit": "furlong"}'])
    assert code == 2
    err = capsys.readouterr().err
    assert "'furlong'" in err and "energy" in err and "data" in err
    assert not out.exists()
    # the same through the Python API
    with pytest.raises(Exception, match="length unit"):
        convert_npz(tiny_npz, out, DataConfig(length_unit="parsec"))


def test_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "nope.npz"), str(tmp_path / "p")]) == 2
    assert "nope.npz: file not found" in capsys.readouterr().err


def test_direct_and_zipfile_readers_agree(tmp_path: Path, tiny_npz: Path) -> None:
    """Stored members read straight from the file give the same directory as
    through zipfile, and the recorded input sha256 is the file's."""
    a = convert_npz(tiny_npz, tmp_path / "a", chunk_mb=0.01, direct=True).path
    b = convert_npz(tiny_npz, tmp_path / "b", chunk_mb=0.01, direct=False).path
    for p in sorted(a.iterdir()):
        if p.name != "manifest.json":
            assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["arrays"] == mb["arrays"]
    digest = hashlib.sha256(tiny_npz.read_bytes()).hexdigest()
    assert ma["source"]["sha256"] == mb["source"]["sha256"] == digest


def test_progress_lines_in_the_log(
    tmp_path: Path, tiny_npz: Path, monkeypatch, capsys
) -> None:
    """With --no-progress (as the rules run it) the stage still logs its progress."""
    from physpack.data import progress

    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    out = tmp_path / "p"
    args = [str(tiny_npz), str(out), "--no-progress", "--chunk-mb", "0.005"]
    assert main(args) == 0
    lines = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.startswith(f"convert {tiny_npz.name}: ")
    ]
    assert len(lines) >= 3 and "/60 molecules" in lines[0]
    assert lines[-1].startswith(f"convert {tiny_npz.name}: 60/60 molecules (100 %)")
