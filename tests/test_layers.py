"""The package stays layered: no module imports from a layer above its own, and no
files import each other in a circle. Read from the source with
:mod:`physpack.sources`, the same reading that declares a stage's files as the
workflow's inputs.

Layers, lowest first: the top-level modules (errors, units, config, reference
energies, ...), ``data/`` (no JAX), ``model/``, ``training/``, ``evaluation/``, ``simulation/``.
"""

from __future__ import annotations

import graphlib
from pathlib import Path

import pytest
from physpack import sources

#: folder (or "" for the package's top-level modules) -> layer, lowest first
LAYERS = {
    "": 0,
    "data": 1,
    "model": 2,
    "training": 3,
    "evaluation": 4,
    "simulation": 5,
}


def layer(path: str) -> int:
    folder = path.rpartition("/")[0]
    if folder not in LAYERS:
        raise AssertionError(f"{path}: folder {folder!r} has no layer in LAYERS")
    return LAYERS[folder]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for every import of a file from a higher layer."""
    return sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if layer(target) > layer(source)
    )


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """Files that import each other in a loop (one such loop), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def test_no_module_imports_from_a_layer_above() -> None:
    assert upward_imports(sources.import_graph()) == []


def test_no_import_circle() -> None:
    assert circle(sources.import_graph()) is None


def _package(root: Path, files: dict[str, str]) -> Path:
    package = root / "physpack"
    for path, text in {"__init__.py": "", **files}.items():
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text(text)
    return package


def test_the_checks_see_an_upward_import_and_a_circle(tmp_path: Path) -> None:
    """The two checks fail where they should: an import inside a function of
    ``data/`` from ``training/``, and a loop through ``from ... import name``."""
    package = _package(
        tmp_path,
        {
            "errors.py": "",
            "data/__init__.py": "",
            "data/a.py": "def f():\n    from physpack.training.t import g\n",
            "data/b.py": "from physpack.data.c import X\n",
            "data/c.py": "import physpack.data.b\nX = 1\n",
            "training/__init__.py": "",
            "training/t.py": "from physpack.errors import Oops\n",
        },
    )
    graph = sources.import_graph(package)
    assert upward_imports(graph) == [
        "data/a.py -> training/__init__.py",
        "data/a.py -> training/t.py",
    ]
    loop = circle(graph)
    assert loop is not None and set(loop) == {"data/b.py", "data/c.py"}
    assert sources.module_closure("physpack.data.a", package) == [
        "__init__.py",
        "data/__init__.py",
        "data/a.py",
        "errors.py",
        "training/__init__.py",
        "training/t.py",
    ]


def test_a_name_outside_the_package_is_refused() -> None:
    with pytest.raises(ValueError, match="not a module of the physpack package"):
        sources.module_closure("numpy")
