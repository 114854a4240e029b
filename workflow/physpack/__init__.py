"""physpack: PhysNet potentials trained on packed, memory-mapped molecular datasets.

Canonical units everywhere inside the package and its formats: energies in eV,
lengths in Å, forces in eV/Å, dipoles in e·Å, charges in e.
"""

__version__ = "0.1.0"
