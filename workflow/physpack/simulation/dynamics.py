"""Many molecules integrated side by side: the packed system, the committee's forces
and the compiled block of steps.

Molecules do not interact (no pair crosses molecules), so the packed batch's energy
is the sum of the molecules' and its gradient gives each molecule its own forces.
One compiled call advances every molecule by ``steps`` steps; between calls the host
checks stability, writes frames and takes broken molecules out (``active``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from physpack.model.calculator import Member
from physpack.model.physnet import device_inputs, energy_and_forces, molecules_to_batch
from physpack.simulation.integrators import MDState, baoab, velocity_verlet


@dataclasses.dataclass(frozen=True)
class PackedMolecules:
    """Molecules in one packed batch (the loader's contract: all ordered pairs i ≠ j
    within each molecule, one padding atom and molecule slot).

    Attributes:
        batch: the numpy batch of :func:`~physpack.model.physnet.molecules_to_batch`.
        sizes: int64 (N,) atoms per molecule.
        starts: int64 (N + 1,) first row of each molecule (rows are molecule after
            molecule); ``starts[-1]`` is the padding atom.
        masses: float64 (A,) amu (1 on the padding atom).
    """

    batch: dict[str, np.ndarray]
    sizes: np.ndarray
    starts: np.ndarray
    masses: np.ndarray

    @classmethod
    def of(
        cls, molecules: Sequence[Atoms], charges: Sequence[float]
    ) -> PackedMolecules:
        """Pack ``molecules`` (positions Å) with total ``charges`` (e)."""
        batch = molecules_to_batch(
            [
                {"Z": a.numbers, "R": a.positions, "Qtot": q}
                for a, q in zip(molecules, charges, strict=True)
            ]
        )
        sizes = np.array([len(a) for a in molecules], np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        masses = np.ones(batch["Z"].shape[0])
        masses[: starts[-1]] = np.concatenate([a.get_masses() for a in molecules])
        return cls(batch=batch, sizes=sizes, starts=starts, masses=masses)

    def __len__(self) -> int:
        return int(self.sizes.size)

    def rows(self, k: int) -> slice:
        """The rows of molecule ``k``."""
        return slice(int(self.starts[k]), int(self.starts[k + 1]))

    def per_molecule(self, values: np.ndarray) -> np.ndarray:
        """Sum of per-atom ``values`` (A, ...) over each molecule's atoms: (N, ...)."""
        return np.add.reduceat(np.asarray(values)[: self.starts[-1]], self.starts[:-1])


def committee_forces(
    params: Sequence[Any],
    members: Sequence[Member],
    inputs: dict[str, jax.Array],
    positions: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The committee's mean forces at ``positions`` and what a frame reports.

    Args:
        params: each member's parameters (passed separately so that they are
            arguments of the compiled function, not constants).
        members: the models (their modules and energy scales).
        inputs: :func:`~physpack.model.physnet.device_inputs` of the packed batch.
        positions: float32 (A, 3) Å.

    Returns:
        Mean forces float32 (A, 3) eV/Å, and ``energy_residual`` float32 (K, M) eV
        (each member's energy less its reference energies) and ``forces_spread``
        float32 (A,) eV/Å: the root mean square over members of the distance of
        each member's force from the mean, √(1/K Σ_k |F_k,i − F̄_i|²) (0 for one
        model).
    """
    outs = [
        energy_and_forces(p, m.checkpoint.model, {**inputs, "R": positions}, m.scale)
        for p, m in zip(params, members, strict=True)
    ]
    forces = jnp.stack([o["forces"] for o in outs])
    mean = forces.mean(axis=0)
    spread = jnp.sqrt(jnp.mean(jnp.sum((forces - mean) ** 2, axis=-1), axis=0))
    energies = jnp.stack([o["energy_residual"] for o in outs])
    return mean, {"energy_residual": energies, "forces_spread": spread}


@dataclasses.dataclass(frozen=True)
class Integrator:
    """How to step: ``ensemble`` ``"nve"`` (velocity Verlet) or ``"langevin"``
    (BAOAB), ``dt`` in ASE time units, ``kT`` in eV and ``friction`` in 1/(ASE time
    unit) for Langevin."""

    ensemble: str
    dt: float
    kT: float = 0.0
    friction: float = 0.0

    def step(self, state, force_fn, inv_mass, move):
        if self.ensemble == "nve":
            return velocity_verlet(state, force_fn, inv_mass, move, self.dt)
        return baoab(state, force_fn, inv_mass, move, self.dt, self.kT, self.friction)


def compile_block(
    members: Sequence[Member],
    system: PackedMolecules,
    integrator: Integrator,
    steps: int,
):
    """A jitted ``block(params, state, active) -> (state, frame)`` that advances
    ``system`` by ``steps`` steps, moving only the molecules with ``active`` (M,)
    bool, and returns :func:`committee_forces`'s outputs at the last step (forces
    are in ``state``)."""
    inputs = device_inputs(system.batch)
    inv_mass = jnp.asarray(1.0 / system.masses, jnp.float32)[:, None]
    num_members, num_slots = len(members), system.batch["Qtot"].shape[0]

    def block(params, state: MDState, active: jax.Array):
        move = (active[inputs["batch_segments"]] & inputs["atom_mask"])[:, None]

        def force_fn(positions):
            return committee_forces(params, members, inputs, positions)

        def one(_, carry):
            return integrator.step(carry[0], force_fn, inv_mass, move)

        start = (
            state,
            {
                "energy_residual": jnp.zeros((num_members, num_slots), jnp.float32),
                "forces_spread": jnp.zeros(inv_mass.shape[0], jnp.float32),
            },
        )
        return jax.lax.fori_loop(0, steps, one, start)

    return jax.jit(block)


def start_state(
    members: Sequence[Member],
    system: PackedMolecules,
    velocities: np.ndarray,
    seed: int,
) -> tuple[MDState, dict[str, jax.Array]]:
    """The first state (forces evaluated at the start positions) and its frame
    outputs; ``velocities`` (A, 3) in ASE units, zero on padding."""
    inputs = device_inputs(system.batch)
    params = [m.params for m in members]
    forces, frame = jax.jit(
        lambda params, positions: committee_forces(params, members, inputs, positions)
    )(params, inputs["R"])
    state = MDState(
        positions=inputs["R"],
        velocities=jnp.asarray(velocities, jnp.float32),
        forces=forces,
        key=jax.random.PRNGKey(seed),
    )
    return state, frame
