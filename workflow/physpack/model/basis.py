"""PhysNet's radial basis: exponential Gaussians under a polynomial cutoff.

Unke & Meuwly (JCTC 2019, eq. 7–8) expand a distance r [Å] as

    g_k(r) = φ(r) · exp(−β_k (exp(−r) − μ_k)²),   k = 1 … K,

with the centres μ_k spaced evenly between exp(−r_cut) and 1, the widths
β_k = (2 K⁻¹ (1 − exp(−r_cut)))⁻², both learnable (kept positive through a
softplus, as the reference implementation does; the parameters are the shifts
from these initial values in softplus space), and the smooth cutoff
φ(r) = 1 − 6 x⁵ + 15 x⁴ − 10 x³ for x = r / r_cut < 1, 0 beyond.

e3x's ``exponential_gaussian`` maps distances through exp(−γ r) onto (0, 1] with
fixed centres and widths, and its ``smooth_cutoff`` is an exponential bump; neither
is PhysNet's, so both are written here.

``radial_basis`` (the schema's ``model.radial_basis``) chooses among PhysNet's
basis and two fixed bases from e3x, each under the same polynomial cutoff φ:

- ``exponential``: PhysNet's g_k above (learnable centres and widths);
- ``bessel``: e3x's ``sinc`` basis, sin(kπ r/r_cut) / (kπ r/r_cut), k = 1 … K,
  the spherical Bessel functions j₀ of DimeNet and NequIP (up to their 1/r
  normalisation);
- ``bernstein``: e3x's ``exponential_bernstein``, Bernstein polynomials of
  exp(−γ r) (γ = 1/Å), as in SpookyNet.

PhysNet's basis is the default by measurement: at 15 CPU-minutes e3x's two
trained worse, ``bessel`` on the demo data and ``bernstein`` on unseen molecules
(BENCHMARKS.md), so the hand-written one stays.
"""

from __future__ import annotations

import e3x
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def polynomial_cutoff(r: jax.Array, cutoff: float) -> jax.Array:
    """PhysNet's cutoff φ(r) (dimensionless, same shape as ``r`` [Å]): 1 at r = 0,
    0 with vanishing first and second derivatives at and beyond ``cutoff`` [Å]."""
    x = r / cutoff
    x3 = x**3
    value = 1.0 - 6.0 * x3 * x**2 + 15.0 * x3 * x - 10.0 * x3
    return jnp.where(x < 1.0, value, jnp.zeros_like(x))


def polynomial_switch(r: jax.Array, r_on: float, r_off: float) -> jax.Array:
    """Smooth step from 0 (r ≤ ``r_on``) to 1 (r ≥ ``r_off``), the complement of
    :func:`polynomial_cutoff` on [r_on, r_off] (C² at both ends); r, r_on, r_off in
    the same length unit (arrays broadcast)."""
    x = jnp.clip((r - r_on) / (r_off - r_on), 0.0, 1.0)
    return 1.0 - polynomial_cutoff(x, 1.0)


def _softplus_inverse(x: np.ndarray) -> np.ndarray:
    return x + np.log(-np.expm1(-x))


def initial_centres_and_widths(num: int, cutoff: float) -> tuple[np.ndarray, float]:
    """PhysNet's initial μ_k (``num`` values, dimensionless, from 1 down to
    exp(−cutoff)) and β (1/unit², one value for all k); ``cutoff`` in Å."""
    centres = np.linspace(1.0, np.exp(-cutoff), num)
    width = (0.5 * num / (1.0 - np.exp(-cutoff))) ** 2
    return centres, float(width)


class ExponentialRadialBasis(nn.Module):
    """g_k(r) of the module docstring.

    Attributes:
        num: K, the number of basis functions.
        cutoff: r_cut [Å].
    """

    num: int
    cutoff: float

    @nn.compact
    def __call__(self, r: jax.Array) -> jax.Array:
        """r: float (P,) distances [Å] → float (P, K), zero for r ≥ cutoff."""
        centres0, width0 = initial_centres_and_widths(self.num, self.cutoff)
        # Learnable shifts in softplus space, zero at PhysNet's initial values
        # (so that zero-centred perturbations of the parameters stay near them).
        centre_shifts = self.param("centre_shifts", nn.initializers.zeros, (self.num,))
        width_shifts = self.param("width_shifts", nn.initializers.zeros, (self.num,))
        centres = jax.nn.softplus(_softplus_inverse(centres0) + centre_shifts)
        widths = jax.nn.softplus(_softplus_inverse(np.array(width0)) + width_shifts)
        gauss = jnp.exp(-widths * (jnp.exp(-r)[:, None] - centres) ** 2)
        return polynomial_cutoff(r, self.cutoff)[:, None] * gauss


#: Values of ``radial_basis`` (the schema's ``model.radial_basis``).
RADIAL_BASES = ("exponential", "bessel", "bernstein")


def fixed_radial_basis(name: str, r: jax.Array, num: int, cutoff: float) -> jax.Array:
    """e3x's ``bessel`` (sinc) or ``bernstein`` basis of the module docstring
    under the polynomial cutoff: r float (P,) Å → float (P, K), zero for r ≥
    ``cutoff`` [Å]."""
    if name == "bessel":
        basis = e3x.nn.sinc(r, num, limit=cutoff)
    elif name == "bernstein":
        basis = e3x.nn.exponential_bernstein(r, num, gamma=1.0)
    else:
        raise ValueError(f"radial_basis must be one of {RADIAL_BASES}, got {name!r}")
    return polynomial_cutoff(r, cutoff)[:, None] * basis
