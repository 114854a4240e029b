"""``physpack md-stability``: is the trained model usable in simulation?

The workflow's ``md_stability`` stage. It takes the largest test molecules (one
conformation per composition, :func:`largest_molecules`), runs
:func:`physpack.simulation.md.run_md` at each of the ``md`` section's temperatures,
and writes:

- ``stability.json``: the settings and per temperature and molecule whether it
  stayed intact (or when and why it broke), the NVE energy drift (meV/atom/ps), the
  largest bond stretch, the mean temperature (K) and the stable count;
- ``stability.md`` and ``stability.html``: the same as a table;
- a figure of each molecule's total energy (meV/atom, from its start) and largest
  bond stretch over time;
- the trajectories, one directory per temperature (``T300K/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase.io import read

from physpack import config as cfg
from physpack.atomic import StagedOutputs
from physpack.data.descriptor import open_dataset
from physpack.data.subset import read_split
from physpack.errors import InputError, cli_entry
from physpack.evaluation.tables import (
    format_cell,
    html_page,
    html_table,
    markdown_table,
)
from physpack.metrics import convert
from physpack.simulation.md import MDSettings, molecule_atoms, run_md

TITLE = "Is the model usable in simulation?"


def largest_molecules(dataset, indices: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` largest of molecules ``indices`` of a packed dataset, one
    conformation per composition (the first in ``indices`` of the largest),
    largest first; int64 (≤ count,)."""
    indices = np.asarray(indices, np.int64)
    sizes = np.diff(np.asarray(dataset.offsets))[indices]
    seen: set[tuple[int, ...]] = set()
    chosen: list[int] = []
    for i in indices[np.argsort(-sizes, kind="stable")]:
        a, b = int(dataset.offsets[i]), int(dataset.offsets[i + 1])
        key = tuple(np.bincount(np.asarray(dataset.Z[a:b]), minlength=119))
        if key not in seen:
            seen.add(key)
            chosen.append(int(i))
        if len(chosen) == count:
            break
    return np.asarray(chosen, np.int64)


def settings_at(md: cfg.MDConfig, temperature: float) -> MDSettings:
    """The run of section ``md`` at ``temperature`` K."""
    return MDSettings(
        temperature_K=float(temperature),
        picoseconds=md.picoseconds,
        timestep_fs=md.timestep_fs,
        ensemble=md.ensemble,
        friction_per_ps=md.friction_per_ps,
        seed=md.seed,
        interval=md.interval,
        broken_stretch=md.broken_stretch,
        clash_factor=md.clash_factor,
    )


def stability(
    dataset_path: str | Path,
    split: str | Path,
    checkpoint: str | Path,
    md: cfg.MDConfig,
    trajectories: Path,
) -> dict[str, Any]:
    """Run the stage's simulations into ``trajectories`` and return the record."""
    dataset = open_dataset(dataset_path)
    test = read_split(split, "test")
    if test.size == 0:
        raise InputError(f"{split}: the test split is empty; nothing to simulate")
    chosen = largest_molecules(dataset, test, md.molecules)
    molecules = [molecule_atoms(dataset, int(i)) for i in chosen]
    runs = {}
    for temperature in md.temperatures:
        name = f"T{temperature:g}K"
        record = run_md(
            [checkpoint],
            molecules,
            settings_at(md, temperature),
            trajectories / name,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
        for entry, index in zip(record["molecules"], chosen, strict=True):
            entry["dataset_index"] = int(index)
        runs[name] = record
    return {
        "checkpoint": str(checkpoint),
        "md": json.loads(cfg.section_to_json(md)),
        "units": next(iter(runs.values()))["units"],
        "runs": runs,
    }


def table(record: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per temperature and molecule."""
    header = [
        "T [K]",
        "molecule",
        "atoms",
        "stable",
        "broke at [ps]",
        "why",
        "energy drift [meV/atom/ps]",
        "largest bond stretch",
        "mean T [K]",
    ]
    rows = []
    for run in record["runs"].values():
        temperature = run["settings"]["temperature_K"]
        for m in run["molecules"]:
            rows.append(
                [
                    format_cell(temperature),
                    m["formula"],
                    format_cell(m["n_atoms"]),
                    "yes" if m["stable"] else "no",
                    "" if m["broke_at_ps"] is None else format_cell(m["broke_at_ps"]),
                    m["reason"] or "",
                    format_cell(m["energy_drift_meV_per_atom_ps"]),
                    format_cell(m["max_bond_stretch"]),
                    format_cell(m["mean_temperature_K"]),
                ]
            )
    return header, rows


def summary(record: dict[str, Any]) -> list[str]:
    """One line per temperature: stable count over the run's length."""
    lines = []
    for run in record["runs"].values():
        s = run["settings"]
        lines.append(
            f"{s['temperature_K']:g} K, {s['ensemble'].upper()}, {s['picoseconds']:g} ps "
            f"at {s['timestep_fs']:g} fs: {run['stable']} of {len(run['molecules'])} "
            f"largest test molecules stayed intact"
        )
    return lines


def figure(record: dict[str, Any], trajectories: Path, path: Path) -> None:
    """Total energy from its start (meV/atom) and largest bond stretch over time,
    one line per molecule, one row of panels per temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = record["runs"]
    fig, axes = plt.subplots(len(runs), 2, figsize=(10, 3.2 * len(runs)), squeeze=False)
    for row, (name, run) in zip(axes, runs.items(), strict=True):
        for m in run["molecules"]:
            frames = read(trajectories / name / m["trajectory"], index=":")
            t = [f.info["time_ps"] for f in frames]
            total = np.array([f.info["total_energy_eV"] for f in frames])
            energy = convert(
                (total - total[0]) / m["n_atoms"], "energy_per_atom", "meV/atom"
            )
            label = m["formula"] + ("" if m["stable"] else " (broke)")
            row[0].plot(t, energy, label=label)
            row[1].plot(t, [f.info["max_bond_stretch"] for f in frames], label=label)
        s = run["settings"]
        row[0].set_title(f"{s['temperature_K']:g} K: total energy from its start")
        row[0].set_ylabel("meV/atom")
        row[1].set_title(f"{s['temperature_K']:g} K: largest bond stretch")
        row[1].axhline(s["broken_stretch"], color="k", ls="--", lw=0.8)
        row[1].set_ylabel("bond length / starting length")
        for ax in row:
            ax.set_xlabel("time [ps]")
        row[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


@cli_entry("physpack md-stability")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="physpack md-stability",
        description="MD of the largest test molecules with a trained model: "
        "stability, energy drift, bond stretch (the workflow's md_stability stage).",
    )
    parser.add_argument("dataset", help="packed directory or dataset descriptor")
    parser.add_argument("--split", required=True, help="split file (uses 'test')")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--json", required=True, help="stability.json to write")
    parser.add_argument("--markdown", required=True, help="table (Markdown)")
    parser.add_argument("--html", required=True, help="table (HTML, for the report)")
    parser.add_argument("--figure", required=True, help="PNG to write")
    parser.add_argument(
        "--trajectories", required=True, help="directory of the trajectories"
    )
    cfg.add_section_arguments(parser, cfg.MDConfig, "md", option="--md-config")
    args = parser.parse_args(argv)
    md = cfg.section_from_args(cfg.MDConfig, args, "md")
    with StagedOutputs() as staged:
        trajectories = staged.directory(args.trajectories)
        record = stability(args.dataset, args.split, args.checkpoint, md, trajectories)
        header, rows = table(record)
        notes = summary(record)
        markdown = [
            f"# {TITLE}",
            "",
            *notes,
            "",
            *markdown_table(header, rows, right=2),
        ]
        Path(staged.file(args.markdown)).write_text("\n".join(markdown) + "\n")
        Path(staged.file(args.html)).write_text(
            html_page(TITLE, [html_table(header, rows)], notes)
        )
        figure(record, trajectories, staged.file(args.figure))
        Path(staged.file(args.json)).write_text(json.dumps(record, indent=2) + "\n")
    for line in summary(record):
        print(f"physpack md-stability: {line}")
    return 0
