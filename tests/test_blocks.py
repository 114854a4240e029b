"""PhysNet's components against independent numpy re-implementations of the paper's
equations: radial basis and cutoff, one whole module (interaction block with
pre-activation, W_I/W_J, gate u, residual blocks; output block; per-element scale
and shift), one degree-1 interaction block (first, middle and last module), the
angular invariants (SpookyNet's local interaction) against their three-body sum
over Legendre polynomials, and the non-hierarchicality penalty against a hand
computation."""

from __future__ import annotations

import dataclasses

import e3x
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from physpack.config import ConfigError, ModelConfig
from physpack.model.basis import (
    ExponentialRadialBasis,
    polynomial_cutoff,
    polynomial_switch,
)
from physpack.model.blocks import (
    ANGULAR_NORMALISATION,
    AngularDensity,
    InteractionBlock,
)
from physpack.model.physnet import (
    EnergyConstants,
    PhysNet,
    device_inputs,
    energy_and_forces,
    init_params,
    model_from_config,
    molecules_to_batch,
    nh_penalty,
    predict,
)
from scipy.spatial.transform import Rotation


def ssp(x: np.ndarray) -> np.ndarray:
    """Shifted softplus ln(1 + eˣ) − ln 2."""
    return np.logaddexp(0.0, x) - np.log(2.0)


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def softplus_inverse(y: np.ndarray) -> np.ndarray:
    return np.log(np.expm1(y))


def test_polynomial_cutoff_is_physnets_and_smooth():
    r = np.linspace(0.0, 6.0, 601)
    x = r / 5.0
    expected = np.where(x < 1, 1 - 6 * x**5 + 15 * x**4 - 10 * x**3, 0.0)
    np.testing.assert_allclose(
        polynomial_cutoff(jnp.asarray(r), 5.0), expected, atol=1e-5
    )
    d1 = jax.grad(lambda t: polynomial_cutoff(t, 5.0))
    d2 = jax.grad(d1)
    assert float(polynomial_cutoff(0.0, 5.0)) == 1.0
    for t in (4.999, 5.0, 5.5):
        assert abs(float(d1(t))) < 1e-4 and abs(float(d2(t))) < 2e-2
    s = polynomial_switch(jnp.asarray([0.5, 1.0, 1.5, 2.0, 2.5]), 1.0, 2.0)
    np.testing.assert_allclose(s, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_radial_basis_matches_the_paper():
    K, cutoff = 16, 5.0
    r = np.linspace(0.3, 6.0, 40).astype(np.float32)
    module = ExponentialRadialBasis(K, cutoff)
    params = module.init(jax.random.PRNGKey(0), jnp.asarray(r))
    g = np.asarray(module.apply(params, jnp.asarray(r)))
    mu = np.linspace(1.0, np.exp(-cutoff), K)
    beta = (2.0 / K * (1.0 - np.exp(-cutoff))) ** -2
    x = r / cutoff
    phi = np.where(x < 1, 1 - 6 * x**5 + 15 * x**4 - 10 * x**3, 0.0)
    expected = phi[:, None] * np.exp(-beta * (np.exp(-r)[:, None] - mu) ** 2)
    np.testing.assert_allclose(g, expected, atol=1e-5)
    assert np.all(g[r >= cutoff] == 0)


def _dense(p: dict, x: np.ndarray) -> np.ndarray:
    """A dense layer W·x + b of the parameters ``p`` (kernel, optional bias)."""
    return x @ np.asarray(p["kernel"]) + (np.asarray(p["bias"]) if "bias" in p else 0)


def _residual(p: dict, x: np.ndarray) -> np.ndarray:
    y = _dense(p["dense_0"], ssp(x))
    return x + _dense(p["dense_1"], ssp(y))


def _physnet_numpy(params: dict, cfg: ModelConfig, Z, R) -> np.ndarray:
    """Atomic energies of one molecule, PhysNet's equations written out in numpy."""
    n = len(Z)
    i, j = np.nonzero(~np.eye(n, dtype=bool))  # i receives from j
    r = np.linalg.norm(R[j] - R[i], axis=-1)
    rb = params["radial_basis"]
    mu0 = np.linspace(1.0, np.exp(-cfg.cutoff), cfg.num_basis_functions)
    beta0 = (2.0 / cfg.num_basis_functions * (1.0 - np.exp(-cfg.cutoff))) ** -2
    mu = softplus(softplus_inverse(mu0) + np.asarray(rb["centre_shifts"]))
    beta = softplus(softplus_inverse(beta0) + np.asarray(rb["width_shifts"]))
    x = r / cfg.cutoff
    phi = np.where(x < 1, 1 - 6 * x**5 + 15 * x**4 - 10 * x**3, 0.0)
    g = phi[:, None] * np.exp(-beta * (np.exp(-r)[:, None] - mu) ** 2)  # (P, K)
    feats = np.asarray(params["embedding"]["embedding"])[Z, 0, 0, :]  # (n, F)
    total = 0.0
    for m in range(cfg.num_iterations):
        p = params[f"interaction_{m}"]
        xa = ssp(feats)
        v = ssp(_dense(p["dense_i"]["scalar"], xa))
        hidden = g
        if cfg.radial_filter == "mlp":  # SchNet-style filter network, no biases
            hidden = ssp(hidden @ np.asarray(p["radial_hidden"]["kernel"]))
        filt = hidden @ np.asarray(p["k2f"]["kernel"])
        msg = filt * ssp(_dense(p["dense_j"]["scalar"], xa))[j]
        np.add.at(v, i, msg)
        for k in range(cfg.n_res_interaction):
            v = _residual(p[f"residual_{k}"], v)
        feats = np.asarray(p["u"]) * feats + _dense(p["dense"]["scalar"], ssp(v))
        for k in range(cfg.n_res):
            feats = _residual(params[f"atomic_residual_{m}_{k}"], feats)
        out = params[f"output_{m}"]
        y = feats
        for k in range(cfg.n_res_output):
            y = _residual(out[f"residual_{k}"], y)
        total = total + ssp(y) @ np.asarray(out["dense"]["kernel"])
    scale = np.asarray(params["element_scale"])[Z]
    shift = np.asarray(params["element_shift"])[Z]
    return (scale * total + shift)[:, 0]


def _randomised(model, batch, rng):
    """The model's parameters, each perturbed so that none is trivially 0 or 1."""
    params = init_params(model, jax.random.PRNGKey(0), batch)
    return jax.tree.map(
        lambda a: (np.asarray(a) + rng.normal(0.0, 0.5, a.shape)).astype(np.float32),
        params,
    )


#: A two-module invariant model small enough to write out in numpy.
SMALL = ModelConfig(
    features=6,
    max_degree=0,
    angular_degree=0,  # the published PhysNet
    num_iterations=2,
    num_basis_functions=5,
    cutoff=4.0,
    max_atomic_number=9,
    n_res=1,
    n_res_interaction=1,
    n_res_output=1,
)


@pytest.mark.parametrize("radial_filter", ["linear", "mlp"])
def test_invariant_model_is_physnet_as_published(radial_filter):
    """max_degree 0 = the paper's PhysNet: pre-activation, W_I/W_J, gate u,
    interaction and atomic residual blocks, output block, per-element scale and
    shift — every parameter randomised so that none of them is trivially 0 or 1.
    ``radial_filter: mlp`` changes only the filter G = W₂ σ(W₁ g)."""
    cfg = dataclasses.replace(SMALL, radial_filter=radial_filter)
    rng = np.random.default_rng(7)
    Z = np.array([6, 1, 8, 1, 7], np.int32)
    R = rng.uniform(-1.5, 1.5, (5, 3)).astype(np.float32)
    model = model_from_config(cfg)
    batch = molecules_to_batch([{"Z": Z, "R": R}], max_atoms=8, max_pairs=24)
    params = _randomised(model, batch, rng)
    out = model.apply(
        {"params": params},
        *(
            jnp.asarray(batch[k])
            for k in ("Z", "R", "dst_idx", "src_idx", "batch_segments")
        ),
        jnp.asarray(batch["atom_mask"]),
        jnp.asarray(batch["pair_mask"]),
        jnp.asarray(batch["Qtot"], jnp.float32),
    )
    expected = _physnet_numpy(params, cfg, Z, R.astype(np.float64))
    np.testing.assert_allclose(
        out["atomic_energies"][:5], expected, rtol=2e-4, atol=2e-5
    )
    assert np.all(np.asarray(out["atomic_energies"][5:]) == 0)  # padding atoms
    assert out["module_outputs"].shape == (2, 8, 1)


@pytest.mark.slow
def test_mlp_filter_vanishes_at_the_cutoff():
    """With the MLP filter a pair at or beyond the cutoff still adds nothing, and
    the force between two atoms goes to zero as they reach it (no step in E)."""
    model = model_from_config(dataclasses.replace(SMALL, radial_filter="mlp"))
    constants = EnergyConstants(np.zeros(10), 1.0, (6, 8))

    def dimer(d: float) -> dict:
        R = np.array([[0.0, 0.0, 0.0], [d, 0.0, 0.0]], np.float32)
        return molecules_to_batch([{"Z": np.array([6, 8], np.int32), "R": R}])

    params = _randomised(model, dimer(1.2), np.random.default_rng(3))
    atoms = molecules_to_batch(
        [
            {"Z": np.array([z], np.int32), "R": np.zeros((1, 3), np.float32)}
            for z in (6, 8)
        ]
    )
    apart = predict(params, atoms, model, constants)["energy"][:2].sum()
    near = predict(params, dimer(1.2), model, constants)
    assert abs(near["energy"][0] - apart) > 1e-3  # the filter is on
    for d in (4.0, 4.5, 6.0):
        at = predict(params, dimer(d), model, constants)
        assert at["energy"][0] == pytest.approx(apart, abs=1e-5)
    inside = predict(params, dimer(3.999), model, constants)
    assert inside["energy"][0] == pytest.approx(apart, abs=1e-5)
    assert np.abs(inside["forces"]).max() < 1e-3


def test_nh_penalty_by_hand():
    # two real atoms, one padding atom; three modules; energy and charge channels
    y = np.zeros((3, 3, 2), np.float32)
    y[:, 0, 0] = [2.0, 1.0, 1.0]  # ratios 1/(1+4) = 0.2, 1/(1+1) = 0.5
    y[:, 0, 1] = [0.0, 0.0, 3.0]  # ratios 0 (0/0 guarded by ε), 9/9 = 1
    y[:, 1, 0] = [1.0, 3.0, 0.0]  # ratios 9/10 = 0.9, 0
    y[:, 1, 1] = [1.0, 1.0, 1.0]  # ratios 0.5, 0.5
    y[:, 2, :] = 5.0  # padding: ignored
    mask = np.array([True, True, False])
    hand = (0.2 + 0.5 + 0.0 + 1.0 + 0.9 + 0.0 + 0.5 + 0.5) / (2 * 2)
    assert float(nh_penalty(jnp.asarray(y), jnp.asarray(mask))) == pytest.approx(
        hand, rel=1e-5
    )
    # a global atom count divides the same sum
    assert float(
        nh_penalty(jnp.asarray(y), jnp.asarray(mask), normalizer=4.0)
    ) == pytest.approx(hand / 2, rel=1e-5)
    # hierarchical outputs (each module 10× smaller) give a small penalty
    decaying = np.stack([np.full((3, 2), 10.0**-m, np.float32) for m in range(3)])
    assert float(nh_penalty(jnp.asarray(decaying), jnp.asarray(mask))) < 0.03


@pytest.mark.slow
def test_degree_two_features_keep_the_energy_invariant_and_reach_it():
    cfg = ModelConfig(
        features=8,
        max_degree=2,
        vector_features=4,
        num_iterations=2,
        num_basis_functions=6,
        cutoff=4.0,
        max_atomic_number=9,
        n_res=1,
        n_res_interaction=1,
    )
    rng = np.random.default_rng(0)
    Z = np.array([6, 1, 8, 7, 1, 1], np.int32)
    R = rng.uniform(-1.5, 1.5, (6, 3)).astype(np.float32)
    model = model_from_config(cfg)
    batch = molecules_to_batch([{"Z": Z, "R": R}])
    params = _randomised(model, batch, rng)
    constants = EnergyConstants(np.zeros(10), 1.0, (1, 6, 7, 8))
    rot = Rotation.random(random_state=3).as_matrix()
    turned = molecules_to_batch([{"Z": Z, "R": (R @ rot.T).astype(np.float32)}])
    a = predict(params, batch, model, constants)
    b = predict(params, turned, model, constants)
    assert np.abs(a["forces"]).max() > 1.0
    assert b["energy"][0] == pytest.approx(a["energy"][0], abs=1e-3)
    np.testing.assert_allclose(b["forces"][:6], a["forces"][:6] @ rot.T, atol=1e-3)

    def energy(p):
        out = energy_and_forces(p, model, device_inputs(batch), jnp.float32(1.0))
        return jnp.sum(out["energy_residual"])

    kernel = jax.grad(energy)(params)["interaction_1"]["vector_to_scalar"]["kernel"]
    per_degree = np.abs(np.asarray(kernel)).reshape(2, 4, -1).max(axis=(1, 2))
    assert np.all(per_degree > 1e-3)  # degree 1 and degree 2 both reach the energy


@pytest.mark.parametrize(
    "vector_in, vector_out",
    [(True, True), (False, True), (True, False)],
    ids=["middle", "first", "last"],
)
def test_degree_one_interaction_block_matches_numpy(vector_in, vector_out):
    """One degree-1 interaction block against its equations written out in numpy:
    the gates sigmoid(s_c) of the vector channels, the pair messages between
    scalars and vectors, the residual block and the gated update of both. The
    first module gets no v (it would be zero) and the last returns none (nothing
    reads it): their blocks have only the filters and maps they use."""
    F, V, K, n = 5, 3, 4, 4
    rng = np.random.default_rng(11)
    i, j = np.nonzero(~np.eye(n, dtype=bool))  # i receives from j
    d = rng.normal(size=(len(i), 3))
    unit = d / np.linalg.norm(d, axis=-1, keepdims=True)
    harmonics = np.asarray(
        e3x.so3.spherical_harmonics(jnp.asarray(unit), 1, r_is_normalized=True)
    )
    s = rng.normal(size=(n, F)).astype(np.float32)
    v = rng.normal(size=(n, 3, V)).astype(np.float32) if vector_in else None
    rbf = rng.uniform(size=(len(i), K)).astype(np.float32)
    block = InteractionBlock(F, 1, V, n_res_interaction=1, vector_output=vector_out)
    args = (jnp.asarray(rbf), jnp.asarray(harmonics), jnp.asarray(i), jnp.asarray(j))
    x = (jnp.asarray(s), None if v is None else jnp.asarray(v))
    params = block.init(jax.random.PRNGKey(0), x, *args)["params"]
    assert ("vector_to_scalar" in params) == vector_in
    assert ("u_vector" in params) == (vector_in and vector_out)
    assert ("vector" in params["dense"]) == vector_out
    assert ("vector" in params["dense_i"]) == (vector_in and vector_out)
    params = jax.tree.map(
        lambda a: (np.asarray(a) + rng.normal(0.0, 0.5, a.shape)).astype(np.float32),
        params,
    )
    out_s, out_v = block.apply({"params": params}, x, *args)

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    c = np.arange(V) % F  # vector channel c is gated by scalar channel c mod F

    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    def act(x_s, x_v):
        return ssp(x_s), None if x_v is None else sigmoid(x_s[:, None, c]) * x_v

    def dense(q, x_s, x_v):
        return _dense(q["scalar"], x_s), (
            None if x_v is None else x_v @ q["vector"]["kernel"]
        )

    a_s, a_v = act(s, v)
    self_s, self_v = act(*dense(p["dense_i"], a_s, a_v if vector_out else None))
    h_s, h_v = act(*dense(p["dense_j"], a_s, a_v))
    g = rbf @ p["k2f"]["kernel"]  # (P, F + V·(in + out))
    assert g.shape[1] == F + V * (int(vector_in) + int(vector_out))
    m_s = self_s.copy()
    np.add.at(m_s, i, g[:, :F] * h_s[j])
    y = harmonics[:, 1:]  # (P, 3)
    column = F
    if vector_in:
        dots = np.einsum("pc,pcv->pv", y, h_v[j])
        to_scalar = np.zeros((n, V))
        np.add.at(to_scalar, i, g[:, F : F + V] * dots)
        m_s += to_scalar @ p["vector_to_scalar"]["kernel"]
        column += V
    m_v = None
    if vector_out:
        m_v = self_v.copy() if vector_in else np.zeros((n, 3, V))
        vec = y[:, :, None] * h_s[:, c][j][:, None, :]
        if vector_in:
            vec = vec + h_v[j]
        np.add.at(m_v, i, g[:, None, column : column + V] * vec)
    m_s = _residual(p["residual_0"], m_s)
    upd_s, upd_v = dense(p["dense"], *act(m_s, m_v))
    np.testing.assert_allclose(out_s, p["u"] * s + upd_s, rtol=2e-4, atol=2e-4)
    if not vector_out:
        assert out_v is None
    elif vector_in:
        np.testing.assert_allclose(
            out_v, p["u_vector"] * v + upd_v, rtol=2e-4, atol=2e-4
        )
    else:
        np.testing.assert_allclose(out_v, upd_v, rtol=2e-4, atol=2e-4)


def test_unknown_radial_filter_is_refused():
    """A misspelt filter through the Python API must not silently give PhysNet's."""
    model = model_from_config(dataclasses.replace(SMALL, radial_filter="MLP"))
    batch = molecules_to_batch(
        [{"Z": np.array([6, 8], np.int32), "R": np.eye(2, 3, dtype=np.float32)}]
    )
    with pytest.raises(ValueError, match="radial_filter must be one of"):
        init_params(model, jax.random.PRNGKey(0), batch)


def test_angular_density_is_a_sum_of_legendre_polynomials_of_neighbour_angles():
    """AngularDensity against the three-body sum it stands for, written with
    Legendre polynomials and no spherical harmonics (the addition theorem of e3x's
    Racah-normalised harmonics):
    q_i,f = ν⁻² Σ_l Σ_c,c' P_l,cf Q_l,c'f Σ_j Σ_k G_lc(r_ij) h_jc G_lc'(r_ik) h_kc'
    P_l(cos θ_jik)."""
    lam, C, F, K, n = 2, 3, 4, 5, 5
    rng = np.random.default_rng(5)
    i, j = np.nonzero(~np.eye(n, dtype=bool))  # i receives from j
    R = rng.normal(size=(n, 3))
    d = R[j] - R[i]
    unit = d / np.linalg.norm(d, axis=-1, keepdims=True)
    harmonics = np.asarray(
        e3x.so3.spherical_harmonics(jnp.asarray(unit), lam, r_is_normalized=True)
    )
    s = rng.normal(size=(n, F)).astype(np.float32)
    rbf = rng.uniform(size=(len(i), K)).astype(np.float32)
    block = AngularDensity(lam, C, F)
    args = (jnp.asarray(rbf), jnp.asarray(harmonics), jnp.asarray(i), jnp.asarray(j))
    params = block.init(jax.random.PRNGKey(1), jnp.asarray(s), *args)["params"]
    assert not np.any(np.asarray(params["project_q"]))  # Q starts at zero
    params = jax.tree.map(
        lambda a: (np.asarray(a) + rng.normal(0.0, 0.5, a.shape)).astype(np.float32),
        params,
    )
    q = np.asarray(block.apply({"params": params}, jnp.asarray(s), *args))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = s @ p["neighbour"]["kernel"]  # (n, C)
    w = (rbf @ p["radial"]["kernel"]).reshape(-1, lam + 1, C)  # (P, λ+1, C)
    expected = np.zeros((n, F))
    for a in range(n):
        mine = np.nonzero(i == a)[0]
        cos = np.clip(unit[mine] @ unit[mine].T, -1.0, 1.0)  # (n_j, n_k)
        for ell in range(lam + 1):
            legendre = np.polynomial.legendre.Legendre.basis(ell)(cos)
            weighted = w[mine, ell, :] * h[j[mine]]  # (n_j, C)
            pair = np.einsum("jc,jk,kd->cd", weighted, legendre, weighted)  # (C, C)
            expected[a] += np.einsum(
                "cf,cd,df->f", p["project_p"][ell], pair, p["project_q"][ell]
            )
    expected /= ANGULAR_NORMALISATION**2
    assert q.shape == (n, F)
    np.testing.assert_allclose(
        q, expected, rtol=2e-4, atol=1e-5 * np.abs(expected).max()
    )


ANGULAR = dataclasses.replace(
    SMALL, angular_degree=2, angular_features=3, angular_interactions=2
)


def test_angular_interactions_chooses_which_interactions_add_the_density():
    """angular_interactions=1: only the first interaction has the angular density;
    more than num_iterations is refused in the config and in the Python API."""
    batch = molecules_to_batch(
        [{"Z": np.array([6, 8, 1], np.int32), "R": np.eye(3, dtype=np.float32)}]
    )
    first = dataclasses.replace(ANGULAR, angular_interactions=1)
    params = init_params(model_from_config(first), jax.random.PRNGKey(0), batch)
    assert "angular" in params["interaction_0"]
    assert not any("angular" in name for name in params["interaction_1"])
    with pytest.raises(ConfigError, match="model.angular_interactions .3. exceeds"):
        dataclasses.replace(ANGULAR, angular_interactions=3)
    too_many = PhysNet(num_iterations=2, angular_degree=1, angular_interactions=3)
    with pytest.raises(ValueError, match="angular_interactions must be between"):
        init_params(too_many, jax.random.PRNGKey(0), batch)


@pytest.mark.slow
def test_angular_model_starts_as_published_and_then_differs():
    """Q is zero-initialised: an untrained angular model is the paper's PhysNet on
    the same parameters; once Q is not zero, the energy changes."""
    rng = np.random.default_rng(9)
    Z = np.array([6, 1, 8, 1, 7], np.int32)
    R = rng.uniform(-1.5, 1.5, (5, 3)).astype(np.float32)
    model = model_from_config(ANGULAR)
    batch = molecules_to_batch([{"Z": Z, "R": R}])
    params = _randomised(model, batch, rng)
    for m in range(ANGULAR.num_iterations):
        params[f"interaction_{m}"]["angular"]["project_q"] *= 0.0
    constants = EnergyConstants(np.zeros(10), 1.0, (1, 6, 7, 8))
    published = _physnet_numpy(params, SMALL, Z, R.astype(np.float64))
    start = predict(params, batch, model, constants)["energy_residual"][0]
    assert start == pytest.approx(published.sum(), rel=2e-4, abs=2e-4)
    for m in range(ANGULAR.num_iterations):
        q = params[f"interaction_{m}"]["angular"]["project_q"]
        params[f"interaction_{m}"]["angular"]["project_q"] = rng.normal(
            0.0, 0.5, q.shape
        ).astype(np.float32)
    trained = predict(params, batch, model, constants)["energy_residual"][0]
    assert abs(trained - start) > 1e-3


@pytest.mark.slow
def test_angular_model_is_invariant_and_smooth_at_the_cutoff():
    """Energy invariant and forces equivariant under a rotation with reflection;
    a third atom crossing the cutoff leaves energy and forces continuous."""
    rng = np.random.default_rng(2)
    model = model_from_config(ANGULAR)
    constants = EnergyConstants(np.zeros(10), 1.0, (1, 6, 8))
    Z = np.array([6, 1, 8, 1, 1], np.int32)
    R = rng.uniform(-1.2, 1.2, (5, 3)).astype(np.float32)
    batch = molecules_to_batch([{"Z": Z, "R": R}])
    params = _randomised(model, batch, rng)
    flip = Rotation.random(random_state=4).as_matrix() @ np.diag([1.0, 1.0, -1.0])
    mirrored = molecules_to_batch([{"Z": Z, "R": (R @ flip.T).astype(np.float32)}])
    a = predict(params, batch, model, constants)
    b = predict(params, mirrored, model, constants)
    assert np.abs(a["forces"]).max() > 0.02
    assert b["energy"][0] == pytest.approx(a["energy"][0], abs=1e-4)
    np.testing.assert_allclose(b["forces"][:5], a["forces"][:5] @ flip.T, atol=1e-4)

    def trimer(x: float) -> dict:
        # a C–O pair at 1.2 Å and an H on the axis, x Å from the carbon
        R = np.array([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [-x, 0.0, 0.0]], np.float32)
        return molecules_to_batch([{"Z": np.array([6, 8, 1], np.int32), "R": R}])

    dimer = molecules_to_batch(
        [{"Z": np.array([6, 8], np.int32), "R": np.array([[0, 0, 0], [1.2, 0, 0]])}]
    )
    pair = predict(params, dimer, model, constants)["energy"][0]
    lone_h = molecules_to_batch([{"Z": np.array([1]), "R": np.zeros((1, 3))}])
    apart = pair + predict(params, lone_h, model, constants)["energy"][0]
    near = predict(params, trimer(1.5), model, constants)["energy"][0]
    assert abs(near - apart) > 1e-3  # the third atom is felt inside the cutoff
    inside = predict(params, trimer(3.999), model, constants)
    beyond = predict(params, trimer(4.5), model, constants)
    assert inside["energy"][0] == pytest.approx(apart, abs=1e-4)
    assert beyond["energy"][0] == pytest.approx(apart, abs=1e-5)
    assert np.abs(inside["forces"][2]).max() < 1e-3


def test_equivariant_features_need_a_second_interaction():
    """With one interaction the vector features it would make are never read: a
    max_degree that silently does nothing is refused, in the config and the API."""
    with pytest.raises(ConfigError, match="needs model.num_iterations >= 2"):
        dataclasses.replace(SMALL, max_degree=1, num_iterations=1)
    batch = molecules_to_batch(
        [{"Z": np.array([6, 8], np.int32), "R": np.eye(2, 3, dtype=np.float32)}]
    )
    with pytest.raises(ValueError, match="needs num_iterations >= 2"):
        init_params(
            PhysNet(max_degree=1, num_iterations=1), jax.random.PRNGKey(0), batch
        )


@pytest.mark.parametrize("name", ["bessel", "bernstein"])
def test_fixed_radial_bases_are_e3x_bases_under_the_cutoff(name):
    """bessel: sin(kπr/r_c)/(kπr/r_c); bernstein: C(K−1, k) x^k (1 − x)^(K−1−k)
    of x = exp(−r); both times φ(r), zero with vanishing slope at the cutoff."""
    from math import comb

    from physpack.model.basis import fixed_radial_basis

    K, cutoff = 6, 4.0
    r = np.linspace(0.3, 5.0, 200)
    got = np.asarray(fixed_radial_basis(name, jnp.asarray(r), K, cutoff))
    phi = np.asarray(polynomial_cutoff(jnp.asarray(r), cutoff))
    if name == "bessel":
        x = np.arange(1, K + 1) * np.pi * r[:, None] / cutoff
        expected = np.sin(x) / x
    else:
        x = np.exp(-r)[:, None]
        k = np.arange(K)
        expected = np.array([comb(K - 1, i) for i in k]) * x**k * (1 - x) ** (K - 1 - k)
        expected = expected[:, ::-1]  # e3x orders them from short to long range
    np.testing.assert_allclose(got, phi[:, None] * expected, rtol=1e-4, atol=1e-6)
    assert np.all(got[r >= cutoff] == 0.0)
    slope = jax.vmap(
        jax.jacfwd(lambda x: fixed_radial_basis(name, x[None], K, cutoff)[0])
    )(jnp.asarray([cutoff - 1e-4]))
    assert np.abs(np.asarray(slope)).max() < 1e-3
    with pytest.raises(ValueError, match="radial_basis must be one of"):
        fixed_radial_basis("gaussian", jnp.asarray(r), K, cutoff)
