"""The training loss and the validation metrics, defined once.

Training (:mod:`physpack.training.steps`) and validation use these functions, and
the errors are :mod:`physpack.metrics`' sums (as the evaluation stage's), so that
the loss a run minimises, the validation loss that chooses its best epoch and the
MAE/RMSE of the report are the same formulas: a loss term is the mean squared
error of a metric quantity (:data:`LOSS_QUANTITIES`).

Loss of a batch (masked: padding atoms and molecule slots contribute nothing)::

    energy_weight · mean((ΔE/N)²) + forces_weight · mean(ΔF²) + dipole_weight · mean(ΔD²)
        + nh_weight · L_nh


in eV², (eV/Å)² and (e·Å)²: ΔE per molecule divided by its number of atoms, ΔF
per Cartesian force component, ΔD per dipole component; L_nh is PhysNet's
non-hierarchicality penalty (:func:`physpack.model.physnet.nh_penalty`, a mean
over real atoms and output channels). With a late energy stage
(``train.energy_stage_start``) the energy and force weights change to the stage's
from that step on (:func:`stage_weights`). Every term is a sum and a
count (:func:`loss_partials`), so sums over batches or devices followed by one
division (:func:`combine_loss`) give the loss of the concatenated batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from physpack.config import TrainConfig
from physpack.metrics import (
    QUANTITIES,
    ErrorSums,
    error_sums,
    flatten_sums,
    mae_rmse,
    mae_rmse_from_sums,
    monitored_metrics,
    unflatten_sums,
)
from physpack.model.physnet import Params, PhysNet, energy_and_forces, nh_penalty_sum

__all__ = [
    "LOSS_QUANTITIES",
    "LossWeights",
    "combine_loss",
    "eval_sums",
    "loss_partials",
    "mae_rmse",  # physpack.metrics', importable from here as before
    "mae_rmse_from_sums",
    "metrics_from_sums",
    "stage_weights",
]


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (dimensionless); 0 switches a term off."""

    energy: float
    forces: float
    dipole: float
    nh: float = 0.0

    def of(self, term: str) -> float | jax.Array:
        """The weight of ``term`` (``"energy"``, ``"forces"``, ``"dipole"`` or
        ``"nh"``): a float, or a traced float32 () inside a step with a late
        energy stage."""
        value = getattr(self, term)
        return value if isinstance(value, jax.Array) else float(value)


def stage_weights(
    weights: LossWeights, cfg: TrainConfig, in_stage: bool | jax.Array
) -> LossWeights:
    """The weights in effect: ``weights``, or in the late energy stage its energy
    and force weights replaced by ``cfg.energy_stage_energy_weight`` and
    ``cfg.energy_stage_forces_weight`` (a term that is off, weight 0, stays off).

    Args:
        weights: the run's weights (which terms are on).
        cfg: the train section.
        in_stage: bool, or traced bool () inside a step
            (:func:`physpack.training.optim.in_energy_stage`).
    """
    if cfg.energy_stage_start is None:
        return weights
    energy = cfg.energy_stage_energy_weight if weights.energy > 0 else 0.0
    forces = cfg.energy_stage_forces_weight if weights.forces > 0 else 0.0
    if isinstance(in_stage, jax.Array):
        return dataclasses.replace(
            weights,
            energy=jnp.where(in_stage, energy, weights.energy),
            forces=jnp.where(in_stage, forces, weights.forces),
        )
    if in_stage:
        return dataclasses.replace(weights, energy=energy, forces=forces)
    return weights


#: The loss terms and the metric quantity whose squared errors each term is:
#: one table, so that the validation loss is read from the validation metrics'
#: sums (:func:`metrics_from_sums`).
LOSS_QUANTITIES = {"energy": "energy_per_atom", "forces": "forces", "dipole": "dipole"}


def _errors(
    out: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], terms: set[str]
) -> dict[str, ErrorSums]:
    """Error sums of the model output ``out`` against ``batch``'s targets for the
    metric quantities in ``terms`` that the batch and the model have: ``energy``
    (ΔE, eV), ``energy_per_atom`` (ΔE/N), ``forces`` (ΔF per component of real
    atoms, eV/Å), ``dipole`` (ΔD per component, e·Å); padding is masked out."""
    mol = batch["molecule_mask"]
    de = out["energy_residual"] - batch["E_res"]
    sums = {}
    if "energy" in terms:
        sums["energy"] = error_sums(de, mol)
    if "energy_per_atom" in terms:
        n = jnp.maximum(batch["N"], 1).astype(jnp.float32)
        sums["energy_per_atom"] = error_sums(de / n, mol)
    if "forces" in terms and "F" in batch:
        atom = batch["atom_mask"][:, None]
        sums["forces"] = error_sums(out["forces"] - batch["F"], atom)
    if "dipole" in terms and "D" in batch and "dipole" in out:
        sums["dipole"] = error_sums(out["dipole"] - batch["D"], mol[:, None])
    return sums


def loss_partials(
    params: Params,
    model: PhysNet,
    batch: Mapping[str, jax.Array],
    scale: jax.Array,
    weights: LossWeights,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Additive loss sums and their normalisers for one prepared batch.

    Args:
        params: model parameters.
        model: the PhysNet module.
        batch: a prepared packed batch (:func:`physpack.training.steps.prepare_batch`).
        scale: float32 () eV, the energy scale of the residual.
        weights: which terms are on (weight > 0).

    Returns:
        ``(sums, counts)``: ``sums["energy"]`` = Σ_mol (ΔE/N)² eV²,
        ``sums["forces"]`` = Σ ΔF² over real atoms' components (eV/Å)²,
        ``sums["dipole"]`` = Σ ΔD² (e·Å)², ``sums["nh"]`` the penalty's sum
        (dimensionless, models of several modules); ``counts`` the matching
        numbers of molecules / components / atom channels (float32 ()).
    """
    out = energy_and_forces(params, model, batch, scale)
    # a tuple, not a set: the terms' order, and so the loss's rounding, is fixed
    terms = ("energy", *(t for t in ("forces", "dipole") if getattr(weights, t) > 0))
    errors = _errors(out, batch, {LOSS_QUANTITIES[t] for t in terms})
    sums, counts = {}, {}
    for term in terms:
        if (q := LOSS_QUANTITIES[term]) in errors:
            sums[term], counts[term] = errors[q].sq, errors[q].count
    if weights.nh > 0 and out["module_outputs"].shape[0] > 1:
        outputs = out["module_outputs"]
        sums["nh"] = nh_penalty_sum(outputs, batch["atom_mask"])
        counts["nh"] = outputs.shape[-1] * jnp.sum(batch["atom_mask"]).astype(
            jnp.float32
        )
    return sums, counts


def combine_loss(
    sums: Mapping[str, jax.Array | float],
    counts: Mapping[str, jax.Array | float],
    weights: LossWeights,
) -> jax.Array:
    """The loss: Σ_term weight · sum / count over the terms of ``sums`` (other keys
    of ``counts`` are ignored). Works on traced arrays and on host floats (then in
    float64). The terms are added in the order of their names, so the rounding of
    the sum does not depend on the order ``sums`` was built in."""
    return sum(weights.of(k) * sums[k] / _at_least_one(counts[k]) for k in sorted(sums))


def _at_least_one(count: jax.Array | float) -> jax.Array | float:
    if isinstance(count, jax.Array):
        return jnp.maximum(count, 1.0)
    return max(float(count), 1.0)


def eval_sums(
    params: Params,
    model: PhysNet,
    batch: Mapping[str, jax.Array],
    scale: jax.Array,
) -> dict[str, jax.Array]:
    """Error sums of one prepared batch, additive over batches and devices.

    Returns float32 () values, :func:`physpack.metrics.flatten_sums` of the
    :class:`~physpack.metrics.ErrorSums` of ``energy`` (per molecule, eV),
    ``energy_per_atom``, with forces ``forces`` (per component, eV/Å), with
    dipoles ``dipole`` (per component, e·Å): keys ``<quantity>_abs``, ``_sq``,
    ``_count``. :func:`metrics_from_sums` turns their totals into metrics.
    """
    out = energy_and_forces(params, model, batch, scale)
    return flatten_sums(_errors(out, batch, set(QUANTITIES)))


def metrics_from_sums(
    sums: Mapping[str, float], weights: LossWeights, prefix: str = "valid_"
) -> dict[str, float]:
    """Metrics (:data:`physpack.metrics.MONITORED`, units in the names) and the
    loss from accumulated :func:`eval_sums`; the loss is :func:`combine_loss` of
    the same terms (:data:`LOSS_QUANTITIES`)."""
    errors = unflatten_sums(sums)
    m = monitored_metrics(errors, prefix)
    terms = {t: errors[q] for t, q in LOSS_QUANTITIES.items() if q in errors}
    loss = combine_loss(
        {t: e.sq for t, e in terms.items()},
        {t: e.count for t, e in terms.items()},
        weights,
    )
    m[f"{prefix}loss"] = float(loss)
    return m
