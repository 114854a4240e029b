"""Configuration sections: one frozen dataclass per ``config.yaml`` section.

The workflow validates ``config.yaml`` against ``workflow/schemas/config.schema.yaml``
(with defaults) before anything runs, then hands each rule only the section it
uses, as JSON. The command-line tools accept the same section either as
``--config '<json>'`` or as one ``--flag`` per field, and check it again here, so a
module called from Python or by hand gets the same validation.

Defaults here equal the schema's defaults (``tests/test_config.py`` checks it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, Literal, TypeVar

from physpack.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The input (a padded NPZ, or a packed directory read in place) and its units.

    Exactly one of ``npz`` and ``packed`` is set for a workflow run
    (:meth:`source`). Units left ``None`` mean eV, Å, e·Å for an NPZ and the
    manifest's for a packed directory; a packed directory without
    ``manifest.json`` needs all three declared (:meth:`declared_units`).
    """

    npz: str | None = None
    packed: str | None = None
    energy_unit: str | None = None
    length_unit: str | None = None
    dipole_unit: str | None = None

    def source(self) -> tuple[Literal["npz", "packed"], str]:
        """``("npz", path)`` or ``("packed", path)``; ConfigError unless exactly
        one of the two is set."""
        if (self.npz is None) == (self.packed is None):
            both = f"npz={self.npz!r}, packed={self.packed!r}"
            raise ConfigError(
                f"data: set exactly one of data.npz (a padded NPZ) and data.packed "
                f"(a packed directory), and the other to null; got {both}"
            )
        return ("npz", self.npz) if self.npz is not None else ("packed", self.packed)  # type: ignore[return-value]

    def declared_units(self) -> dict[str, str]:
        """The units set here, by kind (``energy``, ``length``, ``dipole``)."""
        units = {
            "energy": self.energy_unit,
            "length": self.length_unit,
            "dipole": self.dipole_unit,
        }
        return {k: v for k, v in units.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class ValidateConfig:
    """Integrity checks of a packed directory."""

    min_distance: float = 0.4  # Å; two atoms of one molecule closer than this: error
    outlier_z: float = 10.0  # robust z-score above which energies/forces are flagged
    max_reported: int = 50  # problems listed per check (the count is always exact)
    checksums: bool = True  # verify sha256 against manifest.json when present
    require_manifest: bool | None = None  # no manifest.json is an error (None: auto)


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Train/valid/test fractions; the rest of the data is train."""

    valid: float = 0.1
    test: float = 0.1
    seed: int = 42
    group_by: Literal["none", "formula"] = "none"


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """Batching. ``batch_size`` is molecules per batch (on average, for packed batches).

    ``max_atoms``/``max_pairs``/``max_molecules`` override the packed budgets that are
    otherwise derived from the dataset; ``num_atoms`` is the padded width of the
    older dense form (``None``: the dataset's largest molecule).
    """

    batch_size: int = 32
    bucket_size: int = 8192
    num_atoms: int | None = None
    max_atoms: int | None = None
    max_pairs: int | None = None
    max_molecules: int | None = None
    prefetch: int = 2
    pairs: Literal["all", "cutoff"] = "all"  # cutoff: pairs within model.cutoff
    giant_atoms: int | None = None  # larger molecules: a second budget (None: off)
    max_molecule_atoms: int | None = None  # larger molecules are refused


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """PhysNet hyperparameters (cutoff in Å)."""

    features: int = 64
    max_degree: int = 0
    num_iterations: int = 3
    num_basis_functions: int = 32
    cutoff: float = 5.0
    max_atomic_number: int = 36
    n_res: int = 2
    zbl: bool = False
    charges: bool = False


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation. Loss = energy_weight·MSE(E/atom) + forces_weight·MSE(F) (+ dipole)."""

    epochs: int = 200
    max_minutes: float | None = None  # wall-clock budget; stops at an epoch boundary
    patience: int = 40  # epochs without validation improvement before stopping
    optimizer: Literal["amsgrad", "adam", "adamw"] = "amsgrad"
    learning_rate: float = 1e-3
    schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    warmup_steps: int = 200
    final_lr_fraction: float = 0.01
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    weight_decay: float = 0.0
    clip_norm: float = 10.0
    ema_decay: float = 0.99
    energy_weight: float = 100.0
    forces_weight: float = 50.0
    dipole_weight: float = 1.0
    seed: int = 0
    devices: int | Literal["all"] = "all"
    state_every_steps: int = 200  # resumable state written at least this often
    max_nonfinite_steps: int = 20  # consecutive rejected steps before stopping
    reference_energies: str | dict[str, float] = "fit"  # or {symbol: E0}
    reference_energy_unit: str = "eV"  # unit of the values in reference_energies


Section = TypeVar("Section")

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "validate": ValidateConfig,
    "split": SplitConfig,
    "loader": LoaderConfig,
    "model": ModelConfig,
    "train": TrainConfig,
}


def section_from_mapping(
    cls: type[Section], mapping: dict[str, Any] | None, name: str
) -> Section:
    """Build section ``cls`` from a mapping, refusing unknown keys and wrong types."""
    mapping = dict(mapping or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(
            f"{name}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(hints[k], v, f"{name}.{k}") for k, v in mapping.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    union = origin in (typing.Union, types.UnionType)
    options = typing.get_args(hint) if union else (hint,)
    errors = []
    for opt in options:
        if opt is type(None):
            if value is None:
                return None
            continue
        if typing.get_origin(opt) is Literal:
            if value in typing.get_args(opt):
                return value
            errors.append(" | ".join(map(repr, typing.get_args(opt))))
            continue
        if opt is bool:
            if isinstance(value, bool):
                return value
        elif opt is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif opt is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif opt is str:
            if isinstance(value, str):
                return value
        errors.append(getattr(opt, "__name__", str(opt)))
    raise ConfigError(f"{where}: got {value!r}, expected {' or '.join(errors)}")


def add_section_arguments(
    parser: argparse.ArgumentParser, cls: type, name: str, option: str = "--config"
) -> None:
    """Add ``option`` (``--config JSON``) for the whole section and ``--<field>`` per
    field. A command that takes several sections gives each its own ``option``
    (e.g. ``--train-config``); their field names must then be distinct."""
    group = parser.add_argument_group(f"{name} settings (config.yaml section '{name}')")
    group.add_argument(
        option,
        dest=f"_{name}_json",
        metavar="JSON",
        help=f"the '{name}' section as a JSON object; single flags override it",
    )
    for f in dataclasses.fields(cls):
        group.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f"_{name}__{f.name}",
            metavar="VALUE",
            type=_parse_flag,
            help=f"default: {f.default!r}",
        )


def _parse_flag(text: str) -> Any:
    """A flag value as JSON when it parses (numbers, true/false/null), else a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def section_from_args(
    cls: type[Section], args: argparse.Namespace, name: str
) -> Section:
    """The section built from ``--config`` and per-field flags added by
    :func:`add_section_arguments`."""
    raw = getattr(args, f"_{name}_json", None)
    try:
        mapping = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise ConfigError(f"--config for '{name}' is not valid JSON ({exc})") from exc
    if not isinstance(mapping, dict):
        raise ConfigError(f"--config for '{name}' must be a JSON object")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = getattr(args, f"_{name}__{f.name}", None)
        if value is not None:
            mapping[f.name] = value
    return section_from_mapping(cls, mapping, name)


def section_to_json(section: Any) -> str:
    """Canonical JSON of a section (sorted keys), as the rules pass it."""
    return json.dumps(dataclasses.asdict(section), sort_keys=True)
