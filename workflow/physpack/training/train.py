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
from physpack.data.descriptor import open_dataset
from physpack.data.loader import ProcessSlots, from_config, read_split
from physpack.data.packed import PackedDataset, sha256_file
from physpack.errors import ConfigError, cli_entry
from physpack.model import checkpoint as ckpt_io
from physpack.model.physnet import (
    EnergyConstants,
    Params,
    init_params,
    model_from_config,
)
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
from physpack.training.optim import check_freeze, initial_schedule, make_optimizer
from physpack.training.parallel import DataParallel
from physpack.training.reference import energy_constants_for, fit_energy_constants
from physpack.training.state import (
    TrainingRecord,
    check_resumable,
    code_fingerprint,
    config_sections,
    create_train_state,
    dataset_fingerprint,
    remove_orphans,
)
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


def _subset(split: Path, name: str) -> np.ndarray:
    idx = read_split(split, name)
    if idx.size == 0:
        raise ConfigError(
            f"{split}: the '{name}' subset is empty; training needs molecules in "
            "both 'train' and 'valid' (split.valid > 0)"
        )
    return idx


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
    dataset = open_dataset(packed)
    train_idx, valid_idx = _subset(Path(split), "train"), _subset(Path(split), "valid")
    fingerprint = dataset_fingerprint(dataset, train_idx, valid_idx)
    init = _init_checkpoint(train_cfg, model_cfg)
    if init is not None:  # a fine-tuned run depends on its starting point too
        fingerprint = f"{fingerprint}+init:{init.training['init_sha256']}"
    # Results depend on the devices only through the batches per step: record that
    # number, not the config's "all" (which resolves per machine).
    hashed_cfg = dataclasses.replace(train_cfg, devices=dp.batches_per_step)
    sections = config_sections(model_cfg, hashed_cfg, loader_cfg)
    code = code_fingerprint()
    log(
        f"devices: {dp.num_devices} × {dp.local_devices[0].platform} in "
        f"{dp.process_count} process(es), {dp.batches_per_step} batch(es) per step"
    )
    saved = ckpt_io.load_state(state_dir)
    decision = check_resumable(
        saved, state_dir / ckpt_io.STATE_FILE, sections, fingerprint, code
    )
    if not decision.resume:
        saved = None
        _refuse_overwrite(output, history, state_dir, overwrite)
    saved_step = -1 if saved is None else int(saved["train_state"]["step"])
    if not parallel.all_processes_agree(str(saved_step)):
        raise ConfigError(
            f"{state_dir}: the processes found different resumable states (this "
            f"one: step {saved_step}); --state-dir must be on a file system that "
            "all nodes share"
        )

    # Each process assembles only the batches of its own devices.
    slots = ProcessSlots(
        dp.batches_per_step,
        first=dp.first_shard * dp.batches_per_device,
        count=dp.num_local_devices * dp.batches_per_device,
    )
    train_loader = from_config(
        dataset,
        loader_cfg,
        model=model_cfg,
        shuffle=True,
        seed=train_cfg.seed,
        indices=train_idx,
        process_slots=slots,
    )
    valid_loader = from_config(
        dataset,
        loader_cfg,
        model=model_cfg,
        shuffle=False,
        seed=train_cfg.seed,
        indices=valid_idx,
        process_slots=slots,
    )
    has_dipole_loss = dataset.has("D") and model_cfg.charges
    weights = LossWeights(
        energy=train_cfg.energy_weight,
        forces=train_cfg.forces_weight if dataset.has("F") else 0.0,
        dipole=train_cfg.dipole_weight if has_dipole_loss else 0.0,
        nh=train_cfg.nh_weight,
    )
    if saved is not None:
        constants = EnergyConstants.from_dict(saved["constants"])
        data_stats = dict(saved["data_stats"])
    else:
        fit_loader = from_config(
            dataset,
            loader_cfg,
            model=model_cfg,
            shuffle=False,
            seed=0,
            indices=train_idx,
        )
        constants, data_stats = energy_constants_for(
            fit_loader, model_cfg.max_atomic_number, train_cfg, log=log
        )
        if init is not None and not train_cfg.refit_reference:
            constants = init.constants
            data_stats["reference_energies"] = "init_from"
            log(f"reference energies kept from {train_cfg.init_from}")
    parallel.check_batches_per_epoch(
        train_loader.num_batches(), dp, f"{dataset.path} (train subset)"
    )
    log(
        f"data: {len(train_idx)} train / {len(valid_idx)} valid molecules, "
        f"elements {list(constants.elements)}, energy scale {constants.scale:.4g} eV, "
        f"force std {data_stats['forces_std_eV_per_A']:.4g} eV/Å; batch budget "
        f"{dataclasses.astuple(train_loader.budget)} (atoms, pairs, molecules), "
        f"{train_loader.num_batches()} batches per epoch"
    )

    model = model_from_config(model_cfg)
    tx = make_optimizer(train_cfg)
    steps_per_epoch = parallel.steps_per_epoch(
        train_loader.num_batches(0), dp.batches_per_step
    )
    params = init_params(
        model, jax.random.PRNGKey(train_cfg.seed), train_loader.assemble(np.arange(1))
    )
    if init is not None:
        params = _start_from(params, init, train_cfg)
        log(
            f"fine-tuning from {train_cfg.init_from}"
            + (f", frozen: {', '.join(train_cfg.freeze)}" if train_cfg.freeze else "")
        )
    check_freeze(params, train_cfg)
    params = parallel.broadcast_from_main(params)  # seeded alike; made exact
    state = create_train_state(
        params, tx, initial_schedule(train_cfg, train_cfg.epochs * steps_per_epoch)
    )
    record = TrainingRecord()
    if saved is not None:
        state = serialization.from_state_dict(host(state), saved["train_state"])
        train_loader.load_state_dict(saved["loader"])
        record = TrainingRecord.from_dict(saved["progress"])
        log(
            f"resuming from {state_dir / ckpt_io.STATE_FILE}: epoch "
            f"{train_loader.epoch + 1}, batch {train_loader.position}, step "
            f"{int(saved['train_state']['step'])}"
        )
        if decision.extended:
            record.finished = False
            log(
                f"continuing the run that stopped on {record.stop_reason} "
                f"({', '.join(decision.extended)})"
            )
    run = Run(
        cfg=train_cfg,
        dp=dp,
        train_loader=train_loader,
        valid_loader=valid_loader,
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
        save_state=lambda r: _save_state(r, sections, fingerprint, code),
        write_best=lambda r, ema, epoch, metrics: _write_best(
            r, model_cfg, loader_cfg, fingerprint, dataset, ema, epoch, metrics, init
        ),
        log=log,
        on_step=on_step,
        on_event=on_event,
        heartbeat_s=heartbeat_s,
        show_progress=progress and main_process,
    )
    # The prefetch threads prepare the batches (float64 residuals), stack them and
    # place them on the devices while the previous step runs (loop._placed_steps).
    train_loader.device_put = lambda b: prepare_batch(b, constants)

    def prepare_checked(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        constants.check_batch(batch, f"{dataset.path} (valid split)")
        return prepare_batch(batch, constants)

    valid_loader.device_put = prepare_checked
    return train_and_evaluate(run)


def _init_checkpoint(
    train_cfg: TrainConfig, model_cfg: ModelConfig
) -> ckpt_io.Checkpoint | None:
    """The checkpoint of ``train.init_from`` (its sha256 in ``training``), or None.

    Raises:
        InputError: unreadable checkpoint.
        ConfigError: its model section differs from this run's (naming the keys).
    """
    if train_cfg.init_from is None:
        return None
    init = ckpt_io.load(train_cfg.init_from)
    mine, theirs = dataclasses.asdict(model_cfg), dataclasses.asdict(init.model_config)
    differ = [
        f"model.{k}: {theirs.get(k)!r} there, {v!r} here"
        for k, v in mine.items()
        if theirs.get(k) != v
    ]
    if differ:
        raise ConfigError(
            f"train.init_from = {train_cfg.init_from}: the checkpoint's model differs "
            f"from this run's ({'; '.join(differ)}); fine-tuning keeps the "
            "architecture"
        )
    training = dict(init.training, init_sha256=sha256_file(train_cfg.init_from))
    return dataclasses.replace(init, training=training)


def _start_from(
    params: Params, init: ckpt_io.Checkpoint, train_cfg: TrainConfig
) -> Params:
    """``init``'s parameters in the structure of ``params`` (same shapes)."""
    try:
        restored = serialization.from_state_dict(params, init.params)
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"train.init_from = {train_cfg.init_from}: its parameters do not fit "
            f"this model ({exc})"
        ) from exc
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree.leaves(restored),
        strict=True,
    ):
        if np.shape(a) != np.shape(b):
            raise ConfigError(
                f"train.init_from = {train_cfg.init_from}: parameter "
                f"{jax.tree_util.keystr(path)} has shape {np.shape(b)}, this model "
                f"needs {np.shape(a)}"
            )
    return jax.tree.map(lambda x: np.asarray(x, np.float32), restored)


def _refuse_overwrite(
    output: Path, history: Path, state_dir: Path, overwrite: bool
) -> None:
    """A new run would replace ``output``/``history``: only with ``overwrite``."""
    existing = [p for p in (output, history) if p.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{existing[0]} exists and {state_dir} holds no state of this run to "
            "continue: a new run would replace it; pass --overwrite (Python: "
            "overwrite=True) to start over, or move it away"
        )


def _save_state(
    run: Run, sections: Mapping[str, object], fingerprint: str, code: str
) -> None:
    if not run.main:
        return
    record = dataclasses.asdict(run.record)
    record["elapsed_s"] = run.elapsed()
    ckpt_io.save_state(
        run.state_dir,
        {
            "config": dict(sections),
            "dataset": fingerprint,
            "code": code,
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
    fingerprint: str,
    dataset: PackedDataset,
    ema: Params,
    epoch: int,
    metrics: Mapping[str, float],
    init: ckpt_io.Checkpoint | None = None,
) -> None:
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
                "dataset": fingerprint,
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
