"""PhysNet's building blocks (Unke & Meuwly, JCTC 2019, Fig. 1), on e3x features.

Features are float32 ``(n, (L+1)², F)``: the spherical-harmonic components of
degrees 0 … L (L = ``max_degree``, e3x's component order, no pseudotensors) and
``F`` channels. With L = 0 they are PhysNet's invariant feature vectors and every
block below is exactly the paper's; with L ≥ 1 the same blocks also carry vector
(and higher) features: ``e3x.nn.Dense`` acts on each degree separately (bias on
scalars only) and the activation gates the higher degrees by a function of the
scalars, so equivariance holds by construction. (e3x's own layout has a parity
axis of size 1 before the components; XLA on CPU broadcasts over that layout about
ten times slower, so it is added only around ``e3x.nn.Dense``.)

σ is the shifted softplus σ(x) = ln(1 + eˣ) − ln 2 on the scalars; degrees
l ≥ 1 are multiplied by the gate sigmoid(x₀) of their channel's scalar (the
derivative of softplus; e3x's gated shifted softplus uses σ(x₀)/x₀ instead, which
needs a guarded division at x₀ = 0).

- :class:`ResidualBlock`:  x + W₂ σ(W₁ σ(x) + b₁) + b₂.
- :class:`InteractionBlock`: pre-activation x̃ = σ(x); message
  v_i = σ(W_I x̃_i + b_I) + Σ_j G(g(r_ij)) ∘ σ(W_J x̃_j + b_J) (self and neighbour
  weights apart, G a bias-free linear map of the radial basis, zero-initialised as
  in the reference code), ``n_res_interaction`` residual blocks on v, then the
  gated update x' = u ∘ x + W σ(v) + b (u initialised to ones).
- :class:`OutputBlock`: ``n_res_output`` residual blocks, σ, a bias-free linear
  map to the atomic outputs (zero-initialised: an untrained model adds nothing).

For L ≥ 1 the neighbour sum is not e3x's full ``MessagePass`` tensor product
(its cost grows with (L+1)⁴ per pair and made L = 1 twelve times slower than
L = 0); it keeps the channel-wise couplings (PaiNN's subset of the product):
scalars → degree l along Y_l(r̂_ij), degree l → degree l, and degree l → scalars
through Y_l(r̂_ij) · h_j, each weighted per channel and by a radial filter.
"""

from __future__ import annotations

import e3x
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_LOG2 = float(np.log(2.0))


def shifted_softplus(x: jax.Array) -> jax.Array:
    """σ of the module docstring on features (n, (L+1)², F) → same shape."""
    s = x[:, 0:1, :]
    activated = jax.nn.softplus(s) - _LOG2
    if x.shape[1] == 1:
        return activated
    return jnp.concatenate([activated, jax.nn.sigmoid(s) * x[:, 1:, :]], axis=1)


class Dense(nn.Module):
    """``e3x.nn.Dense`` on features (n, (L+1)², F_in) → (n, (L+1)², ``features``):
    one weight matrix per degree, a bias on the scalars only."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = e3x.nn.Dense(self.features, name="dense")(x[:, None, :, :])
        return y[:, 0, :, :]


def degree_of_components(max_degree: int) -> jax.Array:
    """int32 ((L+1)²,): the degree l of each spherical-harmonic component."""
    return jnp.asarray(
        [ell for ell in range(max_degree + 1) for _ in range(2 * ell + 1)], jnp.int32
    )


class ResidualBlock(nn.Module):
    """PhysNet's pre-activation residual block, ``F`` channels in and out."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: float32 (n, (L+1)², F) → same shape."""
        y = Dense(self.features, name="Dense_0")(shifted_softplus(x))
        y = Dense(self.features, name="Dense_1")(shifted_softplus(y))
        return x + y


class InteractionBlock(nn.Module):
    """PhysNet's interaction block (module docstring) over ``P`` atom pairs.

    Attributes:
        features: F.
        max_degree: L of the features.
        n_res_interaction: residual blocks applied to the message v.
    """

    features: int
    max_degree: int = 0
    n_res_interaction: int = 2

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        rbf: jax.Array,
        harmonics: jax.Array | None,
        dst_idx: jax.Array,
        src_idx: jax.Array,
    ) -> jax.Array:
        """Args:
            x: float32 (A, (L+1)², F) atom features.
            rbf: float32 (P, K) radial basis of each pair (zero on padding pairs).
            harmonics: float32 (P, (L+1)²) real spherical harmonics Y_lm(r̂_ij) of
                each pair's direction (``None`` for L = 0).
            dst_idx, src_idx: int32 (P,) receiving atom i, sending atom j.

        Returns:
            float32 (A, (L+1)², F), the updated features x'.
        """
        L, F = self.max_degree, self.features
        xa = shifted_softplus(x)
        self_part = shifted_softplus(Dense(F, name="dense_i")(xa))
        h = shifted_softplus(Dense(F, name="dense_j")(xa))
        h_src = h[src_idx]  # (P, (L+1)², F)
        n_filters = 1 if L == 0 else 2
        g = nn.Dense(
            n_filters * F, use_bias=False, kernel_init=nn.initializers.zeros, name="k2f"
        )(rbf)
        if L == 0:
            messages = g[:, None, :] * h_src
        else:
            messages = self._equivariant_messages(h_src, g, harmonics)
        neighbours = jax.ops.segment_sum(messages, dst_idx, num_segments=x.shape[0])
        v = self_part + neighbours
        for k in range(self.n_res_interaction):
            v = ResidualBlock(F, name=f"residual_{k}")(v)
        u = self.param("u", nn.initializers.ones, (L + 1, F))
        gate = u[degree_of_components(L)]  # ((L+1)², F), one gate per degree
        return gate * x + Dense(F, name="dense")(shifted_softplus(v))

    def _equivariant_messages(
        self, h_src: jax.Array, g: jax.Array, harmonics: jax.Array
    ) -> jax.Array:
        """Channel-wise messages (P, (L+1)², F) of the module docstring: filter
        ``g[:, :F]`` weights the message to the scalars, ``g[:, F:]`` the messages
        to the higher degrees."""
        L, F = self.max_degree, self.features
        init = nn.initializers.ones
        s = h_src[:, 0:1, :]  # (P, 1, F)
        to_scalar = s
        higher = []
        for ell in range(1, L + 1):
            sl = slice(ell**2, (ell + 1) ** 2)
            y = harmonics[:, sl, None]  # (P, 2l+1, 1)
            h_l = h_src[:, sl, :]  # (P, 2l+1, F)
            a = self.param(f"degree{ell}_to_scalar", init, (F,))
            b = self.param(f"scalar_to_degree{ell}", init, (F,))
            c = self.param(f"degree{ell}_to_degree{ell}", init, (F,))
            to_scalar = to_scalar + a * jnp.sum(y * h_l, axis=1, keepdims=True)
            higher.append(b * y * s + c * h_l)
        g_scalar = g[:, None, :F]
        g_higher = g[:, None, F:]
        return jnp.concatenate(
            [g_scalar * to_scalar, g_higher * jnp.concatenate(higher, axis=1)], axis=1
        )


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
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: float32 (A, (L+1)², F) → float32 (A, n_out), dimensionless."""
        # Only scalars reach the outputs (Dense keeps degrees apart, gates read the
        # scalars), so the higher degrees are dropped before the residual blocks.
        y = x[:, 0:1, :]
        for k in range(self.n_res_output):
            y = ResidualBlock(self.features, name=f"residual_{k}")(y)
        y = shifted_softplus(y)[:, 0, :]
        return nn.Dense(
            self.n_out, use_bias=False, kernel_init=nn.initializers.zeros, name="dense"
        )(y)
