"""PhysNet (Unke & Meuwly, JCTC 2019) on packed batches, in flax with e3x helpers.

With ``max_degree: 0``, ``angular_degree: 0`` and ``n_res: 2``,
``n_res_interaction: 2`` this is the published PhysNet (the shipped default adds
the angular block below and has one residual block where the paper has two):
atomic numbers are embedded;
``num_iterations`` modules follow, each an interaction block (pre-activation,
separate self and neighbour weights, a radial-basis filter, ``n_res_interaction``
residual blocks on the message, the gated update u ∘ x + W σ(v)), then
``n_res`` atomic residual blocks, then an output block (``n_res_output``
residual blocks) giving each atom's energy (and charge) contribution y_i^m of
module m. Activations are shifted softplus, distances enter through PhysNet's
exponential radial basis with its polynomial cutoff (:mod:`physpack.model.basis`;
``radial_basis`` also offers e3x's Bessel and Bernstein bases under that cutoff),
and the module outputs are summed, then scaled and shifted per element:
e_i = s[Z_i] Σ_m y_i^m + b[Z_i] (the same for charges). The blocks are in
:mod:`physpack.model.blocks`; ``max_degree ≥ 1`` extends the same blocks with
``vector_features`` equivariant channels of degrees 1 … L that exchange information
with the scalars in every interaction (physnetjax's ``EF`` extends PhysNet in the
same direction, with e3x's full tensor products). ``angular_degree`` λ ≥ 1 adds to
the message of the first ``angular_interactions`` interactions the power spectrum of
a neighbour density of degrees 0 … λ (three-body angular information, as in ACE and
MACE; not in the paper).

Optional physical terms: ZBL repulsion at very short range
(:mod:`physpack.model.zbl`) and, with ``charges``, charges constrained to the total
charge, PhysNet's shielded Coulomb energy and the dipole moment about
``dipole_origin`` (:mod:`physpack.model.electrostatics`).

Energies are split so that float32 on the device only sees small numbers::

    E_mol = Σ_i ref[Z_i]  +  scale · Σ_i e_i  +  E_coulomb + E_zbl
            ^^^^^^^^^^^^     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
            float64, host    "residual", float32, device

``ref`` (per-element reference energies, eV) and ``scale`` (eV) are
:class:`EnergyConstants`, fitted on the training split and stored in the
checkpoint. Forces are −∂E/∂R of the residual (the reference does not depend on
positions). :func:`nh_penalty` is PhysNet's non-hierarchicality loss term on the
per-module outputs that :func:`energy_and_forces` returns.

Batches follow the loader's packed contract (``physpack.data.loader``): per-atom arrays
of length ``A``, pair arrays of length ``P`` and per-molecule arrays of length
``M``, with atom slot ``A-1`` and molecule slot ``M-1`` always padding; padding
pairs point at atom ``A-1``. :func:`molecules_to_batch` builds such a batch from
molecules in memory (for the ASE calculator and tests).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import e3x
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from physpack.config import ModelConfig
from physpack.errors import InputError
from physpack.model.basis import ExponentialRadialBasis, fixed_radial_basis
from physpack.model.blocks import InteractionBlock, OutputBlock, ResidualBlock
from physpack.model.electrostatics import (
    COULOMB_EV_ANGSTROM,
    DipoleOrigin,
    constrained_charges,
    coulomb_pair_energy,
    dipole_moment,
)
from physpack.model.geometry import check_batch_coincident_atoms
from physpack.model.zbl import ZBLRepulsion
from physpack.reference import EnergyConstants

__all__ = [
    "COULOMB_EV_ANGSTROM",
    "EF",
    "MODEL_INPUTS",
    "EnergyConstants",
    "Params",
    "PhysNet",
    "device_inputs",
    "energy_and_forces",
    "init_params",
    "model_from_config",
    "molecules_to_batch",
    "nh_penalty",
    "predict",
]

#: Batch keys the model reads, with the device dtype of each.
MODEL_INPUTS: dict[str, Any] = {
    "Z": jnp.int32,
    "R": jnp.float32,
    "dst_idx": jnp.int32,
    "src_idx": jnp.int32,
    "batch_segments": jnp.int32,
    "atom_mask": jnp.bool_,
    "pair_mask": jnp.bool_,
    "Qtot": jnp.float32,
}

Params = Any  # a pytree of float32 arrays (flax ``params`` collection)


def _uniform_embedding(key: jax.Array, shape: Sequence[int], dtype: Any) -> jax.Array:
    # PhysNet's embedding initialisation: U(−√3, √3), unit variance per channel.
    return jax.random.uniform(key, shape, dtype, -np.sqrt(3.0), np.sqrt(3.0))


#: the model section's defaults (workflow/schemas/config.schema.yaml)
_DEFAULTS = ModelConfig()


class PhysNet(nn.Module):
    """PhysNet on a packed batch of ``M`` molecule slots, ``A`` atoms, ``P`` pairs.

    Attributes mirror :class:`physpack.config.ModelConfig` (cutoff in Å), and so do
    their defaults, which are the schema's.

    ``__call__`` returns a dict:
        ``atomic_energies``: float32 (A,), dimensionless network energies e_i
        (zero on padding atoms); the caller multiplies by the energy scale.
        ``module_outputs``: float32 (num_iterations, A, n_out), each module's
        contribution y_i^m (n_out = 2 with charges: energy, charge), before the
        per-element scale and shift; zero on padding atoms.
        ``physical_energy``: float32 (M,) eV, Coulomb + ZBL energy per molecule
        (zeros when both are off).
        ``charges``: float32 (A,) e, summing to ``total_charge`` per molecule
        (only with ``charges``).
        ``dipole``: float32 (M, 3) e·Å, Σ q_i (r_i − r_0) about ``dipole_origin``
        (only with ``charges``).
    """

    # the schema's defaults, through ModelConfig: written nowhere else
    features: int = _DEFAULTS.features
    max_degree: int = _DEFAULTS.max_degree
    num_iterations: int = _DEFAULTS.num_iterations
    num_basis_functions: int = _DEFAULTS.num_basis_functions
    radial_basis: str = _DEFAULTS.radial_basis
    cutoff: float = _DEFAULTS.cutoff
    max_atomic_number: int = _DEFAULTS.max_atomic_number
    n_res: int = _DEFAULTS.n_res
    n_res_interaction: int = _DEFAULTS.n_res_interaction
    n_res_output: int = _DEFAULTS.n_res_output
    vector_features: int = _DEFAULTS.vector_features
    radial_filter: str = _DEFAULTS.radial_filter
    angular_degree: int = _DEFAULTS.angular_degree
    angular_features: int = _DEFAULTS.angular_features
    angular_interactions: int = _DEFAULTS.angular_interactions
    zbl: bool = _DEFAULTS.zbl
    charges: bool = _DEFAULTS.charges
    dipole_origin: DipoleOrigin = _DEFAULTS.dipole_origin

    @nn.compact
    def __call__(
        self,
        atomic_numbers: jax.Array,
        positions: jax.Array,
        dst_idx: jax.Array,
        src_idx: jax.Array,
        batch_segments: jax.Array,
        atom_mask: jax.Array,
        pair_mask: jax.Array,
        total_charge: jax.Array,
    ) -> dict[str, jax.Array]:
        """Args: atomic_numbers int32 (A,); positions float32 (A, 3) Å; dst_idx,
        src_idx int32 (P,); batch_segments int32 (A,) molecule slot of each atom;
        atom_mask bool (A,); pair_mask bool (P,); total_charge float32 (M,) e."""
        # The pieces below are plain methods run inside this compact scope: the
        # submodules and parameters they create keep the names (and so the
        # parameter tree) they would have if written here.
        self._check_settings()
        num_molecules = total_charge.shape[0]
        atom_w = atom_mask.astype(positions.dtype)
        pair_w = pair_mask.astype(positions.dtype)
        distances, rbf, harmonics = self._pair_basis(
            positions, dst_idx, src_idx, pair_mask
        )
        stacked = self._module_outputs(
            atomic_numbers, rbf, harmonics, dst_idx, src_idx, atom_w
        )
        outputs = self._element_scale_shift(atomic_numbers, stacked, atom_w)
        result: dict[str, jax.Array] = {
            "atomic_energies": outputs[:, 0],
            "module_outputs": stacked,
        }

        pair_energy = jnp.zeros_like(distances)
        if self.charges:
            charges, dipole, coulomb = self._electrostatics(
                outputs[:, 1],
                total_charge,
                positions,
                atomic_numbers,
                distances,
                dst_idx,
                src_idx,
                batch_segments,
                atom_mask,
            )
            pair_energy = pair_energy + coulomb
            result["charges"] = charges
            result["dipole"] = dipole
        if self.zbl:
            pair_energy = pair_energy + ZBLRepulsion(
                self.max_atomic_number, name="zbl"
            )(atomic_numbers[dst_idx], atomic_numbers[src_idx], distances, pair_mask)
        atom_physical = jax.ops.segment_sum(
            pair_energy * pair_w, dst_idx, atomic_numbers.shape[0]
        )
        result["physical_energy"] = jax.ops.segment_sum(
            atom_physical, batch_segments, num_molecules
        )
        return result

    def _check_settings(self) -> None:
        """Refuse attribute combinations the model cannot run (ValueError)."""
        if self.angular_degree > 0 and not (
            1 <= self.angular_interactions <= self.num_iterations
        ):
            raise ValueError(
                "angular_interactions must be between 1 and num_iterations "
                f"({self.num_iterations}), got {self.angular_interactions}"
            )
        if self.max_degree > 0 and self.num_iterations < 2:
            raise ValueError(
                f"max_degree {self.max_degree} needs num_iterations >= 2 (the "
                "equivariant features one interaction makes are read by the next), "
                f"got {self.num_iterations}"
            )

    def _pair_basis(
        self,
        positions: jax.Array,
        dst_idx: jax.Array,
        src_idx: jax.Array,
        pair_mask: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """The pairs' distances float32 (P,) Å (1 on padding), radial basis
        (P, num_basis_functions) (zero on padding) and spherical harmonics of the
        pair directions ((P, (L+1)², L the larger of max_degree and
        angular_degree), or None when both are 0)."""
        # Padding pairs join atom A-1 to itself: a zero displacement, whose norm has
        # an infinite derivative. Replace it before any norm (first where) and zero
        # everything derived from it (second where / masks), so that gradients of
        # padding stay exactly zero instead of 0·inf = NaN.
        r_src = e3x.ops.gather_src(positions, src_idx=src_idx)
        r_dst = e3x.ops.gather_dst(positions, dst_idx=dst_idx)
        unit_x = jnp.array([1.0, 0.0, 0.0], positions.dtype)
        safe = jnp.where(pair_mask[:, None], r_src - r_dst, unit_x)  # (P, 3) Å
        distances = jnp.sqrt(jnp.sum(safe**2, axis=-1))  # (P,) Å, 1 on padding
        if self.radial_basis == "exponential":
            rbf = ExponentialRadialBasis(
                self.num_basis_functions, self.cutoff, name="radial_basis"
            )(distances)
        else:
            rbf = fixed_radial_basis(
                self.radial_basis, distances, self.num_basis_functions, self.cutoff
            )
        rbf = rbf * pair_mask.astype(positions.dtype)[:, None]
        harmonics = None
        harmonics_degree = max(self.max_degree, self.angular_degree)
        if harmonics_degree > 0:
            harmonics = e3x.so3.spherical_harmonics(
                safe / distances[:, None], harmonics_degree, r_is_normalized=True
            )
        return distances, rbf, harmonics

    def _module_outputs(
        self,
        atomic_numbers: jax.Array,
        rbf: jax.Array,
        harmonics: jax.Array | None,
        dst_idx: jax.Array,
        src_idx: jax.Array,
        atom_w: jax.Array,
    ) -> jax.Array:
        """The embedding and the ``num_iterations`` modules (interaction, atomic
        residual blocks, output block): each module's outputs y_i^m, float32
        (num_iterations, A, n_out), zero on padding atoms (``atom_w`` 0)."""
        s = e3x.nn.Embed(
            self.max_atomic_number + 1,
            self.features,
            embedding_init=_uniform_embedding,
            name="embedding",
        )(atomic_numbers)[:, 0, 0, :]  # (A, F)
        # equivariant features start at zero: the first module makes them from the
        # scalars and the pair directions (it is not given the zeros), and the last
        # module does not update them (nothing reads them after it)
        v = None
        n_out = 2 if self.charges else 1
        module_outputs = []
        for m in range(self.num_iterations):
            s, v = InteractionBlock(
                self.features,
                self.max_degree,
                self.vector_features,
                self.n_res_interaction,
                self.radial_filter,
                self.angular_degree if m < self.angular_interactions else 0,
                self.angular_features,
                vector_output=m < self.num_iterations - 1,
                name=f"interaction_{m}",
            )((s, v), rbf, harmonics, dst_idx, src_idx)
            for k in range(self.n_res):
                s = ResidualBlock(self.features, name=f"atomic_residual_{m}_{k}")(s)
            y = OutputBlock(
                self.features, n_out, self.n_res_output, name=f"output_{m}"
            )(s)
            module_outputs.append(y * atom_w[:, None])
        return jnp.stack(module_outputs)  # (num_iterations, A, n_out)

    def _element_scale_shift(
        self, atomic_numbers: jax.Array, stacked: jax.Array, atom_w: jax.Array
    ) -> jax.Array:
        """s[Z_i] Σ_m y_i^m + b[Z_i] per atom and output, float32 (A, n_out), zero
        on padding atoms."""
        # Per-element scale and shift of the summed outputs (PhysNet's Escale/
        # Eshift, Qscale/Qshift); the global energy scale and reference energies
        # stay in EnergyConstants, so these start at 1 and 0.
        elements, n_out = self.max_atomic_number + 1, stacked.shape[-1]
        scale = self.param("element_scale", nn.initializers.ones, (elements, n_out))
        shift = self.param("element_shift", nn.initializers.zeros, (elements, n_out))
        outputs = (scale[atomic_numbers] * jnp.sum(stacked, axis=0)) + shift[
            atomic_numbers
        ]
        return outputs * atom_w[:, None]

    def _electrostatics(
        self,
        raw_charges: jax.Array,
        total_charge: jax.Array,
        positions: jax.Array,
        atomic_numbers: jax.Array,
        distances: jax.Array,
        dst_idx: jax.Array,
        src_idx: jax.Array,
        batch_segments: jax.Array,
        atom_mask: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The charges float32 (A,) e (``raw_charges`` constrained to
        ``total_charge``), the dipole moment float32 (M, 3) e·Å and the shielded
        Coulomb energy of each pair, float32 (P,) eV (padding pairs not masked)."""
        charges = constrained_charges(
            raw_charges, total_charge, batch_segments, atom_mask
        )
        coulomb = coulomb_pair_energy(charges, distances, dst_idx, src_idx, self.cutoff)
        dipole = dipole_moment(
            charges,
            positions,
            atomic_numbers,
            batch_segments,
            atom_mask,
            total_charge.shape[0],
            self.dipole_origin,
        )
        return charges, dipole, coulomb


#: The name the physnetjax code uses for the same model.
EF = PhysNet


def nh_penalty(
    module_outputs: jax.Array,
    atom_mask: jax.Array,
    normalizer: jax.Array | float | None = None,
    eps: float = 1e-7,
) -> jax.Array:
    """PhysNet's non-hierarchicality penalty (dimensionless, float32 ()).

    L_nh = (1 / (N · n_out)) Σ_i Σ_{m≥2} Σ_c (y_imc)² / ((y_imc)² + (y_i,m−1,c)² + ε),

    as in the authors' reference implementation: it is small when each module's
    contribution is smaller than the previous module's, and approaches 1 per
    module where a later module outweighs an earlier one. Add it to the loss with
    a weight (the reference uses 0.01).

    Args:
        module_outputs: float32 (num_iterations, A, n_out), the ``module_outputs``
            of :func:`energy_and_forces`.
        atom_mask: bool (A,), real atoms.
        normalizer: N, the number of atoms the sum is divided by (default: the real
            atoms of this batch; pass the global count when gradients are averaged
            over devices).
        eps: ε, keeps 0/0 at zero.
    """
    n = jnp.sum(atom_mask) if normalizer is None else normalizer
    return nh_penalty_sum(module_outputs, atom_mask, eps) / (
        jnp.maximum(n, 1) * module_outputs.shape[-1]
    )


def nh_penalty_sum(
    module_outputs: jax.Array, atom_mask: jax.Array, eps: float = 1e-7
) -> jax.Array:
    """The double sum of :func:`nh_penalty` (before dividing by N · n_out), additive
    over batches and devices; float32 ()."""
    y2 = module_outputs**2
    ratio = y2[1:] / (y2[1:] + y2[:-1] + eps)  # (num_iterations - 1, A, n_out)
    per_atom = jnp.sum(ratio, axis=(0, 2)) * atom_mask.astype(ratio.dtype)
    return jnp.sum(per_atom)


def model_from_config(config: ModelConfig) -> PhysNet:
    """The :class:`PhysNet` module of a model config section."""
    return PhysNet(**dataclasses.asdict(config))


def device_inputs(batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """The model's inputs of a packed batch, in device dtypes (float32, int32)."""
    return {k: jnp.asarray(np.asarray(batch[k]), dt) for k, dt in MODEL_INPUTS.items()}


@functools.partial(jax.jit, static_argnums=0)
def _init(model: PhysNet, rng: jax.Array, *inputs: jax.Array) -> Any:
    # jitted: e3x executed op by op is slower than compiling, and cached per model
    return model.init(rng, *inputs)


def init_params(model: PhysNet, rng: jax.Array, batch: Mapping[str, Any]) -> Params:
    """Fresh parameters for ``model``, initialised with ``rng`` on a packed batch."""
    x = device_inputs(batch)
    variables = _init(
        model,
        rng,
        x["Z"],
        x["R"],
        x["dst_idx"],
        x["src_idx"],
        x["batch_segments"],
        x["atom_mask"],
        x["pair_mask"],
        x["Qtot"],
    )
    return variables["params"]


def energy_and_forces(
    params: Params, model: PhysNet, inputs: Mapping[str, jax.Array], scale: jax.Array
) -> dict[str, jax.Array]:
    """Residual energies and forces of a packed batch (pure, jittable).

    Args:
        params: the model's parameters.
        model: the :class:`PhysNet` module (static).
        inputs: :func:`device_inputs` of a packed batch.
        scale: float32 () eV, :attr:`EnergyConstants.scale`.

    Returns:
        ``energy_residual`` float32 (M,) eV: E − Σ ref(Z) per molecule slot;
        ``forces`` float32 (A, 3) eV/Å = −∂E/∂R (zero on padding atoms);
        ``module_outputs`` float32 (num_iterations, A, n_out), each module's atomic
        outputs y_i^m (for :func:`nh_penalty`);
        ``charges`` (A,) e and ``dipole`` (M, 3) e·Å when the model has charges.
    """

    def energy(positions: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        out = model.apply(
            {"params": params},
            inputs["Z"],
            positions,
            inputs["dst_idx"],
            inputs["src_idx"],
            inputs["batch_segments"],
            inputs["atom_mask"],
            inputs["pair_mask"],
            inputs["Qtot"],
        )
        num_molecules = inputs["Qtot"].shape[0]
        per_molecule = jax.ops.segment_sum(
            scale * out["atomic_energies"], inputs["batch_segments"], num_molecules
        )
        per_molecule = per_molecule + out["physical_energy"]
        # Molecules do not interact, so the gradient of the sum is each molecule's.
        return jnp.sum(per_molecule), {**out, "energy_residual": per_molecule}

    grad, out = jax.grad(energy, has_aux=True)(inputs["R"])
    result = {
        "energy_residual": out["energy_residual"],
        "forces": -grad * inputs["atom_mask"][:, None],
        "module_outputs": out["module_outputs"],
    }
    if "charges" in out:
        result["charges"] = out["charges"]
        result["dipole"] = out["dipole"]
    return result


@functools.partial(jax.jit, static_argnames=("model",))
def _predict_device(
    params: Params, model: PhysNet, inputs: Mapping[str, jax.Array], scale: jax.Array
) -> dict[str, jax.Array]:
    out = energy_and_forces(params, model, inputs, scale)
    return {k: v for k, v in out.items() if k != "module_outputs"}


def predict(
    params: Params,
    batch: Mapping[str, np.ndarray],
    model: PhysNet,
    constants: EnergyConstants,
) -> dict[str, np.ndarray]:
    """Predictions for a packed batch, as numpy arrays in eV, Å, e.

    Compiled once per batch shape (and model). Padding slots are included; select
    real ones with ``batch["molecule_mask"]`` / ``batch["atom_mask"]``.

    Returns:
        ``energy`` float64 (M,) eV (reference energies added in float64 on the
        host); ``energy_residual`` float32 (M,) eV; ``forces`` float32 (A, 3) eV/Å;
        with charges also ``charges`` float32 (A,) e and ``dipole`` float32 (M, 3)
        e·Å.

    Raises:
        InputError: two atoms of a molecule coincide (named; the model would give
            NaN energies and forces).
    """
    check_batch_coincident_atoms(batch, "predict")
    out = _predict_device(
        params, model, device_inputs(batch), jnp.float32(constants.scale)
    )
    result = {k: np.asarray(v) for k, v in out.items()}
    mol_mask = np.asarray(batch.get("molecule_mask", np.ones(len(batch["Qtot"]), bool)))
    result["energy"] = np.where(
        mol_mask,
        constants.reference_sum(batch) + result["energy_residual"].astype(np.float64),
        0.0,
    )
    return result


def molecules_to_batch(
    molecules: Sequence[Mapping[str, Any]],
    *,
    max_atoms: int | None = None,
    max_pairs: int | None = None,
    max_molecules: int | None = None,
) -> dict[str, np.ndarray]:
    """Pack molecules held in memory into one batch of the loader's packed contract.

    Args:
        molecules: each with ``Z`` int (n,), ``R`` float (n, 3) Å and optionally
            ``Qtot`` (e, default 0), ``E`` (eV), ``F`` (n, 3) eV/Å, ``D`` (3,) e·Å
            (``E``/``F``/``D`` are copied only if every molecule has them).
        max_atoms, max_pairs, max_molecules: budgets ``A``, ``P``, ``M``; by default
            the smallest that fit (one padding slot each).

    Returns:
        The batch dict (see the module docstring), ``mol_index`` = position in
        ``molecules``.
    """
    sizes = np.array([len(np.asarray(m["Z"])) for m in molecules], dtype=np.int64)
    n_atoms, n_pairs = int(sizes.sum()), int((sizes * (sizes - 1)).sum())
    A = max_atoms or n_atoms + 1
    P = max_pairs or max(n_pairs, 1)
    M = max_molecules or len(molecules) + 1
    if A < n_atoms + 1 or P < n_pairs or M < len(molecules) + 1:
        raise InputError(
            f"{len(molecules)} molecules with {n_atoms} atoms and {n_pairs} pairs do "
            f"not fit budgets A={A} (needs {n_atoms + 1}), P={P}, M={M}"
        )
    batch: dict[str, np.ndarray] = {
        "Z": np.zeros(A, np.int32),
        "R": np.zeros((A, 3), np.float32),
        "E": np.zeros(M, np.float64),
        "Qtot": np.zeros(M, np.float64),
        "N": np.zeros(M, np.int32),
        "atom_mask": np.zeros(A, bool),
        "molecule_mask": np.zeros(M, bool),
        "pair_mask": np.zeros(P, bool),
        "dst_idx": np.full(P, A - 1, np.int32),
        "src_idx": np.full(P, A - 1, np.int32),
        "batch_segments": np.full(A, M - 1, np.int32),
        "mol_index": np.full(M, -1, np.int64),
    }
    has = {k: all(k in m for m in molecules) and len(molecules) > 0 for k in "EFD"}
    if has["F"]:
        batch["F"] = np.zeros((A, 3), np.float32)
    if has["D"]:
        batch["D"] = np.zeros((M, 3), np.float64)
    a = p = 0
    for j, (mol, n) in enumerate(zip(molecules, sizes)):
        n = int(n)
        sl = slice(a, a + n)
        batch["Z"][sl] = np.asarray(mol["Z"])
        batch["R"][sl] = np.asarray(mol["R"])
        batch["atom_mask"][sl] = True
        batch["batch_segments"][sl] = j
        batch["Qtot"][j] = float(mol.get("Qtot", 0.0))
        batch["N"][j] = n
        batch["molecule_mask"][j] = True
        batch["mol_index"][j] = j
        if has["E"]:
            batch["E"][j] = float(mol["E"])
        if has["F"]:
            batch["F"][sl] = np.asarray(mol["F"])
        if has["D"]:
            batch["D"][j] = np.asarray(mol["D"])
        dst, src = np.nonzero(~np.eye(n, dtype=bool))
        batch["dst_idx"][p : p + dst.size] = dst + a
        batch["src_idx"][p : p + dst.size] = src + a
        batch["pair_mask"][p : p + dst.size] = True
        a, p = a + n, p + dst.size
    return batch
