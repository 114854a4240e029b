"""physpack.data.packed: writer/reader round trip, older directories, damaged files."""

from __future__ import annotations

import ast
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from physpack.data.packed import (
    ARRAYS,
    PackedDataset,
    PackedWriter,
    molecule_chunks,
    sha256_file,
)
from physpack.data.synthetic import molecules, qm9_like_sizes, write_legacy_packed
from physpack.errors import InputError


def _mols(n: int, seed: int, with_dipoles: bool = True) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return list(molecules(qm9_like_sizes(n, rng), rng, with_dipoles=with_dipoles))


def _write(path: Path, mols: list[dict], chunk: int = 4, **kw) -> None:
    with PackedWriter(path, has_forces=True, has_dipoles="D" in mols[0], **kw) as w:
        for a in range(0, len(mols), chunk):
            part = mols[a : a + chunk]
            w.append(
                n_atoms=[len(m["Z"]) for m in part],
                **{
                    k: (np.concatenate if ARRAYS[k].per == "atom" else np.stack)(
                        [m[k] for m in part]
                    )
                    for k in w.keys
                },
            )
        w.source = {"file": "x.npz", "sha256": "0" * 64}


def test_round_trip_and_manifest(tmp_path: Path) -> None:
    mols = _mols(23, seed=1)
    _write(tmp_path / "p", mols)
    ds = PackedDataset(tmp_path / "p")
    assert len(ds) == 23 and ds.keys == ["Z", "R", "F", "E", "Qtot", "D"]
    sizes = [len(m["Z"]) for m in mols]
    np.testing.assert_array_equal(ds.n_atoms, sizes)
    np.testing.assert_array_equal(ds.offsets, np.concatenate([[0], np.cumsum(sizes)]))
    for i, m in enumerate(mols):
        got = ds.molecule(i)
        for key in ("Z", "R", "F", "D"):
            np.testing.assert_array_equal(got[key], m[key])
        assert got["E"] == m["E"] and got["Qtot"] == m["Qtot"]
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["n_molecules"] == 23 and manifest["n_atoms_total"] == sum(sizes)
    assert manifest["source"]["file"] == "x.npz"
    for entry in manifest["arrays"].values():
        p = tmp_path / "p" / entry["file"]
        assert entry["bytes"] == p.stat().st_size
        assert entry["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
        assert entry["sha256"] == sha256_file(p, chunk_bytes=7)


def test_legacy_directory_without_manifest(tmp_path: Path) -> None:
    path = write_legacy_packed(tmp_path / "old", 15, seed=2)
    (path / "n_atoms.npy").unlink()  # derivable from offsets: must not be needed
    ds = PackedDataset(path)
    assert ds.manifest is None
    assert ds.units["energy"] == "eV" and ds.units["length"] == "Angstrom"
    assert ds.has("F") and not ds.has("D")
    offsets = np.load(path / "offsets.npy")
    np.testing.assert_array_equal(ds.n_atoms, np.diff(offsets))
    z = np.fromfile(path / "Z_pack.int32", dtype="<i4")
    r = np.fromfile(path / "R_pack.f32", dtype="<f4").reshape(-1, 3)
    for i in range(len(ds)):
        a, b = offsets[i], offsets[i + 1]
        np.testing.assert_array_equal(ds.molecule(i)["Z"], z[a:b])
        np.testing.assert_array_equal(ds.molecule(i)["R"], r[a:b])


@pytest.mark.parametrize("name", ["R_pack.f32", "E.f64", "F_pack.f32"])
def test_truncated_file_is_named(tmp_path: Path, name: str) -> None:
    _write(tmp_path / "p", _mols(6, seed=3))
    p = tmp_path / "p" / name
    p.write_bytes(p.read_bytes()[:-4])
    with pytest.raises(InputError, match=f"{name}: .* bytes but"):
        PackedDataset(tmp_path / "p")


@pytest.mark.parametrize("name", ["Z_pack.int32", "offsets.npy", "D.f64"])
def test_missing_file_is_named(tmp_path: Path, name: str) -> None:
    """Required files, and optional ones the manifest lists, must exist."""
    _write(tmp_path / "p", _mols(6, seed=3))
    (tmp_path / "p" / name).unlink()
    with pytest.raises(InputError, match=f"{name}: missing file"):
        PackedDataset(tmp_path / "p")


def test_manifest_count_mismatch(tmp_path: Path) -> None:
    _write(tmp_path / "p", _mols(6, seed=3))
    mpath = tmp_path / "p" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["n_molecules"] = 7
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="n_molecules=7"):
        PackedDataset(tmp_path / "p")


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    mols = _mols(5, seed=4)
    with (
        pytest.raises(RuntimeError),
        PackedWriter(tmp_path / "p", has_forces=True, has_dipoles=True) as w,
    ):
        w.append(
            n_atoms=[len(mols[0]["Z"])],
            **{k: np.atleast_1d(mols[0][k]) for k in ("Z", "R", "F", "E", "Qtot")},
            D=mols[0]["D"][None],
        )
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    _write(tmp_path / "p", _mols(3, seed=5))
    with pytest.raises(InputError, match="already exists"):
        _write(tmp_path / "p", _mols(4, seed=6))
    _write(tmp_path / "p", _mols(4, seed=6), overwrite=True)
    assert len(PackedDataset(tmp_path / "p")) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=0, max_size=60),
    budget=st.integers(1, 100),
)
def test_molecule_chunks_cover_once_within_budget(
    sizes: list[int], budget: int
) -> None:
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    chunks = list(molecule_chunks(offsets, budget))
    covered = [i for a, b in chunks for i in range(a, b)]
    assert covered == list(range(len(sizes)))
    for a, b in chunks:
        atoms = offsets[b] - offsets[a]
        assert b > a and (atoms <= budget or b - a == 1)


def test_every_file_is_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash right after the rename must not leave a directory whose files are
    still only in the page cache: every file (and the directory) is fsynced first."""
    from physpack.data import packed as packed_module

    events: list[str] = []
    real_fsync, real_replace = packed_module.os.fsync, packed_module.replace_dir

    def fsync(fd: int) -> None:
        events.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    def replace(src: Path, dst: Path) -> None:
        events.append("<rename>")
        real_replace(src, dst)

    monkeypatch.setattr(packed_module.os, "fsync", fsync)
    monkeypatch.setattr(packed_module, "replace_dir", replace)
    _write(tmp_path / "p", _mols(5, seed=7))
    before = events[: events.index("<rename>")]
    files = {p.name for p in (tmp_path / "p").iterdir()}
    assert files <= set(before), files - set(before)
    assert any(name.startswith(".p.tmp-") for name in before)  # the directory
    assert events[-1] == tmp_path.name  # the parent, after the rename


def test_a_descriptor_is_refused_with_a_pointer_to_open_dataset(tmp_path: Path) -> None:
    """PackedDataset takes directories only; descriptors have one entry point."""
    from physpack.data.descriptor import open_dataset, write_descriptor

    _write(tmp_path / "p", _mols(3, seed=5))
    desc = write_descriptor(tmp_path / "dataset.json", tmp_path / "p", {})
    with pytest.raises(InputError, match="dataset.json: a file, not a packed direc"):
        PackedDataset(desc)
    with pytest.raises(InputError, match="open_dataset"):
        PackedDataset(desc)
    assert open_dataset(desc).n_molecules == 3
    with pytest.raises(InputError, match="declares units"):
        open_dataset(desc, units={"energy": "kcal/mol"})


def test_packed_and_shards_do_not_import_the_descriptor_module() -> None:
    """descriptor reads packed and shards, never the reverse (no import circle)."""
    import physpack.data.packed as packed_module
    import physpack.data.shards as shards_module

    for module in (packed_module, shards_module):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        } | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert not {m for m in imported if "descriptor" in m}, module.__name__
