"""Per-element reference energies E0 and the energy scale of the residual.

The model learns ``E − Σ_i E0[Z_i]`` (eV), so the reference energies take the
composition out of the energy before the network sees it
(:class:`physpack.model.physnet.EnergyConstants`). :func:`fit_energy_constants`
fits them by least squares on the training split, streamed through the loader.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from physpack.data.loader import PackedMemmapLoader
from physpack.errors import InputError
from physpack.model.physnet import EnergyConstants


def fit_energy_constants(
    loader: PackedMemmapLoader, max_atomic_number: int
) -> tuple[EnergyConstants, dict[str, float]]:
    """Least-squares per-element reference energies and the energy scale, streamed
    over every molecule of ``loader`` (two passes; memory independent of size).

    Reference energies minimise Σ_mol (E − Σ_i ref[Z_i])², solved from the float64
    normal equations (CᵀC) ref = CᵀE of the composition matrix C; elements absent
    from the data get 0 (minimum-norm solution). The scale is the standard
    deviation of the per-atom residual (E − Σ ref)/N, or the RMS of the force
    components when the data has forces and that is larger: atomic energies then
    start on the scale of the forces the network has to follow.

    Returns:
        The constants and statistics: ``energy_residual_std_eV_per_atom``,
        ``forces_rms_eV_per_A``, ``forces_std_eV_per_A``, ``n_molecules``.

    Raises:
        InputError: an atomic number above ``max_atomic_number`` (named).
    """
    K = max_atomic_number + 1
    ctc = np.zeros((K, K))
    cte = np.zeros(K)
    present = np.zeros(K, dtype=bool)
    f_sum = np.zeros(3)
    f_sq = 0.0
    f_n = 0
    n_mol = 0

    def compositions(batch: Mapping[str, np.ndarray]) -> np.ndarray:
        z = batch["Z"]
        if int(z.max()) >= K:
            a = int(np.argmax(z >= K))
            mol = int(batch["mol_index"][batch["batch_segments"][a]])
            raise InputError(
                f"{loader.path}: molecule {mol} has atomic number {int(z[a])} above "
                f"model.max_atomic_number={max_atomic_number}"
            )
        M = batch["Qtot"].shape[0]
        counts = np.bincount(
            batch["batch_segments"].astype(np.int64) * K + z,
            weights=batch["atom_mask"].astype(np.float64),
            minlength=M * K,
        ).reshape(M, K)
        return counts[batch["molecule_mask"]]

    for batch in loader.packed_batches(epoch=0):
        c = compositions(batch)
        e = batch["E"][batch["molecule_mask"]]
        ctc += c.T @ c
        cte += c.T @ e
        present |= c.sum(0) > 0
        n_mol += c.shape[0]
        if "F" in batch:
            f = batch["F"][batch["atom_mask"]].astype(np.float64)
            f_sum += f.sum(0)
            f_sq += float((f**2).sum())
            f_n += f.shape[0]
    reference = np.linalg.lstsq(ctc, cte, rcond=None)[0]
    reference[~present] = 0.0

    # Second pass in float64: residuals are small differences of large numbers.
    r_sum = r_sq = 0.0
    for batch in loader.packed_batches(epoch=0):
        c = compositions(batch)
        n = c.sum(1)
        r = (batch["E"][batch["molecule_mask"]] - c @ reference) / n
        r_sum += float(r.sum())
        r_sq += float((r**2).sum())
    r_mean = r_sum / n_mol
    r_std = math.sqrt(max(r_sq / n_mol - r_mean**2, 0.0))
    f_rms = math.sqrt(f_sq / (3 * f_n)) if f_n else 0.0
    # the spread of all force components pooled (what a force MAE is compared with)
    f_mean = float(f_sum.sum()) / (3 * f_n) if f_n else 0.0
    f_std = math.sqrt(max(f_sq / (3 * f_n) - f_mean**2, 0.0)) if f_n else 0.0
    scale = max(r_std, f_rms)
    if not scale > 0:
        scale = 1.0
    constants = EnergyConstants(
        reference_energies=reference,
        scale=float(scale),
        elements=tuple(int(z) for z in np.flatnonzero(present)),
    )
    stats = {
        "n_molecules": float(n_mol),
        "energy_residual_std_eV_per_atom": r_std,
        "forces_rms_eV_per_A": f_rms,
        "forces_std_eV_per_A": f_std,
    }
    return constants, stats
