"""How a run starts: each setup step of :func:`physpack.training.train.train` as
one function.

* :func:`open_data`: the packed dataset, the split's ``train`` and ``valid``
  subsets and their fingerprint;
* :func:`init_checkpoint`, :func:`start_from`: the checkpoint of
  ``train.init_from`` (fine-tuning) and its parameters in this model's structure;
* :func:`run_identity`: the config, data and code a saved state must match;
* :func:`resumable_state`: the saved state this run continues, or ``None``;
* :func:`build_loaders`: the training and validation loaders of this process;
* :func:`energy_constants`: the reference energies and energy scale;
* :func:`create_state`: a new run's train state; :func:`restore`: the saved one;
* :func:`loss_weights`: the loss terms the data and model support.

Units are physpack's canonical ones: eV, Å, e·Å.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import serialization

from physpack.config import LoaderConfig, ModelConfig, TrainConfig
from physpack.data.descriptor import open_dataset
from physpack.data.loader import (
    PackedMemmapLoader,
    ProcessSlots,
    from_config,
    read_split,
)
from physpack.data.packed import PackedDataset, sha256_file
from physpack.errors import ConfigError
from physpack.model import checkpoint as ckpt_io
from physpack.model.physnet import EnergyConstants, Params, PhysNet, init_params
from physpack.training import parallel
from physpack.training.losses import LossWeights
from physpack.training.optim import (
    check_freeze,
    cosine_progress,
    initial_schedule,
    learning_rate,
)
from physpack.training.parallel import DataParallel
from physpack.training.reference import energy_constants_for
from physpack.training.state import (
    ResumeDecision,
    TrainingRecord,
    TrainState,
    check_resumable,
    config_sections,
    create_train_state,
    dataset_fingerprint,
)


@dataclasses.dataclass(frozen=True)
class RunData:
    """The packed dataset and the subsets of the split that a run uses.

    Attributes:
        dataset: the packed dataset (canonical units: eV, Å, e·Å).
        train_idx, valid_idx: int64 (n,) dataset indices of ``train`` and ``valid``.
        fingerprint: sha256 of the dataset's contents and of both subsets
            (:func:`dataset_fingerprint`).
    """

    dataset: PackedDataset
    train_idx: np.ndarray
    valid_idx: np.ndarray
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    """What makes a saved state this run's (stored in the state and compared).

    Attributes:
        sections: the config sections as plain JSON values, ``train.devices`` as
            the batches per step (:func:`config_sections`).
        fingerprint: the data's sha256, ``+init:<sha256>`` when fine-tuning.
        code: sha256 of the sources and library versions
            (:func:`~physpack.training.state.code_fingerprint`).
    """

    sections: dict[str, dict[str, object]]
    fingerprint: str
    code: str


def _subset(split: Path, name: str) -> np.ndarray:
    idx = read_split(split, name)
    if idx.size == 0:
        raise ConfigError(
            f"{split}: the '{name}' subset is empty; training needs molecules in "
            "both 'train' and 'valid' (split.valid > 0)"
        )
    return idx


def open_data(packed: str | os.PathLike, split: str | os.PathLike) -> RunData:
    """The dataset, both subsets of ``split`` and their fingerprint.

    Raises:
        InputError: unreadable dataset or split.
        ConfigError: an empty ``train`` or ``valid`` subset.
    """
    dataset = open_dataset(packed)
    train_idx, valid_idx = _subset(Path(split), "train"), _subset(Path(split), "valid")
    fingerprint = dataset_fingerprint(dataset, train_idx, valid_idx)
    return RunData(dataset, train_idx, valid_idx, fingerprint)


def run_identity(
    data: RunData,
    init: ckpt_io.Checkpoint | None,
    dp: DataParallel,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    loader_cfg: LoaderConfig,
    code: str,
) -> RunIdentity:
    """The config, data and code that a saved state must match to be resumed
    (``code``: :func:`~physpack.training.state.code_fingerprint`)."""
    fingerprint = data.fingerprint
    if init is not None:  # a fine-tuned run depends on its starting point too
        fingerprint = f"{fingerprint}+init:{init.training['init_sha256']}"
    # Results depend on the devices only through the batches per step: record that
    # number, not the config's "all" (which resolves per machine).
    hashed_cfg = dataclasses.replace(train_cfg, devices=dp.batches_per_step)
    sections = config_sections(model_cfg, hashed_cfg, loader_cfg)
    return RunIdentity(sections, fingerprint, code)


def resumable_state(
    state_dir: Path,
    identity: RunIdentity,
    output: Path,
    history: Path,
    overwrite: bool,
) -> tuple[dict[str, Any] | None, ResumeDecision]:
    """The state in ``state_dir`` that this run continues (``None``: a new run) and
    the decision about it (:func:`check_resumable`).

    Raises:
        ConfigError: an unfinished state of other settings; a new run that would
            replace ``output``/``history`` without ``overwrite``; processes that
            found different states (``state_dir`` not shared).
    """
    saved = ckpt_io.load_state(state_dir)
    decision = check_resumable(
        saved,
        state_dir / ckpt_io.STATE_FILE,
        identity.sections,
        identity.fingerprint,
        identity.code,
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
    return saved, decision


def build_loaders(
    data: RunData,
    dp: DataParallel,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    loader_cfg: LoaderConfig,
) -> tuple[PackedMemmapLoader, PackedMemmapLoader]:
    """The training loader (shuffled by ``train.seed``) and the validation loader
    (in order); each process assembles only the batches of its own devices."""
    slots = ProcessSlots(
        dp.batches_per_step,
        first=dp.first_shard * dp.batches_per_device,
        count=dp.num_local_devices * dp.batches_per_device,
    )

    def loader(indices: np.ndarray, shuffle: bool) -> PackedMemmapLoader:
        return from_config(
            data.dataset,
            loader_cfg,
            model=model_cfg,
            shuffle=shuffle,
            seed=train_cfg.seed,
            indices=indices,
            process_slots=slots,
        )

    return loader(data.train_idx, True), loader(data.valid_idx, False)


def energy_constants(
    saved: Mapping[str, Any] | None,
    data: RunData,
    init: ckpt_io.Checkpoint | None,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    loader_cfg: LoaderConfig,
    log: Callable[[str], None],
) -> tuple[EnergyConstants, dict[str, Any]]:
    """The reference energies E0 (eV per element) and energy scale (eV), and the
    data statistics: the saved ones when resuming; else fitted on the training
    subset or given (``train.reference_energies``), or kept from ``init_from``
    without ``train.refit_reference``."""
    if saved is not None:
        return EnergyConstants.from_dict(saved["constants"]), dict(saved["data_stats"])
    fit_loader = from_config(
        data.dataset,
        loader_cfg,
        model=model_cfg,
        shuffle=False,
        seed=0,
        indices=data.train_idx,
    )
    constants, data_stats = energy_constants_for(
        fit_loader, model_cfg.max_atomic_number, train_cfg, log=log
    )
    if init is not None and not train_cfg.refit_reference:
        constants = init.constants
        data_stats["reference_energies"] = "init_from"
        log(f"reference energies kept from {train_cfg.init_from}")
    return constants, data_stats


def create_state(
    model: PhysNet,
    tx: optax.GradientTransformation,
    train_cfg: TrainConfig,
    train_loader: PackedMemmapLoader,
    dp: DataParallel,
    init: ckpt_io.Checkpoint | None,
    log: Callable[[str], None],
) -> TrainState:
    """A new run's train state (host arrays, identical in every process): the
    parameters seeded by ``train.seed`` or those of ``init_from``, the cosine over
    ``train.epochs`` epochs of steps.

    Raises:
        ConfigError: ``init_from`` parameters that do not fit; bad ``train.freeze``.
    """
    steps_per_epoch = parallel.steps_per_epoch(
        train_loader.num_batches(0), dp.batches_per_step
    )
    params = init_params(
        model, jax.random.PRNGKey(train_cfg.seed), train_loader.assemble(np.arange(1))
    )
    if init is not None:
        params = start_from(params, init, train_cfg)
        log(
            f"fine-tuning from {train_cfg.init_from}"
            + (f", frozen: {', '.join(train_cfg.freeze)}" if train_cfg.freeze else "")
        )
    check_freeze(params, train_cfg)
    params = parallel.broadcast_from_main(params)  # seeded alike; made exact
    return create_train_state(
        params, tx, initial_schedule(train_cfg, train_cfg.epochs * steps_per_epoch)
    )


def restore(
    state: TrainState,
    saved: Mapping[str, Any] | None,
    decision: ResumeDecision,
    train_loader: PackedMemmapLoader,
    state_dir: Path,
    train_cfg: TrainConfig,
    log: Callable[[str], None],
) -> tuple[TrainState, TrainingRecord]:
    """``state`` and an empty record for a new run; resuming, the saved state and
    record, and the training loader back at its saved position. Continuing a
    finished run whose cosine had annealed says that the added budget trains at the
    final learning rate (a refinement, not the anneal a new run of that budget
    makes)."""
    if saved is None:
        return state, TrainingRecord()
    state = serialization.from_state_dict(parallel.to_host(state), saved["train_state"])
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
            f"({', '.join(decision.extended)}){_annealed(train_cfg, state, state_dir)}"
        )
    return state, record


def _annealed(cfg: TrainConfig, state: TrainState, state_dir: Path) -> str:
    """What continuing a run whose cosine schedule has ended means ('' otherwise)."""
    if cfg.schedule != "cosine":
        return ""
    count, schedule = int(state.accepted), state.schedule
    if float(cosine_progress(cfg, count, schedule)) < 1.0:
        return ""
    rate = float(learning_rate(cfg, count, schedule))
    return (
        f"; its cosine schedule had annealed, so the added budget trains at the "
        f"final learning rate {rate:.3g}: it refines that run, it is not the anneal "
        f"a new run of this budget makes (for that, delete {state_dir}; run by "
        "hand, also pass --overwrite)"
    )


def loss_weights(
    dataset: PackedDataset, model_cfg: ModelConfig, train_cfg: TrainConfig
) -> LossWeights:
    """The configured weights, zero for a quantity the data (forces, dipoles) or
    the model (dipoles need charges) lacks."""
    has_dipole_loss = dataset.has("D") and model_cfg.charges
    return LossWeights(
        energy=train_cfg.energy_weight,
        forces=train_cfg.forces_weight if dataset.has("F") else 0.0,
        dipole=train_cfg.dipole_weight if has_dipole_loss else 0.0,
        nh=train_cfg.nh_weight,
    )


def init_checkpoint(
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


def start_from(
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
