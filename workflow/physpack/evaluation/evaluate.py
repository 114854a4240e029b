"""``physpack evaluate``: error metrics, predictions and figures of a trained model.

Predicts the test and validation splits through the packed loader with the EMA
parameters of ``best.ckpt`` and writes

* ``metrics.json``: per split, energy MAE/RMSE per molecule and per atom, force
  MAE/RMSE per Cartesian component and relative to the spread (standard deviation)
  of the reference force components, force MAE per element, dipole errors when the
  model predicts dipoles and the data has them. Every value is labelled with its
  unit; energies and forces are given in eV, meV and kcal/mol.
* ``metrics.md`` and ``metrics.html``: the same numbers as one table (Markdown for
  people, HTML for the Snakemake report).
* ``predictions.npz``: per split, reference and predicted energies per molecule and
  forces per atom, with the dataset index of each molecule and atom offsets.
* a directory of PNG figures (parity plots, error histograms, per-element force
  errors, learning curves from ``history.csv``).

Every output is written under a temporary name and renamed only when all of them
are complete, so a failed run leaves nothing that looks finished.

A model trained with D3 dispersion subtracted (``data.dispersion``) is evaluated on
data with the same D3 subtracted (any other data is refused): stored residuals are
compared with predicted residuals, which is the comparison of the totals, since the
same D3 term is on both sides. ``metrics.json`` (``dispersion``), the tables and
``predictions.npz`` say so.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols

from physpack import __version__
from physpack.atomic import StagedOutputs
from physpack.config import LoaderConfig, ModelConfig, section_from_mapping
from physpack.data.descriptor import open_dataset
from physpack.data.loader import PackedMemmapLoader, from_config, read_split
from physpack.data.packed import PackedDataset
from physpack.dispersion import check_same, settings_of
from physpack.errors import ConfigError, InputError, cli_entry
from physpack.evaluation import plots
from physpack.model.checkpoint import Checkpoint
from physpack.model.checkpoint import load as load_checkpoint
from physpack.model.physnet import EnergyConstants
from physpack.training.losses import mae_rmse
from physpack.units import CANONICAL_UNITS, DIPOLE_TO_E_ANGSTROM, EV_TO_KCAL_MOL

METRICS_FORMAT = "physpack-metrics"
METRICS_VERSION = 1
#: splits evaluated, in report order (a split absent from split.npz is skipped)
SPLITS = ("test", "valid")

_E = CANONICAL_UNITS["energy"]  # "eV"
_L = CANONICAL_UNITS["length"]  # "Angstrom"
_F = CANONICAL_UNITS["forces"]  # "eV/Angstrom"
_D = CANONICAL_UNITS["dipole"]  # "e*Angstrom"
_E_ANGSTROM_TO_DEBYE = 1.0 / DIPOLE_TO_E_ANGSTROM["Debye"]


# --------------------------------------------------------------------------------
# Predictions of one split and the metrics computed from them (pure numpy)
# --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SplitPredictions:
    """Reference and predicted values of one split, molecules in dataset order.

    Attributes:
        mol_index: int64 (M,) dataset index of each molecule, increasing.
        n_atoms: int32 (M,) atoms per molecule.
        offsets: int64 (M + 1,) start of each molecule in the per-atom arrays.
        Z: int32 (A,) atomic numbers, A = n_atoms.sum().
        E_true, E_pred: float64 (M,) total energies [eV].
        F_true: float64 (A, 3) reference forces [eV/Å], or ``None`` when the data
            has no forces; F_pred: predicted forces (always present when built
            by :func:`predict_split`).
        D_true: float64 (M, 3) reference dipole moments [e·Å], or ``None`` unless
            kept; D_pred: predicted dipoles, or ``None`` unless the model
            predicts them.
        Q_pred: float64 (A,) predicted atomic charges [e], or ``None`` unless the
            model predicts them.
    """

    mol_index: np.ndarray
    n_atoms: np.ndarray
    offsets: np.ndarray
    Z: np.ndarray
    E_true: np.ndarray
    E_pred: np.ndarray
    F_true: np.ndarray | None = None
    F_pred: np.ndarray | None = None
    D_true: np.ndarray | None = None
    D_pred: np.ndarray | None = None
    Q_pred: np.ndarray | None = None

    def __post_init__(self) -> None:
        m, a = self.mol_index.shape[0], int(self.offsets[-1])
        shapes = {
            "n_atoms": (self.n_atoms, (m,)),
            "offsets": (self.offsets, (m + 1,)),
            "Z": (self.Z, (a,)),
            "E_true": (self.E_true, (m,)),
            "E_pred": (self.E_pred, (m,)),
            "F_true": (self.F_true, (a, 3)),
            "F_pred": (self.F_pred, (a, 3)),
            "D_true": (self.D_true, (m, 3)),
            "D_pred": (self.D_pred, (m, 3)),
            "Q_pred": (self.Q_pred, (a,)),
        }
        for name, (arr, want) in shapes.items():
            if arr is not None and arr.shape != want:
                raise ValueError(
                    f"SplitPredictions.{name}: shape {arr.shape}, want {want}"
                )
        if self.F_true is not None and self.F_pred is None:
            raise ValueError("SplitPredictions: F_true needs F_pred")
        if self.D_true is not None and self.D_pred is None:
            raise ValueError("SplitPredictions: D_true needs D_pred")

    @property
    def n_molecules(self) -> int:
        return int(self.mol_index.shape[0])

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays under ``<prefix>_<name>`` keys (absent ones left out)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f"{prefix}_{f.name}"] = value
        return out


def _energy_units(value_ev: float, per: str = "") -> dict[str, float]:
    """An energy (eV) in eV, meV and kcal/mol; ``per`` is appended to the labels."""
    return {
        f"{_E}{per}": value_ev,
        f"meV{per}": value_ev * 1e3,
        f"kcal/mol{per}": value_ev * EV_TO_KCAL_MOL,
    }


def _force_units(value: float) -> dict[str, float]:
    """A force (eV/Å) in eV/Å, meV/Å and kcal/mol/Å."""
    return {
        _F: value,
        f"meV/{_L}": value * 1e3,
        f"kcal/mol/{_L}": value * EV_TO_KCAL_MOL,
    }


def _dipole_units(value: float) -> dict[str, float]:
    """A dipole moment (e·Å) in e·Å and Debye."""
    return {_D: value, "Debye": value * _E_ANGSTROM_TO_DEBYE}


def compute_metrics(pred: SplitPredictions) -> dict[str, Any]:
    """Error metrics of one split.

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
    e_mae, e_rmse = mae_rmse(dE)
    a_mae, a_rmse = mae_rmse(dE / n)
    out: dict[str, Any] = {
        "n_molecules": pred.n_molecules,
        "n_atoms": int(pred.offsets[-1]),
        "energy": {
            "per_molecule": {
                "mae": _energy_units(e_mae),
                "rmse": _energy_units(e_rmse),
            },
            "per_atom": {
                "mae": _energy_units(a_mae, "/atom"),
                "rmse": _energy_units(a_rmse, "/atom"),
            },
        },
    }
    if pred.F_true is not None and pred.F_pred is not None:
        dF = pred.F_pred - pred.F_true
        f_mae, f_rmse = mae_rmse(dF)
        f_std = float(np.std(pred.F_true)) if pred.F_true.size else float("nan")

        def rel(v: float) -> float:
            return v / f_std if f_std > 0 else float("nan")

        per_element = {}
        for z in np.unique(pred.Z):
            sel = pred.Z == z
            per_element[chemical_symbols[int(z)]] = {
                "atomic_number": int(z),
                "n_atoms": int(sel.sum()),
                "mae": _force_units(mae_rmse(dF[sel])[0]),
            }
        out["forces"] = {
            "n_components": int(dF.size),
            "mae": _force_units(f_mae),
            "rmse": _force_units(f_rmse),
            "std_reference": _force_units(f_std),
            "mae_relative": rel(f_mae),
            "rmse_relative": rel(f_rmse),
            "per_element": per_element,
        }
    if pred.D_true is not None and pred.D_pred is not None:
        dD = pred.D_pred - pred.D_true
        d_mae, d_rmse = mae_rmse(dD)
        norm_mae = mae_rmse(
            np.linalg.norm(pred.D_pred, axis=-1) - np.linalg.norm(pred.D_true, axis=-1)
        )[0]
        out["dipole"] = {
            "mae": _dipole_units(d_mae),
            "rmse": _dipole_units(d_rmse),
            "norm_mae": _dipole_units(norm_mae),
        }
    return out


# --------------------------------------------------------------------------------
# The metrics as one table: Markdown and HTML
# --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TableRow:
    """One row of the metrics table: a quantity, its unit, one value per split."""

    quantity: str
    unit: str
    values: dict[str, float]


def _get(d: Mapping[str, Any], path: Sequence[str]) -> float | None:
    for key in path:
        if not isinstance(d, Mapping) or key not in d:
            return None
        d = d[key]
    return float(d) if isinstance(d, (int, float)) else None


def metrics_rows(metrics: Mapping[str, Any]) -> list[TableRow]:
    """The rows of the metrics table, for the splits in ``metrics["splits"]``."""
    splits: dict[str, Any] = metrics["splits"]
    specs: list[tuple[str, str, tuple[str, ...]]] = []
    for kind, label in (("per_molecule", "per molecule"), ("per_atom", "per atom")):
        per = "" if kind == "per_molecule" else "/atom"
        for stat in ("mae", "rmse"):
            for unit in ("meV", "kcal/mol"):
                specs.append(
                    (
                        f"Energy {stat.upper()} {label}",
                        unit + per,
                        ("energy", kind, stat, unit + per),
                    )
                )
    for stat in ("mae", "rmse"):
        for unit in (f"meV/{_L}", f"kcal/mol/{_L}"):
            specs.append((f"Force {stat.upper()}", unit, ("forces", stat, unit)))
    specs.append(
        ("Force std (reference)", f"meV/{_L}", ("forces", "std_reference", f"meV/{_L}"))
    )
    specs.append(("Force MAE / force std", "1", ("forces", "mae_relative")))
    specs.append(("Force RMSE / force std", "1", ("forces", "rmse_relative")))
    specs.append(
        ("Force MAE / train force std", "1", ("forces", "mae_relative_to_train_std"))
    )
    elements: dict[str, int] = {}
    for m in splits.values():
        for sym, e in m.get("forces", {}).get("per_element", {}).items():
            elements[sym] = e["atomic_number"]
    for sym in sorted(elements, key=elements.__getitem__):
        specs.append(
            (
                f"Force MAE, {sym} atoms",
                f"meV/{_L}",
                ("forces", "per_element", sym, "mae", f"meV/{_L}"),
            )
        )
    for stat, label in (("mae", "MAE"), ("rmse", "RMSE"), ("norm_mae", "norm MAE")):
        specs.append((f"Dipole {label}", "Debye", ("dipole", stat, "Debye")))
    rows = []
    for quantity, unit, path in specs:
        values = {
            name: v for name, m in splits.items() if (v := _get(m, path)) is not None
        }
        if values:
            rows.append(TableRow(quantity, unit, values))
    count_row = TableRow(
        "Molecules", "", {name: float(m["n_molecules"]) for name, m in splits.items()}
    )
    return [count_row, *rows]


def _fmt(value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value)}"
    return f"{value:.4g}"


_TABLE_NOTE = (
    "Force errors are per Cartesian component. 'Force std' is the standard deviation "
    "of the reference force components of the same split, 'train force std' that of "
    "the training split."
)


def dispersion_note(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The report's ``dispersion`` entry: the model's D3 record and what it means
    for the numbers (``None``: trained without dispersion)."""
    settings = settings_of(record)
    if settings is None:
        return None
    note = (
        f"{settings.label} dispersion was subtracted from reference and prediction "
        "alike (it is not part of the network's output): the errors are those of "
        "the total energies and forces"
    )
    return {**record, "note": note}


def _notes(metrics: Mapping[str, Any]) -> list[str]:
    """The sentences under the metrics table."""
    dispersion = metrics.get("dispersion")
    return [_TABLE_NOTE] + ([dispersion["note"]] if dispersion else [])


def metrics_markdown(metrics: Mapping[str, Any]) -> str:
    """The metrics table in Markdown (one column per split)."""
    names = list(metrics["splits"])
    lines = [
        f"# Evaluation of {metrics.get('checkpoint', {}).get('path', 'the model')}",
        "",
        "| Quantity | Unit | " + " | ".join(names) + " |",
        "|---|---|" + "---:|" * len(names),
    ]
    for row in metrics_rows(metrics):
        cells = [_fmt(row.values[n]) if n in row.values else "" for n in names]
        lines.append(f"| {row.quantity} | {row.unit} | " + " | ".join(cells) + " |")
    lines += ["", *_notes(metrics)]
    return "\n".join(lines) + "\n"


def metrics_html_page(metrics: Mapping[str, Any]) -> str:
    """The metrics table as a self-contained HTML page (inline style, no scripts)."""
    names = list(metrics["splits"])
    esc = html.escape
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    body = []
    for row in metrics_rows(metrics):
        cells = "".join(
            f"<td>{esc(_fmt(row.values[n])) if n in row.values else ''}</td>"
            for n in names
        )
        body.append(
            f"<tr><th scope='row'>{esc(row.quantity)}</th>"
            f"<td class='u'>{esc(row.unit)}</td>{cells}</tr>"
        )
    ckpt = metrics.get("checkpoint", {})
    title = f"Evaluation of {esc(str(ckpt.get('path', 'the model')))}"
    style = (
        "body{font-family:sans-serif;margin:1em}"
        "table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:3px 8px}"
        "td{text-align:right;font-variant-numeric:tabular-nums}"
        "td.u{text-align:left;color:#555}"
        "thead th{background:#eee}"
        "tbody th{text-align:left;font-weight:normal}"
    )
    notes = "".join(f"<p>{esc(note)}</p>" for note in _notes(metrics))
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>{style}</style></head><body>"
        f"<h3>{title}</h3>"
        f"<table><thead><tr><th>Quantity</th><th>Unit</th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>{notes}"
        "</body></html>\n"
    )


# --------------------------------------------------------------------------------
# Prediction of a split through the packed loader
# --------------------------------------------------------------------------------
def predict_split(
    ckpt: Checkpoint,
    loader: PackedMemmapLoader,
    *,
    with_dipoles: bool,
    where: str,
    progress: Callable[[int], None] | None = None,
) -> SplitPredictions:
    """Predictions for every molecule of ``loader``'s subset, in dataset order.

    Args:
        ckpt: the model.
        loader: an unshuffled loader over the subset (its packed batches are used).
        with_dipoles: keep reference dipoles (the model must predict dipoles and
            the data must have them).
        where: name of the data in error messages (path and split).
        progress: called with the number of molecules done after each batch.

    Returns:
        The split's reference values (from the batches, i.e. the packed data as
        stored) and predictions (forces always; dipoles and atomic charges when
        the model predicts them); atoms keep their order within each molecule.
    """
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("mol", "n", "Z", "E", "Ep", "F", "Fp", "D", "Dp", "Qp")
    }
    has_f = loader.has_forces
    done = 0
    for batch in loader.packed_batches(epoch=0):
        ckpt.constants.check_batch(batch, where)
        out = ckpt.predict(batch)
        slots = np.flatnonzero(batch["molecule_mask"])
        # atoms grouped by molecule slot; stable, so in-molecule order is kept
        atoms = np.flatnonzero(batch["atom_mask"])
        atoms = atoms[np.argsort(batch["batch_segments"][atoms], kind="stable")]
        parts["mol"].append(batch["mol_index"][slots])
        parts["n"].append(batch["N"][slots])
        parts["Z"].append(batch["Z"][atoms])
        parts["E"].append(batch["E"][slots])
        parts["Ep"].append(out["energy"][slots])
        parts["Fp"].append(out["forces"][atoms])
        if has_f:
            parts["F"].append(batch["F"][atoms])
        if with_dipoles:
            parts["D"].append(batch["D"][slots])
        if "dipole" in out:
            parts["Dp"].append(out["dipole"][slots])
        if "charges" in out:
            parts["Qp"].append(out["charges"][atoms])
        done += slots.size
        if progress is not None:
            progress(done)
    mol = np.concatenate(parts["mol"]).astype(np.int64)
    n = np.concatenate(parts["n"]).astype(np.int32)
    # batches visit molecules in packing order: restore dataset order
    order = np.argsort(mol, kind="stable")
    starts = np.concatenate([[0], np.cumsum(n, dtype=np.int64)])[:-1]
    offsets = np.zeros(n.size + 1, np.int64)
    np.cumsum(n[order], out=offsets[1:])
    # new atom j of sorted molecule k sits at starts[order[k]] + (j - offsets[k])
    atom_order = np.arange(offsets[-1]) + np.repeat(
        starts[order] - offsets[:-1], n[order]
    )

    def cat(key: str, dtype: type, per_atom: bool) -> np.ndarray | None:
        if not parts[key]:
            return None
        arr = np.concatenate(parts[key]).astype(dtype)
        return arr[atom_order] if per_atom else arr[order]

    return SplitPredictions(
        mol_index=mol[order],
        n_atoms=n[order],
        offsets=offsets,
        Z=cat("Z", np.int32, True),
        E_true=cat("E", np.float64, False),
        E_pred=cat("Ep", np.float64, False),
        F_true=cat("F", np.float64, True),
        F_pred=cat("Fp", np.float64, True),
        D_true=cat("D", np.float64, False),
        D_pred=cat("Dp", np.float64, False),
        Q_pred=cat("Qp", np.float64, True),
    )


def _shared_budget_loaders(
    dataset: PackedDataset,
    split: Path,
    names: Sequence[str],
    loader_cfg: LoaderConfig,
    model: ModelConfig | None = None,
) -> dict[str, PackedMemmapLoader]:
    """Unshuffled loaders over the non-empty subsets ``names`` of ``split``, all
    with the same batch budget (the largest of their own), so that prediction
    compiles once for every split; ``model`` decides ``loader.pairs``."""
    loaders: dict[str, PackedMemmapLoader] = {}
    for name in names:
        try:
            if read_split(split, name).size == 0:
                continue
        except InputError:
            if name == names[0]:
                raise
            continue  # an optional split missing from the file
        loaders[name] = from_config(
            dataset, loader_cfg, split, name, shuffle=False, model=model
        )
    if not loaders:
        raise InputError(f"{split}: the subsets {', '.join(names)} are all empty")
    budgets = [dataclasses.astuple(lo.budget) for lo in loaders.values()]
    shared = tuple(max(b[k] for b in budgets) for k in range(3))
    for name, lo in loaders.items():
        if dataclasses.astuple(lo.budget) != shared:
            loaders[name] = from_config(
                dataset,
                loader_cfg,
                split,
                name,
                shuffle=False,
                model=model,
                max_atoms=shared[0],
                max_pairs=shared[1],
                max_molecules=shared[2],
            )
    return loaders


# --------------------------------------------------------------------------------
# Outputs: figures (files are staged with physpack.atomic.StagedOutputs)
# --------------------------------------------------------------------------------
def write_figures(
    directory: Path,
    preds: Mapping[str, SplitPredictions],
    metrics: Mapping[str, Any],
    constants: EnergyConstants,
    history: Mapping[str, np.ndarray] | None,
) -> list[Path]:
    """The evaluation's PNG figures in ``directory`` (names in the module docstring
    and ``workflow/report/figures.rst``)."""
    out = []
    ref = {
        name: np.add.reduceat(constants.reference_energies[p.Z], p.offsets[:-1])
        if p.n_molecules
        else np.zeros(0)
        for name, p in preds.items()
    }
    out.append(
        plots.parity_plot(
            directory / "energy_parity.png",
            [(n, p.E_true - ref[n], p.E_pred - ref[n]) for n, p in preds.items()],
            quantity="Energy",
            label=r"energy − $\sum_i E_\mathrm{ref}(Z_i)$",
            unit=_E,
            error_unit="meV",
            error_scale=1e3,
        )
    )
    errors: list[tuple[str, str, list[tuple[str, np.ndarray]]]] = [
        (
            "Energy per molecule",
            "meV",
            [(n, 1e3 * (p.E_pred - p.E_true)) for n, p in preds.items()],
        )
    ]
    with_f = {n: p for n, p in preds.items() if p.F_true is not None}
    if with_f:
        out.append(
            plots.parity_plot(
                directory / "force_parity.png",
                [(n, p.F_true, p.F_pred) for n, p in with_f.items()],
                quantity="Force",
                label="force component",
                unit="eV/Å",
                error_unit="meV/Å",
                error_scale=1e3,
            )
        )
        errors.append(
            (
                "Force components",
                "meV/Å",
                [(n, 1e3 * (p.F_pred - p.F_true)) for n, p in with_f.items()],
            )
        )
        out.append(
            plots.element_bars(
                directory / "force_mae_by_element.png",
                {
                    n: {
                        sym: e["mae"][f"meV/{_L}"]
                        for sym, e in metrics["splits"][n]["forces"][
                            "per_element"
                        ].items()
                    }
                    for n in with_f
                },
                unit="meV/Å",
            )
        )
    with_d = {n: p for n, p in preds.items() if p.D_true is not None}
    if with_d:
        out.append(
            plots.parity_plot(
                directory / "dipole_parity.png",
                [(n, p.D_true, p.D_pred) for n, p in with_d.items()],
                quantity="Dipole",
                label="dipole component",
                unit="e·Å",
                error_unit="D",
                error_scale=_E_ANGSTROM_TO_DEBYE,
            )
        )
        errors.append(
            (
                "Dipole components",
                "D",
                [
                    (n, _E_ANGSTROM_TO_DEBYE * (p.D_pred - p.D_true))
                    for n, p in with_d.items()
                ],
            )
        )
    out.append(plots.error_histograms(directory / "error_histograms.png", errors))
    if history is not None:
        out.append(plots.learning_curves(directory / "learning_curves.png", history))
    return out


def _json_ready(value: Any) -> Any:
    """NaN/inf → None (strict JSON), numpy scalars → Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """Outcome of :func:`evaluate`.

    Attributes:
        metrics: the content of ``metrics.json``.
        predictions: split name -> its predictions.
        figures: final paths of the figures written.
    """

    metrics: dict[str, Any]
    predictions: dict[str, SplitPredictions]
    figures: tuple[Path, ...]


def evaluate(
    packed: str | os.PathLike,
    split: str | os.PathLike,
    checkpoint: str | os.PathLike,
    *,
    metrics: str | os.PathLike,
    metrics_md: str | os.PathLike | None = None,
    metrics_html: str | os.PathLike | None = None,
    predictions: str | os.PathLike | None = None,
    figures: str | os.PathLike | None = None,
    history: str | os.PathLike | None = None,
    loader_cfg: LoaderConfig | None = None,
    splits: Sequence[str] = SPLITS,
    log: Callable[[str], None] = print,
) -> EvaluationResult:
    """Evaluate a checkpoint on subsets of a packed dataset and write the outputs.

    Args:
        packed: packed dataset directory.
        split: split NPZ (``physpack split``); the first of ``splits`` must be in
            it, later ones are evaluated when present and non-empty.
        checkpoint: ``best.ckpt``.
        metrics, metrics_md, metrics_html, predictions: files to write (layouts in
            the module docstring); all but ``metrics`` optional.
        figures: directory of PNG figures to (re)create.
        history: ``history.csv`` of training, for the learning curves.
        loader_cfg: the ``loader`` section (batch budgets).
        splits: subset names, in report order.
        log: receives one summary line per split.

    Raises:
        InputError: missing, truncated or newer-format checkpoint; data holding an
        element the model was not trained for; unreadable data, split or history.
        Nothing is written then.
    """
    ckpt = load_checkpoint(checkpoint)
    dataset = open_dataset(packed)
    check_same(
        ckpt.dispersion,
        dataset.dispersion,
        (str(checkpoint), str(dataset.path)),
        "a model is evaluated on data with the D3 dispersion it was trained with "
        "subtracted (residuals against residuals)",
    )
    split = Path(split)
    hist = plots.read_history(history) if history is not None else None
    loaders = _shared_budget_loaders(
        dataset, split, list(splits), loader_cfg or LoaderConfig(), ckpt.model_config
    )
    with_dipoles = ckpt.model_config.charges and dataset.has("D")
    preds = {
        name: predict_split(
            ckpt, lo, with_dipoles=with_dipoles, where=f"{dataset.path} ({name} split)"
        )
        for name, lo in loaders.items()
    }
    train_std = ckpt.training.get("data_stats", {}).get("forces_std_eV_per_A")
    per_split = {}
    for name, p in preds.items():
        m = compute_metrics(p)
        if "forces" in m and train_std:
            m["forces"]["std_train"] = _force_units(float(train_std))
            m["forces"]["mae_relative_to_train_std"] = m["forces"]["mae"][_F] / float(
                train_std
            )
        per_split[name] = m
        log(_summary_line(name, m))
    report: dict[str, Any] = {
        "format": METRICS_FORMAT,
        "format_version": METRICS_VERSION,
        "created_by": f"physpack {__version__}",
        "units": dict(CANONICAL_UNITS),
        "packed": str(dataset.path),
        "split_file": str(split),
        "checkpoint": {
            "path": str(checkpoint),
            "format_version": ckpt.format_version,
            "physpack_version": ckpt.physpack_version,
            "created_utc": ckpt.created_utc,
            "epoch": ckpt.training.get("epoch"),
            "step": ckpt.training.get("step"),
            "valid_metrics": dict(ckpt.metrics),
        },
        "model_config": dataclasses.asdict(ckpt.model_config),
        "dispersion": dispersion_note(ckpt.dispersion),
        "splits": per_split,
    }
    report = _json_ready(report)
    written: list[Path] = []
    with StagedOutputs() as staged:
        staged.file(metrics).write_text(
            json.dumps(report, indent=2, allow_nan=False) + "\n"
        )
        if metrics_md is not None:
            staged.file(metrics_md).write_text(metrics_markdown(report))
        if metrics_html is not None:
            staged.file(metrics_html).write_text(metrics_html_page(report))
        if predictions is not None:
            arrays: dict[str, np.ndarray] = {
                "splits": np.array(list(preds), dtype=str),
                "units": np.array(json.dumps(CANONICAL_UNITS)),
                "dispersion": np.array(json.dumps(report["dispersion"])),
            }
            for name, p in preds.items():
                arrays |= p.to_arrays(name)
            with open(staged.file(predictions), "wb") as fh:
                np.savez(fh, **arrays)
        if figures is not None:
            tmp = staged.directory(figures)
            written = [
                Path(figures) / f.name
                for f in write_figures(tmp, preds, report, ckpt.constants, hist)
            ]
    return EvaluationResult(metrics=report, predictions=preds, figures=tuple(written))


def _summary_line(name: str, m: Mapping[str, Any]) -> str:
    e = m["energy"]["per_molecule"]["mae"]
    text = (
        f"{name}: {m['n_molecules']} molecules, energy MAE {e['meV']:.4g} meV "
        f"({e['kcal/mol']:.4g} kcal/mol)"
    )
    if "forces" in m:
        f = m["forces"]
        text += (
            f", force MAE {f['mae'][f'meV/{_L}']:.4g} meV/Å "
            f"({f['mae_relative']:.3g} × force std)"
        )
    if "dipole" in m:
        text += f", dipole MAE {m['dipole']['mae']['Debye']:.3g} D"
    return text


@cli_entry("physpack evaluate")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="physpack evaluate",
        description="Metrics, predictions and figures of a trained model on the test "
        "and validation splits.",
    )
    parser.add_argument("packed", help="packed dataset directory")
    parser.add_argument("--split", required=True, help="split NPZ (physpack split)")
    parser.add_argument("--checkpoint", required=True, help="best.ckpt to evaluate")
    parser.add_argument("--history", help="training history.csv (learning curves)")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    parser.add_argument("--metrics-md", help="metrics table (Markdown) to write")
    parser.add_argument("--metrics-html", help="metrics table (HTML) to write")
    parser.add_argument("--predictions", help="predictions NPZ to write")
    parser.add_argument("--figures", help="directory of PNG figures to write")
    parser.add_argument(
        "--loader-config",
        metavar="JSON",
        default="{}",
        help="the 'loader' config section as a JSON object",
    )
    parser.add_argument(
        "--splits",
        default=",".join(SPLITS),
        help="comma-separated subsets to evaluate (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        loader_mapping = json.loads(args.loader_config)
    except ValueError as exc:
        raise ConfigError(f"--loader-config is not valid JSON ({exc})") from exc
    if not isinstance(loader_mapping, dict):
        raise ConfigError("--loader-config must be a JSON object")
    evaluate(
        args.packed,
        args.split,
        args.checkpoint,
        metrics=args.metrics,
        metrics_md=args.metrics_md,
        metrics_html=args.metrics_html,
        predictions=args.predictions,
        figures=args.figures,
        history=args.history,
        loader_cfg=section_from_mapping(LoaderConfig, loader_mapping, "loader"),
        splits=[s for s in args.splits.split(",") if s],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
