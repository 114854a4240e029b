"""Dataset descriptors: a packed directory used in place, with its declared units.

A packed directory that the workflow did not write (``data.packed``, e.g. from the
older packed-memmap tooling) is read where it is, never copied or written into. The
workflow writes a small descriptor instead, and every stage takes it where it would
take a directory (``PackedDataset("results/data/dataset.json")``)::

    {
      "format": "physpack-dataset",
      "format_version": 1,
      "packed": "/abs/path/to/dir",
      "units": {"energy": "kcal/mol", "length": "Angstrom", "dipole": "e*Angstrom"}
    }

``units`` are the directory's stored units (``physpack.units`` names); the arrays
are converted to eV, Å, eV/Å, e·Å on reading (:meth:`PackedDataset.scale`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from physpack import config as cfg
from physpack.atomic import atomic_write_bytes
from physpack.data.packed import ARRAYS, MANIFEST, PackedDataset
from physpack.errors import ConfigError, InputError, cli_entry

DESCRIPTOR_FORMAT = "physpack-dataset"
DESCRIPTOR_VERSION = 1


@dataclasses.dataclass(frozen=True)
class DatasetDescriptor:
    """A packed directory and the units its arrays are stored in.

    Attributes:
        packed: the packed directory (absolute).
        units: ``{"energy", "length", "dipole"}`` unit names.
    """

    packed: Path
    units: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": DESCRIPTOR_FORMAT,
            "format_version": DESCRIPTOR_VERSION,
            "packed": str(self.packed),
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
    packed, units = data.get("packed"), data.get("units")
    if not isinstance(packed, str) or not packed:
        raise InputError(f"{path}: key 'packed' must name a directory")
    if not isinstance(units, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in units.items()
    ):
        raise InputError(f"{path}: key 'units' must map unit kinds to unit names")
    return DatasetDescriptor(packed=path.parent / packed, units=dict(units))


def write_descriptor(
    path: str | os.PathLike, packed: str | os.PathLike, units: dict[str, str]
) -> Path:
    """Write a descriptor for ``packed`` (made absolute) atomically; the directory
    is opened first, so a missing or unreadable one fails here with its reason."""
    packed = Path(packed).resolve()
    PackedDataset(packed, units=units)  # refuses bad directories and units now
    text = json.dumps(DatasetDescriptor(packed, dict(units)).to_json(), indent=2)
    return atomic_write_bytes(path, (text + "\n").encode())


def describe_packed(data: cfg.DataConfig, output: str | os.PathLike) -> Path:
    """Write the descriptor of the ``data.packed`` directory with its units.

    Raises:
        ConfigError: ``data.packed`` not set (or ``data.npz`` too), or a directory
            without ``manifest.json`` whose energy and length units (and dipole
            unit, when it has dipoles) are not declared.
        InputError: the directory is missing or unreadable.
    """
    kind, where = data.source()
    if kind != "packed":
        raise ConfigError("data.packed is not set: nothing to describe")
    packed = Path(where)
    if not packed.is_dir():
        raise InputError(f"data.packed: {packed}: packed directory not found")
    units = data.declared_units()
    required = ["energy", "length"]
    if (packed / ARRAYS["D"].file).exists():
        required.append("dipole")
    missing = [k for k in required if k not in units]
    if missing and not (packed / MANIFEST).exists():
        keys = ", ".join(f"data.{k}_unit" for k in missing)
        raise ConfigError(
            f"data.packed: {packed} has no manifest.json, so its units must be "
            f"declared: set {keys} (the older packed-memmap converter stores its "
            "input's units, e.g. kcal/mol and kcal/mol/Angstrom)"
        )
    return write_descriptor(output, packed, units)


@cli_entry("physpack describe")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="physpack describe",
        description="Describe the data.packed directory (read in place) and its "
        "units in a dataset descriptor, which every later stage reads.",
    )
    parser.add_argument("--output", type=Path, required=True, help="descriptor JSON")
    cfg.add_section_arguments(parser, cfg.DataConfig, "data")
    args = parser.parse_args(argv)
    data = cfg.section_from_args(cfg.DataConfig, args, "data")
    out = describe_packed(data, args.output)
    ds = read_descriptor(out)
    print(f"{out}: {ds.packed} in {ds.units or 'its manifest units'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
