"""The epoch loop: steps, validation, best model, early stopping, preemption.

:func:`train_and_evaluate` runs a prepared :class:`Run` to its end. Work is never
lost and a resumed run ends exactly as an uninterrupted one:

* ``len(record.history)`` is the number of finished epochs; a state saved after
  an epoch's last step but before its validation (the loader then points at the
  next epoch) makes the next run validate and record that epoch first;
* a state is saved every ``state_every_steps`` steps, at every epoch end and on
  SIGTERM; the history and the best checkpoint are rewritten from the state, so a
  kill between any two writes leaves nothing half done;
* rejected (non-finite) steps are counted per epoch and their consecutive count is
  part of the state.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import jax
import numpy as np
from tqdm import tqdm

from physpack.config import TrainConfig
from physpack.data.loader import PackedMemmapLoader
from physpack.errors import PhyspackError
from physpack.model.physnet import EnergyConstants, Params
from physpack.training import parallel
from physpack.training.history import write_history
from physpack.training.losses import LossWeights, metrics_from_sums, stage_weights
from physpack.training.optim import (
    fit_schedule_to_budget,
    in_energy_stage,
    learning_rate,
    plateau_update,
)
from physpack.training.parallel import DataParallel
from physpack.training.state import TrainingRecord, TrainState, new_epoch_sums
from physpack.training.steps import STOP_KEY, Steps

#: Epochs whose mean time predicts the next one's (the budget's decisions).
RECENT_EPOCHS = 5
#: Events passed to ``on_event`` (monitoring; tests kill the run at them).
EVENTS = ("step", "state_saved", "validation", "epoch_recorded")


class TrainingDiverged(PhyspackError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class Preempted(PhyspackError):
    """SIGTERM received; the resumable state was saved before stopping."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of a run.

    Attributes:
        checkpoint, history: the files written.
        best_epoch: 1-based epoch of the saved parameters.
        best_metrics: its validation metrics.
        epochs: epochs completed; steps: optimisation steps taken (batches).
        stop_reason: ``"epochs"``, ``"patience"`` or ``"max_minutes"``.
        compilations: traces of ``train_step`` and ``eval_step`` in this process.
        params, ema: the final raw and EMA parameters (numpy pytrees).
    """

    checkpoint: Path
    history: Path
    best_epoch: int
    best_metrics: dict[str, float]
    epochs: int
    steps: int
    stop_reason: str
    compilations: dict[str, int]
    params: Params
    ema: Params


@dataclasses.dataclass
class Run:
    """Everything a run needs, built by :func:`physpack.training.train.train`.

    ``save_state(run)`` writes the resumable state, ``write_best(run, ema, epoch,
    metrics)`` the checkpoint; both only in process 0.
    """

    cfg: TrainConfig
    dp: DataParallel
    train_loader: PackedMemmapLoader
    valid_loader: PackedMemmapLoader
    steps: Steps
    state: TrainState
    record: TrainingRecord
    constants: EnergyConstants
    data_stats: dict[str, float]
    weights: LossWeights
    scale: jax.Array
    output: Path
    history: Path
    state_dir: Path
    save_state: Callable[[Run], None]
    write_best: Callable[[Run, Params, int, Mapping[str, float]], None]
    log: Callable[[str], None] = print
    on_step: Callable[[int], None] | None = None
    on_event: Callable[[str, int], None] | None = None
    heartbeat_s: float = 60.0
    show_progress: bool = False
    t_start: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def main(self) -> bool:
        return self.dp.process_index == 0

    def elapsed(self) -> float:
        """Seconds of the run, earlier processes of a resumed run included."""
        return self.record.elapsed_s + time.monotonic() - self.t_start

    def steps_per_epoch(self, epoch: int | None = None) -> int:
        return parallel.steps_per_epoch(
            self.train_loader.num_batches(epoch), self.dp.batches_per_step
        )

    def loss_stage(self) -> int:
        """1, or 2 once the next step is in the late energy stage."""
        accepted, schedule = host((self.state.accepted, self.state.schedule))
        return 2 if bool(in_energy_stage(self.cfg, accepted, schedule)) else 1

    def weights_now(self) -> LossWeights:
        """The loss weights of the next step (those of the late energy stage once
        it has begun): the validation loss uses the same."""
        return stage_weights(self.weights, self.cfg, self.loss_stage() == 2)

    def event(self, name: str, step: int) -> None:
        if self.on_event is not None:
            self.on_event(name, step)


class SigtermFlag:
    """Turns SIGTERM into a flag checked between steps (main thread only)."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def host(tree: Any) -> Any:
    """Numpy copies of (replicated) device arrays, in any process."""
    return parallel.to_host(tree)


def train_and_evaluate(run: Run) -> TrainResult:
    """Train until ``epochs``, ``patience`` or ``max_minutes`` stops the run.

    Raises:
        Preempted: SIGTERM (the state is saved first).
        TrainingDiverged: ``max_nonfinite_steps`` consecutive rejected steps.
    """
    p = run.record
    rate = _Rate()
    with SigtermFlag() as sigterm:
        while not p.finished:
            done = len(p.history)
            if run.train_loader.state_dict()["epoch"] > done:
                _end_epoch(run, done)  # trained, not yet validated and recorded
            elif done >= run.cfg.epochs:
                p.finished, p.stop_reason = True, "epochs"
                break
            else:
                _train_epoch(run, done, sigterm, rate)
                continue
            if not p.finished and parallel.any_process(sigterm.raised):
                raise Preempted(
                    f"SIGTERM after epoch {done + 1}: state saved in "
                    f"{run.state_dir}; rerun the same command to continue"
                )
    if p.best_ema is None:  # cannot happen with epochs ≥ 1; never write nothing
        raise TrainingDiverged("no epoch completed; no checkpoint written")
    # Rewritten at the end: a resumed run, whose earlier best.ckpt a workflow
    # manager may have deleted, still ends with it in place.
    if run.main:
        run.write_best(run, p.best_ema, p.best_epoch, p.best_metrics)
        write_history(run.history, p.history)
    c = run.steps.compilations
    run.log(
        f"done: {p.stop_reason}; best epoch {p.best_epoch} "
        f"({metric_text(p.best_metrics)}); compilations: train_step="
        f"{c['train_step']} eval_step={c['eval_step']}; "
        f"{run.elapsed() / 60:.1f} min"
    )
    return TrainResult(
        checkpoint=run.output,
        history=run.history,
        best_epoch=p.best_epoch,
        best_metrics=dict(p.best_metrics),
        epochs=len(p.history),
        steps=int(host(run.state.step)),
        stop_reason=p.stop_reason,
        compilations=dict(c),
        params=host(run.state.params),
        ema=host(run.state.ema),
    )


@dataclasses.dataclass
class _Rate:
    """Steady-state speed of this process (steps after the compiling one)."""

    steps: float = 0.0
    seconds: float = 0.0
    valid_s: float = 0.0

    def step_s(self) -> float | None:
        return self.seconds / self.steps if self.steps else None


def _placed_steps(run: Run, loader: PackedMemmapLoader) -> Iterator[dict[str, Any]]:
    """The rest of ``loader``'s epoch as placed steps: this process assembles only
    its own batches of each step (the loader's ``process_slots``), and they are
    stacked and sharded over the mesh in the loader's prefetch thread, while the
    previous step runs."""
    return loader.packed_steps(
        transfer=lambda group: parallel.shard_batches(run.dp, group)
    )


class _StopFlags:
    """The per-device SIGTERM flags (:data:`STOP_KEY`) of a step, placed once: a
    signal must reach the step taken after it, so the flag is not part of the
    batches prepared ahead in the prefetch thread."""

    def __init__(self, run: Run) -> None:
        slots = run.dp.num_local_devices * run.dp.batches_per_device
        self._placed = {
            stop: parallel.shard_batches(
                run.dp, [{STOP_KEY: np.float32(stop)}] * slots
            )[STOP_KEY]
            for stop in (False, True)
        }

    def __call__(self, stop: bool) -> jax.Array:
        return self._placed[bool(stop)]


def _train_epoch(run: Run, epoch: int, sigterm: SigtermFlag, rate: _Rate) -> None:
    """The rest of the epoch in progress; saves the state every
    ``state_every_steps`` steps and on SIGTERM (then raises :class:`Preempted`).

    Several processes must stop after the same step: a SIGTERM is passed into the
    next step (:data:`STOP_KEY`), and every process acts on the summed flag when it
    reads that step's result, which happens at the same point of the loop in all
    of them. A single process acts on its own flag at once.
    """
    sums = run.record.epoch_sums
    alone = run.dp.process_count == 1
    total = run.steps_per_epoch()
    t0 = time.monotonic()
    time_before = sums["time"]
    last_beat = t0
    bar = tqdm(
        total=total,
        initial=run.train_loader.position // run.dp.batches_per_step,
        desc=f"epoch {epoch + 1}/{run.cfg.epochs}",
        unit="step",
        disable=not run.show_progress,
        leave=False,
        dynamic_ncols=True,
    )
    pending: tuple[dict[str, jax.Array], int, bool] | None = None
    step = int(host(run.state.step))
    stop_flags = _StopFlags(run)
    for placed in _placed_steps(run, run.train_loader):
        traced = run.steps.compilations["train_step"]
        batch = {**placed, STOP_KEY: stop_flags(sigterm.raised)}
        t_call = time.monotonic()
        run.state, info = run.steps.train(run.state, batch, run.scale)
        step += 1
        # a new batch shape (the first step, the giant budget's first) compiles:
        # kept out of the throughput figures
        compiling = run.steps.compilations["train_step"] > traced
        if compiling:
            jax.block_until_ready(info)
            run.log(
                f"train step compiled ({run.steps.compilations['train_step']} "
                f"shape(s) so far) and run in {time.monotonic() - t_call:.1f} s"
            )
            time_before += t_call - t0  # the steps before it keep their time
            sums["time"] = time_before
            t0 = last_beat = time.monotonic()
        stop = alone and sigterm.raised
        if pending is not None:  # read the previous step: dispatch stays async
            stop |= _account(run, *pending)
        pending = (info, step, not compiling)
        bar.update(1)
        now = time.monotonic()
        if run.heartbeat_s > 0 and now - last_beat >= run.heartbeat_s:
            last_beat = now
            sums["time"] = time_before + now - t0
            rate_s = _steady(sums, rate)
            run.log(_heartbeat(run, epoch, step, total, rate_s))
        if step % run.cfg.state_every_steps == 0 or stop:
            stop |= _account(run, *pending)
            pending = None
            sums["time"] = time_before + time.monotonic() - t0
            _save(run, step)
        if stop:
            bar.close()
            raise Preempted(
                f"SIGTERM at step {step}: state saved in {run.state_dir}; rerun "
                "the same command to continue"
            )
        run.event("step", step)
        if run.on_step is not None:
            run.on_step(step)
    if pending is not None:
        _account(run, *pending)
    bar.close()
    sums["time"] = time_before + time.monotonic() - t0
    if sums["timed_steps"]:
        rate.steps, rate.seconds = sums["timed_steps"], sums["time"]


def _steady(sums: Mapping[str, float], rate: _Rate) -> float | None:
    """Seconds per step without compilation: this epoch's, else the last one's."""
    if sums["timed_steps"] >= 2:
        return sums["time"] / sums["timed_steps"]
    return rate.step_s()


def _heartbeat(
    run: Run, epoch: int, step: int, total: int, step_s: float | None
) -> str:
    sums = run.record.epoch_sums
    done = run.train_loader.position // run.dp.batches_per_step
    loss = sums["loss_sum"] / max(sums["n_mol"], 1.0)
    mol_s = sums["timed_mol"] / max(sums["time"], 1e-9)
    text = (
        f"step {step}  epoch {epoch + done / max(total, 1):.2f}/{run.cfg.epochs}  "
        f"loss {loss:.4g}  {mol_s:.0f} mol/s"
    )
    if step_s is not None:
        left_epoch = max(total - done, 0) * step_s
        epochs_left = max(run.cfg.epochs - epoch - 1, 0)
        valid_s = (
            run.record.history[-1].get("valid_time_s", 0.0)
            if run.record.history
            else 0.0
        )
        left_run = left_epoch + epochs_left * (total * step_s + valid_s)
        if run.cfg.max_minutes is not None:
            left_run = min(left_run, max(60 * run.cfg.max_minutes - run.elapsed(), 0))
        text += f"  ETA epoch {_hms(left_epoch)}, run {_hms(left_run)}"
    return text


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _account(run: Run, info: Mapping[str, jax.Array], step: int, timed: bool) -> bool:
    """Add a step's loss, gradient norm and rejection to the epoch's sums; count
    consecutive rejected steps. Returns whether some process had SIGTERM before
    that step."""
    p, sums = run.record, run.record.epoch_sums
    info = host(info)
    loss, ok, n = float(info["loss"]), bool(info["finite"]), float(info["n_mol"])
    sums["steps"] += 1
    if timed:
        sums["timed_mol"] += n
        sums["timed_steps"] += 1
    if ok:
        p.consecutive_rejected = 0
        g = float(info["grad_norm"])
        sums["loss_sum"] += loss * n
        sums["n_mol"] += n
        sums["grad_norm_sum"] += g
        sums["grad_norm_max"] = max(sums["grad_norm_max"], g)
        sums["clipped"] += float(g > run.cfg.clip_norm)
        return bool(info["stop"])
    sums["rejected"] += 1
    p.consecutive_rejected += 1
    if p.consecutive_rejected >= run.cfg.max_nonfinite_steps:
        best = p.best_epoch
        kept = f"{run.output} (epoch {best}) kept" if best else "none written"
        raise TrainingDiverged(
            f"training stopped at step {step}: {p.consecutive_rejected} consecutive "
            "steps with a non-finite loss or gradient (train.max_nonfinite_steps="
            f"{run.cfg.max_nonfinite_steps}); best checkpoint {kept}; lower "
            "train.learning_rate or check the data (physpack validate)"
        )
    return bool(info["stop"])


def _save(run: Run, step: int) -> None:
    run.save_state(run)
    run.event("state_saved", step)


def current_learning_rate(run: Run) -> float:
    """The learning rate of the next step (schedule × plateau factor)."""
    accepted, schedule, scale = host(
        (run.state.accepted, run.state.schedule, run.state.lr_scale)
    )
    return float(learning_rate(run.cfg, accepted, schedule) * scale)


def _end_epoch(run: Run, epoch: int) -> None:
    """Validate the EMA parameters, record the epoch, keep the best, adapt the
    schedule, decide whether to stop, save the state."""
    p, sums, cfg = run.record, run.record.epoch_sums, run.cfg
    stage = run.loss_stage()
    if stage == 2 and (not p.history or p.history[-1].get("loss_stage", 1) == 1):
        # The validation loss changes with the weights: the best model and the
        # patience restart, so that best.ckpt is the late stage's best.
        w = stage_weights(run.weights, cfg, True)
        run.log(
            f"epoch {epoch + 1}: late energy stage (train.energy_stage_start="
            f"{cfg.energy_stage_start}): weights energy {w.energy:g}, forces "
            f"{w.forces:g}; the best checkpoint restarts with this stage's loss"
        )
        p.best_loss, p.bad_epochs = math.inf, 0
    metrics, valid_s = validate(run, run.state.ema)
    accepted = max(sums["steps"] - sums["rejected"], 1.0)
    steady = sums["time"] / sums["timed_steps"] if sums["timed_steps"] else 0.0
    epoch_s = steady * sums["steps"] + valid_s
    # the next epoch's expected time: the recent epochs' mean (budget decisions)
    recent = [r["epoch_time_s"] for r in p.history[-(RECENT_EPOCHS - 1) :]]
    expected_s = float(np.mean([*recent, epoch_s]))
    _adapt_schedule(run, epoch, metrics["valid_loss"], expected_s)
    row = {
        "epoch": epoch + 1,
        "train_loss": sums["loss_sum"] / max(sums["n_mol"], 1.0),
        **metrics,
        "lr": current_learning_rate(run),  # of the next step
        "lr_horizon": int(host(run.state.schedule.horizon)),  # step the cosine ends
        "steps": int(sums["steps"]),
        "rejected_steps": int(sums["rejected"]),
        "grad_norm_mean": sums["grad_norm_sum"] / accepted,
        "grad_norm_max": sums["grad_norm_max"],
        "clipped_fraction": sums["clipped"] / accepted,
        "molecules_per_s": sums["timed_mol"] / max(sums["time"], 1e-9),
        "epoch_time_s": epoch_s,  # steps and validation, without compilation
        "valid_time_s": valid_s,
        "wall_time_s": run.elapsed(),
    }
    if cfg.energy_stage_start is not None:
        row["loss_stage"] = stage  # 1, or 2: the late energy stage
    p.history.append(row)
    improved = metrics["valid_loss"] < p.best_loss  # False for NaN
    if improved:
        p.best_epoch, p.best_loss = epoch + 1, metrics["valid_loss"]
        p.best_metrics, p.best_ema = metrics, host(run.state.ema)
        if run.main:
            run.write_best(run, p.best_ema, p.best_epoch, metrics)
        p.bad_epochs = 0
    else:
        p.bad_epochs += 1
    if run.main:
        write_history(run.history, p.history)
    run.event("epoch_recorded", int(host(run.state.step)))
    run.log(_summary(row, cfg.epochs, improved, run.data_stats))
    if sums["rejected"]:
        run.log(
            f"epoch {epoch + 1}: {int(sums['rejected'])} of {int(sums['steps'])} steps "
            "rejected (non-finite loss or gradient; parameters unchanged)"
        )
    p.epoch_sums = new_epoch_sums()
    if epoch + 1 >= cfg.epochs:
        p.finished, p.stop_reason = True, "epochs"
    elif cfg.patience is not None and p.bad_epochs >= cfg.patience:
        p.finished, p.stop_reason = True, "patience"
    elif (
        cfg.max_minutes is not None
        and run.elapsed() + expected_s > 60 * cfg.max_minutes
    ):
        # another epoch would overrun the budget: stop at this boundary
        p.finished, p.stop_reason = True, "max_minutes"
    # Clocks differ between processes: process 0's decision holds for all.
    reasons = ("", "epochs", "patience", "max_minutes")
    code = reasons.index(p.stop_reason) if p.finished else 0
    code = int(parallel.broadcast_from_main(np.int32(code)))
    p.finished, p.stop_reason = code > 0, reasons[code] or p.stop_reason
    _save(run, int(host(run.state.step)))


def _adapt_schedule(run: Run, epoch: int, valid_loss: float, epoch_s: float) -> None:
    """After every epoch of a run with ``max_minutes`` (cosine): the horizon
    becomes the steps that fit the budget if each further epoch takes ``epoch_s``
    seconds, continuously (:func:`fit_schedule_to_budget`). Every epoch with
    ``plateau``: the validation loss drives the learning-rate factor
    (:func:`plateau_update`)."""
    cfg = run.cfg
    if cfg.max_minutes is not None and cfg.schedule == "cosine":
        accepted, schedule = host((run.state.accepted, run.state.schedule))
        revised = fit_schedule_to_budget(
            cfg,
            int(accepted),
            schedule,
            epochs_done=epoch + 1,
            steps_per_epoch=run.steps_per_epoch(epoch + 1),
            elapsed_s=run.elapsed(),
            epoch_s=epoch_s,
        )
        # Clocks differ between processes: process 0's schedule holds for all.
        revised = parallel.broadcast_from_main(revised)
        horizon = int(revised.horizon)
        run.state = run.state.replace(schedule=parallel.replicate(run.dp, revised))
        if epoch == 0:
            run.log(
                f"train.max_minutes={cfg.max_minutes}: the learning rate anneals over "
                f"{horizon} steps ({horizon / max(run.steps_per_epoch(0), 1):.0f} "
                "epochs estimated to fit the budget; revised after every epoch)"
            )
    if cfg.schedule == "plateau":
        plateau = plateau_update(cfg, run.record.plateau, valid_loss)
        run.record.plateau = plateau
        run.state = run.state.replace(
            lr_scale=parallel.replicate(run.dp, np.float32(plateau["scale"]))
        )


def validate(run: Run, params: Params) -> tuple[dict[str, float], float]:
    """Validation metrics (every process gets the totals over all devices) and
    the seconds validation takes without compilation (the first step, when it
    compiled, is replaced by the mean of the others)."""
    totals: dict[str, float] = {}
    compiling = run.steps.compilations["eval_step"] == 0
    t0 = time.monotonic()
    t_first = t0
    n = 0
    for placed in _placed_steps(run, run.valid_loader):
        sums = host(run.steps.eval(params, placed, run.scale))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
        n += 1
        if n == 1:
            t_first = time.monotonic()
            run.event("validation", int(host(run.state.step)))
    seconds = time.monotonic() - t0
    if compiling and n > 1:
        seconds = (time.monotonic() - t_first) * n / (n - 1)
    return metrics_from_sums(totals, run.weights_now()), seconds


def metric_text(m: Mapping[str, float]) -> str:
    """The validation errors of ``m`` in one line, with units."""
    parts = []
    if "valid_energy_mae_eV" in m:
        parts.append(
            f"E MAE {m['valid_energy_mae_eV']:.4g} eV "
            f"({1e3 * m['valid_energy_mae_eV_per_atom']:.3g} meV/atom)"
        )
    if "valid_forces_mae_eV_per_A" in m:
        parts.append(f"F MAE {m['valid_forces_mae_eV_per_A']:.4g} eV/Å")
    if "valid_dipole_mae_eA" in m:
        parts.append(f"D MAE {m['valid_dipole_mae_eA']:.4g} e·Å")
    return ", ".join(parts)


def _summary(
    row: Mapping[str, float], epochs: int, improved: bool, stats: Mapping[str, float]
) -> str:
    text = (
        f"epoch {int(row['epoch'])}/{epochs}  loss {row['train_loss']:.4g}  valid "
        f"{metric_text(row)}"
    )
    if "valid_forces_mae_eV_per_A" in row and stats.get("forces_std_eV_per_A"):
        ratio = row["valid_forces_mae_eV_per_A"] / stats["forces_std_eV_per_A"]
        text += f" = {100 * ratio:.1f}% of force std"
    text += (
        f"  lr {row['lr']:.3g}  |g| {row['grad_norm_mean']:.3g} (clipped "
        f"{100 * row['clipped_fraction']:.0f}%)  rejected {row['rejected_steps']}  "
        f"{row['molecules_per_s']:.0f} mol/s  {row['epoch_time_s']:.1f} s/epoch  "
        f"{row['wall_time_s']:.0f} s" + ("  *" if improved else "")
    )
    return text
