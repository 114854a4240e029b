"""``physpack <step> ...``: one subcommand per pipeline stage.

Each subcommand is the ``main(argv)`` of its module, so ``physpack convert ...`` and
``python -m physpack.data.convert ...`` are the same program.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping, Sequence

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
    "ensemble": (
        "physpack.evaluation.ensemble",
        "committee error, spread and calibration from members' predictions",
    ),
    "compare": (
        "physpack.evaluation.compare",
        "one comparison report of several runs",
    ),
    "predict": (
        "physpack.evaluation.predict",
        "energies and forces of new structures (one model or a committee)",
    ),
    "md": (
        "physpack.simulation.md",
        "molecular dynamics of many molecules side by side (one model or a committee)",
    ),
    "md-stability": (
        "physpack.simulation.stability_stage",
        "MD stability of the largest test molecules (JSON, table, figure)",
    ),
}


def _usage() -> str:
    lines = [
        f"usage: physpack <step> [options]   (physpack {__version__})",
        "",
        "steps:",
    ]
    lines += [f"  {name:<13} {help_}" for name, (_, help_) in STEPS.items()]
    lines += ["", "physpack <step> --help shows a step's options."]
    return "\n".join(lines)


def limit_cpu_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """Make JAX's CPU backend (and everything else of this process) use at most
    ``OMP_NUM_THREADS`` cores.

    Snakemake sets ``OMP_NUM_THREADS`` to a rule's ``threads:`` (and SLURM jobs to
    their CPUs), but XLA ignores it: it sizes its thread pools from the CPUs the
    process may run on, and its single-thread flags still leave the work spread
    over several threads. So the process is restricted to that many CPUs, as
    ``taskset`` would do; which ones rotates with the process id, so that
    concurrent one-thread stages do not all share the first CPU. Must run before
    JAX is imported. Returns the limit applied, or None (unset, invalid, or not
    below the CPUs available).
    """
    environ = os.environ if environ is None else environ
    try:
        threads = int(environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if threads < 1 or threads >= len(cpus):
        return None
    start = os.getpid() % len(cpus)
    os.sched_setaffinity(0, [cpus[(start + k) % len(cpus)] for k in range(threads)])
    return threads


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
    limit_cpu_threads()
    module = importlib.import_module(STEPS[step][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
