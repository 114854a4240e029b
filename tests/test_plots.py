"""Parity plots: a scatter for small splits, a logarithmic density above
``plots.SCATTER_LIMIT`` points (10⁶ force components drawn one by one are slow and
one solid blob)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from physpack.evaluation import plots


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
