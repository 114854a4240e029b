"""Training: reference fit, loss decrease, one compilation, exact resume, NaN guard,
refusal of foreign states, SIGTERM, and the command line of the Snakemake rule."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_fixtures import (
    REFERENCE,
    TINY_MODEL,
    TOY_LOADER,
    TOY_MODEL,
    TOY_TRAIN,
    write_toy,
)
from physpack.config import TrainConfig, section_to_json
from physpack.data.loader import PackedMemmapLoader, from_config
from physpack.errors import ConfigError
from physpack.model import checkpoint as ckpt_io
from physpack.model.physnet import (
    EnergyConstants,
    init_params,
    model_from_config,
    molecules_to_batch,
)
from physpack.training import loop as loop_mod
from physpack.training import train as train_mod
from physpack.training.losses import LossWeights
from physpack.training.optim import initial_schedule, make_optimizer
from physpack.training.reference import fit_energy_constants
from physpack.training.state import create_train_state
from physpack.training.steps import build_steps

MODEL, LOADER, TRAIN = TOY_MODEL, TOY_LOADER, TOY_TRAIN

pytestmark = [pytest.mark.usefixtures("compilation_cache"), pytest.mark.slow]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    return write_toy(tmp_path_factory.mktemp("toy"))


def run(out: Path, toy, train_cfg: TrainConfig = TRAIN, **kw) -> train_mod.TrainResult:
    packed, split = toy
    return train_mod.train(
        packed,
        split,
        out / "best.ckpt",
        out / "history.csv",
        out / "state",
        kw.pop("model_cfg", MODEL),
        train_cfg,
        kw.pop("loader_cfg", LOADER),
        progress=False,
        log=kw.pop("log", lambda msg: None),
        **kw,
    )


@pytest.fixture(scope="module")
def reference_run(toy, tmp_path_factory):
    """An uninterrupted run, and what it logged."""
    out = tmp_path_factory.mktemp("uninterrupted")
    lines: list[str] = []
    return run(out, toy, log=lines.append), out, lines


def train_losses(out: Path) -> np.ndarray:
    with open(out / "history.csv") as fh:
        return np.array([float(r["train_loss"]) for r in csv.DictReader(fh)])


def leaves(tree) -> list[np.ndarray]:
    """Host copies (the train step donates its state's buffers)."""
    return [np.array(x, copy=True) for x in jax.tree.leaves(tree)]


class Killed(Exception):
    """Stands in for a crash or SIGKILL between two steps."""


def crash_at(n: int):
    def hook(step: int) -> None:
        if step == n:
            raise Killed(f"killed at step {n}")

    return hook


def test_reference_energies_are_the_least_squares_fit(toy):
    packed, split = toy
    idx = np.load(split)["train"]
    loader = PackedMemmapLoader(packed, 7, shuffle=False, indices=idx)
    constants, stats = fit_energy_constants(loader, 9)
    # the same fit, written out directly on the full composition matrix
    from physpack.data.packed import PackedDataset

    ds = PackedDataset(packed)
    C = np.zeros((idx.size, 10))
    for row, i in enumerate(idx):
        np.add.at(C[row], ds.molecule(int(i))["Z"], 1.0)
    E = np.asarray(ds.E)[idx]
    expected = np.linalg.lstsq(C[:, [1, 6, 7, 8, 9]], E, rcond=None)[0]
    np.testing.assert_allclose(
        constants.reference_energies[[1, 6, 7, 8, 9]], expected, atol=1e-6
    )
    assert constants.reference_energies[[0, 2, 3, 4, 5]].tolist() == [0.0] * 5
    assert constants.elements == (1, 6, 7, 8, 9)
    residual = (E - C @ constants.reference_energies) / C.sum(1)
    assert stats["energy_residual_std_eV_per_atom"] == pytest.approx(
        residual.std(), rel=1e-6
    )
    F = np.concatenate([ds.molecule(int(i))["F"] for i in idx]).astype(np.float64)
    assert stats["forces_std_eV_per_A"] == pytest.approx(F.std(), rel=1e-5)
    assert constants.scale == pytest.approx(
        max(residual.std(), np.sqrt((F**2).mean())), rel=1e-5
    )


def test_atomic_number_above_the_model_is_named(toy):
    loader = PackedMemmapLoader(toy[0], 8, shuffle=False)
    with pytest.raises(Exception, match="above model.max_atomic_number=7"):
        fit_energy_constants(loader, 7)


def test_loss_decreases_and_each_step_compiles_once(reference_run):
    result, out, lines = reference_run
    assert result.compilations == {"train_step": 1, "eval_step": 1}
    assert any("compilations: train_step=1 eval_step=1" in line for line in lines)
    with open(out / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for col in (
        "valid_energy_mae_eV_per_atom",
        "valid_forces_rmse_eV_per_A",
        "lr",
        "molecules_per_s",
        "wall_time_s",
    ):
        assert float(rows[-1][col]) > 0
    first, last = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    assert last < 0.9 * first
    assert float(rows[-1]["valid_loss"]) < float(rows[0]["valid_loss"])
    assert sum("epoch " in line and "of force std" in line for line in lines) == 3


def test_best_checkpoint_is_complete(reference_run):
    result, out, _ = reference_run
    ckpt = ckpt_io.load(out / "best.ckpt")
    assert ckpt.model_config == MODEL
    assert ckpt.training["epoch"] == result.best_epoch
    assert ckpt.metrics == pytest.approx(result.best_metrics)
    assert ckpt.constants.reference_energies[6] == pytest.approx(REFERENCE[6], abs=2.0)
    assert ckpt.training["reference_energies"] == "fit"
    state = ckpt_io.load_state(out / "state")
    assert (
        state["progress"]["finished"] and state["progress"]["stop_reason"] == "epochs"
    )
    for a, b in zip(leaves(ckpt.params), leaves(state["progress"]["best_ema"])):
        np.testing.assert_array_equal(a, b)


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(
    reference_run, toy, tmp_path
):
    expected = reference_run[0]

    # ~8 batches per epoch: step 14 is in epoch 2, the last state from step 12
    with pytest.raises(Killed):
        run(tmp_path, toy, on_step=crash_at(14))
    saved = ckpt_io.load_state(tmp_path / "state")
    assert not saved["progress"]["finished"] and int(saved["train_state"]["step"]) == 12
    assert saved["loader"]["epoch"] == 1 and saved["loader"]["position"] > 0
    lines: list[str] = []
    resumed = run(tmp_path, toy, log=lines.append)
    assert any(line.startswith("resuming from") for line in lines)
    assert resumed.steps == expected.steps
    # bit for bit on CPU: same batches, same compiled program, same inputs
    for a, b in zip(leaves(resumed.params), leaves(expected.params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(leaves(resumed.ema), leaves(expected.ema)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        train_losses(tmp_path),
        train_losses(reference_run[1]),
        rtol=1e-5,
    )


def test_sigterm_saves_state_and_rerun_finishes(reference_run, toy, tmp_path):
    def preempt(step: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(train_mod.Preempted, match="state saved"):
        run(tmp_path, toy, on_step=preempt)
    assert signal.getsignal(signal.SIGTERM) is previous  # handler restored
    assert int(ckpt_io.load_state(tmp_path / "state")["train_state"]["step"]) == 3
    resumed = run(tmp_path, toy)
    for a, b in zip(leaves(resumed.params), leaves(reference_run[0].params)):
        np.testing.assert_array_equal(a, b)


def test_state_from_another_config_is_refused(toy, tmp_path, monkeypatch):
    with pytest.raises(Killed):
        run(tmp_path, toy, on_step=crash_at(5))
    other = dataclasses.replace(TRAIN, learning_rate=1e-4)
    with pytest.raises(
        ConfigError,
        match=r"other settings \(train.learning_rate: 0.02 → 0.0001\).*delete",
    ):
        run(tmp_path, toy, train_cfg=other)
    with monkeypatch.context() as m:
        m.setattr(train_mod, "code_fingerprint", lambda: "edited model.py")
        with pytest.raises(ConfigError, match="different code"):
            run(tmp_path, toy)
    # fields that do not change the result may differ
    lenient = dataclasses.replace(TRAIN, max_minutes=30.0, state_every_steps=100)
    assert run(tmp_path, toy, train_cfg=lenient).epochs == 3
    # a finished state does not block a new run with other settings, but the
    # model it made is only replaced on request
    with pytest.raises(ConfigError, match="best.ckpt exists.*--overwrite"):
        run(tmp_path, toy, train_cfg=other)
    lines: list[str] = []
    result = run(tmp_path, toy, train_cfg=other, log=lines.append, overwrite=True)
    assert result.epochs == 3
    assert not any(line.startswith("resuming") for line in lines)


def test_nonfinite_steps_are_rejected(toy):
    packed, _ = toy
    model = model_from_config(MODEL)
    loader = PackedMemmapLoader(packed, 16, shuffle=False)
    batch = loader.assemble(np.arange(6))
    constants = EnergyConstants(np.zeros(10), 1.0, (1, 6, 7, 8, 9))
    tx = make_optimizer(TRAIN)
    params = init_params(model, jax.random.PRNGKey(0), batch)
    steps = build_steps(model, tx, TRAIN, LossWeights(1.0, 1.0, 0.0))
    state = create_train_state(params, tx, initial_schedule(TRAIN, 5))
    good = train_mod.prepare_batch(batch, constants)
    bad = {**good, "E_res": good["E_res"].copy()}
    bad["E_res"][0] = np.nan
    initial = leaves(params)
    before = {k: leaves(getattr(state, k)) for k in ("params", "opt_state", "ema")}
    state, info = steps.train(state, bad, jnp.float32(1.0))
    assert not bool(info["finite"]) and int(state.step) == 1
    assert int(state.accepted) == 0  # the schedule does not advance either
    for key, values in before.items():
        for a, b in zip(leaves(getattr(state, key)), values):
            np.testing.assert_array_equal(a, b)
    for _ in range(2):  # the warm-up's first learning rate is 0
        state, info = steps.train(state, good, jnp.float32(1.0))
        assert bool(info["finite"])
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(state.params), initial))
    assert steps.compilations["train_step"] == 1


def test_repeated_nonfinite_steps_stop_with_best_checkpoint_intact(
    toy, tmp_path, monkeypatch
):
    poisoned = {"on": False, "best": b""}
    prepare = train_mod.prepare_batch

    def maybe_nan(batch, constants):
        out = prepare(batch, constants)
        if poisoned["on"]:
            out["R"] = np.full_like(out["R"], np.nan)
        return out

    def poison_after_first_epoch(step: int) -> None:
        if step == 10 and not poisoned["on"]:  # after epoch 1 wrote best.ckpt
            poisoned["best"] = (tmp_path / "best.ckpt").read_bytes()
            poisoned["on"] = True

    monkeypatch.setattr(train_mod, "prepare_batch", maybe_nan)
    cfg = dataclasses.replace(TRAIN, epochs=5, max_nonfinite_steps=4)
    with pytest.raises(train_mod.TrainingDiverged, match="4 consecutive steps"):
        run(tmp_path, toy, train_cfg=cfg, on_step=poison_after_first_epoch)
    assert (
        poisoned["best"] and (tmp_path / "best.ckpt").read_bytes() == poisoned["best"]
    )
    ckpt = ckpt_io.load(tmp_path / "best.ckpt")
    assert all(np.all(np.isfinite(x)) for x in leaves(ckpt.params))


def test_command_line_as_the_snakemake_rule_calls_it(toy, tmp_path, capsys):
    packed, split = toy
    fast = dataclasses.replace(TRAIN, epochs=1)
    argv = [
        str(packed),
        "--split",
        str(split),
        "--output",
        str(tmp_path / "m" / "best.ckpt"),
        "--history",
        str(tmp_path / "m" / "history.csv"),
        "--state-dir",
        str(tmp_path / "m" / "state"),
        "--model-config",
        section_to_json(MODEL),
        "--train-config",
        section_to_json(fast),
        "--loader-config",
        json.dumps(dataclasses.asdict(LOADER)),
        "--no-progress",
    ]
    assert train_mod.main(argv) == 0
    assert (tmp_path / "m" / "best.ckpt").is_file() and (
        tmp_path / "m" / "history.csv"
    ).is_file()
    assert "compilations: train_step=1 eval_step=1" in capsys.readouterr().out
    bad = argv[:-7] + ["--train-config", '{"learning_rate": "fast"}', "--no-progress"]
    assert train_mod.main(bad) == 2
    assert "train.learning_rate" in capsys.readouterr().err


def read_history(out: Path) -> list[dict[str, str]]:
    with open(out / "history.csv") as fh:
        return list(csv.DictReader(fh))


def test_gradient_norm_clipping_and_rejections_are_in_the_history(reference_run):
    _, out, lines = reference_run
    for row in read_history(out):
        assert 0 < float(row["grad_norm_mean"]) <= float(row["grad_norm_max"])
        assert 0.0 <= float(row["clipped_fraction"]) <= 1.0
        assert int(row["rejected_steps"]) == 0 and int(row["steps"]) > 0
        assert float(row["epoch_time_s"]) > 0
    assert sum("|g| " in line and "s/epoch" in line for line in lines) == 3


def test_rejected_steps_are_counted_in_log_history_and_state(
    toy, tmp_path, monkeypatch
):
    calls = {"n": 0}
    prepare = train_mod.prepare_batch

    def every_third_nan(batch, constants):
        out = prepare(batch, constants)
        calls["n"] += 1
        if calls["n"] % 3 == 0 and "F" in out and out["E_res"].size > 8:
            out["R"] = np.full_like(out["R"], np.nan)
        return out

    monkeypatch.setattr(train_mod, "prepare_batch", every_third_nan)
    lines: list[str] = []
    cfg = dataclasses.replace(TRAIN, epochs=2)
    run(tmp_path, toy, train_cfg=cfg, log=lines.append, heartbeat_s=1e-9)
    rows = read_history(tmp_path)
    rejected = [int(r["rejected_steps"]) for r in rows]
    assert all(n > 0 for n in rejected)
    assert sum(
        f"{rejected[0]} of {rows[0]['steps']} steps rejected" in x for x in lines
    )
    state = ckpt_io.load_state(tmp_path / "state")
    assert "consecutive_rejected" in state["progress"]
    # heartbeat lines: step, epoch fraction, loss, mol/s, ETA of epoch and run
    beats = [x for x in lines if x.startswith("step ") and "ETA epoch" in x]
    assert beats and all(" mol/s" in x and ", run " in x for x in beats)


def test_raising_the_budget_or_the_epochs_continues_a_stopped_run(toy, tmp_path):
    orphan = tmp_path / ".best.ckpt.tmp-999999999"
    (tmp_path / "state").mkdir(parents=True)
    orphan_state = tmp_path / "state" / ".state.msgpack.tmp-999999999"
    for path in (orphan, orphan_state):
        path.write_bytes(b"partial")
    tiny_budget = dataclasses.replace(TRAIN, max_minutes=1e-5)
    first = run(tmp_path, toy, train_cfg=tiny_budget)
    assert not orphan.exists() and not orphan_state.exists()
    assert first.stop_reason == "max_minutes" and first.epochs == 1
    # the schedule annealed over the budget: the next rate is the final one
    row = read_history(tmp_path)[0]
    final = TRAIN.learning_rate * TRAIN.final_lr_fraction
    assert float(row["lr"]) == pytest.approx(final, rel=1e-5)
    lines: list[str] = []
    more_time = dataclasses.replace(TRAIN, max_minutes=60.0)
    second = run(tmp_path, toy, train_cfg=more_time, log=lines.append)
    assert any("continuing the run that stopped on max_minutes" in x for x in lines)
    # not silent: the added budget trains at the final rate, not a new anneal
    said = next(x for x in lines if x.startswith("continuing"))
    assert (
        f"final learning rate {final:.3g}" in said and str(tmp_path / "state") in said
    )
    rates = [float(r["lr"]) for r in read_history(tmp_path)]
    assert rates[1:] == pytest.approx([final] * (len(rates) - 1), rel=1e-5)
    assert second.epochs == 3 and second.stop_reason == "epochs"
    more_epochs = dataclasses.replace(TRAIN, epochs=4, max_minutes=60.0)
    third = run(tmp_path, toy, train_cfg=more_epochs)
    assert third.epochs == 4 and third.steps > second.steps
    assert [int(r["epoch"]) for r in read_history(tmp_path)] == [1, 2, 3, 4]


@pytest.mark.parametrize(("patience", "epochs"), [(2, 3), (None, 5)])
def test_patience_stops_a_run_that_stopped_improving_and_null_never_does(
    toy, tmp_path, monkeypatch, patience, epochs
):
    real = loop_mod.validate

    def flat(run, params):  # the validation loss never improves after epoch 1
        metrics, seconds = real(run, params)
        return {**metrics, "valid_loss": 1.0}, seconds

    monkeypatch.setattr(loop_mod, "validate", flat)
    cfg = dataclasses.replace(TRAIN, epochs=5, patience=patience)
    result = run(tmp_path, toy, train_cfg=cfg)
    assert result.epochs == epochs
    assert result.stop_reason == ("patience" if patience else "epochs")


def test_command_line_refuses_to_replace_a_model_without_its_state(
    toy, tmp_path, capsys
):
    packed, split = toy
    out = tmp_path / "m"
    argv = [
        str(packed),
        "--split",
        str(split),
        "--output",
        str(out / "best.ckpt"),
        "--history",
        str(out / "history.csv"),
        "--train-config",
        section_to_json(dataclasses.replace(TRAIN, epochs=1)),
        "--model-config",
        section_to_json(MODEL),
        "--loader-config",
        json.dumps(dataclasses.asdict(LOADER)),
        "--no-progress",
    ]
    assert train_mod.main(argv) == 0
    good = (out / "best.ckpt").read_bytes()
    import shutil

    shutil.rmtree(out / "state")
    capsys.readouterr()
    assert train_mod.main(argv) == 2
    err = capsys.readouterr().err
    assert "best.ckpt exists" in err and "--overwrite" in err
    assert (out / "best.ckpt").read_bytes() == good
    assert train_mod.main([*argv, "--overwrite"]) == 0


def test_plateau_schedule_follows_the_validation_loss(toy, tmp_path, monkeypatch):
    real = loop_mod.validate
    losses = iter([1.0, 0.5, 0.6, 0.7, 0.4, 0.8, 0.9])

    def scripted(run, params):  # the validation losses of seven epochs
        metrics, seconds = real(run, params)
        return {**metrics, "valid_loss": next(losses)}, seconds

    monkeypatch.setattr(loop_mod, "validate", scripted)
    cfg = dataclasses.replace(
        TRAIN,
        epochs=7,
        patience=None,
        schedule="plateau",
        plateau_patience=2,
        plateau_factor=0.5,
    )
    run(tmp_path, toy, train_cfg=cfg)
    with open(tmp_path / "history.csv") as fh:
        scales = [float(r["lr"]) / cfg.learning_rate for r in csv.DictReader(fh)]
    # the rate of the next epoch: two epochs without improvement on 0.5 halve it;
    # 0.4 improves again
    assert scales == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25], rel=1e-6)
    # the per-step optimiser no longer watches the training loss
    assert "reduce_on_plateau" not in repr(make_optimizer(cfg))


def test_adamw_without_weight_decay_warns():
    with pytest.warns(UserWarning, match="plain Adam"):
        make_optimizer(dataclasses.replace(TRAIN, optimizer="adamw", weight_decay=0.0))


def test_weight_decay_shrinks_only_the_dense_weight_matrices():
    """Decoupled decay pulls the dense layers' kernels towards zero; biases, the
    gates u, per-element scales and the basis are left alone (a decayed
    element_scale would fight the energy scale the model learned)."""
    mol = {"Z": np.array([8, 1, 1]), "R": np.eye(3, dtype=np.float32)}
    batch = molecules_to_batch([mol], max_atoms=4, max_pairs=8, max_molecules=2)
    model = model_from_config(TINY_MODEL)
    params = init_params(model, jax.random.PRNGKey(0), batch)
    tx = make_optimizer(dataclasses.replace(TRAIN, weight_decay=0.1))
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    weights = {
        jax.tree_util.keystr(path): w
        for path, w in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    assert any(n.endswith("['kernel']") for n in weights)
    assert any("element_scale" in n for n in weights)
    for (name, w), u in zip(weights.items(), jax.tree.leaves(updates), strict=True):
        # the update before the rate: weight_decay × the weight, or nothing
        kernel = name.endswith("['kernel']")
        expected = 0.1 * np.asarray(w) if kernel else np.zeros_like(w)
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-6, err_msg=name)


def test_budget_horizon_and_cosine_end():
    from physpack.training.optim import budget_horizon, learning_rate

    cfg = dataclasses.replace(TRAIN, epochs=100, max_minutes=1.0, warmup_steps=5)
    # after epoch 1 (10 steps, 20 s) at 10 s per epoch: 4 more fit into 60 s
    assert budget_horizon(cfg, 10, 1, 10, 20.0, 10.0) == 50
    assert (
        budget_horizon(dataclasses.replace(cfg, epochs=3), 10, 1, 10, 20.0, 10.0) == 30
    )
    # later: the steps done count, not the epochs' nominal steps
    assert budget_horizon(cfg, 37, 4, 10, 45.0, 10.0) == 47
    assert budget_horizon(cfg, 37, 4, 10, 55.0, 10.0) == 37  # nothing more fits
    schedule = initial_schedule(cfg, 50)
    end = cfg.learning_rate * cfg.final_lr_fraction
    assert float(learning_rate(cfg, 50, schedule)) == pytest.approx(end, rel=1e-5)
    assert float(learning_rate(cfg, 5, schedule)) == pytest.approx(cfg.learning_rate)
    assert float(learning_rate(cfg, 0, schedule)) == 0.0


def test_a_revised_horizon_keeps_the_rate_continuous_and_ends_at_the_new_horizon():
    from physpack.training.optim import (
        in_energy_stage,
        learning_rate,
        revise_schedule,
    )

    cfg = dataclasses.replace(
        TRAIN, warmup_steps=10, final_lr_fraction=0.01, energy_stage_start=0.8
    )
    peak, end = cfg.learning_rate, cfg.learning_rate * 0.01
    first = initial_schedule(cfg, 110)

    def cosine(t):  # the reference: peak → end over progress t in [0, 1]
        return end + (peak - end) * 0.5 * (1 + np.cos(np.pi * t))

    assert float(learning_rate(cfg, 60, first)) == pytest.approx(cosine(0.5), 1e-5)
    # slower than estimated: at step 60 only 40 more steps fit, not 50
    shorter = revise_schedule(cfg, 60, first, 100)
    for s in (60, 61):  # the same rate at the revision, and no jump after it
        assert float(learning_rate(cfg, s, shorter)) == pytest.approx(
            float(learning_rate(cfg, s, first)), rel=2e-2
        )
    assert float(learning_rate(cfg, 60, shorter)) == pytest.approx(cosine(0.5), 1e-5)
    assert float(learning_rate(cfg, 80, shorter)) == pytest.approx(cosine(0.75), 1e-5)
    assert float(learning_rate(cfg, 100, shorter)) == pytest.approx(end, rel=1e-5)
    assert float(learning_rate(cfg, 500, shorter)) == pytest.approx(end, rel=1e-5)
    # the energy stage moves with the horizon (0.8 × 100) until it has begun ...
    assert int(first.stage_start) == 88 and int(shorter.stage_start) == 80
    assert not bool(in_energy_stage(cfg, 79, shorter))
    assert bool(in_energy_stage(cfg, 80, shorter))
    # ... and a longer horizon after that does not end it
    longer = revise_schedule(cfg, 85, shorter, 200)
    assert int(longer.stage_start) == 80 and bool(in_energy_stage(cfg, 85, longer))
    assert float(learning_rate(cfg, 85, longer)) == pytest.approx(
        float(learning_rate(cfg, 85, shorter)), rel=1e-5
    )
    assert float(learning_rate(cfg, 200, longer)) == pytest.approx(end, rel=1e-5)
    # during warmup only the horizon moves
    early = revise_schedule(cfg, 5, first, 60)
    assert int(early.anchor_step) == -1 and int(early.horizon) == 60
    assert float(learning_rate(cfg, 35, early)) == pytest.approx(cosine(0.5), 1e-5)
    # a run that ends here: the next rate is the final one
    done = revise_schedule(cfg, 60, first, 60)
    assert float(learning_rate(cfg, 60, done)) == pytest.approx(end, rel=1e-5)


def test_a_run_that_slows_down_still_anneals_to_its_budget():
    """Epochs taking ever longer (a machine that slows down): the horizon follows,
    and the rate of the last epoch's end is the schedule's final one. With one
    estimate after the first epoch, the run stopped with the rate at a quarter of
    its peak."""
    from physpack.training.optim import fit_schedule_to_budget, learning_rate

    cfg = dataclasses.replace(
        TRAIN, epochs=1000, max_minutes=1.0, warmup_steps=5, final_lr_fraction=0.01
    )
    schedule = initial_schedule(cfg, cfg.epochs * 10)
    clock, rates, epoch = 0.0, [], 0
    while True:
        epoch_s = 2.0 + 0.12 * epoch  # 2 s at first, 5.6 s at the 31st epoch
        clock += epoch_s
        accepted = 10 * (epoch + 1)
        before = float(learning_rate(cfg, accepted, schedule))
        schedule = fit_schedule_to_budget(
            cfg,
            accepted,
            schedule,
            epochs_done=epoch + 1,
            steps_per_epoch=10,
            elapsed_s=clock,
            epoch_s=epoch_s + 0.12,  # the next one's
        )
        rates.append((before, float(learning_rate(cfg, accepted, schedule))))
        if clock + epoch_s + 0.12 > 60.0:  # the loop's stop rule
            break
        epoch += 1
    assert 15 < epoch < 25
    assert rates[-1][1] == pytest.approx(cfg.learning_rate * 0.01, rel=1e-3)
    # each revision leaves the rate where it was (but for the last: the run ends
    # there), and the rate only falls
    for before, after in rates[:-1]:
        assert after == pytest.approx(before, rel=1e-5)
    lr = [r for _, r in rates]
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(lr))


def test_given_reference_energies_are_used_and_stored(toy, tmp_path):
    from ase.data import chemical_symbols

    given = {chemical_symbols[z]: e for z, e in REFERENCE.items()}
    cfg = dataclasses.replace(TRAIN, epochs=1, reference_energies=given)
    run(tmp_path, toy, train_cfg=cfg)
    ckpt = ckpt_io.load(tmp_path / "best.ckpt")
    assert ckpt.training["reference_energies"] == given
    for z, e in REFERENCE.items():
        assert ckpt.constants.reference_energies[z] == e


def test_giant_molecules_train_in_their_own_budget_compiled_once(toy, tmp_path):
    """Molecules above loader.giant_atoms go into batches of a second budget: the
    train and eval steps compile once per budget, not once per batch, and every
    training molecule is in one batch per epoch."""
    loader = dataclasses.replace(LOADER, giant_atoms=6)
    train_loader = from_config(
        toy[0], loader, toy[1], "train", shuffle=True, seed=TRAIN.seed, model=MODEL
    )
    assert len(train_loader.budgets) == 2
    result = run(tmp_path, toy, dataclasses.replace(TRAIN, epochs=2), loader_cfg=loader)
    assert result.compilations == {"train_step": 2, "eval_step": 2}
    assert result.steps == sum(train_loader.num_batches(e) for e in range(2))
