"""physpack.data.pairs: direct all-pairs indices and cutoff neighbour lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_fixtures import make_checkpoint, make_packed
from physpack.data.loader import PackedMemmapLoader
from physpack.data.packed import PackedWriter
from physpack.data.pairs import (
    all_pairs,
    cutoff_pair_counts,
    cutoff_pairs,
    pair_template,
)
from physpack.errors import ConfigError, InputError
from physpack.model.physnet import model_from_config, predict

FAST = settings(max_examples=80, deadline=None)


def templates_concatenated(sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The per-size-template construction: the size-n template of each molecule,
    shifted by the molecule's first batch atom."""
    starts = np.cumsum([0, *sizes])[:-1]
    parts = [pair_template(int(n)) for n in sizes]
    dst = [d + a for (d, _), a in zip(parts, starts)]
    src = [s + a for (_, s), a in zip(parts, starts)]
    empty = [np.zeros(0, np.int32)]
    return np.concatenate(dst + empty), np.concatenate(src + empty)


@FAST
@given(sizes=st.lists(st.integers(0, 40), min_size=0, max_size=30))
def test_all_pairs_equal_the_templates(sizes: list[int]) -> None:
    dst, src = all_pairs(np.asarray(sizes, dtype=np.uint8))
    want_dst, want_src = templates_concatenated(sizes)
    assert dst.dtype == np.int32 and src.dtype == np.int32
    assert np.array_equal(dst, want_dst) and np.array_equal(src, want_src)


def test_all_pairs_of_one_large_molecule() -> None:
    dst, src = all_pairs(np.array([3, 700]))
    want_dst, want_src = templates_concatenated([3, 700])
    assert dst.size == 6 + 700 * 699
    assert np.array_equal(dst, want_dst) and np.array_equal(src, want_src)


@FAST
@given(
    sizes=st.lists(st.integers(0, 25), min_size=1, max_size=8),
    cutoff=st.floats(0.5, 6.0),
    seed=st.integers(0, 10),
    tree_above=st.sampled_from([100, 10, 0]),
)
def test_cutoff_pairs_against_brute_force(sizes, cutoff, seed, tree_above) -> None:
    """Both paths (distance filter; k-d tree above ``tree_above`` atoms)."""
    rng = np.random.default_rng(seed)
    t = sum(sizes)
    # a grid of quarter Å: squared distances are exact in float32
    positions = (rng.integers(0, 24, size=(t, 3)) * 0.25).astype(np.float32)
    dst, src = cutoff_pairs(positions, np.asarray(sizes), cutoff, tree_above)
    mol = np.repeat(np.arange(len(sizes)), sizes)
    want = [
        (i, j)
        for i in range(t)
        for j in range(t)
        if i != j
        and mol[i] == mol[j]
        and float(((positions[j] - positions[i]) ** 2).sum()) < np.float32(cutoff) ** 2
    ]
    assert list(zip(dst.tolist(), src.tolist())) == want  # destination-major
    counts = cutoff_pair_counts(positions, np.asarray(sizes), cutoff, tree_above)
    assert counts.tolist() == np.bincount(mol[dst], minlength=len(sizes)).tolist()


@pytest.mark.slow
def test_model_sees_the_same_energies_and_forces_with_cutoff_pairs(
    tmp_path: Path,
) -> None:
    """PhysNet's cutoff function is zero beyond the cutoff: dropping those pairs
    changes no energy or force (model without charges)."""
    packed, _ = make_packed(tmp_path, n_mol=24)
    ckpt = make_checkpoint(tmp_path / "m.ckpt", packed)
    model = model_from_config(ckpt.model_config)
    cutoff = ckpt.model_config.cutoff
    every = PackedMemmapLoader(packed, 6, shuffle=False)
    near = PackedMemmapLoader(packed, 6, shuffle=False, pairs="cutoff", cutoff=cutoff)
    assert near.pair_counts.sum() < 0.95 * every.pair_counts.sum()
    assert near.budget.max_pairs < every.budget.max_pairs

    def per_molecule(loader: PackedMemmapLoader) -> dict[int, tuple]:
        out = {}
        for batch in loader.packed_batches():
            got = predict(ckpt.params, batch, model, ckpt.constants)
            seg = batch["batch_segments"]
            for slot in np.flatnonzero(batch["molecule_mask"]):
                atoms = (seg == slot) & batch["atom_mask"]
                mol = int(batch["mol_index"][slot])
                out[mol] = (got["energy"][slot], got["forces"][atoms])
        return out

    a, b = per_molecule(every), per_molecule(near)
    assert sorted(a) == sorted(b) == list(range(24))
    forces = np.concatenate([a[i][1] for i in a])
    assert np.abs(forces).max() > 1e-3  # a non-trivial force field
    for i in a:
        np.testing.assert_allclose(b[i][0], a[i][0], rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(b[i][1], a[i][1], rtol=1e-4, atol=1e-5)


def test_cutoff_batches_hold_exactly_the_pairs_within_the_cutoff(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 30, 60)
    t = int(sizes.sum())
    path = tmp_path / "p"
    with PackedWriter(path, has_forces=False, has_dipoles=False) as w:
        w.append(
            n_atoms=sizes,
            Z=np.ones(t, np.int32),
            R=(rng.integers(0, 32, (t, 3)) * 0.25).astype(np.float32),
            E=np.zeros(sizes.size),
            Qtot=np.zeros(sizes.size),
        )
    loader = PackedMemmapLoader(path, 8, pairs="cutoff", cutoff=3.1, prefetch=1)
    seen = []
    for batch in loader.packed_batches():
        pm, am = batch["pair_mask"], batch["atom_mask"]
        n_atoms = batch["N"][batch["molecule_mask"]]
        want_dst, want_src = cutoff_pairs(batch["R"][am], n_atoms, 3.1)
        assert np.array_equal(batch["dst_idx"][pm], want_dst)
        assert np.array_equal(batch["src_idx"][pm], want_src)
        A = loader.budgets[loader.kind_of(batch)].max_atoms  # giants: their own
        assert (batch["dst_idx"][~pm] == A - 1).all()
        seen.append(batch["mol_index"][batch["molecule_mask"]])
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(60))
    with pytest.raises(ConfigError, match="positive cutoff"):
        PackedMemmapLoader(path, 8, pairs="cutoff")
    with pytest.raises(InputError, match="pairs"):
        PackedMemmapLoader(path, 8).load_state_dict(loader.state_dict())


def test_cutoff_pairs_of_a_large_molecule_use_the_tree_and_agree() -> None:
    rng = np.random.default_rng(3)
    sizes = np.array([30, 900, 12])
    positions = rng.uniform(0, 20, size=(sizes.sum(), 3)).astype(np.float32)
    dst, src = cutoff_pairs(positions, sizes, 4.0)  # 900 atoms: the k-d tree
    all_dst, all_src = all_pairs(sizes)
    d = positions[all_src] - positions[all_dst]
    keep = np.einsum("ij,ij->i", d, d) < np.float32(16.0)
    assert np.array_equal(dst, all_dst[keep]) and np.array_equal(src, all_src[keep])


def test_loader_pairs_follow_the_model(tmp_path) -> None:
    """loader.pairs auto: pairs within the model's cutoff unless the model has
    charges (all pairs, for the Coulomb term); cutoff with charges is refused."""
    import dataclasses

    from model_fixtures import TINY_MODEL, write_toy
    from physpack.config import LoaderConfig
    from physpack.data.loader import from_config, pair_options
    from physpack.errors import ConfigError

    charged = dataclasses.replace(TINY_MODEL, charges=True)
    assert pair_options("auto", TINY_MODEL) == {
        "pairs": "cutoff",
        "cutoff": TINY_MODEL.cutoff,
    }
    assert pair_options("auto", charged) == {"pairs": "all"}
    assert pair_options("auto", None) == {"pairs": "all"}
    assert pair_options("all", TINY_MODEL) == {"pairs": "all"}
    with pytest.raises(ConfigError, match="Coulomb term needs every atom pair"):
        pair_options("cutoff", charged)
    packed, _ = write_toy(tmp_path, n_mol=10)
    lo = from_config(packed, LoaderConfig(batch_size=4), model=TINY_MODEL)
    assert (lo.pairs, lo.cutoff) == ("cutoff", TINY_MODEL.cutoff)
    assert from_config(packed, LoaderConfig(batch_size=4), model=charged).pairs == "all"
