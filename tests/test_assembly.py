"""physpack.data.assembly: the atom rows of a molecule subset, and batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from physpack.data.assembly import BatchAssembler, molecule_atom_rows
from physpack.data.budget import Budget
from physpack.data.pairs import all_pairs


@given(
    sizes=st.lists(st.integers(0, 6), min_size=0, max_size=12), seed=st.integers(0, 9)
)
def test_molecule_atom_rows_lists_each_molecule_run(
    sizes: list[int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    ns = np.asarray(sizes, dtype=np.uint8)
    first = rng.integers(0, 1000, ns.size)
    expected = [f + j for f, n in zip(first, sizes) for j in range(n)]
    rows = molecule_atom_rows(first, ns)
    assert rows.dtype == np.int64
    assert rows.tolist() == expected


def test_molecule_atom_rows_of_packed_offsets() -> None:
    offsets = np.array([0, 3, 5, 9, 10])
    ids = np.array([2, 0, 3])
    rows = molecule_atom_rows(offsets[ids], offsets[ids + 1] - offsets[ids])
    assert rows.tolist() == [5, 6, 7, 8, 0, 1, 2, 9]


def test_packed_batch_gathers_and_scales() -> None:
    offsets = np.array([0, 2, 5, 6])
    t = 6
    data = {
        "Z": np.arange(1, t + 1, dtype=np.int32),
        "R": np.arange(3 * t, dtype=np.float32).reshape(t, 3),
        "E": np.array([10.0, 20.0, 30.0]),
        "Qtot": np.zeros(3),
    }
    asm = BatchAssembler(data, offsets, {"E": 2.0})
    batch = asm.packed(np.array([2, 0]), np.array([1, 2]), Budget(8, 16, 4))
    assert batch["Z"].tolist() == [6, 1, 2, 0, 0, 0, 0, 0]
    assert np.array_equal(batch["R"][:3], data["R"][[5, 0, 1]])
    assert batch["E"].tolist() == [60.0, 20.0, 0.0, 0.0]  # scaled, padding zero
    assert batch["N"].tolist() == [1, 2, 0, 0]
    assert batch["batch_segments"].tolist() == [0, 1, 1, 3, 3, 3, 3, 3]
    assert batch["dst_idx"][:2].tolist() == [1, 2] and batch["src_idx"][
        :2
    ].tolist() == [2, 1]
    assert (batch["dst_idx"][2:] == 7).all() and batch["pair_mask"].sum() == 2
    assert batch["mol_index"].tolist() == [2, 0, -1, -1]

    dense = asm.dense(np.array([2, 0]), np.array([1, 2]), 3, 2, physnet=False)
    assert dense["Z"].tolist() == [[6, 0], [1, 2], [0, 0]]
    assert dense["mask"].tolist() == [[True, False], [True, True], [False, False]]


@given(sizes=st.lists(st.integers(0, 7), max_size=10), extra=st.integers(0, 5))
def test_all_pairs_fills_padding_slots(sizes: list[int], extra: int) -> None:
    dst, src = all_pairs(np.asarray(sizes))
    n = dst.size
    assert n == sum(s * (s - 1) for s in sizes)
    pdst, psrc = all_pairs(np.asarray(sizes), n + extra, 99)
    assert pdst.dtype == psrc.dtype == np.int32
    assert np.array_equal(pdst[:n], dst) and np.array_equal(psrc[:n], src)
    assert (pdst[n:] == 99).all() and (psrc[n:] == 99).all()
    with pytest.raises(ValueError, match="do not fit"):
        all_pairs(np.asarray([3]), 5)
