"""Velocity Verlet (NVE) and BAOAB Langevin (NVT) steps on a packed batch (pure JAX).

A packed batch holds many molecules side by side in one position array; no pair
crosses molecules, so each molecule's forces are its own and one step moves them all
independently. ``move`` (A, 1) bool marks the atoms to integrate: padding atoms and
the atoms of molecules taken out of the run (broken) stay where they are.

Units are ASE's: positions Å, velocities Å per ASE time unit (Å·√(amu/eV), so that
``Atoms.set_velocities`` takes them as they are), masses amu, forces eV/Å, time in ASE
time units (``ase.units.fs`` per fs), ``kT`` in eV.

Why not jax-md's ``simulate.nve``/``nvt_langevin``: they are the same algorithms on
one position array, but importing ``jax_md`` loads its whole package (jraph, e3nn-jax
and pymatgen, which physpack does not otherwise need), and its states carry no atom
mask to hold broken molecules still. The two steps below are ten lines each and are
tested against ASE's ``VelocityVerlet`` step for step and for the Langevin
stationary temperature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

#: forces (A, 3) eV/Å of positions (A, 3) Å, with anything else the caller keeps
ForceFn = Callable[[jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


class MDState(NamedTuple):
    """State of a packed batch between steps (all float32, padding rows zero).

    Attributes:
        positions: (A, 3) Å.
        velocities: (A, 3) Å per ASE time unit.
        forces: (A, 3) eV/Å at ``positions``.
        key: PRNG key of the Langevin noise (unused by NVE).
    """

    positions: jax.Array
    velocities: jax.Array
    forces: jax.Array
    key: jax.Array


def velocity_verlet(
    state: MDState,
    force_fn: ForceFn,
    inv_mass: jax.Array,
    move: jax.Array,
    dt: float,
) -> tuple[MDState, dict[str, jax.Array]]:
    """One velocity-Verlet step (the algorithm of ASE's ``VelocityVerlet``).

    Args:
        state: the batch at time t.
        force_fn: forces of positions (and auxiliary outputs, returned as they are).
        inv_mass: (A, 1) 1/amu (padding atoms: any finite value).
        move: (A, 1) bool, atoms to integrate.
        dt: time step in ASE time units.

    Returns:
        The state at t + dt and ``force_fn``'s auxiliary outputs there.
    """
    v_half = state.velocities + 0.5 * dt * state.forces * inv_mass
    positions = jnp.where(move, state.positions + dt * v_half, state.positions)
    forces, aux = force_fn(positions)
    velocities = jnp.where(move, v_half + 0.5 * dt * forces * inv_mass, 0.0)
    return MDState(positions, velocities, forces, state.key), aux


def baoab(
    state: MDState,
    force_fn: ForceFn,
    inv_mass: jax.Array,
    move: jax.Array,
    dt: float,
    kT: float,
    friction: float,
) -> tuple[MDState, dict[str, jax.Array]]:
    """One BAOAB Langevin step (Leimkuhler & Matthews, 2013): half kick, half drift,
    the exact Ornstein-Uhlenbeck velocity update, half drift, force, half kick. Its
    configurational distribution is Boltzmann's at ``kT`` to second order in ``dt``
    (exactly, for a harmonic potential); the velocities at whole steps run slightly
    cold, by (ω dt / 2)² for a mode of angular frequency ω (0.6 % for a 20 fs
    period at 0.5 fs).

    Args:
        state, force_fn, inv_mass, move, dt: as :func:`velocity_verlet`.
        kT: the bath's k_B T in eV.
        friction: γ in 1/(ASE time unit).

    Returns:
        The state at t + dt (with the next PRNG key) and the auxiliary outputs.
    """
    key, noise_key = jax.random.split(state.key)
    c1 = jnp.exp(-friction * dt)
    c2 = jnp.sqrt((1.0 - c1**2) * kT * inv_mass)
    v = state.velocities + 0.5 * dt * state.forces * inv_mass
    r = state.positions + 0.5 * dt * v
    noise = jax.random.normal(noise_key, v.shape, v.dtype)
    v = c1 * v + c2 * noise
    r = jnp.where(move, r + 0.5 * dt * v, state.positions)
    forces, aux = force_fn(r)
    v = jnp.where(move, v + 0.5 * dt * forces * inv_mass, 0.0)
    return MDState(r, v, forces, key), aux
