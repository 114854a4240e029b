"""physpack.runs: expansion of ``runs:`` (named variants, ensembles, sweeps)."""

from __future__ import annotations

import pytest
from physpack.errors import ConfigError
from physpack.runs import differing_keys, ensembles, expand_runs, run_sections

BASE = {
    "model": {"features": 64, "cutoff": 5.0},
    "train": {"seed": 3, "learning_rate": 0.001},
    "loader": {"batch_size": 16},
    "data": {"npz": "ignored.npz"},
}


def test_no_runs_is_empty() -> None:
    assert expand_runs(None) == {}
    assert expand_runs({}) == {}


def test_named_variants_override_key_by_key() -> None:
    runs = expand_runs({"base": {}, "wide": {"model": {"features": 128}}})
    assert list(runs) == ["base", "wide"]
    assert run_sections(BASE, runs["base"]) == {
        s: BASE[s] for s in ("model", "train", "loader")
    }
    wide = run_sections(BASE, runs["wide"])
    assert wide["model"] == {"features": 128, "cutoff": 5.0}
    assert wide["train"] == BASE["train"]


def test_ensemble_members_differ_only_in_seed() -> None:
    runs = expand_runs({"committee": {"ensemble": 3, "train": {"learning_rate": 0.01}}})
    assert list(runs) == ["committee-0", "committee-1", "committee-2"]
    sections = [run_sections(BASE, r) for r in runs.values()]
    assert [s["train"]["seed"] for s in sections] == [3, 4, 5]
    for s in sections:
        assert s["train"]["learning_rate"] == 0.01
        assert s["model"] == BASE["model"] and s["loader"] == BASE["loader"]
    assert ensembles(runs) == {"committee": list(runs)}
    assert {r.member for r in runs.values()} == {0, 1, 2}


def test_sweep_is_the_cartesian_product_in_order() -> None:
    runs = expand_runs(
        {
            "lr": {
                "sweep": {
                    "train.learning_rate": [0.001, 0.003],
                    "model.features": [32, 64, 128],
                },
                "loader": {"batch_size": 8},
            }
        }
    )
    assert len(runs) == 6
    combos = {
        (s["train"]["learning_rate"], s["model"]["features"])
        for s in (run_sections(BASE, r) for r in runs.values())
    }
    assert combos == {(lr, f) for lr in (0.001, 0.003) for f in (32, 64, 128)}
    assert all(
        run_sections(BASE, r)["loader"]["batch_size"] == 8 for r in runs.values()
    )
    assert "lr-learning_rate=0.001-features=32" in runs
    assert ensembles(runs) == {}


def test_sweep_with_ensemble_makes_one_committee_per_point() -> None:
    runs = expand_runs({"s": {"sweep": {"model.features": [8, 16]}, "ensemble": 2}})
    assert sorted(ensembles(runs)) == ["s-features=16", "s-features=8"]
    assert len(runs) == 4


def test_differing_keys_name_only_what_differs() -> None:
    runs = expand_runs({"a": {}, "b": {"model": {"features": 128}}})
    diff = differing_keys(BASE, runs)
    assert diff == {"model.features": {"a": 64, "b": 128}}


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ({"a": {"optimizer": "adam"}}, "runs.a: unknown key(s) optimizer"),
        ({"a": {"ensemble": 0}}, "runs.a.ensemble: expected a positive integer"),
        ({"a": {"ensemble": True}}, "runs.a.ensemble"),
        ({"a": {"sweep": {"learning_rate": [1]}}}, "is not <section>.<key>"),
        ({"a": {"sweep": {"data.npz": ["x"]}}}, "is not <section>.<key>"),
        ({"a": {"sweep": {"train.seed": []}}}, "expected a non-empty list"),
        ({"a/b": {}}, "runs.a/b: a run name"),
        ({"a": {"model": [1]}}, "runs.a.model: expected a mapping"),
        ({"a": {"ensemble": 2}, "a-1": {}}, "'a-1' is already used by runs.a"),
        (
            {"a": {"train": {"init_from": "b"}}, "b": {"train": {"init_from": "a"}}},
            "cycle: a -> b -> a",
        ),
    ],
)
def test_bad_runs_name_the_entry(runs: dict, message: str) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        expand_runs(runs)


def test_init_from_names_a_run_or_a_path() -> None:
    runs = expand_runs(
        {
            "base": {},
            "ft": {"train": {"init_from": "base"}},
            "p": {"train": {"init_from": "x.ckpt"}},
        }
    )
    assert runs["ft"].init_from == "base"
    assert runs["p"].init_from == "x.ckpt"
