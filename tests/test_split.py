"""physpack.data.split: disjoint, complete, deterministic, grouped by formula."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from physpack.config import SplitConfig
from physpack.data import split
from physpack.data.packed import PackedDataset, PackedWriter
from physpack.data.synthetic import write_legacy_packed
from physpack.errors import ConfigError

fractions = st.floats(0.0, 0.45, allow_nan=False)


def _check(n: int, subsets: tuple[np.ndarray, ...], groups: np.ndarray | None) -> None:
    joined = np.concatenate(subsets)
    assert np.array_equal(np.sort(joined), np.arange(n))  # complete, disjoint
    for s in subsets:
        assert s.dtype == np.int64 and np.all(np.diff(s) > 0)  # sorted, unique
    if groups is not None:
        owner = {}
        for k, s in enumerate(subsets):
            for g in np.unique(groups[s]):
                assert owner.setdefault(int(g), k) == k  # a group in one subset only


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 300),
    valid=fractions,
    test=fractions,
    seed=st.integers(0, 2**32 - 1),
    n_groups=st.one_of(st.none(), st.integers(1, 40)),
    data=st.data(),
)
def test_split_properties(n, valid, test, seed, n_groups, data) -> None:
    groups = None
    if n_groups is not None:
        groups = np.array(
            data.draw(st.lists(st.integers(0, n_groups - 1), min_size=n, max_size=n))
        )
    config = SplitConfig(valid=valid, test=test, seed=seed)
    try:
        subsets = split.split_indices(n, config, groups)
    except ConfigError as exc:
        assert "would be empty" in str(exc)
        if groups is not None:  # only when there are fewer groups than subsets
            assert np.unique(groups).size < 1 + (valid > 0) + (test > 0)
        return
    _check(n, subsets, groups)
    again = split.split_indices(n, config, groups)
    assert all(np.array_equal(a, b) for a, b in zip(subsets, again))  # deterministic
    train, valid_idx, test_idx = subsets
    assert train.size > 0
    if valid == 0:
        assert valid_idx.size == 0
    if test == 0:
        assert test_idx.size == 0
    if groups is None:  # molecule granularity: sizes are the rounded fractions
        assert abs(test_idx.size - test * n) <= 0.5
        assert abs(test_idx.size + valid_idx.size - (test + valid) * n) <= 0.5
    else:  # every subset within the largest group of its target, unless a small
        # target had to get a whole group to be non-empty (then a few groups)
        biggest = np.bincount(groups).max()
        targets = np.array([1 - valid - test, valid, test]) * n
        roomy = targets[targets > 0].min() >= 3 * biggest
        for subset, target in zip(subsets, targets):
            assert abs(subset.size - target) <= (1 if roomy else 3) * biggest + 1e-9


def test_large_group_never_fails_over_100_seeds() -> None:
    """One composition holding 30 % of the data: every seed gives a valid split,
    each subset within that group's size of its target."""
    rng = np.random.default_rng(0)
    small = rng.integers(1, 6, size=60)  # 60 small groups of 1..5 molecules
    sizes = np.concatenate([[int(0.3 * (small.sum() / 0.7))], small])
    groups = np.repeat(np.arange(sizes.size), sizes)
    n = groups.size
    config = SplitConfig(valid=0.1, test=0.1)
    assignments = set()
    for seed in range(100):
        subsets = split.split_indices(n, dataclasses.replace(config, seed=seed), groups)
        _check(n, subsets, groups)
        for subset, fraction in zip(subsets, (0.8, 0.1, 0.1)):
            assert subset.size > 0
            assert abs(subset.size - fraction * n) <= sizes.max()
        assignments.add(subsets[2].tobytes())
    assert len(assignments) > 50  # the seed still chooses the split


def test_seed_changes_split() -> None:
    a = split.split_indices(200, SplitConfig(seed=1))
    b = split.split_indices(200, SplitConfig(seed=2))
    assert not np.array_equal(a[2], b[2])


@pytest.mark.parametrize(
    ("n", "config", "needle"),
    [
        (100, SplitConfig(valid=0.5, test=0.5), "must be < 1"),
        (100, SplitConfig(valid=-0.1), "split.valid"),
        (3, SplitConfig(valid=0.1, test=0.1), "test subset would be empty"),
    ],
)
def test_bad_fractions(n: int, config: SplitConfig, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        split.split_indices(n, config)


FORMULAS = [[6, 1, 1, 1, 1], [8, 1, 1], [6, 6, 8, 1, 1, 1, 1], [7, 1, 1, 1], [1, 1]]


def _write_conformers(path: Path, formulas: list[list[int]], n: int = 60) -> Path:
    """``n`` molecules drawn from ``formulas``, atoms in shuffled order each time."""
    rng = np.random.default_rng(0)
    zs = [rng.permutation(formulas[k]) for k in rng.integers(0, len(formulas), n)]
    sizes = [len(z) for z in zs]
    with PackedWriter(path, has_forces=False, has_dipoles=False) as w:
        w.append(
            n_atoms=sizes,
            Z=np.concatenate(zs),
            R=rng.normal(size=(sum(sizes), 3)),
            E=rng.normal(size=n),
            Qtot=np.zeros(n),
        )
    return path


@pytest.fixture
def conformers(tmp_path: Path) -> Path:
    """60 molecules of 5 compositions."""
    return _write_conformers(tmp_path / "conf", FORMULAS)


def test_formula_groups(conformers: Path) -> None:
    ds = PackedDataset(conformers)
    groups, formulas = split.formula_groups(ds, atoms_per_chunk=9)
    assert sorted(formulas) == sorted(["CH4", "H2O", "C2H4O", "H3N", "H2"])
    for i in range(len(ds)):
        for j in range(len(ds)):
            same = Counter(ds.molecule(i)["Z"]) == Counter(ds.molecule(j)["Z"])
            assert same == (groups[i] == groups[j])


def test_cli_grouped_split(conformers: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "data" / "split.npz"
    cfg = '{"valid": 0.2, "test": 0.2, "seed": 3, "group_by": "formula"}'
    assert split.main([str(conformers), "--output", str(out), "--config", cfg]) == 0
    assert "group_by=formula" in capsys.readouterr().out
    ds = PackedDataset(conformers)
    with np.load(out) as f:
        saved = {k: f[k] for k in f.files}
    subsets = [saved[k] for k in split.SUBSETS]
    compositions = [
        {tuple(sorted(ds.molecule(int(i))["Z"])) for i in s} for s in subsets
    ]
    assert all(s.size for s in subsets)
    assert not (compositions[0] & compositions[1] or compositions[0] & compositions[2])
    assert not compositions[1] & compositions[2]
    _check(len(ds), tuple(subsets), None)
    assert int(saved["seed"]) == 3 and str(saved["group_by"]) == "formula"
    assert float(saved["valid_fraction"]) == 0.2 and int(saved["n_molecules"]) == 60
    assert int(saved["n_groups"]) == 5
    assert str(saved["offsets_sha256"]) == split.offsets_fingerprint(ds)
    assert sorted(p.name for p in out.parent.iterdir()) == ["split.npz"]
    # the same config gives the same file contents
    out2 = tmp_path / "again.npz"
    assert split.main([str(conformers), "--output", str(out2), "--config", cfg]) == 0
    with np.load(out2) as f:
        assert all(np.array_equal(f[k], saved[k]) for k in split.SUBSETS)


def test_directory_without_manifest(tmp_path: Path) -> None:
    old = write_legacy_packed(tmp_path / "old", 50, seed=2)
    (old / "n_atoms.npy").unlink()
    result = split.make_split(old, SplitConfig(valid=0.2, test=0.2, group_by="formula"))
    _check(50, (result.train, result.valid, result.test), None)
    assert result.n_molecules == 50 and result.test.size > 0


def test_cli_error_leaves_no_output(tmp_path: Path, capsys) -> None:
    one_formula = _write_conformers(tmp_path / "one", [[6, 1, 1, 1, 1]])
    out = tmp_path / "s.npz"
    cfg = '{"valid": 0.1, "test": 0.1, "group_by": "formula"}'
    # every molecule is CH4: one group cannot feed three subsets
    assert split.main([str(one_formula), "--output", str(out), "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert "would be empty" in err and "in 1 formula group(s)" in err
    assert not out.exists() and list(tmp_path.glob(".s.npz*")) == []
    assert split.main([str(one_formula), "--output", str(out), "--valid", "1.2"]) == 2
    assert "split.valid" in capsys.readouterr().err
    assert not out.exists()
    # without grouping the same data splits fine
    assert split.main([str(one_formula), "--output", str(out)]) == 0
    assert out.exists()
