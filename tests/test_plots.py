"""Parity plots: a scatter for small splits, a logarithmic density above
``plots.SCATTER_LIMIT`` points (10⁶ force components drawn one by one are slow and
one solid blob). Learning curves: legends in words with units, one quantity (one
unit) per axis, the learning rate's horizon off the learning rate's axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from physpack.evaluation import plots
from physpack.metrics import MONITORED, QUANTITIES, STATISTICS, metric_name, unit_of
from physpack.training.history import HISTORY_COLUMNS, write_history


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[dict]]:
    """Records the keyword arguments of every scatter and hexbin call."""
    calls: dict[str, list[dict]] = {"scatter": [], "hexbin": []}
    for name in calls:
        original = getattr(Axes, name)

        def record(self, *args, _name=name, _original=original, **kwargs):
            calls[_name].append({"n": len(args[0]), **kwargs})
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Axes, name, record)
    return calls


def _panels(n: int, seed: int) -> list[plots.Panel]:
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=n)
    return [("test", ref, ref + 0.05 * rng.normal(size=n))]


def _parity(path: Path, n: int) -> Path:
    return plots.parity_plot(
        path,
        _panels(n, 0),
        quantity="Force",
        unit="eV/Å",
        error_unit="meV/Å",
        error_scale=1e3,
    )


def test_small_split_is_a_scatter(tmp_path: Path, drawn) -> None:
    out = _parity(tmp_path / "small.png", 500)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [c["n"] for c in drawn["scatter"]] == [500] and not drawn["hexbin"]


def test_large_split_is_a_log_density(tmp_path: Path, drawn) -> None:
    n = plots.SCATTER_LIMIT * 5
    out = _parity(tmp_path / "large.png", n)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not drawn["scatter"]
    (call,) = drawn["hexbin"]
    assert call["n"] == n and call["bins"] == "log" and call["mincnt"] == 1


# --------------------------------------------------------------------------------
# Learning curves
# --------------------------------------------------------------------------------
HORIZON = 16_000  # lr_horizon: a step count, far from any learning rate


@pytest.fixture
def history(tmp_path: Path) -> dict[str, np.ndarray]:
    """A ``history.csv`` with every column a run writes (written and read as
    training and evaluation do): 12 epochs, the late energy stage from epoch 9.
    Each column has its own values (a factor 1 + j/7), so that a drawn line tells
    which column it is."""
    decay = np.exp(-np.arange(12) / 4.0)
    rows = []
    for k, d in enumerate(decay):
        row = {c: (1 + j / 7) * (1 + d) for j, c in enumerate(HISTORY_COLUMNS)}
        row.update(epoch=k + 1, lr=1e-2 * d, lr_horizon=HORIZON)
        row.update(loss_stage=1 if k < 8 else 2, steps=400, rejected_steps=0)
        for j, spec in enumerate(MONITORED):  # tens of meV, canonical units
            row[spec.name("valid_")] = 0.02 * (1 + j / 7) * (1 + d)
        rows.append(row)
    write_history(tmp_path / "history.csv", rows)
    return plots.read_history(tmp_path / "history.csv")


def _legend(ax: Axes) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def _units_in(text: str) -> set[str]:
    """The unit symbols of :data:`physpack.metrics.QUANTITIES` named in ``text``
    as ``(unit)`` or ``[unit]``."""
    return {
        u.symbol
        for q in QUANTITIES.values()
        for u in q.units
        if f"({u.symbol})" in text or f"[{u.symbol}]" in text
    }


def test_learning_curves_legends_are_words_with_units(history) -> None:
    fig = plots.learning_curves_figure(history)
    legends = [text for ax in fig.axes for text in _legend(ax)]
    assert legends and not [t for t in legends if "_" in t], legends
    assert {
        "training loss",
        "validation loss",
        "learning rate",
        "validation energy MAE (meV)",
        "validation energy RMSE (meV)",
        "validation energy MAE (meV/atom)",
        "validation force MAE (meV/Å)",
        "validation dipole RMSE (D)",
    } <= set(legends)


def _kind(column: str) -> str:
    """What a history column measures: its quantity of
    :data:`physpack.metrics.QUANTITIES` (``energy`` and ``energy_per_atom`` are
    two: eV and eV/atom), ``loss``, or the column itself (``lr``, ``lr_horizon``,
    ``loss_stage``, ...)."""
    for q, quantity in QUANTITIES.items():
        for s in STATISTICS:
            for u in quantity.units:
                if column in (metric_name(q, s, u.label, p) for p in ("valid_", "")):
                    return q
    return "loss" if column.endswith("_loss") else column


def _drawn_columns(ax: Axes, history: dict[str, np.ndarray]) -> set[str]:
    """The history columns of the curves on ``ax``, found by their values: a
    column times 1 or one of the metrics module's scale factors."""
    scales = {1.0} | {u.scale for q in QUANTITIES.values() for u in q.units}
    found = set()
    for line in ax.get_lines():
        y = np.asarray(line.get_ydata(), np.float64)
        found |= {
            c
            for c, v in history.items()
            if c != "epoch" and y.shape == v.shape
            for s in scales
            if np.allclose(y, v * s, rtol=1e-6)
        }
    return found


def test_learning_curves_one_quantity_per_axis(history) -> None:
    """No axis holds eV and eV/atom, or a loss and the loss stage, or the learning
    rate and its horizon (a step count)."""
    fig = plots.learning_curves_figure(history)
    drawn = {c for ax in fig.axes for c in _drawn_columns(ax, history)}
    assert {m.name("valid_") for m in MONITORED} | {"lr", "train_loss"} <= drawn
    for ax in fig.axes:
        kinds = {_kind(c) for c in _drawn_columns(ax, history)}
        assert len(kinds) == 1, (ax.get_title(), sorted(kinds))


def test_learning_curves_one_unit_per_axis(history) -> None:
    fig = plots.learning_curves_figure(history)
    errors = [ax for ax in fig.axes if "error" in ax.get_title()]
    for ax in fig.axes:
        assert ax.get_ylabel(), ax.get_title()
        units = _units_in(ax.get_ylabel())
        assert len(units) == (ax in errors), ax.get_ylabel()
        for text in _legend(ax):  # each curve is in the axis's unit
            assert _units_in(text) == units, (text, ax.get_ylabel())
    assert [ax.get_title() for ax in errors] == [
        "Energy error",
        "Energy error per atom",
        "Force error",
        "Dipole error",
    ]
    assert [_units_in(ax.get_ylabel()) for ax in errors] == [
        {"meV"},
        {"meV/atom"},
        {"meV/Å"},
        {"D"},
    ]


def test_learning_curves_values_in_the_shown_units(history) -> None:
    fig = plots.learning_curves_figure(history)
    (ax,) = [ax for ax in fig.axes if ax.get_title() == "Energy error per atom"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    y = lines["validation energy MAE (meV/atom)"].get_ydata()
    scale = unit_of("energy_per_atom", "meV/atom").scale
    np.testing.assert_allclose(y, history["valid_energy_mae_eV_per_atom"] * scale)


def test_learning_curves_horizon_off_the_learning_rate_axis(history) -> None:
    fig = plots.learning_curves_figure(history)
    (lr_ax,) = [ax for ax in fig.axes if ax.get_ylabel() == "learning rate"]
    assert _legend(lr_ax) == ["learning rate"]
    for line in lr_ax.get_lines():
        assert np.nanmax(line.get_ydata()) < 1.0, line.get_label()
    # the horizon: its own small linear axis below, labelled in steps
    (h_ax,) = [
        ax
        for ax in fig.axes
        if any(np.all(line.get_ydata() == HORIZON) for line in ax.get_lines())
    ]
    assert h_ax is not lr_ax and "step" in h_ax.get_ylabel()
    assert h_ax.get_yscale() == "linear"
    assert h_ax.get_position().height < lr_ax.get_position().height


def test_learning_curves_loss_stage_is_a_marker_not_a_curve(history) -> None:
    fig = plots.learning_curves_figure(history)
    (loss_ax,) = [ax for ax in fig.axes if ax.get_title() == "Loss"]
    assert _legend(loss_ax) == ["training loss", "validation loss", "late energy stage"]
    (stage,) = [
        ln for ln in loss_ax.get_lines() if ln.get_label() == "late energy stage"
    ]
    assert list(stage.get_xdata()) == [9, 9]


def test_learning_curves_every_monitored_metric_is_drawn() -> None:
    """A metric added to :data:`physpack.metrics.MONITORED` gets a panel."""
    for spec in MONITORED:
        for prefix in ("valid_", "train_"):
            assert plots._describe(spec.name(prefix)) is not None, spec


def test_learning_curves_png(tmp_path: Path, history) -> None:
    assert isinstance(plots.learning_curves_figure({}), Figure)
    out = plots.learning_curves(tmp_path / "learning_curves.png", history)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
