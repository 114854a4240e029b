"""The training loss and the error metrics, defined once.

Training (:mod:`physpack.training.steps`), validation and the evaluation stage
(:mod:`physpack.evaluation.evaluate`) all use these functions, so that the loss a
run minimises, the validation loss that chooses its best epoch and the MAE/RMSE of
the report are the same formulas.

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
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from physpack.config import TrainConfig
from physpack.model.physnet import Params, PhysNet, energy_and_forces, nh_penalty_sum


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
    float64)."""
    return sum(weights.of(k) * sums[k] / _at_least_one(counts[k]) for k in sums)


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

    Returns float32 () values: ``n_mol``; ``e_abs``/``e_sq`` (Σ|ΔE|, ΣΔE², eV,
    eV²); ``ea_abs``/``ea_sq`` (per atom); with forces ``n_f``, ``f_abs``,
    ``f_sq`` (per component, eV/Å); with dipoles ``n_d``, ``d_abs``, ``d_sq``
    (per component, e·Å). :func:`metrics_from_sums` turns them into metrics.
    """
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


def mae_rmse_from_sums(
    abs_sum: float, sq_sum: float, count: float
) -> tuple[float, float]:
    """Mean absolute error and root mean square error from Σ|e|, Σe² and the count
    (no values, count 0: NaN and NaN)."""
    n = float(count)
    if not n > 0:
        return math.nan, math.nan
    return float(abs_sum) / n, math.sqrt(max(float(sq_sum), 0.0) / n)


def mae_rmse(err: np.ndarray) -> tuple[float, float]:
    """MAE and RMSE of an array of errors (any shape, float64 on the host)."""
    err = np.asarray(err, np.float64)
    return mae_rmse_from_sums(np.abs(err).sum(), (err * err).sum(), err.size)


def metrics_from_sums(
    sums: Mapping[str, float], weights: LossWeights, prefix: str = "valid_"
) -> dict[str, float]:
    """Metrics (units in the names) and the loss from accumulated
    :func:`eval_sums`; the loss is :func:`combine_loss` of the same terms."""
    m: dict[str, float] = {}
    n = sums["n_mol"]
    (
        m[f"{prefix}energy_mae_eV"],
        m[f"{prefix}energy_rmse_eV"],
    ) = mae_rmse_from_sums(sums["e_abs"], sums["e_sq"], n)
    (
        m[f"{prefix}energy_mae_eV_per_atom"],
        m[f"{prefix}energy_rmse_eV_per_atom"],
    ) = mae_rmse_from_sums(sums["ea_abs"], sums["ea_sq"], n)
    loss_sums, loss_counts = {"energy": sums["ea_sq"]}, {"energy": n}
    if "n_f" in sums:
        (
            m[f"{prefix}forces_mae_eV_per_A"],
            m[f"{prefix}forces_rmse_eV_per_A"],
        ) = mae_rmse_from_sums(sums["f_abs"], sums["f_sq"], sums["n_f"])
        loss_sums["forces"], loss_counts["forces"] = sums["f_sq"], sums["n_f"]
    if "n_d" in sums:
        (
            m[f"{prefix}dipole_mae_eA"],
            m[f"{prefix}dipole_rmse_eA"],
        ) = mae_rmse_from_sums(sums["d_abs"], sums["d_sq"], sums["n_d"])
        loss_sums["dipole"], loss_counts["dipole"] = sums["d_sq"], sums["n_d"]
    m[f"{prefix}loss"] = float(combine_loss(loss_sums, loss_counts, weights))
    return m
