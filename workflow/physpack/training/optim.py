"""Optimiser and learning-rate schedules.

The optax chain is global-norm clipping → Adam or AMSGrad moments → decoupled
weight decay (AdamW style, any optimiser when ``weight_decay`` > 0) of the dense
layers' weight matrices only (:func:`decayed_leaves`; biases, gates, per-element
scales and shifts and the radial basis are not pulled towards zero)
(:func:`make_optimizer`). The learning rate is applied by the train step as
``learning_rate(step) × lr_scale``:

* :func:`learning_rate`: linear warmup from 0 over ``warmup_steps``, then cosine
  decay to ``final_lr_fraction`` at the *horizon* (``cosine``), or constant
  (``constant``, ``plateau``). The horizon is part of the training state
  (:class:`Schedule`), not a constant of the compiled step: with
  ``train.max_minutes`` the run estimates after its first epoch how many steps the
  budget allows (:func:`budget_horizon`) and revises that after every epoch from
  its recent speed (:func:`revise_schedule`); the cosine continues from where it
  stands, so the rate never jumps and reaches its end with the budget even when
  the machine's speed drifts (:func:`fit_schedule_to_budget`, after every epoch).
  A resumed run reads the schedule back.
* ``lr_scale``: 1, or, for ``plateau``, the factor of optax's
  ``reduce_on_plateau`` driven by the validation loss once per epoch, as MACE does
  (:func:`plateau_update`).

``train.freeze`` (fine-tuning) gives the named parameter groups zero updates
(:func:`freeze_labels`, optax's ``multi_transform``).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from physpack.config import TrainConfig
from physpack.errors import ConfigError


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """The gradient transformation without the learning rate: clipping by global
    norm ``clip_norm``, Adam/AMSGrad moments, decoupled weight decay.

    Warns when ``optimizer: adamw`` has ``weight_decay: 0`` (that is plain Adam).
    """
    if cfg.optimizer == "adamw" and cfg.weight_decay == 0:
        warnings.warn(
            "train.optimizer is adamw but train.weight_decay is 0: this is plain "
            "Adam; set train.weight_decay (e.g. 1e-4) for AdamW",
            stacklevel=2,
        )
    parts: list[optax.GradientTransformation] = [
        optax.clip_by_global_norm(cfg.clip_norm)
    ]
    if cfg.optimizer == "amsgrad":
        parts.append(optax.scale_by_amsgrad())
    else:
        parts.append(optax.scale_by_adam())
    if cfg.weight_decay > 0:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decayed_leaves))
    tx = optax.chain(*parts)
    if not cfg.freeze:
        return tx
    frozen = set(cfg.freeze)
    # frozen groups get zero updates and no optimiser state; clipping and the
    # moments see only the trained parameters
    return optax.multi_transform(
        {"trained": tx, "frozen": optax.set_to_zero()},
        lambda params: freeze_labels(params, frozen),
    )


def decayed_leaves(params: Any) -> Any:
    """The mask of weight decay: True for the dense layers' weight matrices
    (flax's ``kernel`` leaves), False for every other parameter."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def parameter_group(name: str) -> str:
    """The group of a top-level parameter collection: its name without the
    module indices (``interaction_2`` -> ``interaction``,
    ``atomic_residual_0_1`` -> ``atomic_residual``)."""
    return re.sub(r"(_\d+)+$", "", name)


def parameter_groups(params: Mapping[str, Any]) -> list[str]:
    """The groups of ``params`` that ``train.freeze`` may name, in order."""
    return list(dict.fromkeys(parameter_group(k) for k in params))


def _wanted(group: str, frozen: set[str]) -> bool:
    return group in frozen or f"{group}s" in frozen


def freeze_labels(params: Mapping[str, Any], frozen: set[str]) -> dict[str, Any]:
    """``"frozen"``/``"trained"`` for every leaf of ``params`` (the label tree of
    :func:`optax.multi_transform`)."""
    labels = {}
    for name, sub in params.items():
        label = "frozen" if _wanted(parameter_group(name), frozen) else "trained"
        labels[name] = jax.tree.map(lambda _, label=label: label, sub)
    return labels


def check_freeze(params: Mapping[str, Any], cfg: TrainConfig) -> None:
    """Refuse ``train.freeze`` groups that name no parameters, listing the groups."""
    groups = parameter_groups(params)
    known = set(groups) | {f"{g}s" for g in groups}
    unknown = [g for g in cfg.freeze if g not in known]
    if unknown:
        raise ConfigError(
            f"train.freeze: no parameter group {', '.join(map(repr, unknown))}; "
            f"the model's groups are {', '.join(groups)}"
        )
    if set(groups) <= {g for g in groups if _wanted(g, set(cfg.freeze))}:
        raise ConfigError("train.freeze: every parameter group is frozen")


#: ``Schedule.stage_start`` of a run without a late energy stage.
NO_STAGE = np.iinfo(np.int32).max


@struct.dataclass
class Schedule:
    """Where the learning-rate schedule and the loss stage stand (part of the train
    state; every field a () array).

    Attributes:
        horizon: int32, accepted step at which the cosine reaches its final value
            (it stays there afterwards).
        anchor_step: int32, accepted step from which the cosine's progress grows
            linearly to 1 at ``horizon``; -1: the end of warmup.
        anchor_progress: float32, the cosine's progress at ``anchor_step`` (0: peak
            rate, 1: final rate); 0 with ``anchor_step`` -1.
        stage_start: int32, first accepted step of the late energy stage
            (:data:`NO_STAGE`: none).
    """

    horizon: jax.Array
    anchor_step: jax.Array
    anchor_progress: jax.Array
    stage_start: jax.Array


def stage_start_step(cfg: TrainConfig, horizon: int) -> int:
    """First step of the late energy stage for ``horizon``:
    ``⌈energy_stage_start · horizon⌉`` (:data:`NO_STAGE` without one)."""
    if cfg.energy_stage_start is None:
        return int(NO_STAGE)
    return math.ceil(cfg.energy_stage_start * horizon)


def initial_schedule(cfg: TrainConfig, horizon: int) -> Schedule:
    """The schedule of a new run that anneals over ``horizon`` accepted steps."""
    return Schedule(
        horizon=jnp.asarray(horizon, jnp.int32),
        anchor_step=jnp.asarray(-1, jnp.int32),
        anchor_progress=jnp.zeros((), jnp.float32),
        stage_start=jnp.asarray(stage_start_step(cfg, horizon), jnp.int32),
    )


def _warmup(cfg: TrainConfig, horizon: jax.Array) -> jax.Array:
    return jnp.minimum(jnp.float32(cfg.warmup_steps), horizon - 1.0)


def cosine_progress(
    cfg: TrainConfig, count: jax.Array | int, schedule: Schedule
) -> jax.Array:
    """float32 () progress of the cosine at accepted step ``count``: 0 until the
    end of warmup, then linear from ``anchor_progress`` at ``anchor_step`` to 1 at
    ``horizon`` (and 1 after it)."""
    count = jnp.asarray(count, jnp.float32)
    horizon = jnp.maximum(jnp.asarray(schedule.horizon, jnp.float32), 1.0)
    warmup = _warmup(cfg, horizon)
    anchored = jnp.asarray(schedule.anchor_step) >= 0
    anchor = jnp.where(anchored, jnp.asarray(schedule.anchor_step, jnp.float32), warmup)
    t0 = jnp.where(anchored, jnp.asarray(schedule.anchor_progress, jnp.float32), 0.0)
    span = jnp.maximum(horizon - anchor, 1.0)
    return jnp.clip(t0 + (1.0 - t0) * (count - anchor) / span, t0, 1.0)


def learning_rate(
    cfg: TrainConfig, count: jax.Array | int, schedule: Schedule
) -> jax.Array:
    """The schedule's learning rate at accepted step ``count`` (0-based).

    Args:
        cfg: ``learning_rate`` (peak), ``warmup_steps``, ``schedule``,
            ``final_lr_fraction``.
        count: int32 () accepted optimisation steps so far (rejected steps do not
            advance the schedule).
        schedule: horizon and anchor (:func:`cosine_progress`).

    Returns:
        float32 () learning rate, before the plateau factor.
    """
    peak = jnp.float32(cfg.learning_rate)
    steps = jnp.asarray(count, jnp.float32)
    warmup = _warmup(cfg, jnp.maximum(jnp.asarray(schedule.horizon, jnp.float32), 1.0))
    warm = peak * steps / jnp.maximum(warmup, 1.0)
    if cfg.schedule == "cosine":
        end = peak * cfg.final_lr_fraction
        t = cosine_progress(cfg, count, schedule)
        after = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    else:
        after = peak
    return jnp.where(steps < warmup, warm, after)


def in_energy_stage(
    cfg: TrainConfig, count: jax.Array | int, schedule: Schedule
) -> jax.Array:
    """Whether accepted step ``count`` is in the late energy stage: from
    ``schedule.stage_start`` on (never without ``energy_stage_start``).

    Args:
        count: int32 () as for :func:`learning_rate`.

    Returns:
        bool () array.
    """
    if cfg.energy_stage_start is None:
        return jnp.zeros((), bool)
    return jnp.asarray(count, jnp.int32) >= jnp.asarray(schedule.stage_start)


def revise_schedule(
    cfg: TrainConfig, count: int, schedule: Schedule, horizon: int
) -> Schedule:
    """``schedule`` with its horizon moved to ``horizon`` at accepted step
    ``count``, continuously: after warmup the cosine is anchored at its present
    progress, so the rate at ``count`` is unchanged and it reaches its end at the
    new horizon; during warmup only the horizon moves. A late energy stage that
    has not begun moves with the horizon; one that has begun stays.

    Args:
        count: accepted steps so far.
        horizon: the new horizon; at most ``count`` (the run ends here) makes
            the rate the final one from ``count`` on.

    Returns:
        The revised schedule (host values).
    """
    horizon = max(int(horizon), int(count))
    anchor_step, anchor_progress = schedule.anchor_step, schedule.anchor_progress
    if horizon == count:
        anchor_step, anchor_progress = count, 1.0
    elif count > float(_warmup(cfg, jnp.float32(horizon))):
        anchor_step = count
        anchor_progress = cosine_progress(cfg, count, schedule)
    stage_start = schedule.stage_start
    if count < int(stage_start):
        stage_start = max(count, stage_start_step(cfg, horizon))
    return Schedule(
        horizon=jnp.asarray(horizon, jnp.int32),
        anchor_step=jnp.asarray(anchor_step, jnp.int32),
        anchor_progress=jnp.asarray(anchor_progress, jnp.float32),
        stage_start=jnp.asarray(stage_start, jnp.int32),
    )


def plateau_transform(cfg: TrainConfig) -> optax.GradientTransformationExtraArgs:
    """optax ``reduce_on_plateau`` fed once per epoch with the validation loss:
    the learning rate is multiplied by ``plateau_factor`` after
    ``plateau_patience`` epochs without improvement, down to ``final_lr_fraction``.
    Its state's ``scale`` is the train state's ``lr_scale``."""
    return optax.contrib.reduce_on_plateau(
        factor=cfg.plateau_factor,
        patience=cfg.plateau_patience,
        accumulation_size=1,
        min_scale=cfg.final_lr_fraction,
    )


def budget_horizon(
    cfg: TrainConfig,
    steps_done: int,
    epochs_done: int,
    steps_per_epoch: int,
    elapsed_s: float,
    epoch_s: float,
) -> int:
    """The schedule horizon (accepted steps) of a run with ``max_minutes``: the
    steps done plus those of the epochs that still fit.

    The run stops at the first epoch boundary after which another epoch would
    overrun the budget, so ``⌊(budget − elapsed) / epoch⌋`` more epochs fit, and at
    most ``cfg.epochs − epochs_done``.

    Args:
        cfg: ``max_minutes`` (must be set) and ``epochs``.
        steps_done: accepted steps so far.
        epochs_done: finished epochs.
        steps_per_epoch: optimisation steps per epoch.
        elapsed_s: seconds of the run so far (compilation included).
        epoch_s: expected seconds of one epoch (steps and validation).
    """
    assert cfg.max_minutes is not None
    budget = 60.0 * cfg.max_minutes
    more = math.floor(max(budget - elapsed_s, 0.0) / max(epoch_s, 1e-9))
    epochs = max(min(cfg.epochs - epochs_done, more), 0)
    return max(steps_done + epochs * steps_per_epoch, 1)


def plateau_update(
    cfg: TrainConfig, saved: Mapping[str, float] | None, valid_loss: float
) -> dict[str, float]:
    """One epoch of :func:`plateau_transform`: its state after the epoch's
    validation loss.

    Args:
        cfg: ``plateau_factor``, ``plateau_patience``, ``final_lr_fraction``.
        saved: the state after the previous epoch (plain floats, as saved with the
            training record), or ``None`` before the first epoch.
        valid_loss: the epoch's validation loss (dimensionless; a non-finite loss
            counts as no improvement).

    Returns:
        The new state as plain floats; ``"scale"`` is the learning-rate factor of
        the next epoch (1 at first, × ``plateau_factor`` after every
        ``plateau_patience`` epochs without improvement, at least
        ``final_lr_fraction``).
    """
    tx = plateau_transform(cfg)
    init = tx.init(jnp.zeros(()))
    saved = saved or {}
    state = type(init)(
        **{
            k: jnp.asarray(saved.get(k, v), dtype=jnp.asarray(v).dtype)
            for k, v in init._asdict().items()
        }
    )
    value = jnp.float32(valid_loss if math.isfinite(valid_loss) else np.inf)
    _, state = tx.update(jnp.zeros(()), state, value=value)
    return {k: np.asarray(v).item() for k, v in state._asdict().items()}


def fit_schedule_to_budget(
    cfg: TrainConfig,
    count: int,
    schedule: Schedule,
    *,
    epochs_done: int,
    steps_per_epoch: int,
    elapsed_s: float,
    epoch_s: float,
) -> Schedule:
    """After an epoch of a run with ``max_minutes``: ``schedule`` annealing over the
    steps that still fit the budget (:func:`budget_horizon`), revised continuously
    at accepted step ``count`` (:func:`revise_schedule`).

    Args:
        cfg: ``max_minutes`` (must be set), ``epochs`` and the schedule's keys.
        count: accepted steps so far.
        schedule: the schedule of the epoch that ended.
        epochs_done: finished epochs.
        steps_per_epoch: optimisation steps of the next epoch.
        elapsed_s: seconds of the run so far (compilation included).
        epoch_s: expected seconds of each further epoch (steps and validation).

    Returns:
        The revised schedule (host values); its ``horizon`` is the new one.
    """
    horizon = budget_horizon(
        cfg, count, epochs_done, steps_per_epoch, elapsed_s, epoch_s
    )
    return revise_schedule(cfg, count, schedule, horizon)
