"""The metrics of one split as ``metrics.json`` holds them, and their table.

Per split (``metrics.json["splits"][name]``)::

    n_molecules, n_atoms
    energy:  per_molecule / per_atom: mae, rmse: {unit label: value}
    forces:  n_components, mae, rmse, std_reference: {unit label: value},
             mae_relative, rmse_relative (dimensionless), per_element:
             {symbol: {atomic_number, n_atoms, mae: {unit label: value}}}
    dipole:  mae, rmse, norm_mae: {unit label: value}

Every number comes from :mod:`physpack.metrics` (sums, per element) and sits
under the label of its unit (:func:`physpack.metrics.in_units`); :func:`json_path`
is the one place that knows where a statistic of a quantity lives, for the table
here and the comparison of runs (:mod:`physpack.evaluation.compare`). Numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from physpack.evaluation.predictions import SplitPredictions
from physpack.evaluation.tables import (
    format_cell,
    html_page,
    html_table,
    markdown_table,
)
from physpack.metrics import (
    QUANTITIES,
    STATISTICS,
    ErrorSums,
    error_sums,
    in_units,
    per_element,
    unit_of,
)

#: where each quantity's statistics sit in a split's metrics
_SECTIONS: dict[str, tuple[str, ...]] = {
    "energy": ("energy", "per_molecule"),
    "energy_per_atom": ("energy", "per_atom"),
    "forces": ("forces",),
    "dipole": ("dipole",),
}


def json_path(
    quantity: str, statistic: str, unit: str | None = None
) -> tuple[str, ...]:
    """The keys of ``statistic`` (``mae``, ``rmse``, ``std_reference``,
    ``norm_mae``) of ``quantity`` in ``unit`` (label, tag or symbol; ``None``:
    canonical) within a split's metrics, e.g. ``("forces", "mae",
    "meV/Angstrom")``."""
    return (*_SECTIONS[quantity], statistic, unit_of(quantity, unit).label)


def _sums(err: np.ndarray) -> ErrorSums:
    return error_sums(np.asarray(err, np.float64))


def _stats(sums: ErrorSums, quantity: str) -> dict[str, dict[str, float]]:
    """MAE and RMSE of ``sums`` in every unit of ``quantity``."""
    values = {"mae": sums.mae, "rmse": sums.rmse}
    return {s: in_units(values[s], quantity) for s in STATISTICS}


def _force_metrics(pred: SplitPredictions) -> dict[str, Any]:
    dF = pred.F_pred - pred.F_true
    stats = _stats(_sums(dF), "forces")
    f_std = float(np.std(pred.F_true)) if pred.F_true.size else float("nan")

    def rel(v: float) -> float:
        return v / f_std if f_std > 0 else float("nan")

    mae = stats["mae"][unit_of("forces").label]
    rmse = stats["rmse"][unit_of("forces").label]
    return {
        "n_components": int(dF.size),
        **stats,
        "std_reference": in_units(f_std, "forces"),
        "mae_relative": rel(mae),
        "rmse_relative": rel(rmse),
        "per_element": {
            symbol: {
                "atomic_number": e.atomic_number,
                "n_atoms": e.n_atoms,
                "mae": in_units(e.sums.mae, "forces"),
            }
            for symbol, e in per_element(dF, pred.Z).items()
        },
    }


def compute_metrics(pred: SplitPredictions) -> dict[str, Any]:
    """Error metrics of one split (layout in the module docstring).

    Energies: MAE and RMSE of the total energy per molecule, and of the total-energy
    error divided by the molecule's atom count ("per atom"). Forces: MAE and RMSE
    over all Cartesian components; ``std_reference`` is the standard deviation
    (ddof 0) of the reference components of this split, and the ``*_relative``
    values are MAE/std and RMSE/std; ``per_element`` holds the component MAE over
    the atoms of each element. Dipoles: MAE and RMSE over components, and the MAE of
    the norm. NaN where a quantity has no data.

    Returns:
        A JSON-ready dict; every number sits under the label of its unit.
    """
    dE = pred.E_pred - pred.E_true
    n = np.maximum(pred.n_atoms.astype(np.float64), 1.0)
    out: dict[str, Any] = {
        "n_molecules": pred.n_molecules,
        "n_atoms": int(pred.offsets[-1]),
        "energy": {
            "per_molecule": _stats(_sums(dE), "energy"),
            "per_atom": _stats(_sums(dE / n), "energy_per_atom"),
        },
    }
    if pred.F_true is not None and pred.F_pred is not None:
        out["forces"] = _force_metrics(pred)
    if pred.D_true is not None and pred.D_pred is not None:
        norms = np.linalg.norm(pred.D_pred, axis=-1) - np.linalg.norm(
            pred.D_true, axis=-1
        )
        out["dipole"] = {
            **_stats(_sums(pred.D_pred - pred.D_true), "dipole"),
            "norm_mae": in_units(_sums(norms).mae, "dipole"),
        }
    return out


# --------------------------------------------------------------------------------
# The metrics of several splits as one table: Markdown and HTML
# --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TableRow:
    """One row of the metrics table: a quantity, its unit, one value per split."""

    quantity: str
    unit: str
    values: dict[str, float | int]


def value_at(d: Mapping[str, Any], path: Sequence[str]) -> float | None:
    """The number at ``path`` (e.g. :func:`json_path`) in ``d``, or ``None``."""
    for key in path:
        if not isinstance(d, Mapping) or key not in d:
            return None
        d = d[key]
    return float(d) if isinstance(d, (int, float)) else None


def _specs(splits: Mapping[str, Any]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(row title, unit label, path in a split's metrics) of every table row."""
    specs = []
    rows = (
        ("energy", "Energy {} per molecule"),
        ("energy_per_atom", "Energy {} per atom"),
        ("forces", "Force {}"),
    )
    for q, title in rows:
        for stat in STATISTICS:
            for unit in QUANTITIES[q].units[1:]:  # meV and kcal/mol, not eV
                path = json_path(q, stat, unit.label)
                specs.append((title.format(stat.upper()), unit.label, path))
    force = unit_of("forces", "meV/Å").label
    specs += [
        ("Force std (reference)", force, json_path("forces", "std_reference", force)),
        ("Force MAE / force std", "1", ("forces", "mae_relative")),
        ("Force RMSE / force std", "1", ("forces", "rmse_relative")),
        ("Force MAE / train force std", "1", ("forces", "mae_relative_to_train_std")),
    ]
    elements: dict[str, int] = {}
    for m in splits.values():
        for sym, e in m.get("forces", {}).get("per_element", {}).items():
            elements[sym] = e["atomic_number"]
    for sym in sorted(elements, key=elements.__getitem__):
        path = ("forces", "per_element", sym, "mae", force)
        specs.append((f"Force MAE, {sym} atoms", force, path))
    debye = unit_of("dipole", "Debye").label
    for stat, label in (("mae", "MAE"), ("rmse", "RMSE"), ("norm_mae", "norm MAE")):
        specs.append((f"Dipole {label}", debye, json_path("dipole", stat, debye)))
    return specs


def metrics_rows(metrics: Mapping[str, Any]) -> list[TableRow]:
    """The rows of the metrics table, for the splits in ``metrics["splits"]``."""
    splits: dict[str, Any] = metrics["splits"]
    rows = [
        TableRow(
            "Molecules", "", {name: int(m["n_molecules"]) for name, m in splits.items()}
        )
    ]
    for quantity, unit, path in _specs(splits):
        values = {
            name: v
            for name, m in splits.items()
            if (v := value_at(m, path)) is not None
        }
        if values:
            rows.append(TableRow(quantity, unit, values))
    return rows


_TABLE_NOTE = (
    "Force errors are per Cartesian component. 'Force std' is the standard deviation "
    "of the reference force components of the same split, 'train force std' that of "
    "the training split."
)


def _notes(metrics: Mapping[str, Any]) -> list[str]:
    """The sentences under the metrics table."""
    dispersion = metrics.get("dispersion")
    return [_TABLE_NOTE] + ([dispersion["note"]] if dispersion else [])


def _table(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = list(metrics["splits"])
    rows = [
        [row.quantity, row.unit]
        + [format_cell(row.values[n]) if n in row.values else "" for n in names]
        for row in metrics_rows(metrics)
    ]
    return ["Quantity", "Unit", *names], rows


def _title(metrics: Mapping[str, Any]) -> str:
    return f"Evaluation of {metrics.get('checkpoint', {}).get('path', 'the model')}"


def metrics_markdown(metrics: Mapping[str, Any]) -> str:
    """The metrics table in Markdown (one column per split)."""
    lines = [f"# {_title(metrics)}", "", *markdown_table(*_table(metrics), right=2)]
    lines += ["", *_notes(metrics)]
    return "\n".join(lines) + "\n"


def metrics_html_page(metrics: Mapping[str, Any]) -> str:
    """The metrics table as a self-contained HTML page (inline style, no scripts)."""
    table = html_table(*_table(metrics), row_header=True, column_class={1: "u"})
    return html_page(_title(metrics), [table], _notes(metrics))
