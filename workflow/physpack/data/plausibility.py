"""Physical plausibility of a dataset's scales: the checks that catch unit mistakes.

Integrity checks cannot see data in eV declared as Hartree (every energy 27× too
large, consistently) or Å declared as nm (every distance 10× too large). Three
dataset-level scales can, each compared with what molecules look like, in the
canonical units after conversion:

``plausible_energies``
    Fitted per-element reference energies must not exceed, in magnitude, the total
    energy of the free neutral atom. The Thomas–Fermi estimate 0.7687 Z^(7/3)
    Hartree bounds it from above for every element (H 0.5 of 0.77 Ha, C 37.8 of
    50 Ha, Au 19,000 of 20,500 Ha); the check allows 1.5× that. Small values are
    not flagged: atomization energies and references subtracted are legitimate.
``plausible_distances``
    The median over molecules of the median nearest-neighbour distance of their
    atoms must lie within 0.6–2.0 Å (bond lengths: H–H 0.74, C–H 1.09, C–C 1.54,
    S–S 2.05 Å).
``plausible_forces``
    The median atomic force magnitude must lie within 0.001–10 eV/Å (MD and
    normal-mode sampled data: about 0.3–3 eV/Å; relaxed structures: smaller).

Each check returns a warning message (``None`` when plausible); the messages name the
value, the expected range and the declared unit to look at.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ase.data import chemical_symbols
from ase.units import Hartree

#: Thomas–Fermi coefficient of the neutral atom's total energy [Hartree / Z^(7/3)]
THOMAS_FERMI = 0.7687
#: allowed factor above the Thomas–Fermi magnitude
ENERGY_MARGIN = 1.5
#: plausible median nearest-neighbour distance [Å]
NEIGHBOUR_RANGE = (0.6, 2.0)
#: plausible median atomic force magnitude [eV/Å]
FORCE_RANGE = (1e-3, 10.0)


def atom_energy_bound(z: int) -> float:
    """Largest plausible magnitude of element ``z``'s reference energy [eV]."""
    return ENERGY_MARGIN * THOMAS_FERMI * z ** (7 / 3) * Hartree


def _unit_hint(units: Mapping[str, str], kind: str) -> str:
    return f"data.{kind}_unit (stored as {units.get(kind, '?')})"


def check_reference_energies(
    reference: Mapping[int, float], units: Mapping[str, str]
) -> str | None:
    """Warning for fitted reference energies ``reference`` (eV by atomic number)
    larger in magnitude than :func:`atom_energy_bound`."""
    bad = {z: e for z, e in reference.items() if abs(e) > atom_energy_bound(z)}
    if not bad:
        return None
    listed = ", ".join(
        f"{chemical_symbols[z]} {e:.4g} eV (free atom at most "
        f"{atom_energy_bound(z):.3g} eV)"
        for z, e in sorted(bad.items())
    )
    hint = _unit_hint(units, "energy")
    return (
        f"fitted per-element reference energies beyond atomic scales: {listed}; "
        f"energies in a smaller unit than declared? Check {hint}"
    )


def check_neighbour_distance(median: float, units: Mapping[str, str]) -> str | None:
    """Warning when the median nearest-neighbour distance ``median`` [Å] is outside
    :data:`NEIGHBOUR_RANGE`."""
    lo, hi = NEIGHBOUR_RANGE
    if lo <= median <= hi or math.isnan(median):  # NaN: no distances to judge
        return None
    return (
        f"median nearest-neighbour distance {median:.4g} Å is outside {lo}–{hi} Å "
        f"(bond lengths); positions in another unit than declared? Check "
        f"{_unit_hint(units, 'length')}"
    )


def check_force_magnitude(median: float, units: Mapping[str, str]) -> str | None:
    """Warning when the median atomic force magnitude ``median`` [eV/Å] is outside
    :data:`FORCE_RANGE`."""
    lo, hi = FORCE_RANGE
    if lo <= median <= hi or math.isnan(median):
        return None
    where = "larger" if median > hi else "smaller"
    return (
        f"median atomic force magnitude {median:.4g} eV/Å is {where} than molecular "
        f"forces ({lo}–{hi} eV/Å); forces in another unit than declared? Check "
        f"{_unit_hint(units, 'energy')} and {_unit_hint(units, 'length')} (forces: "
        f"{units.get('forces', '?')})"
    )
