"""Sharded datasets: shards converted one by one and read as one dataset, with
global indices, by the loader, split, stats and validation."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from physpack.config import DataConfig, LoaderConfig, SplitConfig
from physpack.data.convert import convert_npz
from physpack.data.descriptor import describe_shards, open_dataset
from physpack.data.loader import PackedMemmapLoader
from physpack.data.packed import ARRAYS, PackedDataset
from physpack.data.shards import ShardedArray, ShardedDataset
from physpack.data.split import make_split
from physpack.data.stats import packing_stats
from physpack.data.synthetic import write_padded_npz
from physpack.data.validate import combine_shard_reports, validate_packed
from physpack.errors import ConfigError, InputError

SIZES = (40, 25, 35)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, list[Path]]:
    """Three converted shards of different sizes and their descriptor."""
    root = tmp_path_factory.mktemp("sharded")
    dirs = []
    for k, n in enumerate(SIZES):
        npz = write_padded_npz(root / f"part{k}.npz", n, seed=10 + k)
        dirs.append(convert_npz(npz, root / "shards" / f"part{k}").path)
    return describe_shards(root / "dataset.json", dirs), dirs


def concatenated(dirs: list[Path], key: str) -> np.ndarray:
    return np.concatenate([np.asarray(PackedDataset(d).array(key)) for d in dirs])


def test_sharded_array_reads_as_the_concatenation():
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 3)).astype(np.float32) for n in (5, 0, 7, 3)]
    whole = np.concatenate(parts)
    arr = ShardedArray(parts)
    assert arr.shape == whole.shape and len(arr) == 15 and arr.dtype == np.float32
    for a, b in [(0, 15), (3, 9), (5, 12), (12, 15), (6, 6), (14, 99)]:
        np.testing.assert_array_equal(arr[a:b], whole[a:b])
    rows = rng.integers(0, 15, size=40)
    np.testing.assert_array_equal(arr[rows], whole[rows])
    out = np.empty((40, 3), np.float32)
    arr.take(rows, out)
    np.testing.assert_array_equal(out, whole[rows])
    np.testing.assert_array_equal(arr[-1], whole[-1])
    np.testing.assert_array_equal(np.asarray(arr), whole)
    with pytest.raises(IndexError):
        arr[15]
    # offsets: each part's rows plus its shift
    off = ShardedArray(
        [np.array([0, 2, 5]), np.array([0, 1]), np.array([0])], [0, 7, 9]
    )
    np.testing.assert_array_equal(np.asarray(off), [0, 2, 5, 7, 8, 9])
    np.testing.assert_array_equal(off[np.array([5, 0, 3])], [9, 0, 7])


def test_shards_read_as_one_dataset_with_global_indices(shards):
    descriptor, dirs = shards
    ds = open_dataset(descriptor)
    assert isinstance(ds, ShardedDataset)
    assert ds.n_molecules == sum(SIZES)
    offsets = [np.asarray(PackedDataset(d).offsets) for d in dirs]
    shift = np.cumsum([0] + [o[-1] for o in offsets])
    want = np.concatenate([o[:-1] + s for o, s in zip(offsets, shift, strict=False)])
    np.testing.assert_array_equal(np.asarray(ds.offsets), [*want, shift[-1]])
    for key in ds.keys:
        np.testing.assert_array_equal(
            np.asarray(ds.array(key)), concatenated(dirs, key)
        )
    # molecule 40 is the first of the second shard
    first = PackedDataset(dirs[1]).molecule(0)
    got = ds.molecule(SIZES[0])
    for key in first:
        np.testing.assert_array_equal(got[key], first[key])
    # streaming chunks stay inside shards and cover everything once
    chunks = list(ds.atom_chunks(max_atoms=200))
    assert next(c.start for c in chunks) == 0 and chunks[-1].stop == ds.n_molecules
    assert all(a.stop == b.start for a, b in itertools.pairwise(chunks))
    assert sum(c.hi - c.lo for c in chunks) == ds.n_atoms_total


def test_loader_reads_every_molecule_of_every_shard_once_per_epoch(shards):
    descriptor, dirs = shards
    loader = PackedMemmapLoader(descriptor, batch_size=8, seed=1, prefetch=0)
    R = concatenated(dirs, "R")
    offsets = np.asarray(open_dataset(descriptor).offsets)
    for epoch in range(2):
        seen = []
        for batch in loader.packed_batches():
            ids = batch["mol_index"][batch["molecule_mask"]]
            seen += ids.tolist()
            # the atoms of each molecule are its own, from its shard
            start = 0
            for i, n in zip(ids, batch["N"][batch["molecule_mask"]], strict=True):
                np.testing.assert_array_equal(
                    batch["R"][start : start + n], R[offsets[i] : offsets[i] + n]
                )
                start += n
        assert sorted(seen) == list(range(sum(SIZES))), epoch


def test_split_and_stats_of_shards_equal_those_of_one_directory(shards, tmp_path):
    """The same molecules in one NPZ and in shards: same split, same statistics."""
    descriptor, dirs = shards
    one = tmp_path / "one.npz"
    parts = [PackedDataset(d) for d in dirs]
    amax = max(int(np.max(p.n_atoms)) for p in parts)
    n = sum(SIZES)
    arrays = {
        "R": np.zeros((n, amax, 3), np.float32),
        "Z": np.zeros((n, amax), np.int32),
        "F": np.zeros((n, amax, 3), np.float32),
    }
    per_mol = {"E": [], "Q": [], "D": [], "N": []}
    i = 0
    for p in parts:
        for m in p:
            k = m["Z"].size
            arrays["R"][i, :k], arrays["Z"][i, :k], arrays["F"][i, :k] = (
                m["R"],
                m["Z"],
                m["F"],
            )
            per_mol["E"].append(m["E"])
            per_mol["Q"].append(m["Qtot"])
            per_mol["D"].append(m["D"])
            per_mol["N"].append(k)
            i += 1
    np.savez(one, **arrays, **{k: np.asarray(v) for k, v in per_mol.items()})
    single = convert_npz(one, tmp_path / "one").path
    for key in ARRAYS:
        if PackedDataset(single).has(key) or key in ("Z", "R", "E", "Qtot"):
            np.testing.assert_array_equal(
                np.asarray(open_dataset(descriptor).array(key)),
                np.asarray(PackedDataset(single).array(key)),
            )
    cfg = SplitConfig(valid=0.2, test=0.2, seed=3, group_by="formula")
    a, b = make_split(descriptor, cfg), make_split(single, cfg)
    for name in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    loader = LoaderConfig(batch_size=8)
    sa, sb = packing_stats(descriptor, loader), packing_stats(single, loader)
    for key in ("n_molecules", "size_histogram", "element_counts", "energy", "padding"):
        assert json.dumps(sa[key], sort_keys=True) == json.dumps(
            sb[key], sort_keys=True
        )


def test_validation_of_shards_names_the_shard_and_the_global_molecule(shards, tmp_path):
    descriptor, dirs = shards
    report = validate_packed(descriptor)
    assert report.ok, report.one_line()
    assert report.summary["n_molecules"] == sum(SIZES)
    assert [s["n_molecules"] for s in report.summary["shards"]] == list(SIZES)
    # a copy of the dataset whose last shard has a non-finite energy
    import shutil

    copies = [tmp_path / d.name for d in dirs]
    for d, c in zip(dirs, copies, strict=True):
        shutil.copytree(d, c)
    energies = np.memmap(copies[2] / ARRAYS["E"].file, dtype="<f8", mode="r+")
    energies[4] = np.nan
    energies.flush()
    del energies
    bad = describe_shards(tmp_path / "dataset.json", copies)
    config = dataclasses.replace(validate_packed(descriptor).config, checksums=False)
    report = validate_packed(bad, config)
    assert not report.ok
    finite = [p for p in report.errors if p.check == "finite_E"]
    index = SIZES[0] + SIZES[1] + 4
    assert [p.molecule for p in finite] == [index]
    assert str(copies[2]) in finite[0].message
    assert f"dataset molecule {index}" in finite[0].message
    # combining per-shard reports gives the same report
    shard_reports = [validate_packed(c, config) for c in copies]
    combined = combine_shard_reports(bad, shard_reports, config)
    assert combined.error_counts == report.error_counts
    assert [p.molecule for p in combined.errors] == [p.molecule for p in report.errors]
    # reports in the wrong order are refused
    swapped = combine_shard_reports(bad, shard_reports[::-1], config)
    assert swapped.error_counts.get("shards") == 2


def test_a_shard_replaced_after_the_dataset_was_described_is_refused(shards, tmp_path):
    descriptor, _dirs = shards
    text = json.loads(descriptor.read_text())
    text["shards"][1]["n_molecules"] += 1
    moved = descriptor.parent / "stale.json"
    moved.write_text(json.dumps(text))
    with pytest.raises(InputError, match="replaced after the dataset was described"):
        open_dataset(moved)
    with pytest.raises(InputError, match="not a packed directory.*open_dataset"):
        PackedDataset(descriptor)


def test_npz_files_expand_globs_in_order_and_refuse_clashes(tmp_path):
    for name in ("b.npz", "a.npz", "c.npz"):
        (tmp_path / name).write_bytes(b"")
    data = DataConfig(npz="*.npz")
    assert data.sharded and data.npz_files(tmp_path) == ["a.npz", "b.npz", "c.npz"]
    assert not DataConfig(npz="a.npz").sharded
    assert DataConfig(npz=("c.npz", "a.npz")).npz_files(tmp_path) == ["c.npz", "a.npz"]
    with pytest.raises(ConfigError, match="no file matches"):
        DataConfig(npz="*.h5").npz_files(tmp_path)
    with pytest.raises(ConfigError, match="listed twice"):
        DataConfig(npz=("a.npz", "a.npz")).npz_files(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.npz").write_bytes(b"")
    with pytest.raises(ConfigError, match="its own file name"):
        DataConfig(npz=("a.npz", "sub/a.npz")).npz_files(tmp_path)
