"""Unit conversion at the edges of the package.

Everything inside physpack is in eV, Å, eV/Å, e·Å and e. Conversion factors come
from ASE (CODATA 2014), so that numbers agree with ASE-based tooling.
"""

from __future__ import annotations

from ase import units as _ase

from physpack.errors import ConfigError

#: Multiply an energy in the given unit by this factor to get eV.
ENERGY_TO_EV: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": _ase.kcal / _ase.mol,
    "kJ/mol": _ase.kJ / _ase.mol,
    "Hartree": _ase.Hartree,
}

#: Multiply a length in the given unit by this factor to get Å.
LENGTH_TO_ANGSTROM: dict[str, float] = {
    "Angstrom": 1.0,
    "Bohr": _ase.Bohr,
    "nm": 10.0,
}

#: Multiply a dipole moment in the given unit by this factor to get e·Å.
DIPOLE_TO_E_ANGSTROM: dict[str, float] = {
    "e*Angstrom": 1.0,
    "e*Bohr": _ase.Bohr,
    "Debye": _ase.Debye,
}

_ALIASES = {
    "ev": "eV",
    "mev": "meV",
    "kcal/mol": "kcal/mol",
    "kcal_mol": "kcal/mol",
    "kj/mol": "kJ/mol",
    "kj_mol": "kJ/mol",
    "hartree": "Hartree",
    "ha": "Hartree",
    "eh": "Hartree",
    "angstrom": "Angstrom",
    "a": "Angstrom",
    "å": "Angstrom",
    "ang": "Angstrom",
    "bohr": "Bohr",
    "a0": "Bohr",
    "nm": "nm",
    "e*angstrom": "e*Angstrom",
    "eang": "e*Angstrom",
    "e*bohr": "e*Bohr",
    "au": "e*Bohr",
    "debye": "Debye",
    "d": "Debye",
}

#: Labels of the canonical units, as written into manifests, checkpoints, reports.
CANONICAL_UNITS: dict[str, str] = {
    "energy": "eV",
    "length": "Angstrom",
    "forces": "eV/Angstrom",
    "dipole": "e*Angstrom",
    "charge": "e",
}


def _lookup(table: dict[str, float], unit: str, kind: str) -> tuple[str, float]:
    name = _ALIASES.get(str(unit).strip().lower(), unit)
    if name not in table:
        raise ConfigError(
            f"unknown {kind} unit {unit!r}; expected one of {', '.join(table)}"
        )
    return name, table[name]


def energy_factor(unit: str) -> float:
    """Factor that converts energies in ``unit`` to eV."""
    return _lookup(ENERGY_TO_EV, unit, "energy")[1]


def length_factor(unit: str) -> float:
    """Factor that converts lengths in ``unit`` to Å."""
    return _lookup(LENGTH_TO_ANGSTROM, unit, "length")[1]


def dipole_factor(unit: str) -> float:
    """Factor that converts dipole moments in ``unit`` to e·Å."""
    return _lookup(DIPOLE_TO_E_ANGSTROM, unit, "dipole")[1]


def canonical_unit_name(unit: str, kind: str) -> str:
    """The canonical spelling of ``unit`` (e.g. ``'ha'`` → ``'Hartree'``)."""
    table = {"energy": ENERGY_TO_EV, "length": LENGTH_TO_ANGSTROM}.get(
        kind, DIPOLE_TO_E_ANGSTROM
    )
    return _lookup(table, unit, kind)[0]


#: eV → kcal/mol, for reports in the units chemists think in.
EV_TO_KCAL_MOL: float = 1.0 / ENERGY_TO_EV["kcal/mol"]
