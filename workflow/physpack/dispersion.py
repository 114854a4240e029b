"""Grimme's D3 dispersion correction, the optional long-range term of PhysNet.

PhysNet (Unke & Meuwly, JCTC 2019) may add D3 to the network's energy. With
``data.dispersion`` set, conversion subtracts the D3 energy and forces from the
reference values (the network learns the short-range remainder), the packed
manifest and then the checkpoint record the settings, and the ASE calculator and
``physpack predict`` add D3 back, computed for the geometry at hand. This module
is the one evaluation of D3 for all of them, through the ``dftd3`` package
(s-dftd3's Python API; the ``d3`` extra, ``pip install 'physpack[d3]'``).

Settings are a damping function (``bj``: rational, Becke–Johnson; ``zero``) and a
functional name that ``dftd3`` has parameters for (e.g. ``pbe0``, ``b3lyp``), with
dftd3's default of the two-body term only (no ATM three-body term). Molecules
only: no periodic cells. Units at the interface are physpack's (Å in, eV and eV/Å
out); dftd3 itself works in Bohr and Hartree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from physpack.errors import ConfigError, InputError
from physpack.units import energy_factor, length_factor

#: damping name (config) → dftd3 damping-parameter class and the method's label
DAMPINGS: dict[str, tuple[str, str]] = {
    "bj": ("RationalDampingParam", "D3(BJ)"),
    "zero": ("ZeroDampingParam", "D3(0)"),
}
#: largest atomic number with D3 reference data (s-dftd3: H–Lr); dftd3 returns
#: 0 or crashes for heavier elements, so they are refused first
MAX_D3_Z = 103
_HARTREE = energy_factor("Hartree")  # eV per Hartree
_BOHR = length_factor("Bohr")  # Å per Bohr
INSTALL_HINT = "pip install 'physpack[d3]'"


@dataclasses.dataclass(frozen=True)
class DispersionSettings:
    """The ``data.dispersion`` section: which D3 variant.

    Attributes:
        damping: ``"bj"`` (rational) or ``"zero"``.
        functional: a functional name dftd3 knows, e.g. ``pbe0`` (stored in lower
            case: dftd3 reads names case-insensitively).
    """

    damping: Literal["bj", "zero"]
    functional: str

    def __post_init__(self) -> None:
        if self.damping not in DAMPINGS:
            raise ConfigError(
                f"dispersion.damping: {self.damping!r}; expected one of "
                f"{', '.join(DAMPINGS)}"
            )
        # dftd3 reads names case-insensitively: one spelling compares equal
        object.__setattr__(self, "functional", str(self.functional).lower())

    @property
    def label(self) -> str:
        """E.g. ``D3(BJ)/pbe0``: what energies that include it are labelled with."""
        return f"{DAMPINGS[self.damping][1]}/{self.functional}"

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> DispersionSettings:
        """Settings from ``{"damping": ..., "functional": ...}`` (further keys of a
        record, such as ``dftd3_version``, are ignored)."""
        try:
            return cls(damping=mapping["damping"], functional=mapping["functional"])
        except (KeyError, TypeError) as exc:
            raise ConfigError(
                f"dispersion: expected damping and functional, got {mapping!r}"
            ) from exc


class D3Failure(InputError):
    """D3 cannot be evaluated for a molecule: an element without D3 data (key
    ``Z``), atoms too close for dftd3 or a non-finite result (key ``R``).

    Attributes:
        key: ``"Z"`` or ``"R"``; atom: the atom concerned, or ``None``;
        reason: what is wrong (the message is ``<where>: <reason>``).
    """

    def __init__(self, where: str, key: str, reason: str, atom: int | None = None):
        self.key, self.reason, self.atom = key, reason, atom
        super().__init__(f"{where}: {reason}")


def settings_of(record: Mapping[str, Any] | None) -> DispersionSettings | None:
    """The settings of a manifest or checkpoint record (``None``: no dispersion)."""
    return None if record is None else DispersionSettings.from_mapping(record)


def _dftd3(settings: DispersionSettings, needed_for: str) -> Any:
    """The ``dftd3.interface`` module; ConfigError naming the extra when missing."""
    try:
        import dftd3.interface
    except ImportError as exc:
        raise ConfigError(
            f"{needed_for}: data.dispersion = {settings.label} needs the dftd3 "
            f"package, which is not installed: {INSTALL_HINT}"
        ) from exc
    return dftd3.interface


def dftd3_version() -> str:
    """Version of the installed ``dftd3`` package."""
    import dftd3

    return str(dftd3.__version__)


class D3:
    """The D3 energy and forces of molecules, for one set of settings.

    Args:
        settings: damping and functional.
        needed_for: what needs it, the start of the message when dftd3 is
            missing (e.g. ``"conversion"``, ``"best.ckpt (trained with D3
            subtracted)"``).

    Raises:
        ConfigError: dftd3 is not installed, or it has no parameters for the
            functional with this damping.
    """

    def __init__(self, settings: DispersionSettings, needed_for: str = "D3"):
        self.settings = settings
        self._api = _dftd3(settings, needed_for)
        param_class = getattr(self._api, DAMPINGS[settings.damping][0])
        try:
            self._param = param_class(method=settings.functional)
        except RuntimeError as exc:
            raise ConfigError(
                f"data.dispersion.functional: dftd3 has no {settings.label} "
                f"parameters for {settings.functional!r} ({exc})"
            ) from exc
        self.version = dftd3_version()

    def record(self) -> dict[str, str]:
        """What the manifest and the checkpoint store: the settings, their label
        and the dftd3 version that computed them."""
        return {
            **dataclasses.asdict(self.settings),
            "label": self.settings.label,
            "dftd3_version": self.version,
        }

    def molecule(
        self, numbers: np.ndarray, positions: np.ndarray, where: str = "molecule"
    ) -> tuple[float, np.ndarray]:
        """D3 of one molecule.

        Args:
            numbers: int (n,) atomic numbers, 1..:data:`MAX_D3_Z`.
            positions: float (n, 3) positions [Å].
            where: names the molecule in messages.

        Returns:
            energy [eV] (float), forces float64 (n, 3) [eV/Å] (minus the gradient).

        Raises:
            D3Failure: an element without D3 data, atoms too close for dftd3, or a
                non-finite result.
        """
        numbers = np.asarray(numbers, np.int32)
        heavy = (numbers < 1) | (numbers > MAX_D3_Z)
        if heavy.any():
            j = int(np.argmax(heavy))
            reason = (
                f"atomic number {numbers[j]} of atom {j} has no D3 reference data "
                f"(dftd3 covers 1..{MAX_D3_Z})"
            )
            raise D3Failure(where, "Z", reason, j)
        bohr = np.asarray(positions, np.float64) / _BOHR
        try:
            model = self._api.DispersionModel(numbers, bohr)
            result = model.get_dispersion(self._param, grad=True)
        except (RuntimeError, ValueError) as exc:
            raise D3Failure(where, "R", f"dftd3 failed ({exc})") from exc
        energy = float(result["energy"]) * _HARTREE
        forces = -np.asarray(result["gradient"], np.float64) * (_HARTREE / _BOHR)
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            raise D3Failure(where, "R", "non-finite D3 energy or forces")
        return energy, forces

    def molecules(
        self,
        numbers: np.ndarray,
        positions: np.ndarray,
        counts: np.ndarray,
        where: str = "",
        first: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """D3 of consecutive molecules, unpadded.

        Args:
            numbers: int (A,) atomic numbers of all molecules, concatenated.
            positions: float (A, 3) positions [Å].
            counts: int (m,) atoms per molecule, summing to A.
            where: the data (a file name), for messages.
            first: index of the first molecule, for messages.

        Returns:
            energies float64 (m,) [eV], forces float64 (A, 3) [eV/Å].

        Raises:
            InputError: as :meth:`molecule`, naming ``where``, the key, the
                molecule (``first`` + its position) and the atom.
        """
        energies = np.empty(len(counts), np.float64)
        forces = np.empty((len(numbers), 3), np.float64)
        stop = np.cumsum(counts, dtype=np.int64)
        for i, (a, b) in enumerate(zip(stop - counts, stop, strict=True)):
            try:
                energies[i], forces[a:b] = self.molecule(numbers[a:b], positions[a:b])
            except D3Failure as exc:
                atom = "" if exc.atom is None else f", atom {exc.atom}"
                raise InputError(
                    f"{where}: key {exc.key!r}, molecule {first + i}{atom}: "
                    f"{exc.reason}"
                ) from exc
        return energies, forces


def check_same(
    a: Mapping[str, Any] | None,
    b: Mapping[str, Any] | None,
    names: tuple[str, str],
    rule: str,
) -> None:
    """InputError unless records ``a`` and ``b`` (of the things ``names``) have the
    same settings or both none; ``rule`` says why they must."""
    if settings_of(a) != settings_of(b):
        raise InputError(
            f"{names[0]} has dispersion {describe(a)}, but {names[1]} has "
            f"{describe(b)}; {rule}"
        )


def committee_dispersion(
    members: Sequence[tuple[str, Mapping[str, Any] | None]],
) -> Mapping[str, Any] | None:
    """The D3 record shared by the models ``members`` (``(name, record)`` each,
    the first one's record); InputError naming two members that disagree."""
    name, first = members[0]
    for other, record in members[1:]:
        check_same(
            record,
            first,
            (other, name),
            "the members of a committee share their data.dispersion",
        )
    return first


def committee_d3(members: Sequence[tuple[str, Mapping[str, Any] | None]]) -> D3 | None:
    """The D3 that predictions of the models ``members`` (``(name, checkpoint
    record)`` each) add back; ``None`` when they were trained without. Made before
    any prediction, so that a missing dftd3 stops first (ConfigError); InputError
    when the members disagree (:func:`committee_dispersion`)."""
    settings = settings_of(committee_dispersion(members))
    if settings is None:
        return None
    return D3(settings, f"{members[0][0]} (trained with D3 subtracted)")


def describe(record: Mapping[str, Any] | None) -> str:
    """``D3(BJ)/pbe0`` or ``none``."""
    settings = settings_of(record)
    return "none" if settings is None else settings.label
