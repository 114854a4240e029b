"""physpack.data.loader: packed and dense batches, epochs, resume, subsets, errors."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from physpack.config import LoaderConfig
from physpack.data.loader import (
    PackedMemmapLoader,
    ProcessSlots,
    from_config,
    greedy_bounds,
    pair_template,
)
from physpack.data.packed import PackedDataset, PackedWriter
from physpack.data.padding import epoch_padding_stats
from physpack.data.pairs import cutoff_pairs
from physpack.data.synthetic import (
    qm9_like_sizes,
    write_legacy_packed,
    write_padded_npz,
)
from physpack.errors import ConfigError, InputError

PER_ATOM = ("Z", "R", "F")
PER_MOL = ("E", "Qtot", "D")
FAST = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def write_packed_from_npz(npz: Path, out: Path) -> Path:
    """Unpad a padded NPZ into a packed directory with PackedWriter."""
    with np.load(npz) as d:
        N = d["N"]
        mask = np.arange(d["Z"].shape[1])[None, :] < N[:, None]
        with PackedWriter(out, has_forces=True, has_dipoles=True) as w:
            w.append(
                n_atoms=N,
                Z=d["Z"][mask],
                R=d["R"][mask],
                F=d["F"][mask],
                E=d["E"],
                Qtot=d["Q"],
                D=d["D"],
            )
    return out


def write_packed_sizes(out: Path, sizes: list[int], seed: int = 0) -> Path:
    """A packed directory with molecules of the given sizes and random contents."""
    rng = np.random.default_rng(seed)
    n = np.asarray(sizes, dtype=np.int32)
    t = int(n.sum())
    with PackedWriter(out, has_forces=True, has_dipoles=True) as w:
        w.append(
            n_atoms=n,
            Z=rng.integers(1, 10, t),
            R=rng.normal(size=(t, 3)),
            F=rng.normal(size=(t, 3)),
            E=rng.normal(size=n.size),
            Qtot=rng.integers(-1, 2, n.size).astype(float),
            D=rng.normal(size=(n.size, 3)),
        )
    return out


@pytest.fixture
def packed(tmp_path: Path) -> Path:
    """200 QM9-like molecules (all keys) as a packed directory with a manifest."""
    npz = write_padded_npz(tmp_path / "d.npz", 200, seed=5)
    return write_packed_from_npz(npz, tmp_path / "packed")


def collect(batches: Iterator[dict]) -> list[dict]:
    return [dict(b) for b in batches]


def real_ids(batches: list[dict]) -> np.ndarray:
    return np.concatenate([b["mol_index"][b["molecule_mask"]] for b in batches])


def check_packed_invariants(
    batch: dict, loader: PackedMemmapLoader, kind: int = 0
) -> None:
    """Everything the batch contract promises, checked from the batch alone."""
    budget = loader.budgets[kind]
    A, P, M = budget.max_atoms, budget.max_pairs, budget.max_molecules
    for key, (shape, dtype) in loader.batch_shapes(kind).items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    am, mm, pm = batch["atom_mask"], batch["molecule_mask"], batch["pair_mask"]
    k, t, n_pairs = int(mm.sum()), int(am.sum()), int(pm.sum())
    # reserved padding slots and contiguous real slots
    assert not am[-1] and not mm[-1]
    assert am[:t].all() and mm[:k].all() and pm[:n_pairs].all()
    seg = batch["batch_segments"]
    assert (seg[~am] == M - 1).all()
    assert np.array_equal(np.bincount(seg[am], minlength=M)[:k], batch["N"][:k])
    assert (np.diff(seg[am]) >= 0).all()  # molecules in slot order
    assert (batch["N"][~mm] == 0).all() and (batch["mol_index"][~mm] == -1).all()
    assert (batch["Z"][~am] == 0).all() and (batch["R"][~am] == 0).all()
    assert (batch["F"][~am] == 0).all() and (batch["E"][~mm] == 0).all()
    assert (batch["dst_idx"][~pm] == A - 1).all()
    assert (batch["src_idx"][~pm] == A - 1).all()
    # pairs against brute force: every ordered i != j with the same molecule slot
    real = np.flatnonzero(am)
    same = seg[real][:, None] == seg[real][None, :]
    np.fill_diagonal(same, False)
    i, j = np.nonzero(same)
    want = set(zip(real[i].tolist(), real[j].tolist()))
    got = list(zip(batch["dst_idx"][pm].tolist(), batch["src_idx"][pm].tolist()))
    assert len(got) == len(set(got)) and set(got) == want
    assert n_pairs <= P


# -- pair templates and greedy packing -------------------------------------------
def test_pair_template_matches_e3x_and_brute_force() -> None:
    for n in range(5):
        d, s = pair_template(n)
        want = [(i, j) for i in range(n) for j in range(n) if i != j]
        assert list(zip(d.tolist(), s.tolist())) == want  # destination-major
    e3x = pytest.importorskip("e3x")
    ed, es = e3x.ops.sparse_pairwise_indices(6)
    d, s = pair_template(6)
    assert np.array_equal(d, np.asarray(ed)) and np.array_equal(s, np.asarray(es))


@FAST
@given(
    sizes=st.lists(st.integers(0, 8), min_size=1, max_size=300),
    window=st.integers(1, 50),
)
def test_greedy_bounds_is_greedy(sizes: list[int], window: int) -> None:
    n = np.asarray(sizes, dtype=np.int64)
    order = np.arange(n.size)[::-1].copy()
    caps = (20, 60, 5)
    bounds = greedy_bounds(n, order, *caps, window=window)
    with pytest.raises(ValueError, match="does not fit"):
        greedy_bounds(np.append(n, 9), np.arange(n.size + 1), *caps, window=window)
    assert bounds[0] == 0 and bounds[-1] == n.size and (np.diff(bounds) > 0).all()
    for a, b in itertools.pairwise(bounds):
        w = n[order[a:b]]
        assert w.sum() <= caps[0] and (w * (w - 1)).sum() <= caps[1]
        assert b - a <= caps[2]
        if b < n.size:  # closed only because the next molecule would overflow
            w2 = n[order[a : b + 1]]
            assert (
                w2.sum() > caps[0]
                or (w2 * (w2 - 1)).sum() > caps[1]
                or b + 1 - a > caps[2]
            )


# -- packed batches -----------------------------------------------------------------
@FAST
@given(
    sizes=st.lists(st.integers(1, 15), min_size=1, max_size=80),
    batch_size=st.integers(1, 12),
    bucket_size=st.integers(1, 40),
    seed=st.integers(0, 3),
    shuffle=st.booleans(),
    mix=st.booleans(),
    subset_seed=st.one_of(st.none(), st.integers(0, 100)),
)
def test_exactly_once_and_contract(
    sizes, batch_size, bucket_size, seed, shuffle, mix, subset_seed
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_packed_sizes(Path(tmp) / "p", sizes)
        indices = None
        if subset_seed is not None:
            rng = np.random.default_rng(subset_seed)
            indices = rng.permutation(len(sizes))[: rng.integers(1, len(sizes) + 1)]
        loader = PackedMemmapLoader(
            path,
            batch_size,
            shuffle=shuffle,
            bucket_size=bucket_size,
            seed=seed,
            indices=indices,
            prefetch=1,
            mix_sizes=mix,
            giant_atoms=None,  # one budget: the contract below is that budget's
        )
        want = np.sort(np.arange(len(sizes)) if indices is None else indices)
        for epoch in range(2):
            batches = collect(loader.packed_batches())
            assert len(batches) == loader.num_batches(epoch)
            ids = real_ids(batches)
            assert np.array_equal(np.sort(ids), want), "each molecule exactly once"
            for b in batches:
                check_packed_invariants(b, loader)
        assert loader.epoch == 2 and loader.position == 0


def test_batches_hold_the_dataset_values(packed: Path) -> None:
    ds = PackedDataset(packed)
    loader = PackedMemmapLoader(packed, 16, prefetch=2)
    seen = 0
    for b in loader.packed_batches():
        check_packed_invariants(b, loader)
        for slot in np.flatnonzero(b["molecule_mask"]):
            mol = ds.molecule(int(b["mol_index"][slot]))
            atoms = b["batch_segments"] == slot
            for key in PER_ATOM:
                np.testing.assert_array_equal(b[key][atoms], mol[key])
            for key in PER_MOL:
                np.testing.assert_array_equal(b[key][slot], mol[key])
            seen += 1
    assert seen == len(ds)


def test_shapes_constant_across_batches_and_epochs(packed: Path) -> None:
    loader = PackedMemmapLoader(packed, 8, bucket_size=32, prefetch=0)
    shapes = {
        tuple((k, v.shape, v.dtype.str) for k, v in sorted(b.items()))
        for _ in range(3)
        for b in loader.packed_batches()
    }
    assert len(shapes) == 1


def test_determinism_and_epoch_dependence(packed: Path) -> None:
    def run(seed: int, epochs: int) -> list[np.ndarray]:
        loader = PackedMemmapLoader(packed, 8, seed=seed, bucket_size=50)
        return [
            np.concatenate([b["mol_index"] for b in loader.packed_batches()])
            for _ in range(epochs)
        ]

    a, b = run(0, 2), run(0, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], a[1]), "epochs differ"
    assert not np.array_equal(a[0], run(1, 1)[0]), "seeds differ"
    # epoch 1 depends on (seed, 1) only, not on having iterated epoch 0
    fresh = PackedMemmapLoader(packed, 8, seed=0, bucket_size=50, prefetch=0)
    direct = np.concatenate([x["mol_index"] for x in fresh.packed_batches(epoch=1)])
    assert np.array_equal(direct, a[1])


def test_no_shuffle_is_epoch_independent(packed: Path) -> None:
    loader = PackedMemmapLoader(packed, 8, shuffle=False)
    e0 = real_ids(collect(loader.packed_batches()))
    e1 = real_ids(collect(loader.packed_batches()))
    assert np.array_equal(e0, e1)


@FAST
@given(stop=st.integers(0, 60), prefetch=st.integers(0, 3))
def test_resume_mid_epoch_round_trip(packed: Path, stop: int, prefetch: int) -> None:
    reference = PackedMemmapLoader(packed, 8, seed=7, prefetch=0)
    full = [b for _ in range(3) for b in reference.packed_batches()]
    first = PackedMemmapLoader(packed, 8, seed=7, prefetch=prefetch)
    taken: list[dict] = []
    while len(taken) < stop:  # consume `stop` batches, across epoch ends
        for b in first.packed_batches():
            taken.append(b)
            if len(taken) == stop:
                break
    state = json.loads(json.dumps(first.state_dict()))
    second = PackedMemmapLoader(packed, 8, seed=123, prefetch=prefetch)
    second.load_state_dict(state)
    rest = []
    while len(taken) + len(rest) < len(full):
        rest.extend(second.packed_batches())
    for want, got in zip(full, taken + rest):
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])


def test_state_from_another_subset_is_refused(packed: Path) -> None:
    a = PackedMemmapLoader(packed, 8, indices=np.arange(100))
    b = PackedMemmapLoader(packed, 8, indices=np.arange(1, 101))
    with pytest.raises(InputError, match="subset_crc32"):
        b.load_state_dict(a.state_dict())
    c = PackedMemmapLoader(packed, 8, indices=np.arange(100), max_atoms=512)
    with pytest.raises(InputError, match="budget"):
        c.load_state_dict(a.state_dict())


def test_legacy_directory_without_dipoles(tmp_path: Path) -> None:
    path = write_legacy_packed(tmp_path / "legacy", 40, seed=2)
    loader = PackedMemmapLoader(path, 4)
    batches = collect(loader.packed_batches())
    assert "D" not in batches[0] and "F" in batches[0]
    assert np.array_equal(np.sort(real_ids(batches)), np.arange(40))
    for b in batches:
        check_packed_invariants(b, loader)


def test_budget_derivation_and_efficiency(tmp_path: Path) -> None:
    from physpack.data.synthetic import qm9_like_sizes

    sizes = qm9_like_sizes(6000, np.random.default_rng(0))
    path = write_packed_sizes(tmp_path / "q", sizes.tolist())
    stats = epoch_padding_stats(path, batch_size=64)
    assert stats["max_atoms"] % 64 == 0 and stats["max_pairs"] % 64 == 0
    assert stats["max_molecules"] % 8 == 0
    assert 0.95 * 64 <= stats["mean_molecules_per_batch"] <= 1.15 * 64
    assert stats["atom_efficiency"] >= 0.95 and stats["pair_efficiency"] >= 0.90
    assert stats["dense_atom_efficiency"] < stats["atom_efficiency"]


def test_padding_stats_agree_with_batches(packed: Path) -> None:
    stats = epoch_padding_stats(packed, batch_size=16, bucket_size=64, seed=3)
    loader = PackedMemmapLoader(packed, 16, bucket_size=64, seed=3)
    batches = collect(loader.packed_batches())
    A, P, M = (stats["max_atoms"], stats["max_pairs"], stats["max_molecules"])
    assert (A, P, M) == (
        loader.budget.max_atoms,
        loader.budget.max_pairs,
        loader.budget.max_molecules,
    )
    assert stats["n_batches"] == len(batches)
    slots = len(batches)
    assert stats["atom_efficiency"] == pytest.approx(
        sum(b["atom_mask"].sum() for b in batches) / (slots * A)
    )
    assert stats["pair_efficiency"] == pytest.approx(
        sum(b["pair_mask"].sum() for b in batches) / (slots * P)
    )
    assert stats["molecule_efficiency"] == pytest.approx(
        sum(b["molecule_mask"].sum() for b in batches) / (slots * M)
    )
    dense = collect(loader.batches(num_atoms=stats["dense_num_atoms"]))
    assert stats["dense_atom_efficiency"] == pytest.approx(
        sum(b["atom_mask"].sum() for b in dense)
        / sum(b["atom_mask"].size for b in dense)
    )
    assert stats["dense_pair_efficiency"] == pytest.approx(
        sum(b["pair_mask"].sum() for b in dense)
        / sum(b["pair_mask"].size for b in dense)
    )


# -- dense batches ------------------------------------------------------------------
@pytest.mark.parametrize("num_atoms", [None, 40])
def test_dense_equals_packed_molecule_by_molecule(packed: Path, num_atoms) -> None:
    loader = PackedMemmapLoader(packed, 24, prefetch=0)
    by_id: dict[int, dict] = {}
    for b in loader.packed_batches():
        for slot in np.flatnonzero(b["molecule_mask"]):
            atoms = np.flatnonzero(b["batch_segments"] == slot)
            pm = np.isin(b["dst_idx"], atoms) & b["pair_mask"]
            mol = {k: b[k][atoms] for k in PER_ATOM}
            mol |= {k: b[k][slot] for k in (*PER_MOL, "N")}
            mol["pairs"] = {
                (d - atoms[0], s - atoms[0])
                for d, s in zip(b["dst_idx"][pm].tolist(), b["src_idx"][pm].tolist())
            }
            by_id[int(b["mol_index"][slot])] = mol
    n_dense = 0
    for b in loader.batches(num_atoms=num_atoms):
        B, W = b["Z"].shape
        assert B == 24 and b["batch_segments"].shape == (B * W,)
        if num_atoms is not None:
            assert W == num_atoms
        for slot in np.flatnonzero(b["molecule_mask"]):
            mol = by_id.pop(int(b["mol_index"][slot]))
            n = int(b["N"][slot])
            assert n == mol["N"] and b["atom_mask"][slot].sum() == n
            for key in PER_ATOM:
                np.testing.assert_array_equal(b[key][slot, :n], mol[key])
                assert not b[key][slot, n:].any()
            for key in PER_MOL:
                np.testing.assert_array_equal(b[key][slot], mol[key])
            lo = slot * W
            sel = b["pair_mask"] & (b["dst_idx"] >= lo) & (b["dst_idx"] < lo + W)
            pairs = {
                (d - lo, s - lo)
                for d, s in zip(b["dst_idx"][sel].tolist(), b["src_idx"][sel].tolist())
            }
            assert pairs == mol["pairs"]
            assert (b["batch_segments"][lo : lo + W] == slot).all()
            n_dense += 1
        padding = ~b["molecule_mask"]
        assert (b["N"][padding] == 0).all() and not b["atom_mask"][padding].any()
    assert not by_id and n_dense == 200


def test_dense_simple_format_and_fixed_batch_size(packed: Path) -> None:
    loader = PackedMemmapLoader(packed, 32, num_atoms=30)
    batches = collect(loader.batches(physnet_format=False))
    assert len(batches) == 7  # 200 molecules, 32 per batch, last one padded
    assert {b["Z"].shape for b in batches} == {(32, 30)}
    assert "dst_idx" not in batches[0]
    for b in batches:
        assert np.array_equal(b["mask"].sum(1), b["N"])
    assert np.array_equal(np.sort(real_ids(batches)), np.arange(200))
    assert loader.epoch == 1
    with pytest.raises(InputError, match=r"molecule \d+ has \d+ atoms"):
        next(loader.batches(num_atoms=3))


# -- subsets, configuration and errors -------------------------------------------------
def test_subsets_from_split_file(packed: Path, tmp_path: Path) -> None:
    perm = np.random.default_rng(0).permutation(200)
    split = tmp_path / "split.npz"
    np.savez(split, train=perm[:150], valid=perm[150:180], test=perm[180:])
    seen = []
    for name, want in (
        ("train", perm[:150]),
        ("valid", perm[150:180]),
        ("test", perm[180:]),
    ):
        loader = PackedMemmapLoader.from_split(packed, split, name, batch_size=8)
        ids = real_ids(collect(loader.packed_batches()))
        assert np.array_equal(np.sort(ids), np.sort(want))
        seen.append(ids)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(200))
    cfg = LoaderConfig(batch_size=4, max_atoms=256, prefetch=0)
    loader = from_config(packed, cfg, split, "valid", shuffle=False)
    assert loader.budget.max_atoms == 256 and loader.n_molecules == 30
    with pytest.raises(InputError, match=r"split\.npz.*'holdout'"):
        PackedMemmapLoader.from_split(packed, split, "holdout", batch_size=8)


def test_molecule_over_budget(tmp_path: Path) -> None:
    path = write_packed_sizes(tmp_path / "p", [3, 4, 25, 5])
    one = {"giant_atoms": None}  # one budget (auto would give molecule 2 its own)
    with pytest.raises(InputError, match=r"molecule 2 has 25 atoms"):
        PackedMemmapLoader(path, 2, max_atoms=25, **one)  # 24 real slots
    with pytest.raises(InputError, match=r"molecule 2 has 25 atoms"):
        PackedMemmapLoader(path, 2, max_pairs=500, **one)
    # derived budgets grow to fit the largest molecule even at batch_size 1
    loader = PackedMemmapLoader(path, 1, **one)
    assert loader.budget.max_atoms >= 26 and loader.budget.max_pairs >= 600
    assert np.array_equal(
        np.sort(real_ids(collect(loader.packed_batches()))), np.arange(4)
    )


def test_empty_and_bad_subsets(packed: Path) -> None:
    with pytest.raises(InputError, match="empty subset"):
        PackedMemmapLoader(packed, 8, indices=np.array([], dtype=np.int64))
    with pytest.raises(InputError, match="index 200 out of range"):
        PackedMemmapLoader(packed, 8, indices=np.array([0, 200]))
    with pytest.raises(InputError, match="molecule 5 appears twice"):
        PackedMemmapLoader(packed, 8, indices=np.array([5, 1, 5]))


def test_prefetch_thread_hook_errors_and_early_stop(packed: Path) -> None:
    calls = []

    def hook(batch: dict) -> dict:
        calls.append(threading.current_thread().name)
        return {k: v.copy() for k, v in batch.items()}

    before = threading.active_count()
    loader = PackedMemmapLoader(packed, 8, prefetch=2, device_put=hook)
    it = loader.packed_batches()
    next(it)
    it.close()  # consumer stops early: the thread must end
    assert threading.active_count() == before
    assert loader.position == 1 and "physpack-prefetch" in calls

    jax = pytest.importorskip("jax")
    on_device = next(PackedMemmapLoader(packed, 8, device_put=True).packed_batches())
    assert isinstance(on_device["R"], jax.Array)

    def broken(batch: dict) -> dict:
        raise RuntimeError("transfer failed")

    bad = PackedMemmapLoader(packed, 8, prefetch=2)
    bad.device_put = broken
    with pytest.raises(RuntimeError, match="transfer failed"):
        next(bad.packed_batches())


def test_bucketed_order(packed: Path) -> None:
    sizes = PackedDataset(packed).n_atoms
    plain = PackedMemmapLoader(
        packed, 8, shuffle=False, bucket_size=50, mix_sizes=False
    )
    order = real_ids(collect(plain.packed_batches()))
    for a in range(0, 200, 50):  # sorted by size inside each bucket
        assert (np.diff(sizes[order[a : a + 50]]) >= 0).all()
    assert sorted(order[:50]) == list(range(50))  # buckets are kept apart
    mixed = PackedMemmapLoader(packed, 8, shuffle=False, bucket_size=200)
    spreads = [
        np.ptp(sizes[b["mol_index"][b["molecule_mask"]]])
        for b in mixed.packed_batches()
    ]
    uniform = [np.ptp(sizes[order[a : a + 8]]) for a in range(0, 200, 8)]
    assert np.median(spreads) > 2 * np.median(uniform)  # stratified: sizes mixed


def test_declared_units_are_converted_on_reading(tmp_path: Path) -> None:
    """An older-tooling directory in kcal/mol and Bohr: batches are in eV and Å."""
    path = write_legacy_packed(tmp_path / "legacy", 40, seed=2)
    raw = PackedDataset(path)  # undeclared: read as stored
    kcal_in_ev, bohr_in_a = 4.184 / 96.485332123, 0.529177210903
    units = {"energy": "kcal/mol", "length": "Bohr"}
    loader = PackedMemmapLoader(PackedDataset(path, units=units), 8, prefetch=0)
    for b in loader.packed_batches():
        am, mm = b["atom_mask"], b["molecule_mask"]
        ids = b["mol_index"][mm]
        rows = np.concatenate(
            [np.arange(raw.offsets[i], raw.offsets[i + 1]) for i in ids]
        )
        np.testing.assert_allclose(b["E"][mm], raw.E[ids] * kcal_in_ev, rtol=1e-7)
        np.testing.assert_allclose(b["R"][am], raw.R[rows] * bohr_in_a, rtol=1e-6)
        np.testing.assert_allclose(
            b["F"][am], raw.F[rows] * kcal_in_ev / bohr_in_a, rtol=1e-6
        )
        assert np.array_equal(b["Z"][am], raw.Z[rows])
    dense = next(loader.batches(physnet_format=False, epoch=0))
    ids = dense["mol_index"][dense["molecule_mask"]]
    np.testing.assert_allclose(
        dense["E"][dense["molecule_mask"]], raw.E[ids] * kcal_in_ev, rtol=1e-7
    )
    first = dense["R"][0][dense["mask"][0]]
    i = int(ids[0])
    want = raw.R[raw.offsets[i] : raw.offsets[i + 1]] * bohr_in_a
    np.testing.assert_allclose(first, want, rtol=1e-6)


# -- data parallelism: per-process reading and whole steps ---------------------------
def counting(loader: PackedMemmapLoader) -> list[int]:
    """Record the number of molecules of every batch the loader assembles."""
    seen: list[int] = []
    assemble = loader.assemble

    def spy(positions, kind=0):
        seen.append(int(np.asarray(positions).size))
        return assemble(positions, kind)

    loader.assemble = spy  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("per_step,processes", [(2, 2), (4, 2), (3, 3)])
def test_each_process_reads_only_its_own_batches(
    packed: Path, per_step: int, processes: int
) -> None:
    """Simulated processes: the union of their batches is the single-process epoch,
    in the same order, every molecule once; each assembles only its own."""
    whole = collect(PackedMemmapLoader(packed, 8, seed=4, prefetch=0).packed_batches())
    per = per_step // processes
    got: dict[int, dict] = {}
    for p in range(processes):
        slots = ProcessSlots(per_step, first=p * per, count=per)
        loader = PackedMemmapLoader(packed, 8, seed=4, prefetch=1, process_slots=slots)
        assembled = counting(loader)
        stream = collect_items(loader.packed_batches())
        assert len(stream) == len(whole)
        mine = [b for b, item in enumerate(stream) if item is not None]
        assert mine == [b for b in range(len(whole)) if slots.owns(b)]
        assert len(assembled) == len(mine)  # the others' were never assembled
        for b in mine:
            assert b not in got
            got[b] = stream[b]
    assert sorted(got) == list(range(len(whole)))
    for b, batch in enumerate(whole):
        for key, value in batch.items():
            assert np.array_equal(got[b][key], value), (b, key)


def collect_items(stream: Iterator) -> list:
    return [None if b is None else dict(b) for b in stream]


def test_process_streams_fit_step_batches(packed: Path) -> None:
    """The loader's None items plug into the training's step grouping."""
    parallel = pytest.importorskip("physpack.training.parallel")
    whole = collect(PackedMemmapLoader(packed, 8, seed=1, prefetch=0).packed_batches())
    ids = []
    for p in range(2):
        slots = ProcessSlots(4, first=2 * p, count=2)
        loader = PackedMemmapLoader(packed, 8, seed=1, process_slots=slots)
        for group in parallel.step_batches(loader.packed_batches(), 4, 2 * p, 2):
            ids.append(real_ids(group))
    assert np.array_equal(np.sort(np.concatenate(ids)), np.sort(real_ids(whole)))


def test_packed_steps_transfer_in_the_prefetch_thread(packed: Path) -> None:
    threads: list[str] = []

    def transfer(group: list[dict]) -> dict:
        threads.append(threading.current_thread().name)
        return {k: np.stack([b[k] for b in group]) for k in group[0]}

    whole = collect(PackedMemmapLoader(packed, 8, seed=2, prefetch=0).packed_batches())
    n_steps = -(-len(whole) // 4)
    ids = []
    for p in range(2):
        slots = ProcessSlots(4, first=2 * p, count=2)
        loader = PackedMemmapLoader(packed, 8, seed=2, prefetch=2, process_slots=slots)
        steps = list(loader.packed_steps(transfer))
        assert len(steps) == n_steps and loader.epoch == 1
        for s, step in enumerate(steps):
            assert step["Z"].shape == (2, loader.budget.max_atoms)
            for j in range(2):
                b = 4 * s + 2 * p + j
                if b < len(whole):
                    assert np.array_equal(step["mol_index"][j], whole[b]["mol_index"])
                else:  # completes the last step and contributes nothing
                    assert not step["molecule_mask"][j].any()
                    assert not step["pair_mask"][j].any()
            ids.append(step["mol_index"][step["molecule_mask"]])
    assert set(threads) == {"physpack-prefetch"}
    assert np.array_equal(np.sort(np.concatenate(ids)), np.arange(200))


def test_packed_steps_resume_at_a_step(packed: Path) -> None:
    slots = ProcessSlots(2)
    loader = PackedMemmapLoader(packed, 8, seed=3, process_slots=slots)
    it = loader.packed_steps()
    first = [next(it) for _ in range(3)]
    state = loader.state_dict()
    it.close()
    assert state["position"] == 6
    rest = list(loader.packed_steps())
    again = PackedMemmapLoader(packed, 8, seed=3, process_slots=slots)
    everything = list(again.packed_steps())
    assert len(first) + len(rest) == len(everything)
    for a, b in zip(first + rest, everything):
        assert [x["mol_index"].tolist() for x in a] == [
            x["mol_index"].tolist() for x in b
        ]
    again.load_state_dict({**state, "position": 5})
    with pytest.raises(InputError, match="inside a step"):
        next(again.packed_steps())
    with pytest.raises(ConfigError, match="outside a step"):
        ProcessSlots(2, first=1, count=2)
    with pytest.raises(ConfigError, match="no process_slots"):
        next(PackedMemmapLoader(packed, 8).packed_steps())


# -- molecules of any size ---------------------------------------------------------
def qm9_with_giant(tmp_path: Path, n: int = 5000, giant: int = 400) -> Path:
    """``n`` QM9-sized molecules and one of ``giant`` atoms (the last)."""
    rng = np.random.default_rng(0)
    sizes = [*qm9_like_sizes(n, rng).tolist(), giant]
    return write_packed_sizes(tmp_path / "giant", sizes)


def test_giants_do_not_inflate_every_other_batch(tmp_path: Path) -> None:
    path = qm9_with_giant(tmp_path)
    rng = np.random.default_rng(1)
    one_budget = epoch_padding_stats(path, batch_size=32, giant_atoms=None)
    apart = epoch_padding_stats(path, batch_size=32, giant_atoms=100)
    assert one_budget["pair_efficiency"] < 0.2  # the giant sets every pair budget
    assert apart["normal_pair_efficiency"] > 0.9
    assert apart["normal_atom_efficiency"] > 0.9
    assert apart["giant_n_batches"] == 1 and apart["giant_n_molecules"] == 1
    assert apart["giant_max_pairs"] >= 400 * 399 > apart["max_pairs"]
    assert apart["n_molecules"] == 5001
    # "auto" finds the outlier, and leaves data without outliers with one budget
    auto = PackedMemmapLoader(path, 32, giant_atoms="auto")
    assert auto.giant_atoms is not None and 29 <= auto.giant_atoms < 400
    assert auto.budgets[0] == PackedMemmapLoader(path, 32, giant_atoms=100).budget
    plain = write_packed_sizes(tmp_path / "plain", qm9_like_sizes(3000, rng).tolist())
    assert PackedMemmapLoader(plain, 32, giant_atoms="auto").giant_atoms is None


def test_giant_batches_come_in_whole_steps(tmp_path: Path) -> None:
    sizes = [3, 4, 5, 6] * 30 + [40, 45, 50, 41, 44]  # five giants
    path = write_packed_sizes(tmp_path / "p", sizes)
    slots = ProcessSlots(4)
    loader = PackedMemmapLoader(
        path, 6, seed=1, giant_atoms=20, process_slots=slots, prefetch=1
    )
    normal, giant = loader.budgets
    assert giant.max_atoms > 50 and giant.max_pairs >= 50 * 49
    assert normal.max_pairs < 40 * 39
    kinds = loader.batch_kinds()
    assert kinds.size % 4 == 0
    assert (kinds.reshape(-1, 4) == kinds.reshape(-1, 4)[:, :1]).all()
    batches = collect(loader.packed_batches())
    for kind, b in zip(kinds, batches):
        assert loader.kind_of(b) == kind
        check_packed_invariants(b, loader, kind)
        n = b["N"][b["molecule_mask"]]
        assert ((n > 20) == bool(kind)).all()
    assert np.array_equal(np.sort(real_ids(batches)), np.arange(len(sizes)))
    # the state names the budgets: a loader without giants does not resume it
    with pytest.raises(InputError, match="budgets"):
        PackedMemmapLoader(
            path, 6, process_slots=slots, giant_atoms=None
        ).load_state_dict(loader.state_dict())


def test_molecule_above_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = write_packed_sizes(tmp_path / "p", [3, 4, 3000, 5])
    with pytest.raises(InputError, match=r"molecule 2 has 3000 atoms.*") as info:
        PackedMemmapLoader(path, 2, max_molecule_atoms=1000)
    message = str(info.value)
    assert "max_molecule_atoms=1000" in message and "8,997,000 pair slots" in message
    assert "0.08 GB of host" in message and "\n" not in message
    assert PackedMemmapLoader(path, 2, max_molecule_atoms=3000).n_molecules == 4


def test_packed_steps_with_giants_give_every_device_one_shape(tmp_path: Path) -> None:
    sizes = [3, 4, 5, 6] * 30 + [40, 45, 50, 41, 44]
    path = write_packed_sizes(tmp_path / "p", sizes)
    ids, kinds = [], []
    for p in range(2):
        slots = ProcessSlots(4, first=2 * p, count=2)
        loader = PackedMemmapLoader(
            path, 6, seed=2, giant_atoms=20, process_slots=slots
        )
        mine = []
        for step in loader.packed_steps():
            shapes = {loader.kind_of(b) for b in step}
            assert len(shapes) == 1  # both devices of this process
            mine.append(shapes.pop())
            ids += [b["mol_index"][b["molecule_mask"]] for b in step]
        kinds.append(mine)
    assert kinds[0] == kinds[1] and 1 in kinds[0]  # and the same in both processes
    assert np.array_equal(np.sort(np.concatenate(ids)), np.arange(len(sizes)))


@pytest.mark.slow
def test_two_local_processes_read_disjoint_batches(packed: Path) -> None:
    """Two real processes, each with its slots: together they read the epoch of one
    process, every batch once, and neither assembles the other's."""
    script = (
        "import json, sys\n"
        "from physpack.data.loader import PackedMemmapLoader, ProcessSlots\n"
        "p = int(sys.argv[2])\n"
        "loader = PackedMemmapLoader(sys.argv[1], 8, seed=7,\n"
        "    process_slots=ProcessSlots(2, first=p, count=1))\n"
        "calls = []\n"
        "assemble = loader.assemble\n"
        "loader.assemble = lambda *a: calls.append(1) or assemble(*a)\n"
        "out = {b: x['mol_index'].tolist() for b, x in\n"
        "       enumerate(loader.packed_batches()) if x is not None}\n"
        "print(json.dumps({'batches': out, 'assembled': len(calls)}))\n"
    )
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(packed), str(p)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for p in range(2)
    ]
    got = [json.loads(j.communicate(timeout=120)[0]) for j in jobs]
    assert all(j.returncode == 0 for j in jobs)
    whole = collect(PackedMemmapLoader(packed, 8, seed=7).packed_batches())
    merged: dict[int, list] = {}
    for p, g in enumerate(got):
        assert g["assembled"] == len(g["batches"])
        for b, ids in g["batches"].items():
            assert int(b) % 2 == p and int(b) not in merged
            merged[int(b)] = ids
    assert sorted(merged) == list(range(len(whole)))
    for b, batch in enumerate(whole):
        assert merged[b] == batch["mol_index"].tolist()


@FAST
@given(
    sizes=st.lists(st.integers(1, 30), min_size=2, max_size=60),
    giant_atoms=st.integers(5, 25),
    per_step=st.integers(1, 4),
    shuffle=st.booleans(),
    cutoff=st.one_of(st.none(), st.floats(1.0, 3.0)),
)
def test_giants_exactly_once_in_whole_steps(
    sizes, giant_atoms, per_step, shuffle, cutoff
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_packed_sizes(Path(tmp) / "p", sizes)
        pairs = {} if cutoff is None else {"pairs": "cutoff", "cutoff": cutoff}
        loader = PackedMemmapLoader(
            path,
            4,
            shuffle=shuffle,
            giant_atoms=giant_atoms,
            process_slots=ProcessSlots(per_step),
            prefetch=0,
            **pairs,
        )
        kinds = loader.batch_kinds()
        batches = collect(loader.packed_batches())
        assert np.array_equal(np.sort(real_ids(batches)), np.arange(len(sizes)))
        if len(loader.budgets) > 1:
            assert kinds.size % per_step == 0
            steps = kinds.reshape(-1, per_step)
            assert (steps == steps[:, :1]).all()
        for kind, b in zip(kinds, batches):
            assert loader.kind_of(b) == kind
            n = b["N"][b["molecule_mask"]]
            if len(loader.budgets) > 1:
                assert ((n > giant_atoms) == bool(kind)).all()
            if cutoff is None:
                check_packed_invariants(b, loader, int(kind))
            else:
                am, pm = b["atom_mask"], b["pair_mask"]
                want = cutoff_pairs(b["R"][am], n, cutoff)
                assert np.array_equal(b["dst_idx"][pm], want[0])
                assert np.array_equal(b["src_idx"][pm], want[1])


def test_adaptive_prefetch_stays_in_the_callers_thread_for_a_fast_consumer() -> None:
    from physpack.data import prefetch

    def produced():
        for i in range(3 * prefetch.PROBE):
            end = time.perf_counter() + 0.001  # producing takes 1 ms
            while time.perf_counter() < end:
                pass
            yield i, threading.current_thread().name

    fast = list(prefetch.prefetched(produced(), 2, adaptive=True))
    assert [i for i, _ in fast] == list(range(3 * prefetch.PROBE))
    assert {name for _, name in fast} == {threading.current_thread().name}

    slow = []
    for item in prefetch.prefetched(produced(), 2, adaptive=True):
        slow.append(item)
        time.sleep(0.005)  # the consumer's own work: a thread can overlap it
    assert [i for i, _ in slow] == list(range(3 * prefetch.PROBE))
    assert {name for _, name in slow[prefetch.PROBE :]} == {"physpack-prefetch"}


def test_defaults_and_ranges_come_from_the_schema(packed: Path) -> None:
    import inspect

    from physpack.config import LoaderConfig

    params = inspect.signature(PackedMemmapLoader).parameters
    for key in (
        "bucket_size",
        "prefetch",
        "max_atoms",
        "max_pairs",
        "max_molecules",
        "num_atoms",
        "giant_atoms",
        "max_molecule_atoms",
    ):
        assert params[key].default == getattr(LoaderConfig, key), key
    with pytest.raises(ConfigError, match="loader.prefetch: got -1, expected int >= 0"):
        PackedMemmapLoader(packed, 8, prefetch=-1)
    with pytest.raises(ConfigError, match="loader.giant_atoms: got 0, expected int"):
        PackedMemmapLoader(packed, 8, giant_atoms=0)
    with pytest.raises(
        ConfigError, match=r"loader.batch_size: got .*0.*, expected int >= 1"
    ):
        PackedMemmapLoader(packed, np.int64(0))
    assert PackedMemmapLoader(packed, np.int64(8)).batch_size == 8
