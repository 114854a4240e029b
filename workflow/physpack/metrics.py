"""Error metrics, defined once: sums, MAE/RMSE, per-element errors, names with
units, and the committee of several models.

Training's validation (:mod:`physpack.training.losses`), the evaluation stage,
committees (:mod:`physpack.evaluation.ensemble`), the comparison of runs and the
benchmarks all read their numbers and names from here.

*Sums.* An error metric is computed from three sums over the error values
``e = prediction − reference``: Σ|e|, Σe² and their count (:class:`ErrorSums`).
Sums of batches, devices or splits add; one division at the end gives the MAE
and RMSE of the union (as flax ``clu.metrics.Average`` does). :func:`error_sums`
works on numpy arrays on the host and on JAX arrays inside a jitted step alike
(the array's own namespace is used), so this module imports no JAX.

*Quantities and units.* :data:`QUANTITIES` is the table of what is measured:
its canonical unit (:mod:`physpack.units`: eV, eV/Å, e·Å) and the units people
read, each with a label (``metrics.json`` keys and tables: ``meV/Angstrom``), a
tag (flat metric names: ``meV_per_A``), a symbol (figure axes: ``meV/Å``) and
the scale factor from the canonical unit. No other module multiplies by 1000.

*Names.* One scheme, ``<prefix><quantity>_<statistic>_<unit tag>``
(:func:`metric_name`): ``valid_forces_mae_eV_per_A`` in ``history.csv``,
``energy_mae_meV_per_atom`` in the benchmarks. :data:`MONITORED` lists the
validation metrics of training in their order.

*Committees.* :func:`committee` stacks the predictions of K models of the same
molecules (energies, forces, dipoles, charges); the mean is the committee's
prediction and the standard deviation over members (ddof 0) its spread.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from ase.data import chemical_symbols

from physpack.units import DIPOLE_TO_E_ANGSTROM, EV_TO_KCAL_MOL

#: a numpy array, a JAX array (also traced), or a host float
Array = Any

STATISTICS = ("mae", "rmse")


# --------------------------------------------------------------------------------
# Quantities, units and names
# --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Unit:
    """One unit of a quantity.

    Attributes:
        label: the unit in ``metrics.json`` and tables (``"meV/Angstrom"``).
        tag: the unit in flat metric names (``"meV_per_A"``).
        symbol: the unit on figure axes (``"meV/Å"``).
        scale: value in this unit = ``scale`` × value in the canonical unit.
    """

    label: str
    tag: str
    symbol: str
    scale: float


@dataclasses.dataclass(frozen=True)
class Quantity:
    """A measured quantity: its name in metric names and its units, the
    canonical (:mod:`physpack.units`) one first."""

    name: str
    stem: str
    units: tuple[Unit, ...]

    @property
    def canonical(self) -> Unit:
        return self.units[0]

    def unit(self, which: str | None = None) -> Unit:
        """The unit with label, tag or symbol ``which`` (``None``: canonical)."""
        if which is None:
            return self.canonical
        for u in self.units:
            if which in (u.label, u.tag, u.symbol):
                return u
        known = ", ".join(u.label for u in self.units)
        raise KeyError(f"{self.name}: no unit {which!r} (known: {known})")


def _energy_units(per: str, tag: str) -> tuple[Unit, ...]:
    return (
        Unit(f"eV{per}", f"eV{tag}", f"eV{per}", 1.0),
        Unit(f"meV{per}", f"meV{tag}", f"meV{per}", 1e3),
        Unit(f"kcal/mol{per}", f"kcal_per_mol{tag}", f"kcal/mol{per}", EV_TO_KCAL_MOL),
    )


#: The quantities whose errors are reported. ``energy``: total energy per
#: molecule; ``energy_per_atom``: that error divided by the molecule's atom
#: count; ``forces`` and ``dipole``: per Cartesian component.
QUANTITIES: dict[str, Quantity] = {
    q.name: q
    for q in (
        Quantity("energy", "energy", _energy_units("", "")),
        Quantity("energy_per_atom", "energy", _energy_units("/atom", "_per_atom")),
        Quantity(
            "forces",
            "forces",
            (
                Unit("eV/Angstrom", "eV_per_A", "eV/Å", 1.0),
                Unit("meV/Angstrom", "meV_per_A", "meV/Å", 1e3),
                Unit(
                    "kcal/mol/Angstrom",
                    "kcal_per_mol_per_A",
                    "kcal/mol/Å",
                    EV_TO_KCAL_MOL,
                ),
            ),
        ),
        Quantity(
            "dipole",
            "dipole",
            (
                Unit("e*Angstrom", "eA", "e·Å", 1.0),
                Unit("Debye", "Debye", "D", 1.0 / DIPOLE_TO_E_ANGSTROM["Debye"]),
            ),
        ),
    )
}


#: the unit (a label of :data:`QUANTITIES`) each quantity is shown in, in the
#: comparison's tables and the figures
SHOWN_UNITS = {
    "energy": "meV",
    "energy_per_atom": "meV/atom",
    "forces": "meV/Å",
    "dipole": "Debye",
}


def unit_of(quantity: str, unit: str | None = None) -> Unit:
    """The :class:`Unit` ``unit`` (label, tag or symbol; ``None``: canonical) of
    ``quantity``."""
    return QUANTITIES[quantity].unit(unit)


def convert(value: Array, quantity: str, unit: str) -> Array:
    """``value`` (canonical unit of ``quantity``) in ``unit``; any array or float."""
    return value * unit_of(quantity, unit).scale


def in_units(value: float, quantity: str) -> dict[str, float]:
    """A canonical value in every unit of ``quantity``, keyed by unit label
    (``{"eV/Angstrom": v, "meV/Angstrom": 1000 v, "kcal/mol/Angstrom": ...}``)."""
    return {u.label: value * u.scale for u in QUANTITIES[quantity].units}


def metric_name(
    quantity: str, statistic: str, unit: str | None = None, prefix: str = ""
) -> str:
    """The flat name of a metric: ``<prefix><stem>_<statistic>_<unit tag>``, e.g.
    ``metric_name("forces", "mae", prefix="valid_")`` is
    ``"valid_forces_mae_eV_per_A"``, ``metric_name("energy_per_atom", "mae",
    "meV/atom")`` is ``"energy_mae_meV_per_atom"``."""
    if statistic not in STATISTICS:
        raise KeyError(f"unknown statistic {statistic!r} (known: {STATISTICS})")
    q = QUANTITIES[quantity]
    return f"{prefix}{q.stem}_{statistic}_{q.unit(unit).tag}"


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One monitored metric: a statistic of a quantity's errors in a unit."""

    quantity: str
    statistic: str
    unit: str | None = None  # None: canonical

    def name(self, prefix: str = "") -> str:
        return metric_name(self.quantity, self.statistic, self.unit, prefix)


#: The validation metrics of training, in the order of ``history.csv``.
MONITORED: tuple[MetricSpec, ...] = tuple(
    MetricSpec(q, s)
    for q in ("energy", "energy_per_atom", "forces", "dipole")
    for s in STATISTICS
)


# --------------------------------------------------------------------------------
# Errors from sums
# --------------------------------------------------------------------------------
class ErrorSums(NamedTuple):
    """Additive sums of error values (a pytree: ``jax.lax.psum`` adds it).

    Attributes:
        abs: Σ|e| in the quantity's unit.
        sq: Σe² in its square.
        count: number of values (float).
    """

    abs: Array
    sq: Array
    count: Array

    def plus(self, other: ErrorSums) -> ErrorSums:
        """The sums of the union of both sets of values."""
        return ErrorSums(
            self.abs + other.abs, self.sq + other.sq, self.count + other.count
        )

    @property
    def mae(self) -> float:
        return mae_rmse_from_sums(*self)[0]

    @property
    def rmse(self) -> float:
        return mae_rmse_from_sums(*self)[1]


def _namespace(x: Array) -> Any:
    """numpy, or jax.numpy for JAX arrays and tracers (without importing JAX)."""
    ns = getattr(x, "__array_namespace__", None)
    return np if ns is None or isinstance(x, np.ndarray) else ns()


def error_sums(err: Array, mask: Array | None = None) -> ErrorSums:
    """Σ|e|, Σe² and the count of the error values ``err`` (any shape).

    Args:
        err: errors (prediction − reference), numpy or JAX, any float dtype.
        mask: bool, broadcastable to ``err.shape``: which values count (padding
            is False); its values of ``err`` are replaced by 0 (not multiplied:
            NaN in padding stays out).

    Returns:
        Scalars of ``err``'s namespace and dtype (float64 for numpy input that is
        not floating).
    """
    xp = _namespace(err)
    err = xp.asarray(err)
    if not xp.issubdtype(err.dtype, xp.floating):
        err = err.astype(xp.float64 if xp is np else xp.float32)
    if mask is None:
        count = xp.asarray(err.size, dtype=err.dtype)
    else:
        mask = xp.broadcast_to(xp.asarray(mask), err.shape)
        err = xp.where(mask, err, xp.zeros((), err.dtype))
        count = xp.sum(mask).astype(err.dtype)
    return ErrorSums(xp.sum(xp.abs(err)), xp.sum(err * err), count)


def add_sums(parts: Iterable[ErrorSums]) -> ErrorSums:
    """The sums of the union of several sets of values (batches, devices)."""
    total = ErrorSums(0.0, 0.0, 0.0)
    for p in parts:
        total = total.plus(p)
    return total


def mae_rmse_from_sums(
    abs_sum: float, sq_sum: float, count: float
) -> tuple[float, float]:
    """Mean absolute error and root mean square error from Σ|e|, Σe² and the count
    (no values, count 0: NaN and NaN). Host floats (float64)."""
    n = float(count)
    if not n > 0:
        return math.nan, math.nan
    return float(abs_sum) / n, math.sqrt(max(float(sq_sum), 0.0) / n)


def mae_rmse(err: Array) -> tuple[float, float]:
    """MAE and RMSE of an array of errors (any shape; computed in float64 on the
    host; empty: NaN and NaN)."""
    return mae_rmse_from_sums(*error_sums(np.asarray(err, np.float64)))


def flatten_sums(sums: Mapping[str, ErrorSums]) -> dict[str, Array]:
    """``{quantity: ErrorSums}`` as flat scalars ``<quantity>_abs``, ``_sq``,
    ``_count`` (the form a training loop adds key by key)."""
    return {f"{q}_{f}": v for q, s in sums.items() for f, v in s._asdict().items()}


def unflatten_sums(flat: Mapping[str, Array]) -> dict[str, ErrorSums]:
    """The inverse of :func:`flatten_sums` (quantities in their order there)."""
    out = {}
    for key in flat:
        if key.endswith("_count"):
            q = key[: -len("_count")]
            out[q] = ErrorSums(flat[f"{q}_abs"], flat[f"{q}_sq"], flat[key])
    return out


def monitored_metrics(
    sums: Mapping[str, ErrorSums], prefix: str = ""
) -> dict[str, float]:
    """The :data:`MONITORED` metrics of the quantities in ``sums`` (canonical
    units), by :func:`metric_name`, in :data:`MONITORED` order."""
    out = {}
    for spec in MONITORED:
        if spec.quantity in sums:
            s = sums[spec.quantity]
            value = s.mae if spec.statistic == "mae" else s.rmse
            out[spec.name(prefix)] = convert(value, spec.quantity, spec.unit)
    return out


# --------------------------------------------------------------------------------
# Per element
# --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ElementErrors:
    """The errors of one element's atoms.

    Attributes:
        atomic_number: Z; n_atoms: its atoms; sums: over their error values.
    """

    atomic_number: int
    n_atoms: int
    sums: ErrorSums


def per_element(err: Array, numbers: Array) -> dict[str, ElementErrors]:
    """Errors of each element's atoms, keyed by chemical symbol in order of
    atomic number.

    Args:
        err: (A, ...) errors, one row per atom (forces: (A, 3); all the
            components of an atom count, as in the overall force MAE).
        numbers: int (A,) atomic numbers of the rows.
    """
    err = np.asarray(err, np.float64)
    z = np.asarray(numbers).reshape(-1)
    if err.shape[:1] != z.shape:
        raise ValueError(f"per_element: errors {err.shape}, numbers {z.shape}")
    out = {}
    for element in np.unique(z):
        rows = z == element
        out[chemical_symbols[int(element)]] = ElementErrors(
            int(element), int(rows.sum()), error_sums(err[rows])
        )
    return out


# --------------------------------------------------------------------------------
# Committees
# --------------------------------------------------------------------------------
#: the predictions a committee combines: energies (M,) eV, forces (A, 3) eV/Å,
#: dipoles (M, 3) e·Å, atomic charges (A,) e
COMMITTEE_QUANTITIES = ("energy", "forces", "dipole", "charges")


@dataclasses.dataclass(frozen=True)
class Committee:
    """The predictions of K models of the same molecules for one quantity.

    Attributes:
        members: float64 (K, ...) each member's predictions.
    """

    members: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """(...) the committee's prediction."""
        return self.members.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        """(...) the spread over members (ddof 0: the committee's own spread)."""
        return self.members.std(axis=0)


def committee(
    members: Sequence[Mapping[str, Array | None]],
) -> dict[str, Committee]:
    """Combine members' predictions, ``{quantity: array or None}`` each (keys of
    :data:`COMMITTEE_QUANTITIES`), for the quantities that every member
    predicts; shapes must agree."""
    if not members:
        raise ValueError("committee: no members")
    out = {}
    for q in COMMITTEE_QUANTITIES:
        values = [m.get(q) for m in members]
        if any(v is None for v in values):
            continue
        shapes = {np.shape(v) for v in values}
        if len(shapes) != 1:
            raise ValueError(f"committee: members' {q} shapes differ: {shapes}")
        out[q] = Committee(np.stack([np.asarray(v, np.float64) for v in values]))
    return out
