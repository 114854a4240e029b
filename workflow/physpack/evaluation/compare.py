"""One comparison of several runs: test metrics side by side, the settings that
differ, overlaid learning curves, and each committee's calibration.

Inputs are the files the workflow already has for every run
(``results/runs/<run>/eval/metrics.json``, ``.../model/history.csv`` and, when the
stability stage ran, ``.../md/stability.json`` with its figure beside it) and for
every committee (``results/ensembles/<name>/metrics.json`` of
:mod:`physpack.evaluation.ensemble`); outputs are ``comparison.md``,
``comparison.html`` and PNG figures (each run's MD stability figure as
``md_stability_<run>.png``), written together (all or nothing).
Energies are shown in meV (per molecule and per atom), forces in meV/Å.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from physpack.atomic import StagedOutputs
from physpack.errors import InputError, cli_entry
from physpack.evaluation.plots import figure, read_history, save_figure
from physpack.evaluation.split_metrics import json_path, value_at
from physpack.evaluation.tables import (
    format_cell,
    html_heading,
    html_page,
    html_table,
    markdown_table,
)
from physpack.metrics import SHOWN_UNITS, convert, metric_name, unit_of

#: how a quantity is called in column titles
_NAMES = {"energy": "energy", "energy_per_atom": "energy", "forces": "force"}


def _title(quantity: str, text: str) -> str:
    """``text`` and the shown unit of ``quantity``: ``"force MAE [meV/Å]"``."""
    return f"{text} [{unit_of(quantity, SHOWN_UNITS[quantity]).symbol}]"


def _run_column(quantity: str, statistic: str) -> tuple[str, tuple[str, ...]]:
    title = _title(quantity, f"{_NAMES[quantity]} {statistic.upper()}")
    return title, json_path(quantity, statistic, SHOWN_UNITS[quantity])


def _curve(quantity: str) -> tuple[str, str, float]:
    title = _title(quantity, f"validation {_NAMES[quantity]} MAE")
    column = metric_name(quantity, "mae", prefix="valid_")
    return title, column, unit_of(quantity, SHOWN_UNITS[quantity]).scale


#: (column title, path into a split's metrics: the value in the title's unit)
RUN_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    _run_column("energy", "mae"),
    _run_column("energy_per_atom", "mae"),
    _run_column("energy", "rmse"),
    _run_column("forces", "mae"),
    _run_column("forces", "rmse"),
    ("force MAE / force std", ("forces", "mae_relative")),
)
#: learning-curve panels: (title, history column, factor to the shown unit)
CURVES = (
    _curve("forces"),
    _curve("energy_per_atom"),
    ("training loss", "train_loss", 1.0),
)


def _read_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read {what} ({exc})") from exc


def _dig(d: Mapping[str, Any], path: Sequence[str]) -> float:
    """The number at ``path`` in ``d``, NaN (shown as ``n/a``) where none."""
    value = value_at(d, path)
    return float("nan") if value is None else value


def run_table(
    metrics: Mapping[str, Mapping[str, Any]],
    params: Mapping[str, Mapping[str, Any]],
    split: str = "test",
) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per run): the differing settings, then the ``split``
    metrics of :data:`RUN_COLUMNS`."""
    header = ["run", *params, *(title for title, _ in RUN_COLUMNS)]
    rows = []
    for run, m in metrics.items():
        split_metrics = m.get("splits", {}).get(split, {})
        rows.append(
            [
                run,
                *(format_cell(params[key].get(run)) for key in params),
                *(format_cell(_dig(split_metrics, path)) for _, path in RUN_COLUMNS),
            ]
        )
    return header, rows


def ensemble_table(
    ensembles: Mapping[str, Mapping[str, Any]],
) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per committee): error of the mean, mean spread and the
    calibration of the spread, for energies and forces."""
    header = ["ensemble", "members"]
    for q, name in (("energy", "energy"), ("forces", "force")):
        header += [
            _title(q, f"{name} MAE"),
            _title(q, f"mean {name} std"),
            f"{name} σ scale",
            f"{name} Spearman",
        ]
    rows = []
    for name, m in ensembles.items():
        cells = [name, str(m.get("members", ""))]
        for q in ("energy", "forces"):
            d = m.get(q, {})
            cells += [
                format_cell(convert(_dig(d, ["mae"]), q, SHOWN_UNITS[q])),
                format_cell(convert(_dig(d, ["mean_std"]), q, SHOWN_UNITS[q])),
                format_cell(_dig(d, ["calibration", "scale"])),
                format_cell(_dig(d, ["calibration", "spearman"])),
            ]
        rows.append(cells)
    return header, rows


def stability_table(
    stability: Mapping[str, Mapping[str, Any]],
) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per run and temperature) of the MD stability stage's
    records (:mod:`physpack.simulation.stability_stage`)."""
    header = [
        "run",
        "T [K]",
        "length [ps]",
        "intact",
        "mean |energy drift| [meV/atom/ps]",
        "largest bond stretch",
    ]
    rows = []
    for run, record in stability.items():
        for md in record.get("runs", {}).values():
            molecules = md.get("molecules", [])
            drifts = [
                abs(m["energy_drift_meV_per_atom_ps"])
                for m in molecules
                if m.get("stable") and m.get("energy_drift_meV_per_atom_ps") is not None
            ]
            rows.append(
                [
                    run,
                    format_cell(md["settings"]["temperature_K"]),
                    format_cell(md["settings"]["picoseconds"]),
                    f"{md.get('stable', 0)}/{len(molecules)}",
                    format_cell(float(np.mean(drifts)) if drifts else float("nan")),
                    format_cell(
                        max(
                            (m["max_bond_stretch"] for m in molecules),
                            default=float("nan"),
                        )
                    ),
                ]
            )
    return header, rows


_NOTE = (
    "Test split; the validation split chose each run's best epoch. σ scale: the "
    "factor that makes the committee spread match the observed errors of its mean "
    "(1 = calibrated, > 1 over-confident); Spearman: rank correlation of |error| and "
    "spread."
)


def comparison_markdown(
    metrics: Mapping[str, Mapping[str, Any]],
    params: Mapping[str, Mapping[str, Any]],
    ensembles: Mapping[str, Mapping[str, Any]],
    stability: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    lines = ["# Comparison of runs", ""]
    lines += markdown_table(*run_table(metrics, params))
    if ensembles:
        lines += ["", "## Ensembles", ""]
        lines += markdown_table(*ensemble_table(ensembles))
    if stability:
        lines += ["", "## Is each model usable in simulation?", ""]
        lines += markdown_table(*stability_table(stability))
    lines += ["", _NOTE]
    return "\n".join(lines) + "\n"


def comparison_html(
    metrics: Mapping[str, Mapping[str, Any]],
    params: Mapping[str, Mapping[str, Any]],
    ensembles: Mapping[str, Mapping[str, Any]],
    stability: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    parts = [html_table(*run_table(metrics, params))]
    if ensembles:
        parts += [html_heading("Ensembles"), html_table(*ensemble_table(ensembles))]
    if stability:
        parts += [
            html_heading("Is each model usable in simulation?"),
            html_table(*stability_table(stability)),
        ]
    return html_page("Comparison of runs", parts, [_NOTE])


def learning_curves_figure(
    path: str | os.PathLike, histories: Mapping[str, Mapping[str, np.ndarray]]
) -> Path:
    """The validation errors and training loss of every run against epoch."""
    fig = figure(len(CURVES), width=4.2, height=3.4)
    axes = fig.subplots(1, len(CURVES), squeeze=False)[0]
    for ax, (title, column, factor) in zip(axes, CURVES, strict=True):
        drawn = False
        for run, hist in histories.items():
            if column not in hist:
                continue
            y = hist[column] * factor
            x = hist.get("epoch", np.arange(1, y.size + 1))
            ax.plot(x, y, lw=1.2, label=run)
            drawn = True
        if drawn:
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
    return save_figure(fig, path)


def calibration_figure(
    path: str | os.PathLike, ensembles: Mapping[str, Mapping[str, Any]]
) -> Path:
    """Per committee: RMSE of the error against RMS spread in quantile bins of the
    spread, energies and forces; a calibrated committee lies on the diagonal."""
    fig = figure(2, width=4.2, height=3.8)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, q in zip(axes, ("energy", "forces"), strict=True):
        unit = unit_of(q, SHOWN_UNITS[q]).symbol
        hi = 0.0
        for name, m in ensembles.items():
            curve = m.get(q, {}).get("calibration", {}).get("curve", {})
            s = convert(np.asarray(curve.get("sigma_rms", []), float), q, unit)
            e = convert(np.asarray(curve.get("error_rmse", []), float), q, unit)
            if s.size:
                ax.plot(s, e, marker="o", ms=3, lw=1.2, label=name)
                hi = max(hi, float(np.nanmax(s)), float(np.nanmax(e)))
        if hi > 0:
            ax.plot([0, hi], [0, hi], "k--", lw=0.8, label="calibrated")
            ax.legend(fontsize=7)
        ax.set_xlabel(f"RMS committee std [{unit}]")
        ax.set_ylabel(f"RMSE of the mean [{unit}]")
        ax.set_title(f"{q}: calibration (test split)", fontsize=9)
    return save_figure(fig, path)


def compare(
    runs: Mapping[str, tuple[str | os.PathLike, str | os.PathLike]],
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    ensembles: Mapping[str, str | os.PathLike] | None = None,
    stability: Mapping[str, str | os.PathLike] | None = None,
    markdown: str | os.PathLike,
    html_path: str | os.PathLike,
    figures: str | os.PathLike,
) -> dict[str, Any]:
    """Write the comparison of ``runs`` (name -> (metrics.json, history.csv)).

    ``params`` maps ``section.key`` -> {run: value} (the settings that differ,
    :func:`physpack.runs.differing_keys`); ``ensembles`` maps a committee to its
    ensemble ``metrics.json``; ``stability`` a run to its ``stability.json`` (its
    figure, ``stability.png`` beside it, is copied in). Returns the metrics it read.
    """
    if not runs:
        raise InputError("compare: no runs given")
    metrics = {r: _read_json(m, "run metrics") for r, (m, _) in runs.items()}
    histories = {r: read_history(h) for r, (_, h) in runs.items()}
    ens = {n: _read_json(p, "ensemble metrics") for n, p in (ensembles or {}).items()}
    stab = {r: _read_json(p, "MD stability") for r, p in (stability or {}).items()}
    params = dict(params or {})
    with StagedOutputs() as staged:
        staged.file(markdown).write_text(
            comparison_markdown(metrics, params, ens, stab)
        )
        staged.file(html_path).write_text(comparison_html(metrics, params, ens, stab))
        fig_dir = staged.directory(figures)
        learning_curves_figure(fig_dir / "learning_curves.png", histories)
        if ens:
            calibration_figure(fig_dir / "calibration.png", ens)
        for run, path in (stability or {}).items():
            png = Path(path).with_suffix(".png")
            if not png.is_file():
                raise InputError(f"{png}: missing (the figure of {path})")
            shutil.copyfile(png, fig_dir / f"md_stability_{run}.png")
    return {"runs": metrics, "ensembles": ens, "stability": stab}


def _run_spec(text: str) -> tuple[str, str, str]:
    parts = text.split("=", 1)
    if len(parts) != 2 or parts[1].count(",") != 1:
        raise argparse.ArgumentTypeError(
            f"expected NAME=METRICS_JSON,HISTORY_CSV, got {text!r}"
        )
    name, rest = parts
    metrics, history = rest.split(",")
    return name, metrics, history


def _named_path(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


@cli_entry("physpack compare")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="physpack compare",
        description="Compare runs: test metrics, differing settings, learning "
        "curves and ensemble calibration.",
    )
    parser.add_argument(
        "--run",
        action="append",
        type=_run_spec,
        required=True,
        metavar="NAME=METRICS,HISTORY",
        help="a run's eval metrics.json and history.csv (repeat per run)",
    )
    parser.add_argument(
        "--ensemble",
        action="append",
        type=_named_path,
        default=[],
        metavar="NAME=METRICS",
        help="a committee's ensemble metrics.json (repeat per committee)",
    )
    parser.add_argument(
        "--stability",
        action="append",
        type=_named_path,
        default=[],
        metavar="NAME=STABILITY_JSON",
        help="a run's md/stability.json, its stability.png beside it (repeat per run)",
    )
    parser.add_argument(
        "--params",
        default="{}",
        metavar="JSON",
        help='settings that differ between runs: {"section.key": {"run": value}}',
    )
    parser.add_argument("--markdown", required=True, help="comparison.md to write")
    parser.add_argument("--html", required=True, help="comparison.html to write")
    parser.add_argument("--figures", required=True, help="figure directory to write")
    args = parser.parse_args(argv)
    try:
        params = json.loads(args.params)
    except ValueError as exc:
        raise InputError(f"--params: not JSON ({exc})") from exc
    compare(
        {name: (m, h) for name, m, h in args.run},
        params=params,
        ensembles=dict(args.ensemble),
        stability=dict(args.stability),
        markdown=args.markdown,
        html_path=args.html,
        figures=args.figures,
    )
    print(f"compared {len(args.run)} run(s) -> {args.markdown}")
    return 0
