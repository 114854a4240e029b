"""Ziegler–Biersack–Littmark (ZBL) nuclear repulsion, switched off inside bonds.

E_ij = k_e Z_i Z_j / r · φ(r / a_ij),   a_ij = 0.8854 a₀ / (Z_i^0.23 + Z_j^0.23),

with ZBL's universal screening function φ (four exponentials). It is the short-range
wall that keeps atoms from fusing when the network has never seen them that close;
at bonding distances it must vanish, or it adds a repulsion the network has to
undo (at the sum of single-bond covalent radii, φ still leaves 0.7–3 eV in C=O,
C≡C and N≡N at their equilibrium lengths). It is therefore switched smoothly from
full strength at ``ZBL_ON`` × (r_cov,i + r_cov,j) to exactly zero at ``ZBL_OFF`` ×
(r_cov,i + r_cov,j): 0.85 Å for C–O and N–N, 0.64 Å for C–H, 0.37 Å for H–H, well
below the shortest bonds (N≡N 1.10 Å, C–H 1.09 Å, H–H 0.74 Å).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from ase.data import covalent_radii
from ase.units import Bohr

from physpack.model.basis import polynomial_switch
from physpack.model.electrostatics import COULOMB_EV_ANGSTROM

#: ZBL universal screening function: coefficients and exponents.
ZBL_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)
#: Switch from full strength (ZBL_ON) to zero (ZBL_OFF), in units of the sum of the
#: two atoms' single-bond covalent radii (ASE's table).
ZBL_ON = 0.4
ZBL_OFF = 0.6


class ZBLRepulsion(nn.Module):
    """Switched ZBL energy of each ordered pair; the screening length is trainable
    (a multiplicative factor on a_ij, initialised to 1).

    Attributes:
        max_atomic_number: largest Z in the covalent-radius table used.
    """

    max_atomic_number: int

    @nn.compact
    def __call__(
        self, z_dst: jax.Array, z_src: jax.Array, r: jax.Array, pair_mask: jax.Array
    ) -> jax.Array:
        """Args: z_dst, z_src int (P,) atomic numbers; r float32 (P,) Å (safe,
        non-zero on padding); pair_mask bool (P,).

        Returns: float32 (P,) eV, half of each pair's energy (every pair appears in
        both orders), zero on padding pairs and beyond the switch-off.
        """
        z_dst = jnp.where(pair_mask, z_dst, 1)
        z_src = jnp.where(pair_mask, z_src, 1)
        zd, zs = z_dst.astype(r.dtype), z_src.astype(r.dtype)
        log_scale = self.param("log_length_scale", nn.initializers.zeros, ())
        a = jnp.exp(log_scale) * 0.8854 * Bohr / (zd**0.23 + zs**0.23)
        phi = sum(
            c * jnp.exp(-b * r / a)
            for c, b in zip(ZBL_COEFFICIENTS, ZBL_EXPONENTS, strict=True)
        )
        radii = jnp.asarray(covalent_radii[: self.max_atomic_number + 1], r.dtype)
        bond = radii[z_dst] + radii[z_src]
        envelope = 1.0 - polynomial_switch(r, ZBL_ON * bond, ZBL_OFF * bond)
        energy = 0.5 * COULOMB_EV_ANGSTROM * zd * zs / r * phi * envelope
        return jnp.where(pair_mask, energy, 0.0)
