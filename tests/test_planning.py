"""physpack.data.planning: giants, budgets and epoch plans from sizes alone."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from physpack.data.budget import Budget
from physpack.data.planning import (
    GIANT,
    NORMAL,
    SubsetSizes,
    bucketed_order,
    first_misfit,
    giant_threshold,
    plan_epoch,
    subset_budgets,
)


def sizes_with_giants() -> SubsetSizes:
    atoms = np.full(200, 10, dtype=np.uint16)
    atoms[[7, 150]] = 300
    return SubsetSizes.of(atoms)


def test_giant_threshold_auto_and_given() -> None:
    sizes = sizes_with_giants()
    auto = giant_threshold(sizes, 8, "auto")
    assert auto is not None and 10 <= auto < 300
    assert giant_threshold(sizes, 8, 50) == 50
    assert giant_threshold(sizes, 8, 400) is None  # no molecule above it
    assert giant_threshold(SubsetSizes.of(np.full(9, 10)), 8, "auto") is None


def test_budgets_hold_their_molecules() -> None:
    sizes = sizes_with_giants()
    normal, giant = subset_budgets(sizes, 8, 50)
    assert normal.max_atoms - 1 < 300 <= giant.max_atoms - 1
    assert giant.max_pairs >= 300 * 299
    assert first_misfit(sizes, (normal, giant), 50) is None
    assert first_misfit(sizes, (Budget(64, 10_000, 8),), None) == (7, 0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 50), group=st.integers(1, 4), shuffle=st.booleans())
def test_plan_visits_every_molecule_once_in_whole_steps(
    seed: int, group: int, shuffle: bool
) -> None:
    sizes = sizes_with_giants()
    budgets = subset_budgets(sizes, 8, 50)
    rng = np.random.default_rng(seed) if shuffle else None
    order = bucketed_order(sizes.atoms, rng, 64, True, 8.0)
    assert np.array_equal(np.sort(order), np.arange(200))
    plan = plan_epoch(sizes, order, budgets, 50, rng, group)
    assert len(plan) % group == 0
    seen = []
    for b in range(len(plan)):
        pos = plan.positions(b)
        kind = plan.kind(b)
        assert kind == plan.kind(b - b % group)  # one budget per step
        assert ((sizes.atoms[pos] > 50) == (kind == GIANT)).all()
        budget = budgets[kind]
        assert int(sizes.atoms[pos].sum()) <= budget.max_atoms - 1
        assert int(sizes.pairs(pos).sum()) <= budget.max_pairs
        assert pos.size <= budget.max_molecules - 1
        seen.extend(pos.tolist())
    assert sorted(seen) == list(range(200))
    assert (plan.kinds == NORMAL).sum() >= 200 * 10 // budgets[0].max_atoms


def test_bucketed_order_sorts_inside_buckets_without_mixing() -> None:
    atoms = np.random.default_rng(0).integers(1, 30, 100).astype(np.uint8)
    order = bucketed_order(atoms, np.random.default_rng(1), 25, False, 1.0)
    for a in range(0, 100, 25):
        assert (np.diff(atoms[order[a : a + 25]].astype(int)) >= 0).all()
