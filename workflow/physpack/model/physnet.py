"""PhysNet energy (and charge) model on packed batches, built from e3x layers.

The architecture follows PhysNet (Unke & Meuwly, JCTC 2019) as its JAX/e3x
implementation ``physnetjax`` defines it (class ``EF``): atomic numbers are embedded,
``num_iterations`` message passes over all atom pairs of each molecule (radial
basis × spherical harmonics, smooth cutoff) are each followed by ``n_res``
residual blocks and an output head; the heads' atomic energies (and charges) are
summed over iterations. Optional terms: ZBL nuclear repulsion and, with
``charges``, atomic charges constrained to the total charge, a shielded Coulomb
energy and the dipole moment Σ q_i r_i.

Energies are split so that float32 on the device only sees small numbers::

    E_mol = Σ_i ref[Z_i]  +  scale · Σ_i e_i  +  E_coulomb + E_zbl
            ^^^^^^^^^^^^     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
            float64, host    "residual", float32, device

``ref`` (per-element reference energies, eV) and ``scale`` (eV) are
:class:`EnergyConstants`, fitted on the training split and stored in the
checkpoint. Forces are −∂E/∂R of the residual (the reference does not depend on
positions).

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
from ase.data import chemical_symbols, covalent_radii
from ase.units import Bohr

from physpack.config import ModelConfig
from physpack.errors import InputError

#: Coulomb constant e²/(4πε₀) in eV·Å.
COULOMB_EV_ANGSTROM = 14.399645351950548
#: ZBL universal screening function: coefficients and exponents.
_ZBL_C = (0.18175, 0.50986, 0.28022, 0.02817)
_ZBL_B = (3.19980, 0.94229, 0.40290, 0.20162)

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


class PhysNet(nn.Module):
    """PhysNet on a packed batch of ``M`` molecule slots, ``A`` atoms, ``P`` pairs.

    Attributes mirror :class:`physpack.config.ModelConfig` (cutoff in Å).

    ``__call__`` returns a dict:
        ``atomic_energies``: float32 (A,), dimensionless network energies e_i
        (zero on padding atoms); the caller multiplies by the energy scale.
        ``physical_energy``: float32 (M,) eV, Coulomb + ZBL energy per molecule
        (zeros when both are off).
        ``charges``: float32 (A,) e, summing to ``total_charge`` per molecule
        (only with ``charges``).
        ``dipole``: float32 (M, 3) e·Å, Σ q_i r_i (only with ``charges``).
    """

    features: int = 64
    max_degree: int = 1
    num_iterations: int = 3
    num_basis_functions: int = 32
    cutoff: float = 5.0
    max_atomic_number: int = 36
    n_res: int = 2
    zbl: bool = False
    charges: bool = False

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
        num_atoms = atomic_numbers.shape[0]
        num_molecules = total_charge.shape[0]
        atom_w = atom_mask.astype(positions.dtype)
        pair_w = pair_mask.astype(positions.dtype)

        # Padding pairs join atom A-1 to itself: a zero displacement, whose norm has
        # an infinite derivative. Replace it before any norm (first where) and zero
        # everything derived from it (second where / masks), so that gradients of
        # padding stay exactly zero instead of 0·inf = NaN.
        r_src = e3x.ops.gather_src(positions, src_idx=src_idx)
        r_dst = e3x.ops.gather_dst(positions, dst_idx=dst_idx)
        unit_x = jnp.array([1.0, 0.0, 0.0], positions.dtype)
        safe = jnp.where(pair_mask[:, None], r_src - r_dst, unit_x)  # (P, 3) Å
        distances = jnp.sqrt(jnp.sum(safe**2, axis=-1))  # (P,) Å, 1 on padding
        basis = e3x.nn.basis(
            safe,
            num=self.num_basis_functions,
            max_degree=self.max_degree,
            radial_fn=e3x.nn.reciprocal_bernstein,
            cutoff_fn=functools.partial(e3x.nn.smooth_cutoff, cutoff=self.cutoff),
        )
        basis = basis * pair_w[:, None, None, None]

        x = e3x.nn.Embed(self.max_atomic_number + 1, self.features)(atomic_numbers)
        n_out = 2 if self.charges else 1
        outputs = jnp.zeros((num_atoms, n_out), positions.dtype)
        for i in range(self.num_iterations):
            last = i == self.num_iterations - 1
            # Only scalars are read after the final pass: skip the higher degrees.
            messages = e3x.nn.MessagePass(
                max_degree=0 if last else None, include_pseudotensors=False
            )(x, basis, dst_idx=dst_idx, src_idx=src_idx, num_segments=num_atoms)
            if last:
                x = e3x.nn.change_max_degree_or_type(
                    x, max_degree=0, include_pseudotensors=False
                )
            # MessagePass returns the neighbours' sum only; PhysNet's interaction
            # keeps each atom's own features next to it.
            x = e3x.nn.add(x, messages)
            for _ in range(self.n_res):
                y = e3x.nn.silu(x)
                y = e3x.nn.Dense(self.features)(y)
                y = e3x.nn.silu(y)
                y = e3x.nn.Dense(self.features)(y)
                x = e3x.nn.add(x, y)
            # PhysNet's per-module output head on the scalar channel; zero-initialised
            # so that an untrained model predicts the reference energies.
            s = jax.nn.silu(x[:, 0, 0, :])
            s = nn.Dense(self.features)(s)
            s = jax.nn.silu(s)
            outputs = outputs + nn.Dense(n_out, kernel_init=nn.initializers.zeros)(s)

        element_bias = self.param(
            "element_bias", nn.initializers.zeros, (self.max_atomic_number + 1, n_out)
        )
        outputs = (outputs + element_bias[atomic_numbers]) * atom_w[:, None]
        result: dict[str, jax.Array] = {"atomic_energies": outputs[:, 0]}

        pair_energy = jnp.zeros_like(distances)
        if self.charges:
            raw = outputs[:, 1]
            n_mol = jax.ops.segment_sum(atom_w, batch_segments, num_molecules)
            excess = (
                jax.ops.segment_sum(raw, batch_segments, num_molecules) - total_charge
            )
            per_atom = excess / jnp.where(n_mol > 0, n_mol, 1.0)
            charges = (raw - per_atom[batch_segments]) * atom_w
            q_dst = e3x.ops.gather_dst(charges, dst_idx=dst_idx)
            q_src = e3x.ops.gather_src(charges, src_idx=src_idx)
            pair_energy = pair_energy + 0.5 * COULOMB_EV_ANGSTROM * q_dst * q_src * (
                _shielded_inverse_distance(distances, self.cutoff)
            )
            result["charges"] = charges
            result["dipole"] = jax.ops.segment_sum(
                charges[:, None] * positions, batch_segments, num_molecules
            )
        if self.zbl:
            pair_energy = pair_energy + self._zbl(
                atomic_numbers[dst_idx], atomic_numbers[src_idx], distances, pair_mask
            )
        pair_energy = pair_energy * pair_w
        atom_physical = jax.ops.segment_sum(pair_energy, dst_idx, num_atoms)
        result["physical_energy"] = jax.ops.segment_sum(
            atom_physical, batch_segments, num_molecules
        )
        return result

    def _zbl(
        self, z_dst: jax.Array, z_src: jax.Array, r: jax.Array, pair_mask: jax.Array
    ) -> jax.Array:
        """ZBL repulsion per ordered pair (half of the pair energy, eV), switched off
        smoothly at the sum of covalent radii so that it only acts where atoms come
        unphysically close; the screening length is trainable (init: ZBL's)."""
        z_dst = jnp.where(pair_mask, z_dst, 1).astype(r.dtype)
        z_src = jnp.where(pair_mask, z_src, 1).astype(r.dtype)
        log_a_scale = self.param("zbl_log_length_scale", nn.initializers.zeros, ())
        a = jnp.exp(log_a_scale) * 0.8854 * Bohr / (z_dst**0.23 + z_src**0.23)
        phi = sum(c * jnp.exp(-b * r / a) for c, b in zip(_ZBL_C, _ZBL_B))
        radii = jnp.asarray(covalent_radii[: self.max_atomic_number + 1], r.dtype)
        r_switch = radii[z_dst.astype(jnp.int32)] + radii[z_src.astype(jnp.int32)]
        envelope = e3x.nn.smooth_cutoff(r / r_switch)
        return 0.5 * COULOMB_EV_ANGSTROM * z_dst * z_src / r * phi * envelope


#: The name the physnetjax code uses for the same model.
EF = PhysNet


def _shielded_inverse_distance(r: jax.Array, cutoff: float) -> jax.Array:
    """PhysNet's shielded Coulomb kernel χ(r) [1/Å]: 1/√(r²+1) at short range
    switched smoothly to 1/r, the switch complete at ``cutoff/2``."""
    switch = e3x.nn.smooth_switch(r, 0.0, 0.5 * cutoff)
    return (1.0 - switch) / jnp.sqrt(r**2 + 1.0) + switch / r


def model_from_config(config: ModelConfig) -> PhysNet:
    """The :class:`PhysNet` module of a model config section."""
    return PhysNet(**dataclasses.asdict(config))


@dataclasses.dataclass(frozen=True)
class EnergyConstants:
    """Per-element reference energies and the energy scale of the residual.

    Attributes:
        reference_energies: float64 (max_atomic_number + 1,) eV per atom of each
            element (least-squares fit on the training split; 0 for elements
            absent from it).
        scale: eV; the network's dimensionless atomic energies are multiplied by it.
        elements: sorted atomic numbers present in the training data.
    """

    reference_energies: np.ndarray
    scale: float
    elements: tuple[int, ...]

    def reference_sum(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        """Σ_i ref[Z_i] per molecule slot, float64 (M,) eV, computed on the host
        (0 for padding)."""
        z = np.asarray(batch["Z"])
        weights = self.reference_energies[z] * np.asarray(batch["atom_mask"])
        return np.bincount(
            np.asarray(batch["batch_segments"]),
            weights=weights,
            minlength=len(batch["Qtot"]),
        )

    def check_elements(self, z: np.ndarray, where: str) -> None:
        """Raise :class:`InputError` if ``z`` holds elements absent from training."""
        unknown = sorted(set(np.unique(z[z > 0]).tolist()) - set(self.elements))
        if unknown:
            raise InputError(
                f"{where}: element(s) {unknown} never seen in training "
                f"(model knows {list(self.elements)})"
            )

    def check_batch(self, batch: Mapping[str, np.ndarray], where: str) -> None:
        """Refuse a packed batch holding an element absent from training.

        Raises:
            InputError: naming the first such molecule (dataset index), its element
            and the trained elements.
        """
        z = np.asarray(batch["Z"])
        ok = np.isin(z, self.elements) | ~np.asarray(batch["atom_mask"], bool)
        if ok.all():
            return
        a = int(np.argmin(ok))
        mol = int(batch["mol_index"][batch["batch_segments"][a]])
        raise InputError(
            f"{where}: molecule {mol} contains element {chemical_symbols[int(z[a])]} "
            f"(Z={int(z[a])}), which the model was not trained for (trained "
            f"elements: {', '.join(chemical_symbols[e] for e in self.elements)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_energies": np.asarray(self.reference_energies, np.float64),
            "scale": float(self.scale),
            "elements": np.asarray(self.elements, np.int32),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnergyConstants:
        return cls(
            reference_energies=np.asarray(d["reference_energies"], np.float64),
            scale=float(d["scale"]),
            elements=tuple(int(z) for z in np.asarray(d["elements"]).ravel()),
        )


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
    }
    if "charges" in out:
        result["charges"] = out["charges"]
        result["dipole"] = out["dipole"]
    return result


@functools.partial(jax.jit, static_argnames=("model",))
def _predict_device(
    params: Params, model: PhysNet, inputs: Mapping[str, jax.Array], scale: jax.Array
) -> dict[str, jax.Array]:
    return energy_and_forces(params, model, inputs, scale)


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
    """
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
