"""Figures of an evaluation: parity plots, error histograms, learning curves.

Every function draws one PNG with matplotlib's object-oriented API on an Agg
canvas (no pyplot, so no global backend state and no display needed), and takes
plain numpy arrays in canonical units (eV, Å, eV/Å, e·Å); axes are labelled in the
units people read (meV, meV/Å, Debye).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from physpack.errors import InputError
from physpack.metrics import QUANTITIES, mae_rmse

#: above this many points a parity panel is a hexbin density, not a scatter
SCATTER_LIMIT = 20_000
DPI = 130
_SPLIT_COLOURS = {"test": "C0", "valid": "C1", "train": "C2"}

#: one parity/histogram panel: (split name, reference values, predicted values)
Panel = tuple[str, np.ndarray, np.ndarray]


def _figure(n_panels: int, width: float = 4.2, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width * n_panels, height), layout="constrained", dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    fig.savefig(path, format="png", dpi=DPI)
    return path


#: the canvas and the writer, for the other figure modules (comparison of runs)
figure = _figure
save_figure = _save


def _colour(split: str) -> str:
    return _SPLIT_COLOURS.get(split, "C3")


def parity_plot(
    path: str | os.PathLike,
    panels: Sequence[Panel],
    *,
    quantity: str,
    unit: str,
    error_unit: str,
    error_scale: float,
    label: str | None = None,
) -> Path:
    """Predicted versus reference values, one panel per split.

    Args:
        path: PNG to write.
        panels: (split, reference (n,), predicted (n,)) per panel, any float dtype,
            values in ``unit``.
        quantity: panel title, e.g. ``"Energy"``.
        unit: unit of the values (axis labels).
        error_unit: unit in which MAE/RMSE are printed on each panel.
        error_scale: factor from ``unit`` to ``error_unit``
            (:attr:`physpack.metrics.Unit.scale`: 1000 for eV → meV).
        label: what the axes show (default: ``quantity`` in lower case).
    """
    label = label or quantity.lower()
    fig = _figure(len(panels))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (split, ref, pred) in zip(axes, panels):
        ref = np.asarray(ref, np.float64).ravel()
        pred = np.asarray(pred, np.float64).ravel()
        if ref.size:
            lo = float(min(ref.min(), pred.min()))
            hi = float(max(ref.max(), pred.max()))
            pad = 0.03 * (hi - lo or 1.0)
            lo, hi = lo - pad, hi + pad
            if ref.size > SCATTER_LIMIT:
                hb = ax.hexbin(
                    ref,
                    pred,
                    gridsize=80,
                    bins="log",
                    mincnt=1,
                    extent=(lo, hi, lo, hi),
                    cmap="viridis",
                )
                fig.colorbar(hb, ax=ax, label="points per bin")
            else:
                ax.scatter(
                    ref,
                    pred,
                    s=6,
                    alpha=0.6,
                    lw=0,
                    color=_colour(split),
                    rasterized=True,
                )
            ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            mae, rmse = mae_rmse((pred - ref) * error_scale)
            ax.text(
                0.04,
                0.96,
                f"n = {ref.size}\nMAE = {mae:.3g} {error_unit}\n"
                f"RMSE = {rmse:.3g} {error_unit}",
                transform=ax.transAxes,
                va="top",
                ha="left",
                fontsize=9,
                bbox={"facecolor": "white", "alpha": 0.8, "lw": 0},
            )
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center")
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"{quantity}: {split} split")
        ax.set_xlabel(f"reference {label} [{unit}]")
        ax.set_ylabel(f"predicted {label} [{unit}]")
    return _save(fig, path)


def error_histograms(
    path: str | os.PathLike,
    quantities: Sequence[tuple[str, str, Sequence[tuple[str, np.ndarray]]]],
    *,
    bins: int = 60,
) -> Path:
    """Histograms of prediction errors, one panel per quantity, splits overlaid.

    Args:
        path: PNG to write.
        quantities: (title, unit, [(split, errors (n,))...]) per panel; errors are
            prediction − reference, already in ``unit``.
        bins: histogram bins per panel (shared by the splits of a panel).
    """
    fig = _figure(len(quantities), width=4.4, height=3.4)
    axes = fig.subplots(1, len(quantities), squeeze=False)[0]
    for ax, (title, unit, series) in zip(axes, quantities):
        finite = [np.asarray(e, np.float64).ravel() for _, e in series]
        finite = [e[np.isfinite(e)] for e in finite]
        allv = np.concatenate(finite) if finite else np.zeros(0)
        if allv.size:
            lim = float(np.quantile(np.abs(allv), 0.999)) or 1.0
            edges = np.linspace(-lim, lim, bins + 1)
            for (split, _), e in zip(series, finite):
                ax.hist(
                    np.clip(e, -lim, lim),
                    bins=edges,
                    histtype="step",
                    lw=1.4,
                    color=_colour(split),
                    label=f"{split} (n={e.size})",
                )
            ax.axvline(0.0, color="k", lw=0.6)
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center")
        ax.set_title(title)
        ax.set_xlabel(f"predicted − reference [{unit}]")
        ax.set_ylabel("count")
    return _save(fig, path)


def element_bars(
    path: str | os.PathLike,
    per_split: Mapping[str, Mapping[str, float]],
    *,
    unit: str,
    title: str = "Force MAE per element",
) -> Path:
    """Grouped bar chart of a value per element (e.g. force MAE), one bar per split.

    Args:
        per_split: split -> {element symbol: value in ``unit``}; elements are shown
            in the order they first appear.
    """
    symbols: list[str] = []
    for values in per_split.values():
        symbols += [s for s in values if s not in symbols]
    fig = _figure(1, width=max(4.0, 1.0 + 0.9 * len(symbols)), height=3.4)
    ax = fig.subplots()
    width = 0.8 / max(len(per_split), 1)
    x = np.arange(len(symbols))
    for k, (split, values) in enumerate(per_split.items()):
        heights = [values.get(s, np.nan) for s in symbols]
        ax.bar(
            x + (k - (len(per_split) - 1) / 2) * width,
            heights,
            width,
            color=_colour(split),
            label=split,
        )
    ax.set_xticks(x, symbols)
    ax.set_ylabel(f"MAE [{unit}]")
    ax.set_title(title)
    if per_split:
        ax.legend(fontsize=8)
    return _save(fig, path)


def read_history(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Numeric columns of a training ``history.csv`` as float64 arrays (n_epochs,).

    Non-numeric cells become NaN; a column that is never numeric is dropped.

    Raises:
        InputError: the file is missing, empty or not CSV with a header.
    """
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise InputError(f"{path}: cannot read training history ({exc})") from exc
    except csv.Error as exc:
        raise InputError(f"{path}: not a CSV file ({exc})") from exc
    if not rows:
        raise InputError(f"{path}: training history has no rows")
    columns: dict[str, np.ndarray] = {}
    for name in rows[0]:
        if name is None:
            continue
        values = []
        for row in rows:
            try:
                values.append(float(row.get(name) or "nan"))
            except ValueError:
                values.append(float("nan"))
        arr = np.asarray(values, dtype=np.float64)
        if np.isfinite(arr).any():
            columns[name.strip()] = arr
    return columns


def _tokens(name: str) -> set[str]:
    return set(name.lower().replace("-", "_").replace("/", "_").split("_"))


def _learning_panels(columns: Mapping[str, np.ndarray]) -> list[tuple[str, list[str]]]:
    """Group history columns into panels by name: loss, energy, forces, dipole, lr."""
    groups: dict[str, list[str]] = {
        "Loss": [],
        "Energy error": [],
        "Force error": [],
        "Dipole error": [],
        "Learning rate": [],
    }
    for name in columns:
        t = _tokens(name)
        if "loss" in t:
            groups["Loss"].append(name)
        elif t & {"lr", "learning"} or name.lower() == "learning_rate":
            groups["Learning rate"].append(name)
        elif not t & {"mae", "rmse"}:
            continue
        elif t & {"energy", "e"}:
            groups["Energy error"].append(name)
        elif t & {"force", "forces", "f"}:
            groups["Force error"].append(name)
        elif t & {"dipole", "d"}:
            groups["Dipole error"].append(name)
    return [(title, names) for title, names in groups.items() if names]


def _unit_of(name: str) -> str:
    """The unit a history column's name ends with, by the unit tags of
    :func:`physpack.metrics.metric_name` (``valid_forces_mae_eV_per_A`` →
    ``eV/Å``), or ``""``."""
    lower = name.lower()
    for quantity in QUANTITIES.values():
        for unit in quantity.units:
            if lower.endswith("_" + unit.tag.lower()):
                return unit.symbol
    return ""


def learning_curves(path: str | os.PathLike, history: Mapping[str, np.ndarray]) -> Path:
    """Training history against epoch: loss, validation errors, learning rate.

    Args:
        path: PNG to write.
        history: column -> values per epoch (as :func:`read_history` returns); the
            x axis is the ``epoch`` column when present, else the row number.
            Columns are assigned to panels by name (``loss``, ``energy``/``e`` and
            ``force``/``f`` with ``mae``/``rmse``, ``dipole``, ``lr``); positive
            positive series spanning more than a decade are drawn on a log
            scale.
    """
    n = len(next(iter(history.values()))) if history else 0
    x = history.get("epoch", np.arange(1, n + 1, dtype=np.float64))
    panels = _learning_panels({k: v for k, v in history.items() if k != "epoch"})
    fig = _figure(max(len(panels), 1), width=4.0, height=3.4)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    if not panels:
        axes[0].text(
            0.5,
            0.5,
            "no loss, error or learning-rate columns",
            transform=axes[0].transAxes,
            ha="center",
        )
    for ax, (title, names) in zip(axes, panels):
        units = {_unit_of(nm) for nm in names} - {""}
        for nm in names:
            y = history[nm]
            ax.plot(x, y, marker="o" if n <= 30 else None, ms=3, lw=1.3, label=nm)
        values = np.concatenate([history[nm] for nm in names])
        values = values[np.isfinite(values)]
        # log scale only where it helps: positive values spanning a decade or more
        if values.size and (values > 0).all() and values.max() > 10 * values.min():
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(", ".join(sorted(units)))
        ax.legend(fontsize=7)
    return _save(fig, path)
