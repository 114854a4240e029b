"""``physpack <step> ...``: one subcommand per pipeline stage.

Each subcommand is the ``main(argv)`` of its module, so ``physpack convert ...`` and
``python -m physpack.data.convert ...`` are the same program.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from physpack import __version__

#: subcommand -> (module, one-line help)
STEPS: dict[str, tuple[str, str]] = {
    "convert": (
        "physpack.data.convert",
        "padded NPZ -> packed memory-mapped directory",
    ),
    "validate": ("physpack.data.validate", "integrity checks of a packed directory"),
    "stats": ("physpack.data.stats", "packing-statistics report (JSON, Markdown, PNG)"),
    "split": ("physpack.data.split", "train/valid/test index split"),
    "train": ("physpack.training.train", "train a PhysNet model"),
    "evaluate": (
        "physpack.evaluation.evaluate",
        "test-set metrics, predictions and figures",
    ),
}


def _usage() -> str:
    lines = [
        f"usage: physpack <step> [options]   (physpack {__version__})",
        "",
        "steps:",
    ]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in STEPS.items()]
    lines += ["", "physpack <step> --help shows a step's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    if args[0] == "--version":
        print(f"physpack {__version__}")
        return 0
    step, rest = args[0], args[1:]
    if step not in STEPS:
        print(f"physpack: error: unknown step {step!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(STEPS[step][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
