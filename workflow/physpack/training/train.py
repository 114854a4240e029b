"""``physpack train``: fit a PhysNet model on a packed dataset.

::

    physpack train results/data/packed --split results/data/split.npz \\
        --output results/model/best.ckpt --history results/model/history.csv \\
        --state-dir results/model/state --model-config '{...}' \\
        --train-config '{...}' --loader-config '{...}'

What happens (:func:`train`):

1. Per-element reference energies are fitted by least squares on the training
   split, streamed through the loader (composition normal equations in float64),
   and the energy scale is set from the residual (:func:`fit_energy_constants`).
2. Every batch is prepared on the host: E − Σ ref(Z) in float64, then float32, so
   the device only sees residuals (:func:`prepare_batch`); the loader's prefetch
   thread does this and the transfer while the previous step runs.
3. One jitted train step (loss, gradient, optax update with clipping, EMA of the
   parameters, rejection of non-finite steps) and one jitted eval step, each
   compiled exactly once thanks to the loader's fixed batch shapes; the number of
   compilations is counted and printed.
4. After every epoch the EMA parameters are validated; the best epoch is written
   to ``best.ckpt`` (:mod:`physpack.model.checkpoint`) and a row to ``history.csv``.
5. A resumable state (optimiser, EMA, loader position, history, best model) is
   saved every ``state_every_steps`` steps, at every epoch end and on SIGTERM, in
   ``--state-dir``; rerunning the same command continues from it and ends with the
   same parameters as an uninterrupted run. A state written with another config
   or dataset is refused.
6. Data parallel (:mod:`physpack.training.parallel`): ``train.devices`` devices per process
   (``all``: every local one), and several processes when started as the tasks
   of an ``srun`` step. Every step takes one packed batch per device from the one
   loader stream (each molecule still once per epoch), parameters are replicated
   and the loss is normalised by the step's global molecule/atom counts, so a
   step equals the single-device step on the concatenated batches. A step on
   ``D`` devices trains on ``D`` batches: the device count changes the results
   (as a larger batch would), so it is part of the config hash of the resumable
   state, as the number of batches per step — ``devices: all`` and ``devices: 2``
   on a 2-device machine hash alike. Only process 0 writes checkpoints, history,
   state and log lines; all processes read the state to resume (``--state-dir``
   on a shared file system).

Loss (per batch, masked): ``energy_weight · mean((ΔE/N)²) + forces_weight ·
mean(ΔF²) + dipole_weight · mean(ΔD²)`` in eV², (eV/Å)², (e·Å)²; the dipole term
only when the data has dipoles and the model predicts charges.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from tqdm import tqdm

from physpack import __version__
from physpack.config import (
    LoaderConfig,
    ModelConfig,
    TrainConfig,
    add_section_arguments,
    section_from_args,
)
from physpack.data.loader import from_config, read_split
from physpack.data.packed import PackedDataset, sha256_file
from physpack.errors import ConfigError, PhyspackError, cli_entry
from physpack.model import checkpoint as ckpt_io
from physpack.model.physnet import (
    MODEL_INPUTS,
    EnergyConstants,
    Params,
    PhysNet,
    energy_and_forces,
    init_params,
    model_from_config,
)
from physpack.training import parallel
from physpack.training.parallel import (
    DataParallel,
    data_parallel_sums,
    data_parallel_value_and_grad,
)
from physpack.training.reference import fit_energy_constants
from physpack.units import CANONICAL_UNITS

#: Train-config fields that do not change the trained parameters: a state saved
#: with other values of these may be resumed.
RESUMABLE_ACROSS = {
    "train": {"max_minutes", "state_every_steps", "max_nonfinite_steps"},
    "loader": {"prefetch", "num_atoms"},
}
#: Exit status after SIGTERM (the shell's 128 + 15): the state is saved, rerun.
EXIT_PREEMPTED = 143
#: Batch key of the per-device SIGTERM flag: summed inside the train step, so that
#: all processes learn of a signal that reached any of them at the same step.
STOP_KEY = "stop_request"


class TrainingDiverged(PhyspackError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class Preempted(PhyspackError):
    """SIGTERM received; the resumable state was saved before stopping."""


# --------------------------------------------------------------------------------
# Reference energies and batches


def prepare_batch(
    batch: Mapping[str, np.ndarray], constants: EnergyConstants
) -> dict[str, np.ndarray]:
    """The device form of a packed batch: model inputs in float32/int32 plus the
    targets ``E_res`` float32 (M,) eV (E − Σ ref(Z), formed in float64),
    ``F`` (A, 3) eV/Å and ``D`` (M, 3) e·Å when present, ``N`` and
    ``molecule_mask``."""
    out = {
        k: np.asarray(batch[k]).astype(np.dtype(dt), copy=False)
        for k, dt in MODEL_INPUTS.items()
    }
    mask = np.asarray(batch["molecule_mask"])
    residual = np.asarray(batch["E"], np.float64) - constants.reference_sum(batch)
    out["E_res"] = np.where(mask, residual, 0.0).astype(np.float32)
    out["N"] = np.asarray(batch["N"], np.int32)
    out["molecule_mask"] = mask
    if "F" in batch:
        out["F"] = np.asarray(batch["F"], np.float32)
    if "D" in batch:
        out["D"] = np.asarray(batch["D"], np.float32)
    return out


# --------------------------------------------------------------------------------
# Loss, metrics, optimiser


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms; 0 switches a term off."""

    energy: float
    forces: float
    dipole: float


def loss_partials(
    params: Params,
    model: PhysNet,
    batch: Mapping[str, jax.Array],
    scale: jax.Array,
    weights: LossWeights,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Additive loss sums and their normalisers for one prepared batch.

    Returns ``(sums, counts)``: ``sums["energy"]`` = Σ_mol (ΔE/N)² eV²,
    ``sums["forces"]`` = Σ ΔF² over real atoms' components (eV/Å)², ``sums["dipole"]``
    = Σ ΔD² (e·Å)²; ``counts`` the matching numbers of molecules / components.
    Summing both over batches (or devices) before :func:`combine_loss` gives the
    loss of the concatenated batch.
    """
    out = energy_and_forces(params, model, batch, scale)
    mol = batch["molecule_mask"]
    n = jnp.maximum(batch["N"], 1).astype(jnp.float32)
    de = jnp.where(mol, (out["energy_residual"] - batch["E_res"]) / n, 0.0)
    sums = {"energy": jnp.sum(de**2)}
    counts = {"energy": jnp.sum(mol).astype(jnp.float32)}
    if weights.forces > 0 and "F" in batch:
        atom = batch["atom_mask"][:, None]
        df = jnp.where(atom, out["forces"] - batch["F"], 0.0)
        sums["forces"] = jnp.sum(df**2)
        counts["forces"] = 3.0 * jnp.sum(batch["atom_mask"]).astype(jnp.float32)
    if weights.dipole > 0 and "D" in batch and "dipole" in out:
        dd = jnp.where(mol[:, None], out["dipole"] - batch["D"], 0.0)
        sums["dipole"] = jnp.sum(dd**2)
        counts["dipole"] = 3.0 * counts["energy"]
    return sums, counts


def combine_loss(
    sums: Mapping[str, jax.Array], counts: Mapping[str, jax.Array], weights: LossWeights
) -> jax.Array:
    """Weighted sum of the mean squared errors of :func:`loss_partials`."""
    w = {"energy": weights.energy, "forces": weights.forces, "dipole": weights.dipole}
    return sum(w[k] * sums[k] / jnp.maximum(counts[k], 1.0) for k in sums)


def eval_sums(
    params: Params,
    model: PhysNet,
    batch: Mapping[str, jax.Array],
    scale: jax.Array,
) -> dict[str, jax.Array]:
    """Error sums of one prepared batch (absolute and squared, per molecule, per
    atom, per force component, per dipole component) and their counts."""
    out = energy_and_forces(params, model, batch, scale)
    mol = batch["molecule_mask"]
    n = jnp.maximum(batch["N"], 1).astype(jnp.float32)
    de = jnp.where(mol, out["energy_residual"] - batch["E_res"], 0.0)
    sums = {
        "n_mol": jnp.sum(mol).astype(jnp.float32),
        "e_abs": jnp.sum(jnp.abs(de)),
        "e_sq": jnp.sum(de**2),
        "ea_abs": jnp.sum(jnp.abs(de / n)),
        "ea_sq": jnp.sum((de / n) ** 2),
    }
    if "F" in batch:
        df = jnp.where(batch["atom_mask"][:, None], out["forces"] - batch["F"], 0.0)
        sums |= {
            "n_f": 3.0 * jnp.sum(batch["atom_mask"]).astype(jnp.float32),
            "f_abs": jnp.sum(jnp.abs(df)),
            "f_sq": jnp.sum(df**2),
        }
    if "D" in batch and "dipole" in out:
        dd = jnp.where(mol[:, None], out["dipole"] - batch["D"], 0.0)
        sums |= {
            "n_d": 3.0 * sums["n_mol"],
            "d_abs": jnp.sum(jnp.abs(dd)),
            "d_sq": jnp.sum(dd**2),
        }
    return sums


def metrics_from_sums(
    sums: Mapping[str, float], weights: LossWeights
) -> dict[str, float]:
    """Validation metrics (units in the names) from accumulated :func:`eval_sums`."""
    n = max(sums["n_mol"], 1.0)
    m = {
        "valid_energy_mae_eV": sums["e_abs"] / n,
        "valid_energy_rmse_eV": math.sqrt(sums["e_sq"] / n),
        "valid_energy_mae_eV_per_atom": sums["ea_abs"] / n,
        "valid_energy_rmse_eV_per_atom": math.sqrt(sums["ea_sq"] / n),
    }
    loss = weights.energy * sums["ea_sq"] / n
    if "n_f" in sums:
        nf = max(sums["n_f"], 1.0)
        m["valid_forces_mae_eV_per_A"] = sums["f_abs"] / nf
        m["valid_forces_rmse_eV_per_A"] = math.sqrt(sums["f_sq"] / nf)
        loss += weights.forces * sums["f_sq"] / nf
    if "n_d" in sums:
        nd = max(sums["n_d"], 1.0)
        m["valid_dipole_mae_eA"] = sums["d_abs"] / nd
        m["valid_dipole_rmse_eA"] = math.sqrt(sums["d_sq"] / nd)
        loss += weights.dipole * sums["d_sq"] / nd
    m["valid_loss"] = loss
    return m


def make_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then cosine decay to ``final_lr_fraction`` (cosine) or
    a constant rate (constant, plateau)."""
    peak = cfg.learning_rate
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0,
            peak,
            warmup,
            max(total_steps, warmup + 1),
            end_value=peak * cfg.final_lr_fraction,
        )
    if warmup == 0:
        return optax.constant_schedule(peak)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)],
        [warmup],
    )


def make_optimizer(
    cfg: TrainConfig, steps_per_epoch: int
) -> tuple[optax.GradientTransformationExtraArgs, optax.Schedule]:
    """Global-norm clipping → Adam/AMSGrad moments → decoupled weight decay (AdamW
    style, any optimizer when ``weight_decay`` > 0) → learning rate schedule
    (→ reduce-on-plateau of the epoch-mean training loss for ``plateau``)."""
    schedule = make_schedule(cfg, cfg.epochs * steps_per_epoch)
    parts: list[optax.GradientTransformation] = [
        optax.clip_by_global_norm(cfg.clip_norm)
    ]
    if cfg.optimizer == "amsgrad":
        parts.append(optax.scale_by_amsgrad())
    else:
        parts.append(optax.scale_by_adam())
    if cfg.weight_decay > 0:
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(optax.scale_by_learning_rate(schedule))
    if cfg.schedule == "plateau":
        parts.append(
            optax.contrib.reduce_on_plateau(
                factor=cfg.plateau_factor,
                patience=cfg.plateau_patience,
                accumulation_size=steps_per_epoch,
                min_scale=cfg.final_lr_fraction,
            )
        )
    return optax.chain(*parts), schedule


def current_learning_rate(
    schedule: optax.Schedule, opt_state: Any, cfg: TrainConfig
) -> float:
    """The learning rate of the next step (schedule × plateau scale)."""
    # the schedule's own step counter (rejected steps do not advance it)
    count = next(
        v
        for path, v in optax.tree_utils.tree_get_all_with_path(opt_state, "count")
        if getattr(path[-1], "tuple_name", "") == "ScaleByScheduleState"
    )
    lr = float(schedule(int(count)))
    if cfg.schedule == "plateau":
        lr *= float(optax.tree_utils.tree_get(opt_state, "scale"))
    return lr


# --------------------------------------------------------------------------------
# Steps


@dataclasses.dataclass
class Steps:
    """The jitted train and eval steps of a run and how often each was traced
    (a trace is a compilation: the counters are bumped inside the traced code)."""

    train: Callable[..., Any]
    eval: Callable[..., Any]
    compilations: dict[str, int]


def build_steps(
    model: PhysNet,
    tx: optax.GradientTransformationExtraArgs,
    cfg: TrainConfig,
    weights: LossWeights,
    dp: DataParallel | None = None,
) -> Steps:
    """``train(state, batch, scale) -> (state, info)`` and
    ``eval(params, batch, scale) -> sums`` for one run.

    ``state`` is ``{"params", "opt_state", "ema", "step"}``. A step whose loss or
    gradient is not finite leaves params, optimiser state and EMA unchanged
    (``info["finite"]`` is False); ``step`` counts every step.

    With ``dp`` (:mod:`physpack.training.parallel`) ``batch`` is the stack of one packed
    batch per device, sharded over ``dp.mesh`` (:func:`parallel.shard_batches`),
    ``state`` and ``scale`` replicated; loss sums and counts are added over the
    devices before normalising, so the step equals the single-device step on the
    concatenated batches. A batch key :data:`STOP_KEY` (float32 () per batch) is
    summed over the devices into ``info["stop"]``.
    """
    compilations = {"train_step": 0, "eval_step": 0}
    plateau = cfg.schedule == "plateau"

    def loss_and_grad(
        params: Params, batch: Mapping[str, jax.Array], scale: jax.Array
    ) -> tuple[tuple[jax.Array, dict[str, jax.Array]], Params]:
        def partial_fn(p: Params, b: Mapping[str, jax.Array]) -> Any:
            sums, counts = loss_partials(p, model, b, scale, weights)
            if STOP_KEY in b:  # summed like a count; combine_loss ignores it
                counts = {**counts, STOP_KEY: b[STOP_KEY]}
            return sums, counts

        def combine(sums: Any, counts: Any) -> jax.Array:
            return combine_loss(sums, counts, weights)

        if dp is not None:
            vg = data_parallel_value_and_grad(partial_fn, combine, dp.mesh)
            (loss, (_, counts)), grads = vg(params, batch)
            return (loss, counts), grads

        def loss_fn(p: Params) -> tuple[jax.Array, Any]:
            sums, counts = partial_fn(p, batch)
            return combine(sums, counts), counts

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    def train_step(
        state: dict[str, Any], batch: Mapping[str, jax.Array], scale: jax.Array
    ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        compilations["train_step"] += 1  # runs at trace time only
        (loss, counts), grads = loss_and_grad(state["params"], batch, scale)
        extra = {"value": loss} if plateau else {}
        updates, opt_state = tx.update(
            grads, state["opt_state"], state["params"], **extra
        )
        params = optax.apply_updates(state["params"], updates)
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
        )
        keep = lambda new, old: jax.tree.map(
            lambda a, b: jnp.where(finite, a, b), new, old
        )
        t = state["step"].astype(jnp.float32)
        # EMA warm-up: early averages would otherwise be dominated by the init.
        decay = jnp.minimum(cfg.ema_decay, (1.0 + t) / (10.0 + t))
        ema = jax.tree.map(
            lambda e, p: decay * e + (1.0 - decay) * p, state["ema"], params
        )
        new_state = {
            "params": keep(params, state["params"]),
            "opt_state": keep(opt_state, state["opt_state"]),
            "ema": keep(ema, state["ema"]),
            "step": state["step"] + 1,
        }
        info = {"loss": loss, "finite": finite, "n_mol": counts["energy"]}
        info["stop"] = counts.get(STOP_KEY, jnp.zeros(())) > 0
        return new_state, info

    def eval_step(
        params: Params, batch: Mapping[str, jax.Array], scale: jax.Array
    ) -> dict[str, jax.Array]:
        compilations["eval_step"] += 1
        if dp is None:
            return eval_sums(params, model, batch, scale)

        def partial_fn(p: Params, b: Mapping[str, jax.Array]) -> Any:
            return eval_sums(p, model, b, scale), {}

        return data_parallel_sums(partial_fn, dp.mesh)(params, batch)[0]

    return Steps(
        train=jax.jit(train_step, donate_argnums=(0,)),
        eval=jax.jit(eval_step),
        compilations=compilations,
    )


# --------------------------------------------------------------------------------
# Fingerprints, history, state


def config_hash(model: ModelConfig, train: TrainConfig, loader: LoaderConfig) -> str:
    """sha256 of the config sections, without the fields in
    :data:`RESUMABLE_ACROSS` (they do not change the trained parameters)."""
    sections = {
        "model": dataclasses.asdict(model),
        "train": dataclasses.asdict(train),
        "loader": dataclasses.asdict(loader),
    }
    for name, skip in RESUMABLE_ACROSS.items():
        for key in skip:
            sections[name].pop(key, None)
    text = json.dumps(sections, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def code_fingerprint() -> str:
    """sha256 of the sources that decide the trained parameters (model, training
    loop, batch order) and of the versions of the numerical libraries: a state
    written by other code is not resumed (results would silently mix)."""
    import e3x
    import flax

    h = hashlib.sha256()
    package = Path(__file__).parent.parent
    for name in (
        "model/physnet.py",
        "training/train.py",
        "training/reference.py",
        "data/loader.py",
        "training/parallel.py",
    ):
        h.update((package / name).read_bytes())
    for mod in (jax, flax, e3x, optax, np):
        h.update(f"{mod.__name__} {mod.__version__};".encode())
    return h.hexdigest()


def dataset_fingerprint(
    dataset: PackedDataset, train_idx: np.ndarray, valid_idx: np.ndarray
) -> str:
    """sha256 over the dataset's contents (the manifest's per-file checksums, or
    offsets and energies for directories without one) and the split's subsets."""
    h = hashlib.sha256()
    arrays = (dataset.manifest or {}).get("arrays")
    if arrays and all("sha256" in v for v in arrays.values()):
        h.update(
            json.dumps(
                {k: v["sha256"] for k, v in arrays.items()}, sort_keys=True
            ).encode()
        )
    else:
        for name in ("offsets", "E"):
            h.update(sha256_file(dataset.file_paths()[name]).encode())
    h.update(np.ascontiguousarray(train_idx, "<i8").tobytes())
    h.update(b"|")
    h.update(np.ascontiguousarray(valid_idx, "<i8").tobytes())
    return h.hexdigest()


HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "valid_loss",
    "valid_energy_mae_eV",
    "valid_energy_rmse_eV",
    "valid_energy_mae_eV_per_atom",
    "valid_energy_rmse_eV_per_atom",
    "valid_forces_mae_eV_per_A",
    "valid_forces_rmse_eV_per_A",
    "valid_dipole_mae_eA",
    "valid_dipole_rmse_eA",
    "lr",
    "molecules_per_s",
    "wall_time_s",
)


def write_history(path: str | os.PathLike, rows: Sequence[Mapping[str, float]]) -> None:
    """``history.csv``, one row per epoch, atomically; columns without values in
    this run (e.g. dipoles) are left out."""
    columns = [c for c in HISTORY_COLUMNS if any(c in r for r in rows)] or ["epoch"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_fmt(r.get(c, "")) for c in columns])
    ckpt_io.atomic_write_bytes(path, buf.getvalue().encode())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`.

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


class _SigtermFlag:
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


# --------------------------------------------------------------------------------
# The run


def _new_epoch_acc() -> dict[str, float]:
    """Running sums of the epoch in progress (saved with the state): loss × molecules
    and molecules of accepted steps, molecules and seconds of timed steps (all but
    the one that compiled)."""
    return {"loss_sum": 0.0, "n_mol": 0.0, "timed_mol": 0.0, "time": 0.0}


def _host(tree: Any) -> Any:
    """Numpy copies of (replicated) device arrays, in any process."""
    return parallel.to_host(tree)


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
    data_parallel: DataParallel | None = None,
) -> TrainResult:
    """Train PhysNet on the ``train`` subset of ``split``, validate on ``valid``.

    Args:
        packed: packed dataset directory.
        split: NPZ with ``train`` and ``valid`` dataset indices.
        output: the best checkpoint (written at every improvement, atomically).
        history: ``history.csv`` (rewritten atomically after every epoch).
        state_dir: directory of the resumable state; an unfinished state of the same
            config and data is resumed.
        model_cfg, train_cfg, loader_cfg: the config sections.
        progress: show a progress bar per epoch.
        log: receives the one-line messages (epoch summaries, compilations).
        on_step: called with the global step number after every step (monitoring,
            tests: raising in it simulates a crash).
        data_parallel: the devices to use (default:
            ``parallel.select_devices(train_cfg.devices)``); e.g. one device summing
            two batches per step computes what two devices do.

    Raises:
        ConfigError: a state from another config/dataset, bad settings.
        InputError: unreadable inputs, elements in ``valid`` absent from ``train``.
        TrainingDiverged: ``max_nonfinite_steps`` consecutive non-finite steps (the
            best checkpoint written so far stays).
        Preempted: SIGTERM (state saved first).
    """
    run = _Run(
        Path(packed),
        Path(split),
        Path(output),
        Path(history),
        Path(state_dir),
        model_cfg,
        train_cfg,
        loader_cfg,
        progress=progress,
        log=log,
        on_step=on_step,
        data_parallel=data_parallel,
    )
    return run.run()


@dataclasses.dataclass
class _Progress:
    """Bookkeeping of a run, saved with the resumable state (plain values)."""

    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    best_epoch: int = 0  # 1-based; 0: none yet
    best_loss: float = math.inf
    best_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    best_ema: Any = None
    bad_epochs: int = 0  # epochs since the last improvement
    elapsed_s: float = 0.0  # training time of earlier processes of this run
    epoch_acc: dict[str, float] = dataclasses.field(
        default_factory=lambda: _new_epoch_acc()
    )
    finished: bool = False
    stop_reason: str = "epochs"


class _Run:
    """One call of :func:`train`: inputs, loaders, compiled steps and bookkeeping."""

    def __init__(
        self,
        packed: Path,
        split: Path,
        output: Path,
        history: Path,
        state_dir: Path,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        loader_cfg: LoaderConfig,
        *,
        progress: bool,
        log: Callable[[str], None],
        on_step: Callable[[int], None] | None,
        data_parallel: DataParallel | None = None,
    ):
        self.t_start = time.monotonic()
        self.output, self.history, self.state_dir = output, history, state_dir
        self.model_cfg, self.cfg, self.loader_cfg = model_cfg, train_cfg, loader_cfg
        self.dp = data_parallel or parallel.select_devices(train_cfg.devices)
        self.main = self.dp.process_index == 0
        self.show_progress = progress and self.main
        self.log = log if self.main else _quiet
        self.on_step = on_step
        self.dataset = PackedDataset(packed)
        train_idx, valid_idx = _subset(split, "train"), _subset(split, "valid")
        self.fingerprint = dataset_fingerprint(self.dataset, train_idx, valid_idx)
        # Results depend on the devices only through the batches per step: hash
        # that number, not the config's "all" (which resolves per machine).
        self.config_hash = config_hash(
            model_cfg,
            dataclasses.replace(train_cfg, devices=self.dp.batches_per_step),
            loader_cfg,
        )
        self.code = code_fingerprint()
        dp = self.dp
        self.log(
            f"devices: {dp.num_devices} × {dp.local_devices[0].platform} in "
            f"{dp.process_count} process(es), {dp.batches_per_step} batch(es) per step"
        )
        saved = self._resumable_state()
        saved_step = -1 if saved is None else int(saved["train_state"]["step"])
        if not parallel.all_processes_agree(str(saved_step)):
            raise ConfigError(
                f"{self.state_dir}: the processes found different resumable states "
                f"(this one: step {saved_step}); --state-dir must be on a file system "
                "that all nodes share"
            )

        self.train_loader = from_config(
            self.dataset,
            loader_cfg,
            shuffle=True,
            seed=train_cfg.seed,
            indices=train_idx,
        )
        self.valid_loader = from_config(
            self.dataset,
            loader_cfg,
            shuffle=False,
            seed=train_cfg.seed,
            indices=valid_idx,
        )
        has_dipole_loss = self.dataset.has("D") and model_cfg.charges
        self.weights = LossWeights(
            energy=train_cfg.energy_weight,
            forces=train_cfg.forces_weight if self.dataset.has("F") else 0.0,
            dipole=train_cfg.dipole_weight if has_dipole_loss else 0.0,
        )
        if saved is not None:
            self.constants = EnergyConstants.from_dict(saved["constants"])
            self.data_stats = dict(saved["data_stats"])
        else:
            fit_loader = from_config(
                self.dataset, loader_cfg, shuffle=False, seed=0, indices=train_idx
            )
            self.constants, self.data_stats = fit_energy_constants(
                fit_loader, model_cfg.max_atomic_number
            )
            # identical data give identical fits; process 0's is made exact
            ref, scale = parallel.broadcast_from_main(
                (self.constants.reference_energies, np.float64(self.constants.scale))
            )
            self.constants = dataclasses.replace(
                self.constants, reference_energies=ref, scale=float(scale)
            )
        parallel.check_batches_per_epoch(
            self.train_loader.num_batches(), dp, f"{self.dataset.path} (train subset)"
        )
        self.log(
            f"data: {len(train_idx)} train / {len(valid_idx)} valid molecules, "
            f"elements {list(self.constants.elements)}, energy scale "
            f"{self.constants.scale:.4g} eV, force std "
            f"{self.data_stats['forces_std_eV_per_A']:.4g} eV/Å; batch "
            f"budget {dataclasses.astuple(self.train_loader.budget)} (atoms, pairs, "
            f"molecules), {self.train_loader.num_batches()} batches per epoch"
        )

        self.model = model_from_config(model_cfg)
        self.tx, self.schedule = make_optimizer(
            train_cfg,
            parallel.steps_per_epoch(
                self.train_loader.num_batches(0), dp.batches_per_step
            ),
        )
        params = init_params(
            self.model,
            jax.random.PRNGKey(train_cfg.seed),
            self.train_loader.assemble(np.arange(1)),
        )
        params = parallel.broadcast_from_main(params)  # seeded alike; made exact
        state: dict[str, Any] = {
            "params": params,
            "opt_state": self.tx.init(params),
            "ema": jax.tree.map(jnp.copy, params),  # own buffers: the state is donated
            "step": jnp.zeros((), jnp.int32),
        }
        self.progress = _Progress()
        if saved is not None:
            state = serialization.from_state_dict(_host(state), saved["train_state"])
            self.train_loader.load_state_dict(saved["loader"])
            self.progress = _Progress(**saved["progress"])
            self.log(
                f"resuming from {state_dir / ckpt_io.STATE_FILE}: epoch "
                f"{self.train_loader.epoch + 1}, batch {self.train_loader.position}, "
                f"step {int(saved['train_state']['step'])}"
            )
        self.state = parallel.replicate(dp, state)
        self.scale = parallel.replicate(dp, np.float32(self.constants.scale))
        self.steps = build_steps(self.model, self.tx, train_cfg, self.weights, dp)
        self.consecutive_bad = 0
        # The prefetch threads prepare the batches (float64 residuals) while the
        # previous step runs; the main thread stacks one per device and places them.
        self.train_loader._device_put = self._prepare
        self.valid_loader._device_put = self._prepare_checked

    # -- setup helpers ------------------------------------------------------------
    def _resumable_state(self) -> dict[str, Any] | None:
        saved = ckpt_io.load_state(self.state_dir)
        if saved is None:
            return None
        mismatch = [
            what
            for what, key, mine in (
                ("config", "config_hash", self.config_hash),
                ("dataset or split", "dataset", self.fingerprint),
                ("code (physpack or JAX library versions)", "code", self.code),
            )
            if saved.get(key) != mine
        ]
        if not mismatch:
            return saved
        if saved.get("progress", {}).get("finished", False):
            return None  # a finished run of other settings: start a new one
        what = mismatch[0]
        raise ConfigError(
            f"{self.state_dir / ckpt_io.STATE_FILE}: unfinished training state from a "
            f"different {what}; restore the settings it was made with to resume, or "
            f"delete {self.state_dir} to start over"
        )

    def _prepare(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return prepare_batch(batch, self.constants)

    def _prepare_checked(
        self, batch: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """:meth:`_prepare`, refusing elements without a fitted reference energy."""
        self.constants.check_batch(batch, f"{self.dataset.path} (valid split)")
        return self._prepare(batch)

    def _place(
        self, group: Sequence[Mapping[str, np.ndarray]], stop: bool = False
    ) -> dict[str, jax.Array]:
        """This process's batches of one step, stacked and sharded over the mesh;
        ``stop`` (this process got SIGTERM) rides along as :data:`STOP_KEY`."""
        flag = np.float32(stop)
        return parallel.shard_batches(self.dp, [{**b, STOP_KEY: flag} for b in group])

    # -- the loop -------------------------------------------------------------------
    def run(self) -> TrainResult:
        p = self.progress
        with _SigtermFlag() as sigterm:
            while not p.finished:
                epoch = self.train_loader.epoch  # 0-based epoch in progress
                if epoch >= self.cfg.epochs:
                    p.finished, p.stop_reason = True, "epochs"
                    break
                t0 = time.monotonic()
                self._train_epoch(epoch, sigterm)
                self._end_epoch(epoch, time.monotonic() - t0)
                if not p.finished and parallel.any_process(sigterm.raised):
                    raise Preempted(
                        f"SIGTERM after epoch {epoch + 1}: state saved in "
                        f"{self.state_dir}; rerun the same command to continue"
                    )
        if p.best_ema is None:  # cannot happen with epochs ≥ 1; never write nothing
            raise TrainingDiverged("no epoch completed; no checkpoint written")
        # Rewritten at the end: a resumed run, whose earlier best.ckpt a workflow
        # manager may have deleted, still ends with it in place.
        if self.main:
            self._write_best(p.best_ema, p.best_epoch, p.best_metrics)
            write_history(self.history, p.history)
        c = self.steps.compilations
        self.log(
            f"done: {p.stop_reason}; best epoch {p.best_epoch} "
            f"({_metric_text(p.best_metrics)}); compilations: train_step="
            f"{c['train_step']} eval_step={c['eval_step']}; "
            f"{self._elapsed() / 60:.1f} min"
        )
        return TrainResult(
            checkpoint=self.output,
            history=self.history,
            best_epoch=p.best_epoch,
            best_metrics=dict(p.best_metrics),
            epochs=len(p.history),
            steps=int(_host(self.state["step"])),
            stop_reason=p.stop_reason,
            compilations=dict(c),
            params=_host(self.state["params"]),
            ema=_host(self.state["ema"]),
        )

    def _train_epoch(self, epoch: int, sigterm: _SigtermFlag) -> None:
        """The rest of the epoch in progress; saves the state every
        ``state_every_steps`` steps and on SIGTERM (then raises :class:`Preempted`).

        Several processes must stop after the same step: a SIGTERM is passed into
        the next step (:data:`STOP_KEY`), and every process acts on the summed
        flag when it reads that step's result, which happens at the same point of
        the loop in all of them. A single process acts on its own flag at once.
        """
        acc = self.progress.epoch_acc
        per_step = self.dp.batches_per_step
        bar = tqdm(
            total=parallel.steps_per_epoch(self.train_loader.num_batches(), per_step),
            initial=self.train_loader.position // per_step,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            unit="step",
            disable=not self.show_progress,
            leave=False,
            dynamic_ncols=True,
        )
        alone = self.dp.process_count == 1
        t0 = time.monotonic()
        time_before = acc["time"]
        pending: tuple[dict[str, jax.Array], int, bool] | None = None
        step = int(_host(self.state["step"]))
        batches = self.train_loader.packed_batches()
        for group in parallel.local_step_batches(batches, self.dp):
            compiling = self.steps.compilations["train_step"] == 0
            batch = self._place(group, sigterm.raised)
            self.state, info = self.steps.train(self.state, batch, self.scale)
            step += 1
            if compiling:  # keep compilation out of the throughput figures
                jax.block_until_ready(info)
                self.log(
                    f"train step compiled and run in {time.monotonic() - t0:.1f} s"
                )
                t0 = time.monotonic()
            stop = alone and sigterm.raised
            if pending is not None:  # read the previous step: dispatch stays async
                stop |= self._account(*pending)
            pending = (info, step, not compiling)
            bar.update(1)
            if self.show_progress and step % 10 == 0:
                rate = acc["timed_mol"] / max(time_before + time.monotonic() - t0, 1e-9)
                bar.set_postfix(
                    loss=f"{acc['loss_sum'] / max(acc['n_mol'], 1):.4g}",
                    mol_s=f"{rate:.0f}",
                )
            if step % self.cfg.state_every_steps == 0 or stop:
                stop |= self._account(*pending)
                pending = None
                acc["time"] = time_before + time.monotonic() - t0
                self._save_state()
            if stop:
                bar.close()
                raise Preempted(
                    f"SIGTERM at step {step}: state saved in {self.state_dir}; rerun "
                    "the same command to continue"
                )
            if self.on_step is not None:
                self.on_step(step)
        if pending is not None:
            self._account(*pending)
        bar.close()
        acc["time"] = time_before + time.monotonic() - t0

    def _account(self, info: Mapping[str, jax.Array], step: int, timed: bool) -> bool:
        """Add a step's loss to the epoch's; count consecutive rejected steps.
        Returns whether some process had SIGTERM before that step."""
        acc = self.progress.epoch_acc
        info = _host(info)
        loss, ok, n = float(info["loss"]), bool(info["finite"]), float(info["n_mol"])
        if timed:
            acc["timed_mol"] += n
        if ok:
            self.consecutive_bad = 0
            acc["loss_sum"] += loss * n
            acc["n_mol"] += n
            return bool(info["stop"])
        self.consecutive_bad += 1
        if self.consecutive_bad >= self.cfg.max_nonfinite_steps:
            best = self.progress.best_epoch
            kept = f"{self.output} (epoch {best}) kept" if best else "none written"
            raise TrainingDiverged(
                f"training stopped at step {step}: {self.consecutive_bad} consecutive "
                "steps with a non-finite loss or gradient (train.max_nonfinite_steps="
                f"{self.cfg.max_nonfinite_steps}); best checkpoint {kept}; lower "
                "train.learning_rate or check the data (physpack validate)"
            )
        return bool(info["stop"])

    def _end_epoch(self, epoch: int, epoch_time: float) -> None:
        """Validate the EMA parameters, record the epoch, keep the best, decide
        whether to stop, save the state."""
        p, acc = self.progress, self.progress.epoch_acc
        metrics = self._validate(self.state["ema"])
        row = {
            "epoch": epoch + 1,
            "train_loss": acc["loss_sum"] / max(acc["n_mol"], 1.0),
            **metrics,
            "lr": current_learning_rate(
                self.schedule, _host(self.state["opt_state"]), self.cfg
            ),
            "molecules_per_s": acc["timed_mol"] / max(acc["time"], 1e-9),
            "wall_time_s": self._elapsed(),
        }
        p.history.append(row)
        improved = metrics["valid_loss"] < p.best_loss  # False for NaN
        if improved:
            p.best_epoch, p.best_loss = epoch + 1, metrics["valid_loss"]
            p.best_metrics, p.best_ema = metrics, _host(self.state["ema"])
            if self.main:
                self._write_best(p.best_ema, p.best_epoch, metrics)
            p.bad_epochs = 0
        else:
            p.bad_epochs += 1
        if self.main:
            write_history(self.history, p.history)
        self.log(_summary(row, self.cfg.epochs, improved, self.data_stats))
        p.epoch_acc = _new_epoch_acc()
        budget = self.cfg.max_minutes
        if epoch + 1 >= self.cfg.epochs:
            p.finished, p.stop_reason = True, "epochs"
        elif p.bad_epochs >= self.cfg.patience:
            p.finished, p.stop_reason = True, "patience"
        elif budget is not None and self._elapsed() + epoch_time > 60.0 * budget:
            # another epoch would overrun the budget: stop at this boundary
            p.finished, p.stop_reason = True, "max_minutes"
        # Clocks differ between processes: process 0's decision holds for all.
        reasons = ("", "epochs", "patience", "max_minutes")
        code = reasons.index(p.stop_reason) if p.finished else 0
        code = int(parallel.broadcast_from_main(np.int32(code)))
        p.finished, p.stop_reason = code > 0, reasons[code] or p.stop_reason
        self._save_state()

    def _validate(self, params: Params) -> dict[str, float]:
        """Validation metrics; every process gets the totals over all devices."""
        totals: dict[str, float] = {}
        batches = self.valid_loader.packed_batches()
        for group in parallel.local_step_batches(batches, self.dp):
            sums = _host(self.steps.eval(params, self._place(group), self.scale))
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        return metrics_from_sums(totals, self.weights)

    # -- files ----------------------------------------------------------------------
    def _elapsed(self) -> float:
        return self.progress.elapsed_s + time.monotonic() - self.t_start

    def _save_state(self) -> None:
        if not self.main:
            return
        progress = dataclasses.asdict(self.progress)
        progress["elapsed_s"] = self._elapsed()
        ckpt_io.save_state(
            self.state_dir,
            {
                "config_hash": self.config_hash,
                "dataset": self.fingerprint,
                "code": self.code,
                "constants": self.constants.to_dict(),
                "data_stats": self.data_stats,
                "train_state": serialization.to_state_dict(_host(self.state)),
                "loader": self.train_loader.state_dict(),
                # the only randomness is the init (seeded) and the loader order
                # (its state above): kept for completeness
                "rng": np.asarray(jax.random.PRNGKey(self.cfg.seed)),
                "progress": progress,
            },
        )

    def _write_best(
        self, ema: Params, epoch: int, metrics: Mapping[str, float]
    ) -> None:
        ckpt_io.save(
            self.output,
            ckpt_io.Checkpoint(
                params=ema,
                model_config=self.model_cfg,
                constants=self.constants,
                metrics=dict(metrics),
                units=dict(CANONICAL_UNITS),
                training={
                    "epoch": epoch,
                    "step": int(_host(self.state["step"])),
                    "devices": self.dp.num_devices,
                    "processes": self.dp.process_count,
                    "batches_per_step": self.dp.batches_per_step,
                    "train_config": dataclasses.asdict(self.cfg),
                    "loader_config": dataclasses.asdict(self.loader_cfg),
                    "dataset": self.fingerprint,
                    "data_stats": self.data_stats,
                    "packed": str(self.dataset.path),
                },
            ),
        )


def _metric_text(m: Mapping[str, float]) -> str:
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
        f"{_metric_text(row)}"
    )
    if "valid_forces_mae_eV_per_A" in row and stats.get("forces_std_eV_per_A"):
        ratio = row["valid_forces_mae_eV_per_A"] / stats["forces_std_eV_per_A"]
        text += f" = {100 * ratio:.1f}% of force std"
    text += (
        f"  lr {row['lr']:.3g}  {row['molecules_per_s']:.0f} mol/s  "
        f"{row['wall_time_s']:.0f} s" + ("  *" if improved else "")
    )
    return text


# --------------------------------------------------------------------------------
# Command line


@cli_entry("physpack train")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="physpack train",
        description="Train a PhysNet model on a packed dataset (see physpack.training.train).",
    )
    parser.add_argument("packed", help="packed dataset directory")
    parser.add_argument("--split", required=True, help="split NPZ (train/valid/test)")
    parser.add_argument("--output", required=True, help="best checkpoint to write")
    parser.add_argument("--history", required=True, help="history CSV to write")
    parser.add_argument(
        "--state-dir",
        help="resumable state directory (default: 'state' next to --output)",
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
    setup = parallel.initialize_distributed()
    log = (lambda msg: print(msg, flush=True)) if parallel.is_main_process() else _quiet
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
        )
    except Preempted as exc:
        print(f"physpack train: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
