"""Modules and functions of the package stay small enough to read: no module over
about 600 lines, no function over 80 lines of code (its docstring not counted),
except where the code says why (a comment on the line above the ``def``, and an
entry in :data:`NOTED` here, so that a new exception is a decision, not drift)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workflow" / "physpack"
MODULE_LINES = 650
FUNCTION_LINES = 80
#: functions allowed over FUNCTION_LINES, each with its reason in the code
NOTED = {"training/train.py:train"}


def long_functions(root: Path, limit: int = FUNCTION_LINES) -> dict[str, int]:
    """``relative/path.py:name`` → lines of code of every function over ``limit``
    (from its ``def`` to its end, the docstring not counted)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = node.end_lineno - node.lineno + 1
            doc = node.body[0] if node.body else None
            if isinstance(doc, ast.Expr) and isinstance(
                getattr(doc, "value", None), ast.Constant
            ):
                lines -= doc.end_lineno - doc.lineno + 1
            if lines > limit:
                found[f"{path.relative_to(root)}:{node.name}"] = lines
    return found


def long_modules(root: Path, limit: int = MODULE_LINES) -> dict[str, int]:
    """``relative/path.py`` → line count of every module over ``limit``."""
    counts = {
        str(p.relative_to(root)): len(p.read_text().splitlines())
        for p in sorted(root.rglob("*.py"))
    }
    return {name: n for name, n in counts.items() if n > limit}


def test_no_function_over_80_lines_without_a_note() -> None:
    found = long_functions(PACKAGE)
    assert set(found) <= NOTED, {k: v for k, v in found.items() if k not in NOTED}
    for name in NOTED & set(found):
        path, func = name.split(":")
        source = (PACKAGE / path).read_text().splitlines()
        line = next(i for i, s in enumerate(source) if s.startswith(f"def {func}("))
        assert source[line - 1].startswith("#"), f"{name}: no note above its def"


def test_no_module_over_650_lines() -> None:
    assert long_modules(PACKAGE) == {}


def test_the_checks_see_a_long_function_and_module(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(81))
    doc = '    """' + "\n" * 30 + '    """'
    (tmp_path / "long.py").write_text(f"def long():\n{body}\n")
    (tmp_path / "documented.py").write_text(f"def short():\n{doc}\n    return 1\n")
    assert long_functions(tmp_path) == {"long.py:long": 82}
    assert long_modules(tmp_path, limit=50) == {"long.py": 82}
