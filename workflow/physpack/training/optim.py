"""Optimiser and learning-rate schedules.

The optax chain is global-norm clipping → Adam or AMSGrad moments → decoupled
weight decay (AdamW style, any optimiser when ``weight_decay`` > 0)
(:func:`make_optimizer`). The learning rate is applied by the train step as
``learning_rate(step) × lr_scale``:

* :func:`learning_rate`: linear warmup from 0 over ``warmup_steps``, then cosine
  decay to ``final_lr_fraction`` at the *horizon* (``cosine``), or constant
  (``constant``, ``plateau``). The horizon is a value of the training state, not a
  constant of the compiled step: with ``train.max_minutes`` the run estimates after
  its first epoch how many steps the budget allows and anneals to that
  (:func:`budget_horizon`), and a resumed run reads it back.
* ``lr_scale``: 1, or, for ``plateau``, the factor of optax's
  ``reduce_on_plateau`` driven by the validation loss once per epoch, as MACE does
  (:func:`plateau_transform`).

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
import optax

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
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
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


def learning_rate(
    cfg: TrainConfig, count: jax.Array | int, horizon: jax.Array | int
) -> jax.Array:
    """The schedule's learning rate at accepted step ``count`` (0-based).

    Args:
        cfg: ``learning_rate`` (peak), ``warmup_steps``, ``schedule``,
            ``final_lr_fraction``.
        count: int32 () accepted optimisation steps so far (rejected steps do not
            advance the schedule).
        horizon: int32 () step at which the cosine reaches its final value (it stays
            there afterwards).

    Returns:
        float32 () learning rate, before the plateau factor.
    """
    peak = jnp.float32(cfg.learning_rate)
    count = jnp.asarray(count, jnp.float32)
    horizon = jnp.maximum(jnp.asarray(horizon, jnp.float32), 1.0)
    warmup = jnp.minimum(jnp.float32(cfg.warmup_steps), horizon - 1.0)
    warm = peak * count / jnp.maximum(warmup, 1.0)
    if cfg.schedule == "cosine":
        end = peak * cfg.final_lr_fraction
        span = jnp.maximum(horizon - warmup, 1.0)
        t = jnp.clip((count - warmup) / span, 0.0, 1.0)
        after = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    else:
        after = peak
    return jnp.where(count < warmup, warm, after)


def in_energy_stage(
    cfg: TrainConfig, count: jax.Array | int, horizon: jax.Array | int
) -> jax.Array:
    """Whether accepted step ``count`` is in the late energy stage: from
    ``⌈energy_stage_start · horizon⌉`` on (never without ``energy_stage_start``).

    Args:
        count, horizon: int32 () as for :func:`learning_rate`.

    Returns:
        bool () array.
    """
    if cfg.energy_stage_start is None:
        return jnp.zeros((), bool)
    start = jnp.ceil(cfg.energy_stage_start * jnp.asarray(horizon, jnp.float32))
    return jnp.asarray(count, jnp.float32) >= start


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
    steps_per_epoch: int,
    elapsed_s: float,
    epoch_s: float,
) -> int:
    """The schedule horizon (steps) of a run with ``max_minutes``, estimated after
    its first epoch.

    The run stops at the first epoch boundary after which another epoch would
    overrun the budget, so it completes ``k = 1 + ⌊(budget − elapsed) / epoch⌋``
    epochs, at most ``cfg.epochs``.

    Args:
        cfg: ``max_minutes`` (must be set) and ``epochs``.
        steps_per_epoch: optimisation steps per epoch.
        elapsed_s: seconds of the run after its first epoch (compilation included).
        epoch_s: seconds of one epoch without compilation (steps and validation).
    """
    assert cfg.max_minutes is not None
    budget = 60.0 * cfg.max_minutes
    more = math.floor(max(budget - elapsed_s, 0.0) / max(epoch_s, 1e-9))
    epochs = min(cfg.epochs, 1 + more)
    return max(epochs * steps_per_epoch, 1)
