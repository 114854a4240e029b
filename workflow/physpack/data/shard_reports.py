"""One validation report for a sharded dataset, merged from its shards' reports
(``physpack validate DATASET --shard-reports ...``): each shard is validated by a
job of its own, and the dataset's report is made from theirs without reading the
shards again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from physpack import config as cfg
from physpack.data.descriptor import DatasetDescriptor, read_descriptor
from physpack.data.validation_report import Collector, Problem, ValidationReport
from physpack.errors import InputError


@dataclasses.dataclass
class _Merged:
    """What the shards' reports add up to, in the descriptor's order."""

    errors: list[Problem] = dataclasses.field(default_factory=list)
    warnings: list[Problem] = dataclasses.field(default_factory=list)
    counts: dict[str, dict[str, int]] = dataclasses.field(
        default_factory=lambda: {"error": {}, "warning": {}}
    )
    checks: list[str] = dataclasses.field(default_factory=lambda: ["shards"])
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    shards: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def add(self, shard: Path, report: ValidationReport, start: int) -> None:
        """The report of ``shard``, whose first molecule is dataset molecule
        ``start``."""
        for level, problems, into in (
            ("error", report.errors, self.errors),
            ("warning", report.warnings, self.warnings),
        ):
            for p in problems:
                into.append(_in_shard(p, report.path, start))
            source = report.error_counts if level == "error" else report.warning_counts
            self._count(level, source)
        self.checks += [c for c in report.checks if c not in self.checks]
        for check, why in report.skipped.items():
            self.skipped.setdefault(check, f"{shard.name}: {why}")
        self.shards.append(
            {
                "path": report.path,
                "ok": report.ok,
                "n_molecules": report.summary.get("n_molecules"),
                "n_errors": report.n_errors,
                "n_warnings": report.n_warnings,
            }
        )

    def add_own(self, col: Collector) -> None:
        """The problems of the merge itself (``shards``), listed first."""
        for level, into in (("error", self.errors), ("warning", self.warnings)):
            into[:0] = col.listed[level]
            self._count(level, col.counts[level])

    def _count(self, level: str, counts: dict[str, int]) -> None:
        into = self.counts[level]
        for check, c in counts.items():
            into[check] = into.get(check, 0) + c


def _check_shard_report(
    dataset: Path,
    k: int,
    described: DatasetDescriptor,
    report: ValidationReport,
    col: Collector,
) -> None:
    """``shards`` errors: the k-th report is not of the k-th shard, or of a shard
    replaced since the dataset was described."""
    shard = described.shards[k]
    n, t = described.shard_counts[k]
    got = (report.summary.get("n_molecules"), report.summary.get("n_atoms_total"))
    if shard.resolve() != Path(report.path).resolve():
        col.add(
            "shards",
            f"{dataset}: shard {k} is {shard}, but its report is of {report.path}",
        )
    elif report.ok and got != (n, t):
        col.add(
            "shards",
            f"{dataset}: shard {shard} has {got[0]} molecules and {got[1]} atoms, "
            f"but the descriptor lists {n} and {t} (replaced after it was "
            "described; rerun the workflow)",
        )


def combine_shard_reports(
    dataset: str | Path,
    reports: Sequence[ValidationReport],
    config: cfg.ValidateConfig | None = None,
) -> ValidationReport:
    """One report for a sharded dataset from its shards' reports.

    The shards are those of the descriptor ``dataset``, in its order; each report
    must be of its shard (same directory, same counts as described), else that is
    an error of the ``shards`` check. Problems keep their messages (which name the
    shard's files) and their molecule indices become global; counts add up; the
    summary lists every shard. Checks across shards (outliers against the whole
    dataset) are those of each shard.

    Args:
        dataset: the dataset descriptor listing the shards.
        reports: one report per shard (:func:`~physpack.data.validate.validate_packed`
            of the shard, or :func:`~physpack.data.validation_report.read_report`
            of its file), in the descriptor's order.
    """
    config = config or cfg.ValidateConfig()
    dataset = Path(dataset)
    described = read_descriptor(dataset)
    col = Collector(config.max_reported)
    if described.packed is not None:
        raise InputError(f"{dataset}: not a sharded dataset (it names one directory)")
    if len(reports) != len(described.shards):
        col.add(
            "shards",
            f"{dataset}: lists {len(described.shards)} shards but "
            f"{len(reports)} shard reports were given",
        )
    merged = _Merged()
    start = 0
    for k, (shard, report) in enumerate(zip(described.shards, reports, strict=False)):
        _check_shard_report(dataset, k, described, report, col)
        merged.add(shard, report, start)
        start += described.shard_counts[k][0]
    merged.add_own(col)
    summary: dict[str, Any] = {
        "units": {"distance": "Angstrom", "energy": "eV", "forces": "eV/Angstrom"},
        "n_shards": len(described.shards),
        "n_molecules": int(sum(n for n, _ in described.shard_counts)),
        "n_atoms_total": int(sum(t for _, t in described.shard_counts)),
        "shards": merged.shards,
    }
    if reports and all("max_atoms" in r.summary for r in reports):
        summary["max_atoms"] = max(r.summary["max_atoms"] for r in reports)
    return ValidationReport(
        path=str(dataset),
        errors=tuple(merged.errors),
        warnings=tuple(merged.warnings),
        error_counts={k: v for k, v in merged.counts["error"].items() if v},
        warning_counts={k: v for k, v in merged.counts["warning"].items() if v},
        summary=summary,
        checks=tuple(merged.checks),
        skipped=merged.skipped,
        config=config,
    )


def _in_shard(problem: Problem, shard: str, start: int) -> Problem:
    """A shard's problem as one of the dataset: the message names the shard (and
    the molecule's dataset index), the molecule index is global."""
    message = problem.message
    if not message.startswith(shard):
        message = f"{shard}: {message}"
    if problem.molecule is None:
        return dataclasses.replace(problem, message=message)
    index = problem.molecule + start
    return dataclasses.replace(
        problem, molecule=index, message=f"{message} (dataset molecule {index})"
    )
