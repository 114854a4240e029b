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
  in the reference code; its columns for ``v``, G_a and G_b, are not: ``v`` starts
  at zero, and a zero filter on a zero feature is a saddle no gradient leaves),
  ``n_res_interaction`` residual blocks on m, then the
  gated update x' = u ∘ x + W σ(m) + b (u initialised to ones). With
  ``radial_filter="mlp"`` (not in the paper) G = W₂ σ(W₁ g) instead, SchNet's
  filter network without biases: as σ(0) = 0, G still vanishes wherever the basis
  does (at and beyond the cutoff, and on padding pairs), so the energy stays
  smooth at the cutoff.
- :class:`OutputBlock`: ``n_res_output`` residual blocks, σ, a bias-free linear
  map to the atomic outputs (zero-initialised: an untrained model adds nothing).
- :class:`AngularDensity` (not in the paper; ``angular_degree`` λ ≥ 1): PhysNet's
  messages are sums over single neighbours (two-body in each interaction). This
  block adds SpookyNet's local interaction (Unke et al., Nat. Commun. 12, 7273
  (2021)) to the message: a learned neighbour density
  A_i,lm,c = (1/ν) Σ_j G_lc(r_ij) Y_lm(r̂_ij) h_j,c with h = W_h x̃ (C channels)
  and G = W_G g (bias-free, so it vanishes with the basis at the cutoff), and its
  invariants q_i = Σ_l Σ_m (P_l A_i,l)_m ∘ (Q_l A_i,l)_m for l = 0 … λ (P_l, Q_l
  bias-free C → F maps of the channels). By the addition theorem of e3x's
  Racah-normalised harmonics, Σ_m Y_lm(r̂_ij) Y_lm(r̂_ik) = P_l(cos θ_jik), so q
  is a sum over neighbour pairs j, k of Legendre polynomials of the angle at i:
  three-body terms at the cost of one pass over pairs. Q starts at zero (the
  block starts as the published PhysNet), P orthogonal, so that only one factor of
  the product is zero and every factor gets a gradient after the first step.
  ν = ``ANGULAR_NORMALISATION`` neighbours keeps A of order one. With
  ``max_degree`` ≥ 1 it only acts on the scalars. The harmonics are e3x's; the
  density and its contraction are written out on a plain (atoms, (λ+1)², C) array
  rather than e3x's ``Tensor``/``TensorDense`` on its parity-split layout, for the
  CPU cost given above (only the same-degree products are needed, and no
  pseudotensors).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Features = tuple[jax.Array, jax.Array | None]

_LOG2 = float(np.log(2.0))

#: ν of :class:`AngularDensity`: the neighbour count the density is divided by
#: (a typical count within 5 Å in molecules; the weights learn the rest).
ANGULAR_NORMALISATION = 10.0

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


class AngularDensity(nn.Module):
    """The angular invariants q of :class:`InteractionBlock` (module docstring):
    SpookyNet's local interaction on the scalars.

    Attributes:
        degree: λ ≥ 1, the largest degree of the density.
        features: C, its channels.
        out_features: F, the channels of q (the message's).
    """

    degree: int
    features: int
    out_features: int

    @nn.compact
    def __call__(
        self,
        s: jax.Array,
        rbf: jax.Array,
        harmonics: jax.Array,
        dst_idx: jax.Array,
        src_idx: jax.Array,
    ) -> jax.Array:
        """Args:
            s: float32 (A, F), the pre-activated scalars x̃.
            rbf: float32 (P, K), radial basis (zero on padding pairs and beyond
                the cutoff).
            harmonics: float32 (P, ≥ (λ+1)²), Y_lm(r̂_ij) in e3x's order.
            dst_idx, src_idx: int32 (P,).

        Returns:
            q: float32 (A, F), invariant under rotations, reflections and
            permutations of the neighbours; zero at initialisation (Q = 0).
        """
        lam, C, F = self.degree, self.features, self.out_features
        h = nn.Dense(C, use_bias=False, name="neighbour")(s)  # (A, C)
        w = nn.Dense((lam + 1) * C, use_bias=False, name="radial")(rbf)  # (P, (λ+1)C)
        weighted = w.reshape(-1, lam + 1, C) * h[src_idx][:, None, :]  # (P, λ+1, C)
        # one C → F map per degree, shared by its 2l+1 components (rotations
        # commute with it); Q starts at zero, P orthogonal (SpookyNet's choice)
        p_maps = self.param(
            "project_p", nn.initializers.orthogonal(), (lam + 1, C, F), jnp.float32
        )
        q_maps = self.param(
            "project_q", nn.initializers.zeros, (lam + 1, C, F), jnp.float32
        )
        q = jnp.zeros((s.shape[0], F), s.dtype)
        for ell in range(lam + 1):  # degree by degree: no gathers over (λ+1)²
            y = harmonics[:, ell**2 : (ell + 1) ** 2, None]  # (P, 2l+1, 1)
            density = (
                jax.ops.segment_sum(
                    y * weighted[:, ell, None, :], dst_idx, num_segments=s.shape[0]
                )
                / ANGULAR_NORMALISATION
            )  # (A, 2l+1, C)
            q = q + jnp.sum((density @ p_maps[ell]) * (density @ q_maps[ell]), axis=1)
        return q


def _filter_init(scalar_columns: int) -> nn.initializers.Initializer:
    """Initialiser of the filter map ``k2f``: zero for its first ``scalar_columns``
    columns (the scalar filter, zero-initialised as in PhysNet's reference code),
    LeCun-normal for the rest (the vector filters G_a, G_b). A vector filter
    multiplies features that start at zero (v) or a filter that would start at zero
    (G_a on v made by G_b), so a zero start would leave the whole equivariant path
    at a saddle that no gradient leaves."""
    lecun = nn.initializers.lecun_normal()

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        kernel = lecun(key, shape, dtype)
        return kernel.at[..., :scalar_columns].set(0.0)

    return init


class InteractionBlock(nn.Module):
    """PhysNet's interaction block (module docstring) over ``P`` atom pairs.

    The equivariant features ``v`` enter when given (not in the first module, where
    they would be zero) and leave when ``vector_output`` (not in the last module,
    whose ``v`` nothing reads): work that provably contributes nothing is not done,
    and no parameter of the block is without a gradient.

    Attributes:
        features: F.
        max_degree: L.
        vector_features: V (L ≥ 1).
        n_res_interaction: residual blocks applied to the message.
        radial_filter: ``"linear"``, G = W g (PhysNet); ``"mlp"``,
            G = W₂ σ(W₁ g) (module docstring).
        angular_degree: λ of :class:`AngularDensity` (0: none, as published).
        angular_features: C of :class:`AngularDensity`.
        vector_output: return updated ``v`` (L ≥ 1 and a later module reads it).
    """

    features: int
    max_degree: int = 0
    vector_features: int = 16
    n_res_interaction: int = 2
    radial_filter: str = "linear"
    angular_degree: int = 0
    angular_features: int = 16
    vector_output: bool = True

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
            x: atom features ``(s, v)``, (A, F) and (A, (L+1)² − 1, V), or ``v``
                ``None`` (L = 0, or the first module of L ≥ 1).
            rbf: float32 (P, K) radial basis of each pair (zero on padding pairs).
            harmonics: float32 (P, (max(L, λ)+1)²) real spherical harmonics
                Y_lm(r̂_ij) of each pair's direction (``None`` if L = λ = 0).
            dst_idx, src_idx: int32 (P,) receiving atom i, sending atom j.

        Returns:
            The updated features x': s (A, F) and, when ``vector_output`` and
            L ≥ 1, v (A, (L+1)² − 1, V), else ``None``.
        """
        F, V = self.features, self.vector_features
        s, v = x
        vector_in = v is not None
        vector_out = self.max_degree > 0 and self.vector_output
        xa = shifted_softplus(x)
        # the self message of v only feeds the update of v
        self_in = xa if vector_out else (xa[0], None)
        self_s, self_v = shifted_softplus(Dense(F, V, name="dense_i")(self_in))
        h_s, h_v = shifted_softplus(Dense(F, V, name="dense_j")(xa))
        n_filters = F + V * (int(vector_in) + int(vector_out))
        if self.radial_filter not in RADIAL_FILTERS:
            raise ValueError(
                f"radial_filter must be one of {RADIAL_FILTERS}, "
                f"got {self.radial_filter!r}"
            )
        basis = rbf
        if self.radial_filter == "mlp":
            basis = ssp(nn.Dense(F, use_bias=False, name="radial_hidden")(rbf))
        g = nn.Dense(
            n_filters, use_bias=False, kernel_init=_filter_init(F), name="k2f"
        )(basis)
        num_atoms = s.shape[0]
        m_s = self_s + jax.ops.segment_sum(
            g[:, :F] * h_s[src_idx], dst_idx, num_segments=num_atoms
        )
        m_v = None
        if vector_in or vector_out:
            to_scalar, to_vector = self._equivariant_messages(
                h_s, h_v, g[:, F:], harmonics, dst_idx, src_idx, num_atoms, vector_out
            )
            if to_scalar is not None:
                m_s = m_s + nn.Dense(F, use_bias=False, name="vector_to_scalar")(
                    to_scalar
                )
            if to_vector is not None:
                m_v = to_vector if self_v is None else self_v + to_vector
        if self.angular_degree > 0:
            m_s = m_s + AngularDensity(
                self.angular_degree, self.angular_features, F, name="angular"
            )(xa[0], rbf, harmonics, dst_idx, src_idx)
        for k in range(self.n_res_interaction):
            m_s = ResidualBlock(F, name=f"residual_{k}")(m_s)
        u_s = self.param("u", nn.initializers.ones, (F,))
        out_s, out_v = Dense(F, V, name="dense")(shifted_softplus((m_s, m_v)))
        if not vector_out:
            return u_s * s + out_s, None
        if not vector_in:
            return u_s * s + out_s, out_v
        u_v = self.param("u_vector", nn.initializers.ones, (V,))
        return u_s * s + out_s, u_v * v + out_v

    def _equivariant_messages(
        self,
        h_s: jax.Array,
        h_v: jax.Array | None,
        g: jax.Array,
        harmonics: jax.Array,
        dst_idx: jax.Array,
        src_idx: jax.Array,
        num_atoms: int,
        vector_out: bool,
    ) -> tuple[jax.Array | None, jax.Array | None]:
        """The channel-wise sums over neighbours j of atom i.

        Args:
            g: float32 (P, n·V), the vector filters: G_a (when ``h_v`` is given),
                then G_b (when ``vector_out``).

        Returns:
            ``to_scalar`` float32 (A, L·V): Σ_j G_a(r_ij) ∘ (Y_l(r̂_ij) · v_j) per
            degree l (``None`` without ``h_v``); ``to_vector`` float32
            (A, (L+1)² − 1, V): Σ_j G_b(r_ij) ∘ (Y_l(r̂_ij) s_j + v_j) (scalar
            channel c mod F for vector channel c; no v_j term without ``h_v``;
            ``None`` unless ``vector_out``).
        """
        V = self.vector_features
        y = harmonics[:, 1 : (self.max_degree + 1) ** 2]  # (P, C)
        to_scalar = to_vector = None
        columns = 0
        if h_v is not None:
            g_a = g[:, :V]
            columns = V
            v_j = h_v[src_idx]  # (P, C, V), C = (L+1)² − 1
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
        if vector_out:
            g_b = g[:, columns : columns + V]
            s_j = h_s[:, np.arange(V) % h_s.shape[-1]][src_idx]  # (P, V)
            vector = y[:, :, None] * s_j[:, None, :]
            if h_v is not None:
                vector = vector + v_j
            to_vector = jax.ops.segment_sum(
                g_b[:, None, :] * vector, dst_idx, num_segments=num_atoms
            )
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
