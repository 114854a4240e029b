"""``history.csv``: one row per finished epoch, units in the column names."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

from physpack.atomic import atomic_write_bytes
from physpack.metrics import MONITORED

#: Columns in order; those without a value in a run (e.g. dipoles) are left out.
HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "valid_loss",
    # the validation metrics, named and ordered once (physpack.metrics)
    *(spec.name("valid_") for spec in MONITORED),
    "lr",
    "lr_horizon",
    "loss_stage",
    "steps",
    "rejected_steps",
    "grad_norm_mean",
    "grad_norm_max",
    "clipped_fraction",
    "molecules_per_s",
    "epoch_time_s",
    "wall_time_s",
)
#: Columns that measure time: they differ between an interrupted and an
#: uninterrupted run, all others are equal.
TIMING_COLUMNS = ("molecules_per_s", "epoch_time_s", "wall_time_s")


def write_history(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` (one dict per epoch) to ``path`` atomically.

    Units: losses dimensionless (weighted eV² terms), energies eV, forces eV/Å,
    dipoles e·Å, gradient norms in loss units per parameter unit, times s."""
    columns = [c for c in HISTORY_COLUMNS if any(c in r for r in rows)] or ["epoch"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_fmt(r.get(c, "")) for c in columns])
    atomic_write_bytes(path, buf.getvalue().encode())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)
