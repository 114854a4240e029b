"""Dataset descriptors: a packed directory used in place with its declared units,
or the shards of a sharded dataset.

A packed directory that the workflow did not write (``data.packed``, e.g. from the
older packed-memmap tooling) is read where it is, never copied or written into. The
workflow writes a small descriptor instead, and every stage takes it where it would
take a directory (``open_dataset("results/data/dataset.json")``)::

    {
      "format": "physpack-dataset",
      "format_version": 1,
      "packed": "/abs/path/to/dir",
      "units": {"energy": "kcal/mol", "length": "Angstrom", "dipole": "e*Angstrom"}
    }

``units`` are the directory's stored units (``physpack.units`` names); the arrays
are converted to eV, Å, eV/Å, e·Å on reading (:meth:`PackedDataset.scale`).

A sharded dataset (format version 2) lists its shards instead, in order, with the
counts each had when the descriptor was written (a shard replaced since is
refused), paths relative to the descriptor's directory::

    {
      "format": "physpack-dataset",
      "format_version": 2,
      "shards": [{"packed": "shards/a", "n_molecules": 1000, "n_atoms_total": 18000},
                 ...],
      "units": {}
    }

Every stage opens a dataset through :func:`open_dataset`, which takes a packed
directory or a descriptor of either kind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from physpack import config as cfg
from physpack.atomic import atomic_write_bytes
from physpack.data.manifest import MANIFEST
from physpack.data.packed_dataset import PackedDataset
from physpack.data.packed_format import ARRAYS, OFFSETS, full_units
from physpack.data.shards import ShardedDataset
from physpack.errors import ConfigError, InputError, cli_entry

DESCRIPTOR_FORMAT = "physpack-dataset"
DESCRIPTOR_VERSION = 2


@dataclasses.dataclass(frozen=True)
class DatasetDescriptor:
    """A packed directory and the units its arrays are stored in.

    Attributes:
        packed: the packed directory (absolute); ``None`` for a sharded dataset.
        units: ``{"energy", "length", "dipole"}`` unit names.
        shards: the shards' directories, in order (sharded datasets).
        shard_counts: ``(n_molecules, n_atoms_total)`` of each shard as described.
    """

    packed: Path | None
    units: dict[str, str]
    shards: tuple[Path, ...] = ()
    shard_counts: tuple[tuple[int, int], ...] = ()

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        if self.packed is not None:
            return {
                "format": DESCRIPTOR_FORMAT,
                "format_version": 1,
                "packed": str(self.packed),
                "units": dict(self.units),
            }
        base = None if relative_to is None else relative_to.resolve()
        return {
            "format": DESCRIPTOR_FORMAT,
            "format_version": DESCRIPTOR_VERSION,
            "shards": [
                {
                    "packed": os.path.relpath(p.resolve(), base) if base else str(p),
                    "n_molecules": n,
                    "n_atoms_total": t,
                }
                for p, (n, t) in zip(self.shards, self.shard_counts, strict=True)
            ],
            "units": dict(self.units),
        }


def read_descriptor(path: str | os.PathLike) -> DatasetDescriptor:
    """Parse a descriptor file.

    Raises:
        InputError: not a descriptor (one line naming the file and the key).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{path}: not a packed directory nor a readable dataset descriptor ({exc})"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != DESCRIPTOR_FORMAT:
        raise InputError(
            f'{path}: not a dataset descriptor (expected "format": '
            f'"{DESCRIPTOR_FORMAT}")'
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version > DESCRIPTOR_VERSION:
        raise InputError(
            f"{path}: format_version {version!r} is not supported (this physpack "
            f"reads up to {DESCRIPTOR_VERSION})"
        )
    units = data.get("units")
    if not isinstance(units, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in units.items()
    ):
        raise InputError(f"{path}: key 'units' must map unit kinds to unit names")
    if "shards" in data:
        return _read_shards(path, data["shards"], dict(units))
    packed = data.get("packed")
    if not isinstance(packed, str) or not packed:
        raise InputError(f"{path}: key 'packed' must name a directory")
    return DatasetDescriptor(packed=path.parent / packed, units=dict(units))


def _read_shards(path: Path, shards: Any, units: dict[str, str]) -> DatasetDescriptor:
    if not isinstance(shards, list) or not shards:
        raise InputError(f"{path}: key 'shards' must be a non-empty list")
    dirs, counts = [], []
    for k, entry in enumerate(shards):
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("packed"), str)
            and all(
                isinstance(entry.get(c), int) and not isinstance(entry.get(c), bool)
                for c in ("n_molecules", "n_atoms_total")
            )
        )
        if not ok:
            raise InputError(
                f"{path}: key shards.{k}: expected an object with 'packed' (a "
                "directory) and integer 'n_molecules', 'n_atoms_total'"
            )
        dirs.append(path.parent / entry["packed"])
        counts.append((entry["n_molecules"], entry["n_atoms_total"]))
    if len(set(map(os.path.normpath, dirs))) != len(dirs):
        raise InputError(f"{path}: key shards: a shard is listed twice")
    return DatasetDescriptor(None, units, tuple(dirs), tuple(counts))


def open_dataset(
    path: str | os.PathLike, units: Mapping[str, str] | None = None
) -> PackedDataset:
    """The dataset at ``path``: a packed directory, a descriptor of one (both a
    :class:`PackedDataset`) or a descriptor of shards (a
    :class:`~physpack.data.shards.ShardedDataset`). The one way to open a
    descriptor: :class:`PackedDataset` takes directories only.

    Raises:
        InputError: unreadable, or a shard whose counts differ from the
            descriptor's (it was replaced after the dataset was described).
    """
    path = Path(path)
    if not path.is_file():
        return PackedDataset(path, units=units)
    described = read_descriptor(path)
    if described.packed is not None:
        if units is not None and full_units(units) != full_units(described.units):
            raise InputError(
                f"{path}: declares units {described.units}, but {units} were given"
            )
        return PackedDataset(described.packed, units=described.units)
    ds = ShardedDataset(path, described.shards, units=units or described.units or None)
    for shard, (n, t) in zip(ds.shards, described.shard_counts, strict=True):
        if (shard.n_molecules, shard.n_atoms_total) != (n, t):
            raise InputError(
                f"{path}: shard {shard.path} has {shard.n_molecules} molecules and "
                f"{shard.n_atoms_total} atoms, but the descriptor lists {n} and {t}: "
                "it was replaced after the dataset was described (rerun the workflow)"
            )
    return ds


def describe_shards(
    output: str | os.PathLike, shards: Sequence[str | os.PathLike]
) -> Path:
    """Write the descriptor of converted shards (packed directories this package
    wrote, in canonical units), in the given order, atomically. Every shard is
    opened first, so a missing or inconsistent one fails here, named."""
    output = Path(output)
    dirs = [Path(p) for p in shards]
    ds = ShardedDataset(output, dirs)
    described = DatasetDescriptor(
        None,
        {},
        tuple(dirs),
        tuple((s.n_molecules, s.n_atoms_total) for s in ds.shards),
    )
    text = json.dumps(described.to_json(relative_to=output.parent), indent=2)
    return atomic_write_bytes(output, (text + "\n").encode())


def write_descriptor(
    path: str | os.PathLike, packed: str | os.PathLike, units: dict[str, str]
) -> Path:
    """Write a descriptor for ``packed`` (made absolute) atomically; the directory
    is opened first, so a missing or unreadable one fails here with its reason."""
    packed = Path(packed).resolve()
    PackedDataset(packed, units=units)  # refuses bad directories and units now
    text = json.dumps(DatasetDescriptor(packed, dict(units)).to_json(), indent=2)
    return atomic_write_bytes(path, (text + "\n").encode())


def data_source(data: cfg.DataConfig) -> tuple[str, Path]:
    """``("npz", file)`` or ``("packed", directory)``: the input of the data
    section, checked before anything runs (the workflow calls this when it reads
    its configuration, and :func:`describe_packed` again).

    Raises:
        ConfigError: not exactly one of ``data.npz`` and ``data.packed`` set; a
            ``data.packed`` directory without ``manifest.json`` whose energy and
            length units (and dipole unit, when it has dipoles) are not declared.
        InputError: ``data.packed`` is not a packed directory.
    """
    kind, where = data.source()
    if kind == "npz":
        return kind, where
    packed = Path(where)
    if not packed.is_dir():
        raise InputError(f"data.packed: {packed}: packed directory not found")
    if not (packed / OFFSETS).is_file():
        raise InputError(
            f"data.packed: {packed}: not a packed directory (no {OFFSETS} there)"
        )
    units = data.declared_units()
    required = ["energy", "length"]
    if (packed / ARRAYS["D"].file).exists():
        required.append("dipole")
    missing = [k for k in required if k not in units]
    if missing and not (packed / MANIFEST).exists():
        keys = ", ".join(f"data.{k}_unit" for k in missing)
        raise ConfigError(
            f"data.packed: {packed} has no {MANIFEST}, so its units must be "
            f"declared: set {keys} (the older packed-memmap converter stores its "
            "input's units, e.g. kcal/mol and kcal/mol/Angstrom)"
        )
    return kind, packed


def describe_packed(data: cfg.DataConfig, output: str | os.PathLike) -> Path:
    """Write the descriptor of the ``data.packed`` directory with its units.

    Raises:
        ConfigError: ``data.packed`` not set (or ``data.npz`` too), or its units
            not declared where they must be (:func:`data_source`);
            ``data.dispersion`` set (it is applied when converting an NPZ; a
            packed directory carries its own in its manifest).
        InputError: the directory is missing or unreadable.
    """
    if data.source()[0] != "packed":
        raise ConfigError("data.packed is not set: nothing to describe")
    if data.dispersion is not None:
        raise ConfigError(
            f"data.dispersion = {data.dispersion.label} applies when data.npz is "
            "converted; a data.packed directory is read as it is (its manifest "
            "says whether D3 was subtracted): set data.dispersion to null"
        )
    _, packed = data_source(data)
    return write_descriptor(output, packed, data.declared_units())


@cli_entry("physpack describe")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="physpack describe",
        description="Describe the data.packed directory (read in place) and its "
        "units, or converted shards (--shards), in a dataset descriptor, which "
        "every later stage reads.",
    )
    parser.add_argument("--output", type=Path, required=True, help="descriptor JSON")
    parser.add_argument(
        "--shards",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="packed directories of the shards, in dataset order (the data "
        "section is then not used)",
    )
    cfg.add_section_arguments(parser, cfg.DataConfig, "data")
    args = parser.parse_args(argv)
    if args.shards:
        out = describe_shards(args.output, args.shards)
        ds = open_dataset(out)
        print(f"{out}: {len(args.shards)} shards, {ds.n_molecules} molecules")
        return 0
    data = cfg.section_from_args(cfg.DataConfig, args, "data")
    out = describe_packed(data, args.output)
    ds = read_descriptor(out)
    print(f"{out}: {ds.packed} in {ds.units or 'its manifest units'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
