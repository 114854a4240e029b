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

The parts live in their own modules: inference of a split in
:mod:`~physpack.evaluation.inference` (shared with ``physpack predict``), the
predictions container in :mod:`~physpack.evaluation.predictions`, a split's
metrics and their table in :mod:`~physpack.evaluation.split_metrics` (numbers
from :mod:`physpack.metrics`), table layout in :mod:`~physpack.evaluation.tables`;
this module runs them and writes the files.

A model trained with D3 dispersion subtracted (``data.dispersion``) is evaluated on
data with the same D3 subtracted (any other data is refused): stored residuals are
compared with predicted residuals, which is the comparison of the totals, since the
same D3 term is on both sides. ``metrics.json`` (``dispersion``), the tables and
``predictions.npz`` say so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from physpack import __version__
from physpack import config as cfg
from physpack.atomic import StagedOutputs
from physpack.data.descriptor import open_dataset
from physpack.dispersion import check_same, settings_of
from physpack.errors import cli_entry
from physpack.evaluation import plots
from physpack.evaluation.inference import predict_split, shared_budget_loaders
from physpack.evaluation.predictions import SplitPredictions
from physpack.evaluation.split_metrics import (
    compute_metrics,
    json_path,
    metrics_html_page,
    metrics_markdown,
    value_at,
)
from physpack.metrics import convert, in_units, unit_of
from physpack.model.checkpoint import Checkpoint
from physpack.model.checkpoint import load as load_checkpoint
from physpack.model.physnet import EnergyConstants
from physpack.units import CANONICAL_UNITS

__all__ = [  # the evaluation's parts, importable from here as before
    "SplitPredictions",
    "compute_metrics",
    "evaluate",
    "main",
    "metrics_html_page",
    "metrics_markdown",
    "predict_split",
]

METRICS_FORMAT = "physpack-metrics"
METRICS_VERSION = 1
#: splits evaluated, in report order (a split absent from split.npz is skipped)
SPLITS = ("test", "valid")


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


# --------------------------------------------------------------------------------
# Outputs: figures (files are staged with physpack.atomic.StagedOutputs)
# --------------------------------------------------------------------------------
def _parity(
    path: Path,
    panels: Sequence[plots.Panel],
    quantity: str,
    shown: str,
    title: str,
    label: str,
) -> Path:
    """A parity plot of canonical values with errors printed in ``shown``."""
    error = unit_of(quantity, shown)
    return plots.parity_plot(
        path,
        panels,
        quantity=title,
        label=label,
        unit=unit_of(quantity).symbol,
        error_unit=error.symbol,
        error_scale=error.scale,
    )


def _errors(
    title: str, quantity: str, shown: str, errors: Mapping[str, np.ndarray]
) -> tuple[str, str, list[tuple[str, np.ndarray]]]:
    """A histogram panel: canonical errors per split, shown in ``shown``."""
    return (
        title,
        unit_of(quantity, shown).symbol,
        [(n, convert(e, quantity, shown)) for n, e in errors.items()],
    )


def _force_figures(
    directory: Path,
    preds: Mapping[str, SplitPredictions],
    metrics: Mapping[str, Any],
    errors: list[tuple[str, str, list[tuple[str, np.ndarray]]]],
) -> list[Path]:
    """Force parity and per-element bars of ``preds`` (splits with reference
    forces); their histogram panel is appended to ``errors``."""
    forces = [(n, p.F_true, p.F_pred) for n, p in preds.items()]
    path, label = directory / "force_parity.png", "force component"
    out = [_parity(path, forces, "forces", "meV/Å", "Force", label)]
    errors.append(
        _errors("Force components", "forces", "meV/Å", {n: f - t for n, t, f in forces})
    )
    shown = unit_of("forces", "meV/Å")
    per_element = {
        n: {
            sym: e["mae"][shown.label]
            for sym, e in metrics["splits"][n]["forces"]["per_element"].items()
        }
        for n in preds
    }
    out.append(
        plots.element_bars(
            directory / "force_mae_by_element.png", per_element, unit=shown.symbol
        )
    )
    return out


def write_figures(
    directory: Path,
    preds: Mapping[str, SplitPredictions],
    metrics: Mapping[str, Any],
    constants: EnergyConstants,
    history: Mapping[str, np.ndarray] | None,
) -> list[Path]:
    """The evaluation's PNG figures in ``directory`` (names in the module docstring
    and ``workflow/report/figures.rst``)."""
    ref = {
        name: np.add.reduceat(constants.reference_energies[p.Z], p.offsets[:-1])
        if p.n_molecules
        else np.zeros(0)
        for name, p in preds.items()
    }
    energies = [(n, p.E_true - ref[n], p.E_pred - ref[n]) for n, p in preds.items()]
    label = r"energy − $\sum_i E_\mathrm{ref}(Z_i)$"
    out = [
        _parity(
            directory / "energy_parity.png", energies, "energy", "meV", "Energy", label
        )
    ]
    errors = [
        _errors(
            "Energy per molecule",
            "energy",
            "meV",
            {n: p.E_pred - p.E_true for n, p in preds.items()},
        )
    ]
    with_f = {n: p for n, p in preds.items() if p.F_true is not None}
    if with_f:
        out += _force_figures(directory, with_f, metrics, errors)
    with_d = {n: p for n, p in preds.items() if p.D_true is not None}
    if with_d:
        dipoles = [(n, p.D_true, p.D_pred) for n, p in with_d.items()]
        path, label = directory / "dipole_parity.png", "dipole component"
        out.append(_parity(path, dipoles, "dipole", "Debye", "Dipole", label))
        errors.append(
            _errors(
                "Dipole components",
                "dipole",
                "Debye",
                {n: d - t for n, t, d in dipoles},
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


def _report(
    ckpt: Checkpoint,
    checkpoint: str,
    packed: str,
    split: str,
    per_split: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``metrics.json`` (strict JSON: NaN as null)."""
    report: dict[str, Any] = {
        "format": METRICS_FORMAT,
        "format_version": METRICS_VERSION,
        "created_by": f"physpack {__version__}",
        "units": dict(CANONICAL_UNITS),
        "packed": packed,
        "split_file": split,
        "checkpoint": {
            "path": checkpoint,
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
    return _json_ready(report)


def _write_outputs(
    report: dict[str, Any],
    preds: Mapping[str, SplitPredictions],
    constants: EnergyConstants,
    history: Mapping[str, np.ndarray] | None,
    *,
    metrics: str | os.PathLike,
    metrics_md: str | os.PathLike | None,
    metrics_html: str | os.PathLike | None,
    predictions: str | os.PathLike | None,
    figures: str | os.PathLike | None,
) -> list[Path]:
    """Write the outputs that are asked for, all or none (staged); returns the
    final paths of the figures."""
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
                for f in write_figures(tmp, preds, report, constants, history)
            ]
    return written


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
    loader_cfg: cfg.LoaderConfig | None = None,
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
    loaders = shared_budget_loaders(
        dataset,
        split,
        list(splits),
        loader_cfg or cfg.LoaderConfig(),
        ckpt.model_config,
    )
    with_dipoles = ckpt.model_config.charges and dataset.has("D")
    preds = {
        name: predict_split(
            ckpt, lo, with_dipoles=with_dipoles, where=f"{dataset.path} ({name} split)"
        )
        for name, lo in loaders.items()
    }
    per_split = {}
    for name, p in preds.items():
        per_split[name] = _with_train_std(compute_metrics(p), ckpt)
        log(_summary_line(name, per_split[name]))
    report = _report(ckpt, str(checkpoint), str(dataset.path), str(split), per_split)
    written = _write_outputs(
        report,
        preds,
        ckpt.constants,
        hist,
        metrics=metrics,
        metrics_md=metrics_md,
        metrics_html=metrics_html,
        predictions=predictions,
        figures=figures,
    )
    return EvaluationResult(metrics=report, predictions=preds, figures=tuple(written))


def _with_train_std(m: dict[str, Any], ckpt: Checkpoint) -> dict[str, Any]:
    """``m`` with the force MAE relative to the training split's force std (from
    the checkpoint's data statistics, when it has them)."""
    train_std = ckpt.training.get("data_stats", {}).get("forces_std_eV_per_A")
    if "forces" in m and train_std:
        mae = value_at(m, json_path("forces", "mae"))
        m["forces"]["std_train"] = in_units(float(train_std), "forces")
        m["forces"]["mae_relative_to_train_std"] = mae / float(train_std)
    return m


def _summary_line(name: str, m: Mapping[str, Any]) -> str:
    def value(quantity: str, statistic: str, unit: str) -> str:
        return f"{value_at(m, json_path(quantity, statistic, unit)):.4g} {unit}"

    text = (
        f"{name}: {m['n_molecules']} molecules, energy MAE "
        f"{value('energy', 'mae', 'meV')} ({value('energy', 'mae', 'kcal/mol')})"
    )
    if "forces" in m:
        text += (
            f", force MAE {value('forces', 'mae', 'meV/Å')} "
            f"({m['forces']['mae_relative']:.3g} × force std)"
        )
    if "dipole" in m:
        text += f", dipole MAE {value_at(m, json_path('dipole', 'mae', 'Debye')):.3g} D"
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
        "--splits",
        default=",".join(SPLITS),
        help="comma-separated subsets to evaluate (default: %(default)s)",
    )
    cfg.add_section_arguments(
        parser, cfg.LoaderConfig, "loader", option="--loader-config"
    )
    args = parser.parse_args(argv)
    loader = cfg.section_from_args(cfg.LoaderConfig, args, "loader")
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
        loader_cfg=loader,
        splits=[s for s in args.splits.split(",") if s],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
