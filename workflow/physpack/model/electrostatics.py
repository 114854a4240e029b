"""Atomic charges, PhysNet's shielded Coulomb energy and the dipole moment.

- Charges: the network's raw charges q̃_i are corrected uniformly per molecule so
  that they sum to its total charge Q: q_i = q̃_i − (Σ_j q̃_j − Q) / N.
- Coulomb (Unke & Meuwly 2019, eq. 12): E = k_e Σ_{i<j} q_i q_j χ(r_ij), with
  χ(r) = (1 − s(r)) / √(r² + 1) + s(r) / r and s PhysNet's polynomial switch from
  0 at r = 0 to 1 at r_cut / 2: shielded at short range (no singularity where the
  network already describes the interaction), plain 1/r beyond.
- Dipole: μ = Σ_i q_i (r_i − r_0) [e·Å] about ``origin``: the centre of mass
  (``center_of_mass``, atomic masses of ASE's table) or of the nuclear charges
  (``center_of_nuclear_charge``, Σ Z_i r_i / Σ Z_i). For neutral molecules the
  origin does not matter; for ions it makes μ independent of where the molecule
  sits, unlike Σ q_i r_i about the coordinate origin.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from ase.data import atomic_masses

from physpack.model.basis import polynomial_switch

#: Coulomb constant e²/(4πε₀) in eV·Å.
COULOMB_EV_ANGSTROM = 14.399645351950548

DipoleOrigin = Literal["center_of_mass", "center_of_nuclear_charge"]
DIPOLE_ORIGINS: tuple[str, ...] = ("center_of_mass", "center_of_nuclear_charge")


def constrained_charges(
    raw: jax.Array,
    total_charge: jax.Array,
    batch_segments: jax.Array,
    atom_mask: jax.Array,
) -> jax.Array:
    """Charges q_i [e] float32 (A,) summing to ``total_charge`` (M,) [e] per
    molecule; ``raw`` (A,) network charges, zero on padding atoms."""
    num_molecules = total_charge.shape[0]
    w = atom_mask.astype(raw.dtype)
    n = jax.ops.segment_sum(w, batch_segments, num_molecules)
    excess = jax.ops.segment_sum(raw * w, batch_segments, num_molecules) - total_charge
    per_atom = excess / jnp.where(n > 0, n, 1.0)
    return (raw - per_atom[batch_segments]) * w


def shielded_inverse_distance(r: jax.Array, cutoff: float) -> jax.Array:
    """χ(r) [1/Å] of the module docstring; r [Å], ``cutoff`` r_cut [Å]."""
    switch = polynomial_switch(r, 0.0, 0.5 * cutoff)
    return (1.0 - switch) / jnp.sqrt(r**2 + 1.0) + switch / r


def coulomb_pair_energy(
    charges: jax.Array,
    distances: jax.Array,
    dst_idx: jax.Array,
    src_idx: jax.Array,
    cutoff: float,
) -> jax.Array:
    """Half of each ordered pair's shielded Coulomb energy, float32 (P,) eV (every
    pair appears in both orders); ``charges`` (A,) e, ``distances`` (P,) Å."""
    q_dst = charges[dst_idx]
    q_src = charges[src_idx]
    kernel = shielded_inverse_distance(distances, cutoff)
    return 0.5 * COULOMB_EV_ANGSTROM * q_dst * q_src * kernel


def dipole_moment(
    charges: jax.Array,
    positions: jax.Array,
    atomic_numbers: jax.Array,
    batch_segments: jax.Array,
    atom_mask: jax.Array,
    num_molecules: int,
    origin: DipoleOrigin = "center_of_mass",
) -> jax.Array:
    """μ = Σ_i q_i (r_i − r_0) per molecule slot, float32 (M, 3) e·Å.

    Args:
        charges: (A,) e, zero on padding atoms.
        positions: (A, 3) Å.
        atomic_numbers: int (A,).
        batch_segments: int (A,) molecule slot of each atom.
        atom_mask: bool (A,).
        num_molecules: M.
        origin: ``center_of_mass`` or ``center_of_nuclear_charge``.
    """
    if origin == "center_of_mass":
        table = jnp.asarray(atomic_masses, positions.dtype)
        weights = table[atomic_numbers]
    elif origin == "center_of_nuclear_charge":
        weights = atomic_numbers.astype(positions.dtype)
    else:
        raise ValueError(
            f"dipole origin must be one of {DIPOLE_ORIGINS}, got {origin!r}"
        )
    weights = weights * atom_mask.astype(positions.dtype)
    total = jax.ops.segment_sum(weights, batch_segments, num_molecules)
    moment = jax.ops.segment_sum(
        weights[:, None] * positions, batch_segments, num_molecules
    )
    centre = moment / jnp.where(total > 0, total, 1.0)[:, None]
    relative = positions - centre[batch_segments]
    return jax.ops.segment_sum(
        charges[:, None] * relative, batch_segments, num_molecules
    )
