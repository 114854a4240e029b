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
    When the compositions do not determine the fit (one formula, MD17-like), the
    molecules' energies are judged instead: the median molecule's |E| must not
    exceed the sum of its atoms' bounds.
``plausible_distances``
    The median over molecules of the median nearest-neighbour distance of their
    atoms must lie within 0.6–2.0 Å (bond lengths: H–H 0.74, C–H 1.09, C–C 1.54,
    S–S 2.05 Å).
``plausible_forces``
    The median atomic force magnitude must lie within 0.001–10 eV/Å (MD and
    normal-mode sampled data: about 0.3–3 eV/Å; relaxed structures: smaller).

Each check returns a :class:`Finding` (``None`` when plausible): a message that
names the value, the expected range and the declared unit to look at, and whether
only a unit mistake gives such a value (``unit_error``: energies beyond the
bounds, forces above the range), which stops validation unless
``validate.allow_implausible_units``. What real data can have (tiny forces of
relaxed structures, unusual distances of clusters or dissociation curves) stays a
warning.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
from ase.data import chemical_symbols
from ase.units import Hartree

#: Thomas–Fermi coefficient of the neutral atom's total energy [Hartree / Z^(7/3)]
THOMAS_FERMI = 0.7687
#: Allowed factor above the Thomas–Fermi magnitude. All-electron energies of real
#: methods stay below the bound by 2.3× (H: 13.6 of 31.4 eV) to 1.6× (Au); the
#: common unit mistakes exceed it: kcal/mol read as eV gives H 23 × 13.6 = 314 eV
#: (10× the bound), eV read as Hartree 27×, kJ/mol read as kcal/mol 4.2× (H 57 eV).
#: Valence-only energies (pseudopotentials, xTB) are smaller still for heavier
#: elements, so hydrogen, all of whose electrons count, is the element that shows
#: a mistake in every kind of data.
ENERGY_MARGIN = 1.5
#: plausible median nearest-neighbour distance [Å]
NEIGHBOUR_RANGE = (0.6, 2.0)
#: Plausible median atomic force magnitude [eV/Å]. Real data: about 0.1–5 eV/Å
#: (MD at 300–1000 K and normal-mode sampling 0.3–3; the demo's xTB data 1.45;
#: strongly distorted structures up to about 5). Above 10 eV/Å (2× the largest of
#: these) only a unit mistake is left: the demo in kcal/mol/Å read as eV/Å gives
#: 33 eV/Å, in eV/Å read as Hartree/Bohr 74 eV/Å. Below 0.001 eV/Å is a warning
#: only: tightly relaxed structures have such forces.
FORCE_RANGE = (1e-3, 10.0)


@dataclasses.dataclass(frozen=True)
class Finding:
    """An implausible scale of a dataset.

    Attributes:
        message: one line naming the value, the expected range and the unit key.
        unit_error: no real data has such a value, only a unit mistake: validation
            stops on it unless ``validate.allow_implausible_units``.
    """

    message: str
    unit_error: bool

    def problem(self, path: object, allow_unit_errors: bool) -> tuple[str, str]:
        """The finding about dataset ``path`` as a validation problem: (message,
        level). A unit error is an error (validation stops) unless
        ``allow_unit_errors`` (``validate.allow_implausible_units``); the rest
        are warnings."""
        message = f"{path}: {self.message}"
        if not self.unit_error:
            return message, "warning"
        if allow_unit_errors:
            accepted = " (accepted by validate.allow_implausible_units)"
            return message + accepted, "warning"
        override = (
            ", or validate.allow_implausible_units: true if these values are real"
        )
        return message + override, "error"


def atom_energy_bound(z: int) -> float:
    """Largest plausible magnitude of element ``z``'s reference energy [eV]."""
    return ENERGY_MARGIN * THOMAS_FERMI * z ** (7 / 3) * Hartree


def atom_energy_bounds(max_z: int) -> np.ndarray:
    """:func:`atom_energy_bound` of every element up to ``max_z``: float64
    (max_z + 1,) eV, indexed by atomic number (0 for index 0)."""
    z = np.arange(max_z + 1, dtype=np.float64)
    return ENERGY_MARGIN * THOMAS_FERMI * z ** (7 / 3) * Hartree


def _unit_hint(units: Mapping[str, str], kind: str) -> str:
    return f"data.{kind}_unit (stored as {units.get(kind, '?')})"


def check_reference_energies(
    reference: Mapping[int, float], units: Mapping[str, str]
) -> Finding | None:
    """Unit error for fitted reference energies ``reference`` (eV by atomic
    number) larger in magnitude than :func:`atom_energy_bound`."""
    bad = {z: e for z, e in reference.items() if abs(e) > atom_energy_bound(z)}
    if not bad:
        return None
    listed = ", ".join(
        f"{chemical_symbols[z]} {e:.4g} eV (free atom at most "
        f"{atom_energy_bound(z):.3g} eV)"
        for z, e in sorted(bad.items())
    )
    hint = _unit_hint(units, "energy")
    return Finding(
        f"fitted per-element reference energies beyond atomic scales: {listed}; "
        f"energies in a smaller unit than declared? Set {hint} to their unit",
        unit_error=True,
    )


def check_energies(
    reference: Mapping[int, float],
    determined: bool,
    bound_ratio: float,
    units: Mapping[str, str],
) -> Finding | None:
    """Unit error for energies beyond atomic scales.

    Args:
        reference: fitted per-element reference energies, eV by atomic number.
        determined: whether the compositions determine them (the fit has full
            rank); otherwise they are one of many solutions (one formula: H
            −600 eV for ethanol in eV) and are not judged.
        bound_ratio: the median over molecules of |E| / Σ_i
            :func:`atom_energy_bound` (Z_i): above 1, no molecule of real atoms.
        units: the dataset's stored units, by kind.
    """
    if determined:
        finding = check_reference_energies(reference, units)
        if finding is not None:
            return finding
    if not bound_ratio > 1:  # NaN: no molecules to judge
        return None
    return Finding(
        f"molecular energies beyond atomic scales: the median molecule's |E| is "
        f"{bound_ratio:.3g} times the most its free atoms can have; energies in a "
        f"smaller unit than declared? Set {_unit_hint(units, 'energy')} to their "
        "unit",
        unit_error=True,
    )


def check_neighbour_distance(median: float, units: Mapping[str, str]) -> Finding | None:
    """Warning when the median nearest-neighbour distance ``median`` [Å] is outside
    :data:`NEIGHBOUR_RANGE` (never a unit error: clusters and dissociation curves
    have long distances)."""
    lo, hi = NEIGHBOUR_RANGE
    if lo <= median <= hi or math.isnan(median):  # NaN: no distances to judge
        return None
    return Finding(
        f"median nearest-neighbour distance {median:.4g} Å is outside {lo}–{hi} Å "
        f"(bond lengths); positions in another unit than declared? Check "
        f"{_unit_hint(units, 'length')}",
        unit_error=False,
    )


def check_force_magnitude(median: float, units: Mapping[str, str]) -> Finding | None:
    """Finding when the median atomic force magnitude ``median`` [eV/Å] is outside
    :data:`FORCE_RANGE`: a unit error above it, a warning below it."""
    lo, hi = FORCE_RANGE
    if lo <= median <= hi or math.isnan(median):
        return None
    where = "larger" if median > hi else "smaller"
    return Finding(
        f"median atomic force magnitude {median:.4g} eV/Å is {where} than molecular "
        f"forces ({lo}–{hi} eV/Å); forces in another unit than declared? Check "
        f"{_unit_hint(units, 'energy')} and {_unit_hint(units, 'length')} (forces: "
        f"{units.get('forces', '?')})",
        unit_error=median > hi,
    )
