"""``physpack train``: fit a PhysNet model on a packed dataset.

::

    physpack train results/data/packed --split results/data/split.npz \\
        --output results/model/best.ckpt --history results/model/history.csv \\
        --state-dir results/model/state --model-config '{...}' \\
        --train-config '{...}' --loader-config '{...}'

:func:`train` builds a run and hands it to
:func:`physpack.training.loop.train_and_evaluate`. The pieces, one module each:

* :mod:`~physpack.training.reference`: per-element reference energies E0 (a
  least-squares fit on the training split, or given in ``train.reference_energies``)
  and the energy scale;
* :mod:`~physpack.training.losses`: the loss and the error metrics;
* :mod:`~physpack.training.optim`: clipping, Adam/AMSGrad, weight decay, the
  learning-rate schedule;
* :mod:`~physpack.training.state`: the typed :class:`TrainState`, the training record,
  fingerprints, and whether a saved state may be resumed;
* :mod:`~physpack.training.steps`: the jitted ``train_step`` and ``eval_step``
  (each compiled once) and the host-side batch preparation;
* :mod:`~physpack.training.loop`: the epoch loop (validation, best checkpoint,
  history, early stopping, state saves, SIGTERM, heartbeat lines);
* :mod:`~physpack.training.parallel`: data parallelism over devices and processes;
* :mod:`~physpack.training.cluster`: joining a multi-process run (SLURM).

Only process 0 writes checkpoints, history, state and log lines; all processes
read the state to resume (``--state-dir`` on a shared file system). A step on
``D`` devices trains on ``D`` batches, so the number of batches per step is part of
the config of the resumable state.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from physpack import __version__
from physpack.config import (
    LoaderConfig,
    ModelConfig,
    TrainConfig,
    add_section_arguments,
    section_from_args,
)
from physpack.data.loader import PackedMemmapLoader
from physpack.data.packed import PackedDataset
from physpack.errors import cli_entry
from physpack.model import checkpoint as ckpt_io
from physpack.model.physnet import EnergyConstants, Params, model_from_config
from physpack.training import cluster, parallel
from physpack.training.loop import (
    Preempted,
    Run,
    TrainingDiverged,
    TrainResult,
    host,
    train_and_evaluate,
)
from physpack.training.losses import LossWeights
from physpack.training.optim import make_optimizer
from physpack.training.parallel import DataParallel
from physpack.training.reference import fit_energy_constants
from physpack.training.start import (
    RunData,
    RunIdentity,
    build_loaders,
    create_state,
    energy_constants,
    init_checkpoint,
    loss_weights,
    open_data,
    restore,
    resumable_state,
    run_identity,
)
from physpack.training.state import code_fingerprint, remove_orphans
from physpack.training.steps import build_steps, prepare_batch
from physpack.units import CANONICAL_UNITS

__all__ = [
    "EXIT_PREEMPTED",
    "LossWeights",
    "Preempted",
    "TrainResult",
    "TrainingDiverged",
    "build_steps",
    "fit_energy_constants",
    "main",
    "prepare_batch",
    "train",
]

#: Exit status after SIGTERM (the shell's 128 + 15): the state is saved, rerun.
EXIT_PREEMPTED = 143


def _quiet(message: str) -> None:
    """The log of processes other than 0: they train, process 0 reports."""


# Over 80 lines for its arguments, their docs and Run's fields: each step is one call
def train(
    packed: str | os.PathLike,
    split: str | os.PathLike,
    output: str | os.PathLike,
    history: str | os.PathLike,
    state_dir: str | os.PathLike,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    loader_cfg: LoaderConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_step: Callable[[int], None] | None = None,
    on_event: Callable[[str, int], None] | None = None,
    data_parallel: DataParallel | None = None,
    overwrite: bool = False,
    heartbeat_s: float = 60.0,
) -> TrainResult:
    """Train PhysNet on the ``train`` subset of ``split``, validate on ``valid``.

    Args:
        packed: packed dataset directory.
        split: NPZ with ``train`` and ``valid`` dataset indices.
        output: the best checkpoint (written at every improvement, atomically).
        history: ``history.csv`` (rewritten atomically after every epoch).
        state_dir: directory of the resumable state; an unfinished state of the same
            config and data is resumed, a finished one continued when only
            ``train.epochs`` or ``train.max_minutes`` was raised.
        model_cfg, train_cfg, loader_cfg: the config sections.
        progress: show a progress bar per epoch.
        log: receives the one-line messages (epoch summaries, heartbeat lines).
        on_step: called with the global step number after every step.
        on_event: called as ``on_event(name, step)`` at the events of
            :data:`physpack.training.loop.EVENTS` (monitoring; raising in it
            simulates a crash at that point).
        data_parallel: the devices to use (default:
            ``parallel.select_devices(train_cfg.devices)``).
        overwrite: replace an existing ``output``/``history`` that no resumable
            state belongs to (otherwise refused, so a good model is never lost).
        heartbeat_s: seconds between heartbeat lines during an epoch (0: none).

    Raises:
        ConfigError: a state from another config/dataset (naming what differs),
            existing outputs without ``overwrite``, bad settings.
        InputError: unreadable inputs, elements in ``valid`` absent from ``train``.
        TrainingDiverged: ``max_nonfinite_steps`` consecutive non-finite steps (the
            best checkpoint written so far stays).
        Preempted: SIGTERM (state saved first).
    """
    output, history, state_dir = Path(output), Path(history), Path(state_dir)
    dp = data_parallel or parallel.select_devices(train_cfg.devices)
    main_process = dp.process_index == 0
    log = log if main_process else _quiet
    if main_process:
        for path in remove_orphans(output.parent, history.parent, state_dir):
            log(f"removed {path}, left by an interrupted write")
    data = open_data(packed, split)
    init = init_checkpoint(train_cfg, model_cfg)
    identity = run_identity(
        data, init, dp, model_cfg, train_cfg, loader_cfg, code_fingerprint()
    )
    _log_devices(dp, log)
    saved, decision = resumable_state(state_dir, identity, output, history, overwrite)
    loaders = build_loaders(data, dp, model_cfg, train_cfg, loader_cfg)
    constants, data_stats = energy_constants(
        saved, data, init, model_cfg, train_cfg, loader_cfg, log
    )
    _check_and_log_data(data, loaders[0], dp, constants, data_stats, log)
    model, tx = model_from_config(model_cfg), make_optimizer(train_cfg)
    state = create_state(model, tx, train_cfg, loaders[0], dp, init, log)
    state, record = restore(
        state, saved, decision, loaders[0], state_dir, train_cfg, log
    )
    weights = loss_weights(data.dataset, model_cfg, train_cfg)
    _prepare_batches(loaders, constants, data.dataset)
    run = Run(
        cfg=train_cfg,
        dp=dp,
        train_loader=loaders[0],
        valid_loader=loaders[1],
        steps=build_steps(model, tx, train_cfg, weights, dp),
        state=parallel.replicate(dp, state),
        record=record,
        constants=constants,
        data_stats=data_stats,
        weights=weights,
        scale=parallel.replicate(dp, np.float32(constants.scale)),
        output=output,
        history=history,
        state_dir=state_dir,
        save_state=lambda r: _save_state(r, identity),
        write_best=lambda r, ema, epoch, metrics: _write_best(
            r, model_cfg, loader_cfg, identity, data.dataset, ema, epoch, metrics, init
        ),
        log=log,
        on_step=on_step,
        on_event=on_event,
        heartbeat_s=heartbeat_s,
        show_progress=progress and main_process,
    )
    return train_and_evaluate(run)


def _log_devices(dp: DataParallel, log: Callable[[str], None]) -> None:
    log(
        f"devices: {dp.num_devices} × {dp.local_devices[0].platform} in "
        f"{dp.process_count} process(es), {dp.batches_per_step} batch(es) per step"
    )


def _check_and_log_data(
    data: RunData,
    train_loader: PackedMemmapLoader,
    dp: DataParallel,
    constants: EnergyConstants,
    data_stats: Mapping[str, Any],
    log: Callable[[str], None],
) -> None:
    """Refuse an epoch shorter than one step; log the data and batch budget."""
    parallel.check_batches_per_epoch(
        train_loader.num_batches(), dp, f"{data.dataset.path} (train subset)"
    )
    log(
        f"data: {len(data.train_idx)} train / {len(data.valid_idx)} valid molecules, "
        f"elements {list(constants.elements)}, energy scale {constants.scale:.4g} eV, "
        f"force std {data_stats['forces_std_eV_per_A']:.4g} eV/Å; batch budget "
        f"{dataclasses.astuple(train_loader.budget)} (atoms, pairs, molecules), "
        f"{train_loader.num_batches()} batches per epoch"
    )


def _prepare_batches(
    loaders: tuple[PackedMemmapLoader, PackedMemmapLoader],
    constants: EnergyConstants,
    dataset: PackedDataset,
) -> None:
    """Batch preparation in the loaders' prefetch threads: they prepare the batches
    (float64 residuals), stack them and place them on the devices while the
    previous step runs (``loop._placed_steps``); validation batches are checked
    for elements the training data lacks."""
    train_loader, valid_loader = loaders
    train_loader.device_put = lambda b: prepare_batch(b, constants)

    def prepare_checked(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        constants.check_batch(batch, f"{dataset.path} (valid split)")
        return prepare_batch(batch, constants)

    valid_loader.device_put = prepare_checked


def _save_state(run: Run, identity: RunIdentity) -> None:
    """Write the resumable state (process 0 only)."""
    if not run.main:
        return
    record = dataclasses.asdict(run.record)
    record["elapsed_s"] = run.elapsed()
    ckpt_io.save_state(
        run.state_dir,
        {
            "config": dict(identity.sections),
            "dataset": identity.fingerprint,
            "code": identity.code,
            "constants": run.constants.to_dict(),
            "data_stats": run.data_stats,
            "train_state": serialization.to_state_dict(host(run.state)),
            "loader": run.train_loader.state_dict(),
            # the only randomness is the init (seeded) and the loader order (its
            # state above): kept for completeness
            "rng": np.asarray(jax.random.PRNGKey(run.cfg.seed)),
            "progress": record,  # its first name: saved states stay readable
        },
    )


def _write_best(
    run: Run,
    model_cfg: ModelConfig,
    loader_cfg: LoaderConfig,
    identity: RunIdentity,
    dataset: PackedDataset,
    ema: Params,
    epoch: int,
    metrics: Mapping[str, float],
    init: ckpt_io.Checkpoint | None = None,
) -> None:
    """Write the best checkpoint: the EMA parameters ``ema`` of 1-based ``epoch``
    with its validation ``metrics`` and how they were trained."""
    ckpt_io.save(
        run.output,
        ckpt_io.Checkpoint(
            params=ema,
            model_config=model_cfg,
            constants=run.constants,
            metrics=dict(metrics),
            units=dict(CANONICAL_UNITS),
            # trained on D3-subtracted data: predictions must add D3 back
            dispersion=dataset.dispersion,
            training={
                "epoch": epoch,
                "step": int(host(run.state.step)),
                "devices": run.dp.num_devices,
                "processes": run.dp.process_count,
                "batches_per_step": run.dp.batches_per_step,
                "train_config": dataclasses.asdict(run.cfg),
                "loader_config": dataclasses.asdict(loader_cfg),
                "dataset": identity.fingerprint,
                "data_stats": run.data_stats,
                "reference_energies": run.data_stats.get("reference_energies", "fit"),
                "packed": str(dataset.path),
                "init_from": None
                if init is None
                else {
                    "path": str(run.cfg.init_from),
                    "sha256": init.training["init_sha256"],
                    "refit_reference": run.cfg.refit_reference,
                    "freeze": list(run.cfg.freeze),
                },
            },
        ),
    )


# --------------------------------------------------------------------------------
# Command line


@cli_entry("physpack train")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="physpack train",
        description="Train a PhysNet model on a packed dataset "
        "(see physpack.training.train).",
    )
    parser.add_argument("packed", help="packed dataset directory")
    parser.add_argument("--split", required=True, help="split NPZ (train/valid/test)")
    parser.add_argument("--output", required=True, help="best checkpoint to write")
    parser.add_argument("--history", required=True, help="history CSV to write")
    parser.add_argument(
        "--state-dir",
        help="resumable state directory (default: 'state' next to --output)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output/--history that no resumable state "
        "belongs to (refused otherwise)",
    )
    parser.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=60.0,
        help="seconds between progress lines during an epoch (0: none)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_section_arguments(parser, ModelConfig, "model", option="--model-config")
    add_section_arguments(parser, TrainConfig, "train", option="--train-config")
    add_section_arguments(parser, LoaderConfig, "loader", option="--loader-config")
    args = parser.parse_args(argv)
    model_cfg = section_from_args(ModelConfig, args, "model")
    train_cfg = section_from_args(TrainConfig, args, "train")
    loader_cfg = section_from_args(LoaderConfig, args, "loader")
    state_dir = args.state_dir or str(Path(args.output).parent / "state")
    # before any other JAX call: several srun tasks become one multi-process run
    setup = cluster.initialize_distributed()
    log = (lambda msg: print(msg, flush=True)) if cluster.is_main_process() else _quiet
    processes = f", {setup.num_processes} processes" if setup.num_processes > 1 else ""
    log(
        f"physpack {__version__} train: jax {jax.__version__}, devices "
        f"{jax.devices()}{processes}"
    )
    try:
        train(
            args.packed,
            args.split,
            args.output,
            args.history,
            state_dir,
            model_cfg,
            train_cfg,
            loader_cfg,
            progress=not args.no_progress,
            log=log,
            overwrite=args.overwrite,
            heartbeat_s=args.heartbeat_seconds,
        )
    except Preempted as exc:
        print(f"physpack train: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
