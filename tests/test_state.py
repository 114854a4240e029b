"""Whether a saved training state is resumed, continued, replaced or refused, and
the message that names what differs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from model_fixtures import TINY_MODEL
from physpack.config import LoaderConfig, TrainConfig
from physpack.errors import ConfigError
from physpack.training.state import (
    TrainingRecord,
    check_resumable,
    config_sections,
    remove_orphans,
)

FILE = Path("results/model/state/state.msgpack")


def saved(train: TrainConfig, *, finished: bool, reason: str = "epochs") -> dict:
    return {
        "config": config_sections(TINY_MODEL, train, LoaderConfig()),
        "dataset": "data",
        "code": "code",
        "progress": {"finished": finished, "stop_reason": reason},
    }


def decide(state: dict, train: TrainConfig, dataset="data", code="code"):
    sections = config_sections(TINY_MODEL, train, LoaderConfig())
    return check_resumable(state, FILE, sections, dataset, code)


def test_same_settings_resume_and_no_state_starts():
    cfg = TrainConfig(epochs=150)
    assert decide(saved(cfg, finished=False), cfg).resume
    assert not check_resumable(None, FILE, {}, "data", "code").resume
    lenient = dataclasses.replace(cfg, state_every_steps=7, max_nonfinite_steps=3)
    assert decide(saved(cfg, finished=False), lenient).resume


def test_unfinished_state_names_every_differing_key():
    old = TrainConfig(epochs=150, learning_rate=1e-3)
    new = dataclasses.replace(old, epochs=200, learning_rate=2e-3)
    with pytest.raises(ConfigError) as err:
        decide(saved(old, finished=False), new)
    text = str(err.value)
    assert "train.epochs: 150 → 200" in text
    assert "train.learning_rate: 0.001 → 0.002" in text
    assert str(FILE.parent) in text and "delete" in text
    with pytest.raises(ConfigError, match="different code"):
        decide(saved(old, finished=False), old, code="edited")
    with pytest.raises(ConfigError, match="different dataset or split"):
        decide(saved(old, finished=False), old, dataset="other")


def test_a_finished_run_continues_only_when_its_limit_was_raised():
    cfg = TrainConfig(epochs=150, max_minutes=9.0)
    more_epochs = dataclasses.replace(cfg, epochs=200)
    got = decide(saved(cfg, finished=True, reason="epochs"), more_epochs)
    assert got.resume and got.extended == ("train.epochs: 150 → 200",)
    more_time = dataclasses.replace(cfg, max_minutes=20.0)
    got = decide(saved(cfg, finished=True, reason="max_minutes"), more_time)
    assert got.resume and got.extended == ("train.max_minutes: 9.0 → 20.0",)
    # stopped early by patience: more epochs make a new run
    assert not decide(saved(cfg, finished=True, reason="patience"), more_epochs).resume
    # fewer epochs, or another setting: a new run
    fewer = dataclasses.replace(cfg, epochs=100)
    assert not decide(saved(cfg, finished=True, reason="epochs"), fewer).resume
    other = dataclasses.replace(cfg, learning_rate=5e-3)
    assert not decide(saved(cfg, finished=True), other).resume
    # the same finished run: nothing to continue
    same = decide(saved(cfg, finished=True), cfg)
    assert same.resume and same.extended == ()


def test_a_finished_run_is_not_returned_for_a_shorter_budget():
    # max_minutes is not hashed (an unfinished run may resume with another budget),
    # but a finished run of 30 minutes is not the run a 15-minute budget asks for
    cfg = TrainConfig(epochs=10000, max_minutes=30.0)
    shorter = dataclasses.replace(cfg, max_minutes=15.0)
    for reason in ("max_minutes", "epochs", "patience"):
        assert not decide(saved(cfg, finished=True, reason=reason), shorter).resume
    unlimited = dataclasses.replace(cfg, max_minutes=None)
    assert not decide(saved(unlimited, finished=True), cfg).resume
    # an unfinished run resumes under the shorter budget
    assert decide(saved(cfg, finished=False), shorter).resume
    # a run that stopped on its epochs before a budget that is now raised: done
    longer = dataclasses.replace(cfg, max_minutes=60.0)
    assert decide(saved(cfg, finished=True, reason="epochs"), longer).resume


def test_progress_of_older_states_gets_defaults():
    progress = TrainingRecord.from_dict({"history": [{"epoch": 1}], "epoch_acc": {}})
    assert progress.consecutive_rejected == 0 and progress.epoch_sums["rejected"] == 0


def test_orphans_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / ".best.ckpt.tmp-999999999"
    other = tmp_path / ".notes.txt"
    dead.write_bytes(b"x")
    other.write_bytes(b"y")
    assert remove_orphans(tmp_path, tmp_path / "missing") == [dead]
    assert other.exists() and not dead.exists()


def test_the_code_fingerprint_covers_every_module_training_runs() -> None:
    """A module split off another (the packed reader off the writer, the loader's
    planning off the loader) still makes a saved state foreign when edited: the
    fingerprint's files are the data, model and training modules the train stage
    imports, not a list kept by hand."""
    from physpack.sources import module_closure
    from physpack.training.state import code_files

    files = set(code_files())
    assert {
        "data/packed_dataset.py",
        "data/packed_format.py",
        "data/loader.py",
        "model/physnet.py",
        "training/steps.py",
    } <= files
    loaded = set(module_closure("physpack.training.train"))
    assert {
        f for f in loaded if f.startswith(("data/", "model/", "training/"))
    } == files
    assert not any(f.startswith("evaluation/") for f in files)
