"""physpack.data.pairs: direct all-pairs indices and cutoff neighbour lists."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from physpack.data.pairs import (
    all_pairs,
    cutoff_pair_counts,
    cutoff_pairs,
    pair_template,
)

FAST = settings(max_examples=60, deadline=None)


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
)
def test_cutoff_pairs_against_brute_force(sizes, cutoff, seed) -> None:
    rng = np.random.default_rng(seed)
    t = sum(sizes)
    # a grid of quarter Å: squared distances are exact in float32
    positions = (rng.integers(0, 24, size=(t, 3)) * 0.25).astype(np.float32)
    dst, src = cutoff_pairs(positions, np.asarray(sizes), cutoff)
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
    counts = cutoff_pair_counts(positions, np.asarray(sizes), cutoff)
    assert counts.tolist() == np.bincount(mol[dst], minlength=len(sizes)).tolist()
