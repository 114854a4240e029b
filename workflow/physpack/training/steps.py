"""The pure, jitted train and eval steps, and the device form of a batch.

``train(state, batch, scale) -> (state, info)`` and ``eval(params, batch, scale)
-> sums`` are functions of their arguments only, jitted once per run; the fixed
batch shapes of the loader make that one compilation (counted in
:attr:`Steps.compilations`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from physpack.config import TrainConfig
from physpack.model.physnet import MODEL_INPUTS, EnergyConstants, Params, PhysNet
from physpack.training.losses import (
    LossWeights,
    combine_loss,
    eval_sums,
    loss_partials,
    stage_weights,
)
from physpack.training.optim import in_energy_stage, learning_rate
from physpack.training.parallel import (
    DataParallel,
    data_parallel_sums,
    data_parallel_value_and_grad,
)
from physpack.training.state import TrainState

#: Batch key of the per-device SIGTERM flag: summed inside the train step, so that
#: all processes learn of a signal that reached any of them at the same step.
STOP_KEY = "stop_request"


def prepare_batch(
    batch: Mapping[str, np.ndarray], constants: EnergyConstants
) -> dict[str, np.ndarray]:
    """The device form of a packed batch: model inputs in float32/int32 plus the
    targets ``E_res`` float32 (M,) eV (E − Σ ref(Z), formed in float64),
    ``F`` (A, 3) eV/Å and ``D`` (M, 3) e·Å when present, ``N`` int32 (M,) and
    ``molecule_mask`` bool (M,)."""
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


@dataclasses.dataclass
class Steps:
    """The jitted train and eval steps of a run and how often each was traced
    (a trace is a compilation: the counters are bumped inside the traced code)."""

    train: Callable[..., Any]
    eval: Callable[..., Any]
    compilations: dict[str, int]


def build_steps(
    model: PhysNet,
    tx: optax.GradientTransformation,
    cfg: TrainConfig,
    weights: LossWeights,
    dp: DataParallel | None = None,
) -> Steps:
    """``train(state, batch, scale) -> (state, info)`` and
    ``eval(params, batch, scale) -> sums`` for one run.

    ``state`` is a :class:`TrainState`, ``scale`` float32 () eV. The loss
    weights are ``weights``, or the late energy stage's from its first step on
    (:func:`physpack.training.losses.stage_weights`; no recompilation). A step whose loss
    or gradient is not finite leaves params, optimiser state, EMA and the schedule
    counter unchanged (``info["finite"]`` False); ``step`` counts every step.
    ``info``: ``loss`` float32 (), ``finite`` bool, ``n_mol`` molecules of the
    step, ``grad_norm`` global gradient norm before clipping, ``stop`` bool.

    With ``dp`` (:mod:`physpack.training.parallel`) ``batch`` is the stack of one
    packed batch per device, sharded over ``dp.mesh``, ``state`` and ``scale``
    replicated; loss sums and counts are added over the devices before
    normalising, so the step equals the single-device step on the concatenated
    batches. A batch key :data:`STOP_KEY` (float32 () per batch) is summed over
    the devices into ``info["stop"]``.
    """
    compilations = {"train_step": 0, "eval_step": 0}

    def train_step(
        state: TrainState, batch: Mapping[str, jax.Array], scale: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        compilations["train_step"] += 1  # runs at trace time only
        # the weights of this step: the late energy stage's from its start on
        now = stage_weights(
            weights, cfg, in_energy_stage(cfg, state.accepted, state.schedule)
        )
        (loss, counts), grads = _loss_and_grad(
            model, weights, dp, state.params, batch, scale, now
        )
        new_state, finite, grad_norm = _apply_gradients(state, grads, loss, tx, cfg)
        info = {
            "loss": loss,
            "finite": finite,
            "n_mol": counts["energy"],
            "grad_norm": grad_norm,
            "stop": counts.get(STOP_KEY, jnp.zeros(())) > 0,
        }
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


def _loss_and_grad(
    model: PhysNet,
    weights: LossWeights,
    dp: DataParallel | None,
    params: Params,
    batch: Mapping[str, jax.Array],
    scale: jax.Array,
    now: LossWeights,
) -> tuple[tuple[jax.Array, dict[str, jax.Array]], Params]:
    """``((loss, counts), grads)`` of one step (traced inside the train step).

    The loss partials use ``weights`` (which terms are computed), the combined loss
    the weights ``now`` of this step; with ``dp`` the sums and counts are added over
    the devices before normalising. ``counts`` holds the summed :data:`STOP_KEY`
    when the batch has one.
    """

    def partial_fn(p: Params, b: Mapping[str, jax.Array]) -> Any:
        sums, counts = loss_partials(p, model, b, scale, weights)
        if STOP_KEY in b:  # summed like a count; combine_loss ignores it
            counts = {**counts, STOP_KEY: b[STOP_KEY]}
        return sums, counts

    def combine(sums: Any, counts: Any) -> jax.Array:
        return combine_loss(sums, counts, now)

    if dp is not None:
        vg = data_parallel_value_and_grad(partial_fn, combine, dp.mesh)
        (loss, (_, counts)), grads = vg(params, batch)
        return (loss, counts), grads

    def loss_fn(p: Params) -> tuple[jax.Array, Any]:
        sums, counts = partial_fn(p, batch)
        return combine(sums, counts), counts

    return jax.value_and_grad(loss_fn, has_aux=True)(params)


def _apply_gradients(
    state: TrainState,
    grads: Params,
    loss: jax.Array,
    tx: optax.GradientTransformation,
    cfg: TrainConfig,
) -> tuple[TrainState, jax.Array, jax.Array]:
    """The state after one optimiser step with ``grads`` (learning rate of the
    schedule, EMA with warm-up), the step counted; params, optimiser state, EMA
    and ``accepted`` unchanged when ``loss`` or the gradient is not finite.

    Returns:
        The new state, ``finite`` bool () and the gradient norm before clipping.
    """
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    lr = learning_rate(cfg, state.accepted, state.schedule) * state.lr_scale
    updates = jax.tree.map(lambda u: -lr * u, updates)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    t = state.step.astype(jnp.float32)
    # EMA warm-up: early averages would otherwise be dominated by the init.
    decay = jnp.minimum(cfg.ema_decay, (1.0 + t) / (10.0 + t))
    # e + (1 - d)(p - e): the same average, and exactly e where p == e (frozen
    # parameters stay bit for bit what they were)
    ema = jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), state.ema, params)
    new_state = state.replace(
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        ema=keep(ema, state.ema),
        step=state.step + 1,
        accepted=state.accepted + finite.astype(jnp.int32),
    )
    return new_state, finite, grad_norm
