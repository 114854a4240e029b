"""physpack.data.manifest: one schema-checked reader for every stage; malformed
manifests give one line naming file and key (reader, PackedDataset, validate CLI)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from physpack.data import validate
from physpack.data.convert import convert_npz
from physpack.data.manifest import manifest_schema, read_manifest
from physpack.data.packed import PackedDataset
from physpack.data.synthetic import write_padded_npz
from physpack.errors import InputError


@pytest.fixture
def packed(tmp_path: Path) -> Path:
    npz = write_padded_npz(tmp_path / "in.npz", 12, seed=2)
    return convert_npz(npz, tmp_path / "packed").path


def _edit(path: Path, change: Callable[[dict], object]) -> None:
    mpath = path / "manifest.json"
    manifest = json.loads(mpath.read_text())
    result = change(manifest)
    mpath.write_text(json.dumps(manifest if result is None else result))


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda m: m.__setitem__(key, value)


def _entry(m: dict) -> None:
    m["arrays"]["E"] = "E.f64"


def _bad_sha(m: dict) -> None:
    m["arrays"]["R"]["sha256"] = "not-a-digest"


def _escape(m: dict) -> None:
    m["arrays"]["R"]["file"] = "../R_pack.f32"


def _twice(m: dict) -> None:
    m["arrays"]["F"]["file"] = m["arrays"]["R"]["file"]


#: malformed manifest -> (edit, words the one-line message must contain)
MALFORMED: dict[str, tuple[Callable[[dict], object], tuple[str, ...]]] = {
    "format_version_2": (_set("format_version", 2), ("format_version 2", "up to 1")),
    "arrays_list": (_set("arrays", []), ("key arrays", "not of type 'object'")),
    "entry_not_object": (_entry, ("key arrays.E", "not of type 'object'")),
    "string_n_molecules": (
        _set("n_molecules", "12"),
        ("key n_molecules", "not of type 'integer'"),
    ),
    "not_an_object": (lambda m: [m], ("not a JSON object",)),
    "no_units": (lambda m: m.pop("units") and None, ("'units' is a required",)),
    "bad_sha256": (_bad_sha, ("key arrays.R.sha256", "does not match")),
    "file_outside": (_escape, ("key arrays.R.file",)),
    "file_twice": (_twice, ("listed twice",)),
    "other_format": (_set("format", "npz"), ("key format", "physpack-packed")),
}


def test_written_manifest_is_valid(packed: Path) -> None:
    manifest = read_manifest(packed)
    assert manifest is not None and manifest["n_molecules"] == 12
    assert manifest_schema()["properties"]["format"]["const"] == manifest["format"]


def test_no_manifest_is_none(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_manifest_is_refused_by_every_reader(
    packed: Path, tmp_path: Path, case: str, capsys: pytest.CaptureFixture
) -> None:
    change, words = MALFORMED[case]
    _edit(packed, change)
    for read in (read_manifest, PackedDataset):
        with pytest.raises(InputError) as info:
            read(packed)
        message = str(info.value)
        assert "manifest.json" in message and "\n" not in message
        assert all(w in message for w in words), message

    out = tmp_path / "v" / "validation.json"
    assert validate.main([str(packed), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("physpack validate: error:") and "manifest" in last
    report = json.loads(validate.failed_report_path(out).read_text())
    assert report["ok"] is False and report["error_counts"]["manifest"] >= 1
    assert all(w in report["errors"][0]["message"] for w in words)
    assert not out.exists()


def test_units_conflicting_with_manifest_are_reported(
    packed: Path, tmp_path: Path
) -> None:
    report = validate.validate_packed(packed, units={"energy": "kcal/mol"})
    assert not report.ok and report.error_counts == {"units": 1}
    assert "stored in" in report.errors[0].message
    assert "declared" in report.errors[0].message
