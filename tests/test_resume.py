"""Training survives a kill at any point: SIGKILL (a crash) and SIGTERM right after a
state save, at an epoch's last step, during validation and between the history and
the state write. Every interrupted run, resumed until done, ends with the same
``history.csv`` (all but the timing columns), best epoch and parameters as an
uninterrupted one."""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from model_fixtures import TOY_LOADER, TOY_MODEL, TOY_TRAIN, write_toy
from physpack.config import TrainConfig
from physpack.model import checkpoint as ckpt_io
from physpack.training import train as train_mod
from physpack.training.history import TIMING_COLUMNS

MODEL, LOADER = TOY_MODEL, TOY_LOADER
# a state at every step: every epoch's last step is followed by a state save
TRAIN = dataclasses.replace(TOY_TRAIN, epochs=4, state_every_steps=1)

pytestmark = [pytest.mark.usefixtures("compilation_cache"), pytest.mark.slow]


class Killed(Exception):
    """Stands in for SIGKILL: nothing after it runs (no handler saves anything)."""


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    return write_toy(tmp_path_factory.mktemp("toy"), n_mol=60)


def run(out: Path, toy, cfg: TrainConfig = TRAIN, **kw) -> train_mod.TrainResult:
    packed, split = toy
    return train_mod.train(
        packed,
        split,
        out / "best.ckpt",
        out / "history.csv",
        out / "state",
        MODEL,
        cfg,
        LOADER,
        progress=False,
        log=lambda msg: None,
        **kw,
    )


def history(out: Path) -> list[dict[str, str]]:
    """``history.csv`` without the columns that measure time."""
    with open(out / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def leaves(tree) -> list[np.ndarray]:
    return [np.array(x, copy=True) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def uninterrupted(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run(out, toy)
    rows = history(out)
    last_steps = np.cumsum([int(r["steps"]) for r in rows]).tolist()
    return result, out, rows, last_steps


def assert_same_as(uninterrupted, result: train_mod.TrainResult, out: Path) -> None:
    expected, expected_out, rows, _ = uninterrupted
    assert history(out) == rows
    assert result.best_epoch == expected.best_epoch
    assert result.steps == expected.steps
    for a, b in zip(leaves(result.params), leaves(expected.params), strict=True):
        np.testing.assert_array_equal(a, b)
    best = ckpt_io.load(out / "best.ckpt")
    reference = ckpt_io.load(expected_out / "best.ckpt")
    assert best.training["epoch"] == reference.training["epoch"]
    for a, b in zip(leaves(best.params), leaves(reference.params), strict=True):
        np.testing.assert_array_equal(a, b)


def run_until_done(out: Path, toy, kills: list[tuple[str, str, int]]):
    """Run, killing at the first pending ``(how, event, step)`` of ``kills`` that
    the run reaches (``how``: ``"kill"`` raises :class:`Killed`, ``"term"`` sends
    SIGTERM to this process), then run again, until a run ends by itself."""
    pending = list(kills)
    interruptions = 0
    for _ in range(len(kills) + 1):

        def hook(event: str, step: int) -> None:
            for k, (how, name, at) in enumerate(pending):
                if name == event and at == step:
                    del pending[k]
                    if how == "kill":
                        raise Killed(f"{event} at step {step}")
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

        try:
            result = run(out, toy, on_event=hook)
        except (Killed, train_mod.Preempted):
            interruptions += 1
            continue
        assert not pending, f"kill points never reached: {pending}"
        return result, interruptions
    raise AssertionError("the run did not finish")


def test_kill_after_the_state_save_of_every_epochs_last_step(
    uninterrupted, toy, tmp_path
):
    """The case that lost every epoch: each of four kills lands right after the
    state save that follows an epoch's last step (the loader already points at the
    next epoch; the epoch is neither validated nor recorded)."""
    last_steps = uninterrupted[3]
    kills = [("kill", "state_saved", s) for s in last_steps]
    result, interruptions = run_until_done(tmp_path, toy, kills)
    assert interruptions == 4
    assert_same_as(uninterrupted, result, tmp_path)


def test_sigterm_and_kill_anywhere(uninterrupted, toy, tmp_path):
    """SIGTERM on an epoch's last step, kills and SIGTERMs during validation, after
    the history row was written but before the state, and at random steps."""
    last = uninterrupted[3]
    rng = np.random.default_rng(7)
    random_steps = sorted(rng.choice(np.arange(2, last[-1]), 3, replace=False))
    kills = sorted(
        [
            ("term", "step", last[0]),
            ("kill", "validation", last[1]),
            ("term", "validation", last[2]),
            ("kill", "epoch_recorded", last[3]),
        ]
        + [
            (("kill", "term")[i % 2], "step", int(s))
            for i, s in enumerate(random_steps)
        ],
        key=lambda k: k[2],
    )
    result, interruptions = run_until_done(tmp_path, toy, kills)
    assert interruptions == len(kills)
    assert_same_as(uninterrupted, result, tmp_path)


def test_real_sigkill_after_the_last_steps_state_save(uninterrupted, toy, tmp_path):
    """A real SIGKILL of a training process, right after the state save of epoch
    2's last step; the rerun finishes as the uninterrupted run."""
    packed, split = toy
    at = uninterrupted[3][1]
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_resume as t
        from pathlib import Path

        def hook(event, step):
            if event == "state_saved" and step == {at}:
                os.kill(os.getpid(), signal.SIGKILL)

        t.run(Path({str(tmp_path)!r}), (Path({str(packed)!r}), Path({str(split)!r})),
              on_event=hook)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    saved = ckpt_io.load_state(tmp_path / "state")
    assert int(saved["train_state"]["step"]) == at
    assert len(saved["progress"]["history"]) == 1  # epoch 2 trained, not recorded
    assert_same_as(uninterrupted, run(tmp_path, toy), tmp_path)
