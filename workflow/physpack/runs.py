"""Named training runs: the ``runs:`` section of ``config.yaml`` expanded.

A researcher rarely trains one model. ``runs:`` names variants of the
``model``/``train``/``loader`` sections; each becomes one training job with its own
``results/runs/<run>/``, while conversion, validation and the split are shared::

    runs:
      base: {}                                  # the sections as they are
      wide: {model: {features: 128}}
      committee: {ensemble: 4}                  # committee-0 .. committee-3, seeds +0..+3
      lr:                                       # a grid: one run per combination
        sweep: {train.learning_rate: [0.001, 0.003], model.features: [64, 128]}
      tuned: {train: {init_from: base, learning_rate: 0.0002}}   # fine-tunes run "base"

An entry may combine overrides with ``sweep`` (the cartesian product, in the order
given) and ``ensemble: N`` (N members per point, differing only in
``train.seed``, which is offset by the member index). Members of one ensemble form
a committee: they are evaluated together (mean prediction and spread).

``train.init_from`` may name another run; that run is then trained first (the
workflow makes it an input). Anything else there is a checkpoint path.

The expansion is pure Python, so the Snakefile, the tests and the comparison
report all see the same runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping
from typing import Any

from physpack.errors import ConfigError

#: the sections a run may override
RUN_SECTIONS = ("model", "train", "loader")
#: keys of one ``runs:`` entry besides the section overrides
ENTRY_KEYS = ("ensemble", "sweep")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


@dataclasses.dataclass(frozen=True)
class Run:
    """One training job.

    ``overrides`` maps a section (``model``, ``train``, ``loader``) to the keys this
    run sets; ``ensemble`` is the committee the run belongs to (``None`` when it is
    a single model); ``entry`` is the ``runs:`` entry it was expanded from.
    """

    name: str
    entry: str
    overrides: Mapping[str, Mapping[str, Any]]
    ensemble: str | None = None
    member: int | None = None

    @property
    def init_from(self) -> Any:
        return self.overrides.get("train", {}).get("init_from")


def expand_runs(runs: Mapping[str, Any] | None) -> dict[str, Run]:
    """All runs of the ``runs:`` section, by name, in the order written.

    Raises :class:`ConfigError` naming the entry for an unknown key, a bad sweep or
    ensemble, a duplicate or unsafe run name, or an ``init_from`` cycle.
    """
    out: dict[str, Run] = {}
    for entry, spec in (runs or {}).items():
        where = f"runs.{entry}"
        if not isinstance(entry, str) or not NAME.match(entry):
            raise ConfigError(
                f"{where}: a run name uses letters, digits and _.=+- only, "
                f"starting with a letter or digit"
            )
        spec = {} if spec is None else spec
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {spec!r}")
        unknown = sorted(set(spec) - set(RUN_SECTIONS) - set(ENTRY_KEYS))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(map(str, unknown))}; "
                f"known: {', '.join(RUN_SECTIONS + ENTRY_KEYS)}"
            )
        base = {}
        for section in RUN_SECTIONS:
            values = spec.get(section) or {}
            if not isinstance(values, Mapping):
                raise ConfigError(f"{where}.{section}: expected a mapping")
            base[section] = dict(values)
        for point_name, overrides in _sweep_points(entry, spec.get("sweep"), base):
            members = _ensemble_size(where, spec.get("ensemble"))
            if members is None:
                _add(out, Run(point_name, entry, overrides))
                continue
            for i in range(members):
                _add(out, Run(f"{point_name}-{i}", entry, overrides, point_name, i))
    _check_init_from(out)
    return out


def _sweep_points(
    entry: str, sweep: Any, base: dict[str, dict[str, Any]]
) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    where = f"runs.{entry}.sweep"
    if sweep is None:
        return [(entry, base)]
    if not isinstance(sweep, Mapping) or not sweep:
        raise ConfigError(f"{where}: expected a mapping of section.key: [values]")
    axes = []
    for dotted, values in sweep.items():
        section, _, key = str(dotted).partition(".")
        if section not in RUN_SECTIONS or not key:
            raise ConfigError(
                f"{where}: {dotted!r} is not <section>.<key> with a section of "
                f"{', '.join(RUN_SECTIONS)}"
            )
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{dotted}: expected a non-empty list")
        axes.append((section, key, values))
    points = []
    for combo in itertools.product(*(values for _, _, values in axes)):
        overrides = {s: dict(v) for s, v in base.items()}
        parts = [entry]
        for (section, key, _), value in zip(axes, combo, strict=True):
            overrides[section][key] = value
            parts.append(f"{key}={_label(value)}")
        points.append(("-".join(parts), overrides))
    return points


def _label(value: Any) -> str:
    if value is None or isinstance(value, bool):
        text = str(value).lower() if value is not None else "null"
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9_.+]", "_", text)


def _ensemble_size(where: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{where}.ensemble: expected a positive integer, got {value!r}"
        )
    return value


def _add(out: dict[str, Run], run: Run) -> None:
    if run.name in out:
        raise ConfigError(
            f"runs.{run.entry}: run name {run.name!r} is already used by "
            f"runs.{out[run.name].entry}"
        )
    if not NAME.match(run.name):
        raise ConfigError(f"runs.{run.entry}: run name {run.name!r} is not a safe name")
    out[run.name] = run


def _check_init_from(runs: Mapping[str, Run]) -> None:
    for run in runs.values():
        seen = [run.name]
        current = run
        while isinstance(current.init_from, str) and current.init_from in runs:
            current = runs[current.init_from]
            if current.name in seen:
                chain = " -> ".join([*seen, current.name])
                raise ConfigError(f"runs: train.init_from forms a cycle: {chain}")
            seen.append(current.name)


def run_sections(config: Mapping[str, Any], run: Run) -> dict[str, dict[str, Any]]:
    """The ``model``/``train``/``loader`` sections of ``run``: the config's sections
    with the run's overrides on top (key by key). An ensemble member's
    ``train.seed`` is the section's seed (default 0) plus its member index."""
    out: dict[str, dict[str, Any]] = {}
    for section in RUN_SECTIONS:
        merged = dict(config.get(section) or {})
        merged.update(run.overrides.get(section, {}))
        out[section] = merged
    if run.member is not None:
        out["train"]["seed"] = int(out["train"].get("seed", 0)) + run.member
    return out


def check_runs(config: Mapping[str, Any], runs: Mapping[str, Run]) -> None:
    """Check every run's sections against the schema (one-line
    :class:`ConfigError` naming the run and key)."""
    from physpack.config import SECTIONS, section_from_mapping

    for name, run in runs.items():
        for section, values in run_sections(config, run).items():
            try:
                section_from_mapping(SECTIONS[section], values, section)
            except ConfigError as exc:
                raise ConfigError(f"runs.{name}: {exc}") from None


def ensembles(runs: Mapping[str, Run]) -> dict[str, list[str]]:
    """Committee name -> its member runs, in order."""
    out: dict[str, list[str]] = {}
    for run in runs.values():
        if run.ensemble is not None:
            out.setdefault(run.ensemble, []).append(run.name)
    return out


def differing_keys(
    config: Mapping[str, Any], runs: Mapping[str, Run]
) -> dict[str, dict[str, Any]]:
    """``section.key`` -> {run: value} for every key whose value differs between
    runs (the columns of the comparison table)."""
    sections = {name: run_sections(config, run) for name, run in runs.items()}
    keys = sorted(
        {f"{s}.{k}" for secs in sections.values() for s, d in secs.items() for k in d}
    )
    out = {}
    for dotted in keys:
        section, key = dotted.split(".", 1)
        values = {name: secs[section].get(key) for name, secs in sections.items()}
        if len({repr(v) for v in values.values()}) > 1:
            out[dotted] = values
    return out
