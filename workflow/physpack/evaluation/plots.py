"""Figures of an evaluation: parity plots, error histograms, learning curves.

Every function draws one PNG with matplotlib's object-oriented API on an Agg
canvas (no pyplot, so no global backend state and no display needed), and takes
plain numpy arrays in canonical units (eV, Å, eV/Å, e·Å); axes are labelled in the
units people read (meV, meV/Å, Debye).
"""

from __future__ import annotations

import csv
import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator

from physpack.errors import InputError
from physpack.metrics import (
    QUANTITIES,
    SHOWN_UNITS,
    STATISTICS,
    mae_rmse,
    metric_name,
    unit_of,
)

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


#: the panel of each quantity; one quantity, so one unit, per panel
_ERROR_PANELS = {
    "energy": "Energy error",
    "energy_per_atom": "Energy error per atom",
    "forces": "Force error",
    "dipole": "Dipole error",
}
#: how a metric's name prefix (``valid_``) is said in a legend
_SPLIT_WORDS = {"valid_": "validation", "train_": "training", "test_": "test", "": ""}
#: how a quantity is called in a legend (``forces`` → "force MAE")
_QUANTITY_WORDS = {"forces": "force", "energy_per_atom": "energy"}
_LOSS, _LR = "Loss", "Learning rate"
#: not drawn as curves: the cosine's end (a step count, its own small axis) and
#: the loss stage (a vertical line where the late energy stage starts)
HORIZON_COLUMN, STAGE_COLUMN = "lr_horizon", "loss_stage"


class Curve(NamedTuple):
    """One curve of the learning-curve figure.

    Attributes:
        column: the ``history.csv`` column.
        label: its legend, in words with the unit (``"validation energy MAE
            (meV/atom)"``).
        scale: factor from the column's unit to the drawn one.
        unit: the drawn unit's symbol (``"meV/atom"``), ``""`` for loss and rate.
    """

    column: str
    label: str
    scale: float
    unit: str


@functools.cache
def _metric_columns() -> dict[str, tuple[str, Curve]]:
    """Every metric name of :func:`physpack.metrics.metric_name` (each split
    prefix, quantity, statistic and unit) → (panel title, its :class:`Curve`)."""
    out = {}
    for prefix, split in _SPLIT_WORDS.items():
        for q, quantity in QUANTITIES.items():
            shown = unit_of(q, SHOWN_UNITS[q])
            word = _QUANTITY_WORDS.get(q, q.replace("_", " "))
            for statistic in STATISTICS:
                label = f"{split} {word} {statistic.upper()} ({shown.symbol})"
                for unit in quantity.units:
                    name = metric_name(q, statistic, unit.label, prefix)
                    scale = shown.scale / unit.scale
                    curve = Curve(name, label.strip(), scale, shown.symbol)
                    out[name] = (_ERROR_PANELS[q], curve)
    return out


def _describe(name: str) -> tuple[str, Curve] | None:
    """The panel and curve of a history column, or None when it is not drawn
    (the horizon, the loss stage, timings, counts, gradient norms)."""
    metric = _metric_columns().get(name)
    if metric is not None:
        return metric
    if name in (HORIZON_COLUMN, STAGE_COLUMN):
        return None
    if "loss" in _tokens(name):
        split = next((w for p, w in _SPLIT_WORDS.items() if name.startswith(p)), "")
        return _LOSS, Curve(name, f"{split} loss".strip(), 1.0, "")
    if name.lower() in ("lr", "learning_rate"):
        return _LR, Curve(name, "learning rate", 1.0, "")
    return None


def _learning_panels(columns: Mapping[str, np.ndarray]) -> list[tuple[str, list[str]]]:
    """The panels of the learning-curve figure and their columns, in the order
    loss, energy per molecule, energy per atom, forces, dipole, learning rate;
    each panel holds one quantity in one unit."""
    order = [_LOSS, *_ERROR_PANELS.values(), _LR]
    groups: dict[str, list[str]] = {title: [] for title in order}
    for name in columns:
        described = _describe(name)
        if described is not None:
            groups[described[0]].append(name)
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


class _PlainLogFormatter(LogFormatter):
    """matplotlib's choice of which log ticks to label, the numbers written
    plainly (``0.4``, not ``4e-01`` or ``4×10⁻¹``)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def _ylabel(title: str, curves: Sequence[Curve]) -> str:
    """The y label of a panel: what it shows and its one unit."""
    if title == _LOSS:
        return "loss [dimensionless]"
    if title == _LR:
        return "learning rate"
    units = {c.unit for c in curves}
    if len(units) != 1:  # the panels are built so that this cannot happen
        raise ValueError(f"{title}: one axis, several units {sorted(units)}")
    return f"{title.lower()} [{units.pop()}]"


def _draw_curves(
    ax: Axes,
    x: np.ndarray,
    history: Mapping[str, np.ndarray],
    title: str,
    curves: Sequence[Curve],
) -> None:
    """Draw ``curves`` as panel ``title`` on ``ax``, in their drawn unit, with
    legends; a log scale where positive values span more than a decade (plain
    numbers on its ticks up to three decades)."""
    for c in curves:
        y = history[c.column] * c.scale
        ax.plot(x, y, marker="o" if x.size <= 30 else None, ms=3, lw=1.3, label=c.label)
    values = np.concatenate([history[c.column] * c.scale for c in curves])
    values = values[np.isfinite(values)]
    if values.size and (values > 0).all() and values.max() > 10 * values.min():
        ax.set_yscale("log")
        if values.max() <= 1e3 * values.min():
            ax.yaxis.set_major_formatter(_PlainLogFormatter())
            ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))
    ax.set_title(title)
    ax.set_ylabel(_ylabel(title, curves))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)


def _mark_stage(ax: Axes, x: np.ndarray, stage: np.ndarray | None) -> None:
    """A dotted vertical line at the first epoch of the late energy stage."""
    if stage is None:
        return
    late = np.flatnonzero(stage == 2)
    if late.size and late[0] > 0:
        ax.axvline(x[late[0]], color="k", ls=":", lw=1.0, label="late energy stage")
        ax.legend(fontsize=7)


def _draw_horizon(ax: Axes, x: np.ndarray, horizon: np.ndarray) -> None:
    """The step at which the cosine schedule ends, on its own small axis (from
    0, so that a constant horizon is a flat line and a moved one a step)."""
    ax.plot(x, horizon, color="C7", lw=1.3, drawstyle="steps-post")
    top = float(np.nanmax(horizon)) if np.isfinite(horizon).any() else 1.0
    ax.set_ylim(0, 1.25 * top or 1.0)
    ax.yaxis.set_major_locator(MaxNLocator(2, integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_ylabel("cosine ends\n[step]", fontsize=7)
    ax.tick_params(labelsize=7)


def learning_curves_figure(history: Mapping[str, np.ndarray]) -> Figure:
    """The learning-curve figure of :func:`learning_curves`, not yet saved.

    Panels (those with data), at most three a row (four: two by two): loss
    (with the start of the late energy stage), validation energy error per
    molecule (meV), per atom (meV/atom), force error (meV/Å), dipole error (D),
    each with its MAE and RMSE; the learning rate, with the step at which the
    cosine ends on a small axis beneath it.
    """
    n = len(next(iter(history.values()))) if history else 0
    x = history.get("epoch", np.arange(1, n + 1, dtype=np.float64))
    panels = _learning_panels({k: v for k, v in history.items() if k != "epoch"})
    # one row up to three panels, else two rows (four panels: two by two)
    ncols = max(len(panels), 1) if len(panels) <= 3 else -(-len(panels) // 2)
    nrows = -(-max(len(panels), 1) // ncols)
    fig = _figure(ncols, width=4.0, height=3.4 * nrows)
    grid = fig.add_gridspec(nrows, ncols)
    if not panels:
        ax = fig.add_subplot(grid[0, 0])
        ax.text(
            0.5,
            0.5,
            "no loss, error or learning-rate columns",
            transform=ax.transAxes,
            ha="center",
        )
    for k, (title, names) in enumerate(panels):
        cell = grid[k // ncols, k % ncols]
        if title == _LR and HORIZON_COLUMN in history:
            top, bottom = cell.subgridspec(2, 1, height_ratios=(3, 1), hspace=0)
            ax = fig.add_subplot(top)
            low = fig.add_subplot(bottom, sharex=ax)
            ax.tick_params(labelbottom=False)
            _draw_horizon(low, x, history[HORIZON_COLUMN])
            low.set_xlabel("epoch")
        else:
            ax = fig.add_subplot(cell)
            ax.set_xlabel("epoch")
        curves = [_describe(nm)[1] for nm in names]
        _draw_curves(ax, x, history, title, curves)
        if title == _LOSS:
            _mark_stage(ax, x, history.get(STAGE_COLUMN))
    return fig


def learning_curves(path: str | os.PathLike, history: Mapping[str, np.ndarray]) -> Path:
    """Training history against epoch: loss, validation errors, learning rate.

    Args:
        path: PNG to write.
        history: column -> values per epoch (as :func:`read_history` returns); the
            x axis is the ``epoch`` column when present, else the row number.
            Error columns are recognised by their
            :func:`physpack.metrics.metric_name` and drawn in :data:`SHOWN_UNITS`,
            one quantity per panel; losses by ``loss`` in the name, the learning
            rate as ``lr``; positive series spanning more than a decade are drawn
            on a log scale. See :func:`learning_curves_figure`.
    """
    return _save(learning_curves_figure(history), path)
