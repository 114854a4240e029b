"""Fine-tuning (train.init_from, refit_reference, freeze)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
from model_fixtures import write_toy
from physpack.errors import ConfigError
from physpack.model import checkpoint as ckpt_io
from test_train import MODEL, TRAIN, run, train_losses

#: end-to-end runs (minutes): outside the quick loop (-m 'not slow')
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    return write_toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def parent(toy, tmp_path_factory) -> Path:
    """A trained model to start from."""
    out = tmp_path_factory.mktemp("parent")
    run(out, toy, dataclasses.replace(TRAIN, epochs=4))
    return out / "best.ckpt"


def test_fine_tuning_starts_lower_and_keeps_frozen_groups(
    toy, parent: Path, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(
        TRAIN, epochs=2, init_from=str(parent), freeze=("embedding", "interactions")
    )
    lines: list[str] = []
    run(tmp_path / "ft", toy, cfg, log=lines.append)
    run(tmp_path / "fresh", toy, dataclasses.replace(TRAIN, epochs=2))
    assert train_losses(tmp_path / "ft")[0] < train_losses(tmp_path / "fresh")[0]
    before, after = ckpt_io.load(parent), ckpt_io.load(tmp_path / "ft" / "best.ckpt")
    changed = {}
    for name in before.params:
        same = all(
            np.array_equal(a, b)
            for a, b in zip(
                jax.tree.leaves(before.params[name]),
                jax.tree.leaves(after.params[name]),
                strict=True,
            )
        )
        changed[name] = not same
    frozen = [n for n in changed if n == "embedding" or n.startswith("interaction_")]
    assert frozen and not any(changed[n] for n in frozen)
    assert any(changed[n] for n in changed if n not in frozen)  # the rest trains
    started = after.training["init_from"]
    assert started["path"] == str(parent)
    assert started["freeze"] == ["embedding", "interactions"]
    assert started["refit_reference"] is True and len(started["sha256"]) == 64
    assert any("fine-tuning from" in line for line in lines)


def test_reference_energies_kept_without_refit(
    toy, parent: Path, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(
        TRAIN,
        epochs=1,
        init_from=str(parent),
        refit_reference=False,
        energy_weight=1e3,
    )
    run(tmp_path, toy, cfg)
    got = ckpt_io.load(tmp_path / "best.ckpt")
    np.testing.assert_array_equal(
        got.constants.reference_energies,
        ckpt_io.load(parent).constants.reference_energies,
    )
    assert got.training["data_stats"]["reference_energies"] == "init_from"


def test_other_architecture_and_unknown_groups_are_refused(
    toy, parent: Path, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(TRAIN, init_from=str(parent))
    with pytest.raises(ConfigError, match=r"model\.features: 8 there, 16 here"):
        run(tmp_path / "a", toy, cfg, model_cfg=dataclasses.replace(MODEL, features=16))
    bad = dataclasses.replace(cfg, freeze=("embeddings", "readout"))
    with pytest.raises(ConfigError, match=r"no parameter group 'readout'; .*embedding"):
        run(tmp_path / "b", toy, bad)
    assert not (tmp_path / "a" / "best.ckpt").exists()
