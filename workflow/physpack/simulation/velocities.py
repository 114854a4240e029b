"""Starting velocities of a molecular-dynamics run (ASE and numpy only, so that
other models' runs, e.g. a benchmark's MACE, start from the same ones)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.md.velocitydistribution import Stationary, thermalize_momenta


def starting_velocities(
    atoms: Atoms, temperature_K: float, rng: np.random.Generator
) -> np.ndarray:
    """Maxwell-Boltzmann velocities (n, 3) in ASE units at ``temperature_K`` with the
    centre of mass at rest (zero at 0 K), drawn from ``rng``."""
    atoms = atoms.copy()
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    return atoms.get_velocities()
