"""PhysNet's building blocks (Unke & Meuwly, JCTC 2019, Fig. 1).

Atom features are a pair ``(s, v)``: scalars ``s`` float32 (n, F), PhysNet's
feature vectors, and, for ``max_degree`` L ≥ 1, equivariant features ``v`` float32
(n, (L+1)² − 1, V): the components of degrees 1 … L in e3x's spherical-harmonic
order (no degree 0, no pseudotensors) and V = ``vector_features`` channels
(``None`` for L = 0). With L = 0 every block below is exactly the paper's; with
L ≥ 1 the same blocks also carry ``v``:

- linear maps act on ``v``'s channel axis without bias (the same matrix for every
  component, so rotations commute with them); the activation multiplies ``v`` by
  a gate sigmoid(s_c) of its channel's scalar (the derivative of softplus);
- messages couple scalars and ``v`` channel-wise (PaiNN's subset of the full
  tensor product): scalars → degree l along Y_l(r̂_ij), ``v`` → ``v``, and
  ``v`` → scalars through Y_l(r̂_ij) · v_j, each weighted by a radial filter;
- residual blocks refine the scalars; ``v`` passes them unchanged.

e3x's ``MessagePass`` computes the full tensor product on e3x's feature layout,
whose cost and memory traffic grow with (L+1)⁴ per pair and per channel (twelve
times the invariant model's cost per molecule at L = 1 on a CPU); keeping ``v``
narrow (V < F) and the couplings channel-wise keeps L = 1 within a small factor.

σ is the shifted softplus σ(x) = ln(1 + eˣ) − ln 2 (e3x's ``shifted_softplus``
expects e3x's feature layout, so it is written out here).

- :class:`ResidualBlock`:  s + W₂ σ(W₁ σ(s) + b₁) + b₂.
- :class:`InteractionBlock`: pre-activation x̃ = σ(x); message
  m_i = σ(W_I x̃_i + b_I) + Σ_j G(g(r_ij)) ∘ σ(W_J x̃_j + b_J) (self and neighbour
  weights apart, G a bias-free linear map of the radial basis, zero-initialised as
  in the reference code), ``n_res_interaction`` residual blocks on m, then the
  gated update x' = u ∘ x + W σ(m) + b (u initialised to ones). With
  ``radial_filter="mlp"`` (not in the paper) G = W₂ σ(W₁ g) instead, SchNet's
  filter network without biases: as σ(0) = 0, G still vanishes wherever the basis
  does (at and beyond the cutoff, and on padding pairs), so the energy stays
  smooth at the cutoff.
- :class:`OutputBlock`: ``n_res_output`` residual blocks, σ, a bias-free linear
  map to the atomic outputs (zero-initialised: an untrained model adds nothing).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Features = tuple[jax.Array, jax.Array | None]

_LOG2 = float(np.log(2.0))

#: Values of ``radial_filter`` (the schema's ``model.radial_filter``).
RADIAL_FILTERS = ("linear", "mlp")


def ssp(x: jax.Array) -> jax.Array:
    """Shifted softplus ln(1 + eˣ) − ln 2, elementwise."""
    return jax.nn.softplus(x) - _LOG2


def shifted_softplus(x: Features) -> Features:
    """σ of the module docstring: s → σ(s); v → sigmoid(s_c) ∘ v_c per channel c."""
    s, v = x
    activated = ssp(s)
    if v is None:
        return activated, None
    # vector channel c is gated by scalar channel c mod F
    channels = np.arange(v.shape[-1]) % s.shape[-1]
    gate = jax.nn.sigmoid(s[:, None, channels])
    return activated, gate * v


class Dense(nn.Module):
    """Linear map of features: W s + b on scalars, W_v v (no bias) on ``v``.

    Attributes:
        features: F, output scalar channels.
        vector_features: V, output channels of ``v`` (used when ``v`` is given).
    """

    features: int
    vector_features: int = 0

    @nn.compact
    def __call__(self, x: Features) -> Features:
        s, v = x
        s = nn.Dense(self.features, name="scalar")(s)
        if v is not None:
            v = nn.Dense(self.vector_features, use_bias=False, name="vector")(v)
        return s, v


class ResidualBlock(nn.Module):
    """PhysNet's pre-activation residual block on the scalars (``F`` channels)."""

    features: int

    @nn.compact
    def __call__(self, s: jax.Array) -> jax.Array:
        """s: float32 (n, F) → same shape."""
        y = nn.Dense(self.features, name="dense_0")(ssp(s))
        y = nn.Dense(self.features, name="dense_1")(ssp(y))
        return s + y


class InteractionBlock(nn.Module):
    """PhysNet's interaction block (module docstring) over ``P`` atom pairs.

    Attributes:
        features: F.
        max_degree: L.
        vector_features: V (L ≥ 1).
        n_res_interaction: residual blocks applied to the message.
        radial_filter: ``"linear"``, G = W g (PhysNet); ``"mlp"``,
            G = W₂ σ(W₁ g) (module docstring).
    """

    features: int
    max_degree: int = 0
    vector_features: int = 16
    n_res_interaction: int = 2
    radial_filter: str = "linear"

    @nn.compact
    def __call__(
        self,
        x: Features,
        rbf: jax.Array,
        harmonics: jax.Array | None,
        dst_idx: jax.Array,
        src_idx: jax.Array,
    ) -> Features:
        """Args:
            x: atom features ``(s, v)``, (A, F) and (A, (L+1)² − 1, V) or ``None``.
            rbf: float32 (P, K) radial basis of each pair (zero on padding pairs).
            harmonics: float32 (P, (L+1)²) real spherical harmonics Y_lm(r̂_ij) of
                each pair's direction (``None`` for L = 0).
            dst_idx, src_idx: int32 (P,) receiving atom i, sending atom j.

        Returns:
            The updated features x', shaped as ``x``.
        """
        F, V = self.features, self.vector_features
        s, v = x
        xa = shifted_softplus(x)
        self_s, self_v = shifted_softplus(Dense(F, V, name="dense_i")(xa))
        h_s, h_v = shifted_softplus(Dense(F, V, name="dense_j")(xa))
        n_filters = F if v is None else F + 2 * V
        if self.radial_filter not in RADIAL_FILTERS:
            raise ValueError(
                f"radial_filter must be one of {RADIAL_FILTERS}, "
                f"got {self.radial_filter!r}"
            )
        basis = rbf
        if self.radial_filter == "mlp":
            basis = ssp(nn.Dense(F, use_bias=False, name="radial_hidden")(rbf))
        g = nn.Dense(
            n_filters, use_bias=False, kernel_init=nn.initializers.zeros, name="k2f"
        )(basis)
        num_atoms = s.shape[0]
        m_s = self_s + jax.ops.segment_sum(
            g[:, :F] * h_s[src_idx], dst_idx, num_segments=num_atoms
        )
        m_v = None
        if v is not None:
            to_scalar, m_v = self._equivariant_messages(
                h_s, h_v, g[:, F:], harmonics, dst_idx, src_idx, num_atoms
            )
            m_s = m_s + nn.Dense(F, use_bias=False, name="vector_to_scalar")(to_scalar)
            m_v = self_v + m_v
        for k in range(self.n_res_interaction):
            m_s = ResidualBlock(F, name=f"residual_{k}")(m_s)
        u_s = self.param("u", nn.initializers.ones, (F,))
        out_s, out_v = Dense(F, V, name="dense")(shifted_softplus((m_s, m_v)))
        if v is None:
            return u_s * s + out_s, None
        u_v = self.param("u_vector", nn.initializers.ones, (V,))
        return u_s * s + out_s, u_v * v + out_v

    def _equivariant_messages(
        self,
        h_s: jax.Array,
        h_v: jax.Array,
        g: jax.Array,
        harmonics: jax.Array,
        dst_idx: jax.Array,
        src_idx: jax.Array,
        num_atoms: int,
    ) -> tuple[jax.Array, jax.Array]:
        """The channel-wise sums over neighbours j of atom i.

        Returns:
            ``to_scalar`` float32 (A, L·V): Σ_j G_a(r_ij) ∘ (Y_l(r̂_ij) · v_j) per
            degree l; ``to_vector`` float32 (A, (L+1)² − 1, V):
            Σ_j G_b(r_ij) ∘ (Y_l(r̂_ij) s_j + v_j) (scalar channel c mod F for vector
            channel c).
        """
        V = self.vector_features
        g_a, g_b = g[:, :V], g[:, V:]
        v_j = h_v[src_idx]  # (P, C, V), C = (L+1)² − 1
        y = harmonics[:, 1:]  # (P, C)
        dots = [
            jnp.sum(
                y[:, ell**2 - 1 : (ell + 1) ** 2 - 1, None]
                * v_j[:, ell**2 - 1 : (ell + 1) ** 2 - 1, :],
                axis=1,
            )
            for ell in range(1, self.max_degree + 1)
        ]  # L × (P, V)
        to_scalar = jax.ops.segment_sum(
            jnp.concatenate([g_a * d for d in dots], axis=-1),
            dst_idx,
            num_segments=num_atoms,
        )
        s_j = h_s[:, np.arange(V) % h_s.shape[-1]][src_idx]  # (P, V)
        vector = g_b[:, None, :] * (y[:, :, None] * s_j[:, None, :] + v_j)
        to_vector = jax.ops.segment_sum(vector, dst_idx, num_segments=num_atoms)
        return to_scalar, to_vector


class OutputBlock(nn.Module):
    """PhysNet's output block: atomic outputs (A, ``n_out``) from the scalars.

    Attributes:
        features: F.
        n_out: outputs per atom (1: energy; 2: energy and charge).
        n_res_output: residual blocks before the linear map.
    """

    features: int
    n_out: int = 1
    n_res_output: int = 1

    @nn.compact
    def __call__(self, s: jax.Array) -> jax.Array:
        """s: float32 (A, F) scalar features → float32 (A, n_out), dimensionless."""
        for k in range(self.n_res_output):
            s = ResidualBlock(self.features, name=f"residual_{k}")(s)
        return nn.Dense(
            self.n_out, use_bias=False, kernel_init=nn.initializers.zeros, name="dense"
        )(ssp(s))
