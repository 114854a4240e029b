"""Configuration sections: one frozen dataclass per ``config.yaml`` section.

``workflow/schemas/config.schema.yaml`` is the one definition of every key: its
type and range, its default and its description. The dataclasses here take their
defaults from it (:func:`schema_section`), the command-line flags their help
(:func:`add_section_arguments`), and every section is checked against its part of
the schema with ``jsonschema`` (:func:`section_from_mapping`), so the workflow, the
command line and a call from Python accept exactly the same values.

The workflow validates the whole configuration before anything runs
(:func:`check_workflow_config`), then hands each rule only the sections it uses,
as JSON; every stage writes the sections it was given to its log first
(:func:`section_from_args`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import inspect
import json
import os
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import jsonschema
import yaml

from physpack.dispersion import DispersionSettings
from physpack.errors import ConfigError

#: The configuration schema (JSON schema written as YAML). Resolved from the package
#: itself, so the editable install and a run from the workflow source read the same
#: file that the workflow validates against.
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"

_C = TypeVar("_C")


@functools.cache
def load_schema() -> dict[str, Any]:
    """The parsed configuration schema."""
    try:
        return yaml.safe_load(SCHEMA_PATH.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"cannot read the config schema {SCHEMA_PATH}: {exc}"
        ) from exc


def section_schema(name: str) -> dict[str, Any]:
    """The schema of config section ``name`` (``properties`` keyed by field)."""
    try:
        return load_schema()["properties"][name]
    except KeyError:
        raise ConfigError(f"the config schema has no section '{name}'") from None


def schema_section(name: str) -> Callable[[type[_C]], type[_C]]:
    """Class decorator (inside ``@dataclass``): fields of section ``name`` take
    their defaults from the schema.

    A field may still spell out a default, but it must equal the schema's; a field
    without a schema key, or a schema key without a default, is an error at import
    (tests/test_config.py also checks that every key has a field and a description).
    """

    def decorate(cls: type[_C]) -> type[_C]:
        keys = section_schema(name).get("properties", {})
        for field in inspect.get_annotations(cls):
            if field not in keys or "default" not in keys[field]:
                raise ConfigError(
                    f"{cls.__name__}.{field}: no default for '{name}.{field}' in "
                    f"{SCHEMA_PATH.name}"
                )
            default = keys[field]["default"]
            if isinstance(default, list):  # dataclass defaults must be immutable
                default = tuple(default)
            if field in cls.__dict__ and cls.__dict__[field] != default:
                raise ConfigError(
                    f"{cls.__name__}.{field} = {cls.__dict__[field]!r} differs from "
                    f"the schema default {default!r} of '{name}.{field}'"
                )
            setattr(cls, field, default)
        return cls

    return decorate


@dataclasses.dataclass(frozen=True)
@schema_section("data")
class DataConfig:
    """The input (a padded NPZ, or a packed directory read in place) and its units.

    Exactly one of ``npz`` and ``packed`` is set for a workflow run
    (:meth:`source`). Units left ``None`` mean eV, Å, e·Å for an NPZ and the
    manifest's for a packed directory (which units a packed directory must
    declare: :func:`physpack.data.descriptor.data_source`). ``dispersion`` (a mapping
    or :class:`~physpack.dispersion.DispersionSettings`; ``None``: none) is the
    D3 term conversion subtracts from energies and forces.
    """

    npz: str | tuple[str, ...] | None  # one NPZ, a list of shards or a glob
    packed: str | None
    energy_unit: str | None
    length_unit: str | None
    dipole_unit: str | None
    dispersion: DispersionSettings | None

    def __post_init__(self) -> None:
        if isinstance(self.dispersion, Mapping):  # as the schema checked it
            settings = DispersionSettings.from_mapping(self.dispersion)
            object.__setattr__(self, "dispersion", settings)

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

    @property
    def sharded(self) -> bool:
        """Whether ``npz`` names shards: a list, or a glob pattern."""
        return isinstance(self.npz, (list, tuple)) or (
            isinstance(self.npz, str) and glob.has_magic(self.npz)
        )

    def npz_files(self, workdir: str | os.PathLike = ".") -> list[str]:
        """The NPZ files of ``npz``: one, the list, or the glob's matches in sorted
        order (relative to ``workdir``, returned as written).

        Raises:
            ConfigError: ``npz`` unset, a glob without matches, a file listed twice,
                or two shards of the same name (the file name without ``.npz``,
                which names the shard's packed directory).
        """
        if self.npz is None:
            raise ConfigError("data.npz is not set")
        if isinstance(self.npz, str) and not glob.has_magic(self.npz):
            return [self.npz]
        files: list[str] = []
        patterns = [self.npz] if isinstance(self.npz, str) else list(self.npz)
        for pattern in patterns:
            if glob.has_magic(pattern):
                base = Path(workdir)
                found = sorted(
                    str(Path(m).relative_to(base))
                    if not Path(pattern).is_absolute()
                    else m
                    for m in glob.glob(str(base / pattern))
                )
                if not found:
                    raise ConfigError(f"data.npz: no file matches {pattern!r}")
                files += found
            else:
                files.append(pattern)
        names: dict[str, str] = {}
        for f in files:
            name = shard_name(f)
            if name in names:
                what = "is listed twice" if names[name] == f else f"and {names[name]!r}"
                raise ConfigError(
                    f"data.npz: {f!r} {what}: each shard needs its own file name "
                    f"(it names results/data/shards/{name}/)"
                )
            names[name] = f
        return files

    def declared_units(self) -> dict[str, str]:
        """The units set here, by kind (``energy``, ``length``, ``dipole``)."""
        units = {
            "energy": self.energy_unit,
            "length": self.length_unit,
            "dipole": self.dipole_unit,
        }
        return {k: v for k, v in units.items() if v is not None}


@dataclasses.dataclass(frozen=True)
@schema_section("validate")
class ValidateConfig:
    """Integrity checks of a packed directory."""

    min_distance: float  # Å; two atoms of one molecule closer than this: error
    outlier_z: float  # robust z-score above which energies/forces are flagged
    max_reported: int  # problems listed per check (the count is always exact)
    checksums: bool  # verify sha256 against manifest.json when present
    require_manifest: bool | None  # no manifest.json is an error (None: auto)
    allow_implausible_units: bool  # unit errors are warnings instead of errors


@dataclasses.dataclass(frozen=True)
@schema_section("split")
class SplitConfig:
    """Train/valid/test fractions; the rest of the data is train."""

    valid: float
    test: float
    seed: int
    group_by: Literal["none", "formula"]


@dataclasses.dataclass(frozen=True)
@schema_section("loader")
class LoaderConfig:
    """Batching. ``batch_size`` is molecules per batch (on average, for packed batches).

    ``max_atoms``/``max_pairs``/``max_molecules`` override the packed budgets that are
    otherwise derived from the dataset; ``num_atoms`` is the padded width of the
    older dense form (``None``: the dataset's largest molecule).
    """

    batch_size: int
    bucket_size: int
    num_atoms: int | None
    max_atoms: int | None
    max_pairs: int | None
    max_molecules: int | None
    prefetch: int
    pairs: Literal["auto", "all", "cutoff"]
    giant_atoms: int | Literal["auto"] | None
    max_molecule_atoms: int | None


@dataclasses.dataclass(frozen=True)
@schema_section("model")
class ModelConfig:
    """PhysNet hyperparameters (cutoff in Å)."""

    features: int
    max_degree: int
    num_iterations: int
    num_basis_functions: int
    cutoff: float
    max_atomic_number: int
    n_res: int  # atomic residual blocks per module
    n_res_interaction: int  # residual blocks on the message, per module
    n_res_output: int  # residual blocks in each output block
    vector_features: int  # channels of the degree >= 1 features
    radial_filter: Literal["linear", "mlp"]  # basis → filter map
    radial_basis: Literal["exponential", "bessel", "bernstein"]  # distance basis
    angular_degree: int  # largest degree of the angular density; 0: none
    angular_features: int  # channels of the angular density
    angular_interactions: int  # interactions, from the first, that add it
    zbl: bool
    charges: bool
    dipole_origin: Literal["center_of_mass", "center_of_nuclear_charge"]

    def __post_init__(self) -> None:
        if self.max_degree > 0 and self.num_iterations < 2:
            raise ConfigError(
                f"model.max_degree ({self.max_degree}) needs model.num_iterations "
                f">= 2: the equivariant features one interaction makes are read by "
                f"the next (got {self.num_iterations})"
            )
        if self.angular_degree > 0 and self.angular_interactions > self.num_iterations:
            raise ConfigError(
                f"model.angular_interactions ({self.angular_interactions}) exceeds "
                f"model.num_iterations ({self.num_iterations})"
            )


@dataclasses.dataclass(frozen=True)
@schema_section("train")
class TrainConfig:
    """Optimisation. Loss = energy_weight·MSE(E/atom) + forces_weight·MSE(F) (+ dipole)."""

    epochs: int
    max_minutes: float | None  # wall-clock budget; stops at an epoch boundary
    patience: int | None  # epochs without improvement before stopping; None: never
    optimizer: Literal["amsgrad", "adam", "adamw"]
    learning_rate: float
    schedule: Literal["cosine", "plateau", "constant"]
    warmup_steps: int
    final_lr_fraction: float
    plateau_factor: float
    plateau_patience: int
    weight_decay: float
    clip_norm: float
    ema_decay: float
    energy_weight: float
    forces_weight: float
    energy_stage_start: float | None  # fraction of the horizon; None: one stage
    energy_stage_energy_weight: float
    energy_stage_forces_weight: float
    dipole_weight: float
    nh_weight: float
    seed: int
    devices: int | Literal["all"]
    state_every_steps: int  # resumable state written at least this often
    max_nonfinite_steps: int  # consecutive rejected steps before stopping
    reference_energies: str | dict[str, float] = "fit"  # or {symbol: E0}
    reference_energy_unit: str = "eV"  # unit of the values in reference_energies
    init_from: str | None = None  # checkpoint to fine-tune from
    refit_reference: bool = True  # with init_from: refit E0 on this data
    freeze: tuple[str, ...] = ()  # parameter groups kept fixed

    def __post_init__(self) -> None:
        object.__setattr__(self, "freeze", tuple(self.freeze))


@dataclasses.dataclass(frozen=True)
@schema_section("md")
class MDConfig:
    """The stability stage: which test molecules, how long, at which temperatures,
    and when a molecule counts as broken (:mod:`physpack.simulation.stability`)."""

    enabled: bool  # part of the default target
    molecules: int  # largest test molecules, one conformation per composition
    temperatures: tuple[float, ...]  # K, one run each
    picoseconds: float
    timestep_fs: float
    ensemble: Literal["nve", "langevin"]
    friction_per_ps: float  # Langevin, 1/ps
    interval: int  # steps between written frames
    seed: int
    broken_stretch: float  # bond longer than this × its start: broken
    clash_factor: float  # non-bonded closer than this × Σ covalent radii: broken

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperatures", tuple(self.temperatures))


Section = TypeVar("Section")

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "validate": ValidateConfig,
    "split": SplitConfig,
    "loader": LoaderConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "md": MDConfig,
}


def _error_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path)


def _one_line(error: jsonschema.ValidationError, prefix: str) -> str:
    """A schema violation as one line naming the key: ``train.epochs: '20' is not
    of type 'integer'`` (never the schema itself)."""
    path = ".".join(p for p in (prefix, _error_path(error)) if p)
    if error.validator == "additionalProperties":
        known = ", ".join(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"{path}: unknown key(s) {', '.join(extra)}; known: {known}"
    if error.validator == "oneOf":
        options = [
            s.get("enum", [s.get("type")]) for s in error.schema.get("oneOf", [])
        ]
        wanted = " or ".join(str(o[0] if len(o) == 1 else o) for o in options)
        return f"{path}: got {error.instance!r}, expected {wanted}"
    return f"{path}: {error.message}"


def _best_error(
    instance: Any, schema: dict[str, Any]
) -> jsonschema.ValidationError | None:
    """The most relevant violation of ``schema`` by ``instance``, or ``None``."""
    validator = jsonschema.Draft202012Validator(schema)
    return jsonschema.exceptions.best_match(validator.iter_errors(instance))


def _check(instance: Any, schema: dict[str, Any], prefix: str) -> None:
    """Raise ConfigError (one line, the most relevant violation) unless ``instance``
    satisfies ``schema``."""
    error = _best_error(instance, schema)
    if error is not None:
        raise ConfigError(" ".join(_one_line(error, prefix).split()))


def section_from_mapping(
    cls: type[Section], mapping: Mapping[str, Any] | None, name: str
) -> Section:
    """Build section ``cls`` from a mapping checked against the schema's section
    ``name``: unknown keys, wrong types and values out of range are refused with a
    one-line :class:`ConfigError` naming the key; missing keys take the schema's
    defaults. Integers given for float fields become floats."""
    mapping = dict(mapping or {})
    _check(mapping, section_schema(name), name)
    hints = typing.get_type_hints(cls)
    values = {k: _as_float(hints[k], v) for k, v in mapping.items()}
    return cls(**values)


def _as_float(hint: Any, value: Any) -> Any:
    """``value`` as float when ``hint`` admits float but not int (JSON has one
    number type; the schema has already checked it)."""
    options = typing.get_args(hint) or (hint,)
    if (
        float in options
        and int not in options
        and isinstance(value, int)
        and not isinstance(value, bool)
    ):
        return float(value)
    return value


def _help(name: str, key: str) -> str:
    """A flag's help: the schema's description of ``name.key`` and its default."""
    spec = section_schema(name).get("properties", {}).get(key, {})
    text = " ".join(str(spec.get("description", "")).split())
    default = json.dumps(spec.get("default"))
    choices = spec.get("enum")
    if choices:
        text += f" (one of {', '.join(str(c) for c in choices if c is not None)})"
    return f"{text} [default: {default}]".strip().replace("%", "%%")


def add_section_arguments(
    parser: argparse.ArgumentParser, cls: type, name: str, option: str = "--config"
) -> None:
    """Add ``option`` (``--config JSON``) for the whole section and ``--<field>`` per
    field, with the schema's descriptions as help. A command that takes several
    sections gives each its own ``option`` (e.g. ``--train-config``); their field
    names must then be distinct."""
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
            default=argparse.SUPPRESS,  # absent: not in args; given null: None
            help=_help(name, f.name),
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
    :func:`add_section_arguments`. The effective section (every field, defaults
    included) is written to stderr as ``config <name>: <json>``, so that the log
    of every stage starts with the configuration it ran with."""
    raw = getattr(args, f"_{name}_json", None)
    try:
        mapping = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise ConfigError(f"--config for '{name}' is not valid JSON ({exc})") from exc
    if not isinstance(mapping, dict):
        raise ConfigError(f"--config for '{name}' must be a JSON object")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        flag = f"_{name}__{f.name}"
        if hasattr(args, flag):  # given, also as null
            mapping[f.name] = getattr(args, flag)
    section = section_from_mapping(cls, mapping, name)
    log_section(section, name)
    return section


def log_section(section: Any, name: str) -> None:
    """Write ``config <name>: <json>`` (the effective section) to stderr."""
    print(f"config {name}: {section_to_json(section)}", file=sys.stderr, flush=True)


def section_to_json(section: Any) -> str:
    """Canonical JSON of a section (sorted keys), as the rules pass it."""
    return json.dumps(dataclasses.asdict(section), sort_keys=True)


# --------------------------------------------------------------------------------
# The whole workflow configuration (called from workflow/rules/common.smk)


def coerce_overrides(config: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Turn string values of nested ``--config`` overrides back into YAML values.

    ``snakemake --config train='{"epochs": 20}'`` hands the nested values over as
    strings (``{"epochs": "20"}``). Each such string that the schema does not
    accept as it is, and that YAML reads as something else than a string
    (``20``, ``1e-3``, ``null``, ``true``), is replaced in ``config`` by the parsed
    value, which the validation then checks. ``overrides`` are the command line's
    only (``workflow.config_settings.config``, not Snakemake's
    ``overwrite_config``, which also holds the ``--configfile`` files): a value
    from a config file is checked as written, whichever way the file was given.
    """
    props = load_schema().get("properties", {})
    for name, section in overrides.items():
        keys = props.get(name, {}).get("properties", {})
        target = config.get(name)
        if not isinstance(section, Mapping) or not isinstance(target, dict):
            continue
        for key, value in section.items():
            if not isinstance(value, str) or key not in keys:
                continue
            parsed = _as_yaml(value)
            if not _accepts(keys[key], value) and not isinstance(parsed, str):
                target[key] = parsed


def _as_yaml(text: str) -> Any:
    """``text`` read as a YAML value (``text`` itself when it is not YAML)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _accepts(schema: dict[str, Any], value: Any) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def _lookup(tree: Any, path: list[Any]) -> bool:
    """Whether the nested mapping ``tree`` has a value at ``path``."""
    for part in path:
        if not isinstance(tree, Mapping) or part not in tree:
            return False
        tree = tree[part]
    return True


def _source(
    path: list[Any], overrides: Mapping[str, Any], files: Sequence[str | os.PathLike]
) -> str | None:
    """Where the value at ``path`` came from: ``--config``, or the last of the
    config ``files`` that sets it (as Snakemake merges them), shown relative to
    the working directory when inside it; ``None`` when none does."""
    if _lookup(overrides, path):
        return "--config"
    for file in reversed(files):
        try:
            found = _lookup(yaml.safe_load(Path(file).read_text()), path)
        except (OSError, yaml.YAMLError):
            continue
        if found:
            absolute = Path(file).absolute()
            try:
                return str(absolute.relative_to(Path.cwd()))
            except ValueError:
                return str(file)
    return None


def check_workflow_config(
    config: dict[str, Any],
    overrides: Mapping[str, Any] | None = None,
    files: Sequence[str | os.PathLike] = (),
) -> None:
    """Check the workflow's whole configuration against the schema, before
    anything runs; nested ``--config`` ``overrides`` are coerced first
    (:func:`coerce_overrides`), values from the config ``files`` are not.

    Raises:
        ConfigError: one line naming the key, the value and where it was set
            (``train.epochs: '20' is not of type 'integer' (in user.yaml; a
            number in quotes is a string: write epochs: 20)``).
    """
    overrides = overrides or {}
    coerce_overrides(config, overrides)
    error = _best_error(config, load_schema())
    if error is None:
        return
    message = " ".join(_one_line(error, "").split())
    path = list(error.absolute_path)
    source = _source(path, overrides, files)
    notes = [f"in {source}"] if source else []
    value = error.instance
    if isinstance(value, str) and path and error.validator == "type":
        parsed = _as_yaml(value)
        if not isinstance(parsed, str) and _accepts(error.schema, parsed):
            number = isinstance(parsed, (int, float)) and not isinstance(parsed, bool)
            what = "a number" if number else "a value"
            notes.append(f"{what} in quotes is a string: write {path[-1]}: {value}")
    raise ConfigError(f"{message} ({'; '.join(notes)})" if notes else message)


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A checked copy of a workflow configuration (a parsed ``config.yaml``) with
    every section and key it leaves out set to the schema's default, as the
    workflow sees it (Snakemake's ``validate(..., set_default=True)``): the
    effective configuration, for code that reads a config file outside Snakemake."""
    config = json.loads(json.dumps(config))
    _check(config, load_schema(), "")
    for name, schema in load_schema().get("properties", {}).items():
        if name not in config and "default" in schema:
            config[name] = json.loads(json.dumps(schema["default"]))
        section = config.get(name)
        if isinstance(section, dict):
            for key, prop in schema.get("properties", {}).items():
                if key not in section and "default" in prop:
                    section[key] = json.loads(json.dumps(prop["default"]))
    return config


#: Keys of the ``data`` section that name an existing input (file or directory).
def shard_name(npz: str | os.PathLike) -> str:
    """The name of the shard converted from ``npz``: its file name without
    ``.npz`` (the directory ``results/data/shards/<name>/``)."""
    name = Path(npz).name
    return name.removesuffix(".npz")


INPUT_KEYS = {"npz": "file", "packed": "directory"}


def check_input_paths(data: Mapping[str, Any], workdir: str | os.PathLike) -> None:
    """Refuse a ``data.npz``/``data.packed`` that does not exist (relative paths
    are relative to ``workdir``, the workflow's working directory): one line
    naming the key and the path, before anything runs."""
    for key, kind in INPUT_KEYS.items():
        value = data.get(key)
        if value is None:
            continue
        values = [value]
        if key == "npz":  # a list of shards or a glob
            values = DataConfig(npz=value).npz_files(workdir)
        for v in values:
            path = Path(workdir, v)
            ok = path.is_file() if kind == "file" else path.is_dir()
            if not ok:
                where = "" if Path(v).is_absolute() else f" (in {Path(workdir)})"
                raise ConfigError(f"data.{key}: no such {kind} {v!r}{where}")
