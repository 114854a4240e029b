"""The package's own source files and the imports between them, read statically.

One definition of "which files does this module run", used by the workflow
(``workflow/rules/common.smk`` declares a stage's files as the rule's inputs, so
that a stage whose code changes reruns) and by the test that keeps the package
layered (``tests/test_layers.py``). Standard library only: the workflow's
parsing must not load JAX.

Imports are found with :mod:`ast`, at module level and inside functions alike;
``importlib.import_module`` calls are not followed (the command line's dispatch,
:mod:`physpack.cli`, names its stages in :data:`physpack.cli.STEPS` instead).
Paths are relative to the package folder, with ``/`` separators
(``"data/packed.py"``, ``"__init__.py"``).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

#: the package folder (``workflow/physpack``)
PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = "physpack"


def module_file(module: str, package_dir: Path = PACKAGE_DIR) -> str | None:
    """``physpack.a.b`` -> ``"a/b.py"`` or ``"a/b/__init__.py"``; None when the
    name is not a module of the package (another library, or a name defined
    inside a module, as in ``from physpack.units import EV``)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    rel = "/".join(parts[1:])
    if rel and (package_dir / f"{rel}.py").is_file():
        return f"{rel}.py"
    if (package_dir / rel / "__init__.py").is_file():
        return f"{rel}/__init__.py" if rel else "__init__.py"
    return None


def file_module(path: str) -> str:
    """``"a/b.py"`` -> ``physpack.a.b``; ``"a/__init__.py"`` -> ``physpack.a``."""
    parts = [PACKAGE, *path.removesuffix(".py").split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _imports(path: str, package_dir: Path) -> frozenset[str]:
    """Package files that the file ``path`` imports directly (absolute imports,
    anywhere in the file), with the ``__init__.py`` of each package on the way."""
    tree = ast.parse((package_dir / path).read_text(), filename=path)
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            for k in range(1, len(parts) + 1):
                target = module_file(".".join(parts[:k]), package_dir)
                if target is not None and target != path:
                    found.add(target)
    return frozenset(found)


def direct_imports(path: str, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """Package files that ``path`` (a package file) imports itself."""
    return set(_imports(path, package_dir.resolve()))


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """Every ``.py`` file of the package -> the package files it imports."""
    package_dir = package_dir.resolve()
    files = sorted(
        p.relative_to(package_dir).as_posix() for p in package_dir.rglob("*.py")
    )
    return {path: direct_imports(path, package_dir) for path in files}


def module_closure(module: str, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Files of ``module`` and of every package module it imports, transitively,
    with the ``__init__.py`` of every package on the way; sorted."""
    package_dir = package_dir.resolve()
    start = module_file(module, package_dir)
    if start is None:
        raise ValueError(f"{module!r} is not a module of the {PACKAGE} package")
    parts = module.split(".")
    todo = [
        start,
        *filter(
            None,
            (
                module_file(".".join(parts[:k]), package_dir)
                for k in range(1, len(parts))
            ),
        ),
    ]
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(_imports(path, package_dir) - seen)
    return sorted(seen)


def stage_files(step: str, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Package files that ``python -m physpack <step>`` runs: the closure of the
    stage's module (:data:`physpack.cli.STEPS`) and of the command line itself.
    ``describe`` is the shard descriptor's command
    (``python -m physpack.data.descriptor``)."""
    from physpack.cli import STEPS

    entry = "physpack.data.descriptor" if step == "describe" else STEPS[step][0]
    files = set(module_closure(entry, package_dir))
    files.update(module_closure(f"{PACKAGE}.__main__", package_dir))
    return sorted(files)
