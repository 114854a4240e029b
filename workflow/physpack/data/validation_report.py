"""The validation report: its problems, counts and summary, how checks collect
them, and its JSON file (:meth:`ValidationReport.to_json`,
:func:`report_from_json`), written where the workflow sees a failure.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from physpack import config as cfg
from physpack.atomic import StagedOutputs
from physpack.errors import InputError


@dataclasses.dataclass(frozen=True)
class Problem:
    """One error or warning.

    Attributes:
        check: the check's name (see the module docstring).
        message: one line, naming molecule/file and value.
        molecule: molecule index, when the problem belongs to one molecule.
        file: the file concerned, when the problem belongs to one file.
    """

    check: str
    message: str
    molecule: int | None = None
    file: str | None = None


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """Result of :func:`physpack.data.validate.validate_packed` (see :meth:`to_json` for the file layout).

    Attributes:
        path: the packed directory.
        errors, warnings: problems, at most ``max_reported`` per check.
        error_counts, warning_counts: exact number of problems per check.
        summary: dataset counts and fitted reference values (units in the keys).
        checks: the checks that ran.
        skipped: checks that could not run, with the reason.
    """

    path: str
    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    error_counts: dict[str, int]
    warning_counts: dict[str, int]
    summary: dict[str, Any]
    checks: tuple[str, ...]
    skipped: dict[str, str]
    config: cfg.ValidateConfig

    @property
    def ok(self) -> bool:
        return not self.error_counts

    @property
    def n_errors(self) -> int:
        return sum(self.error_counts.values())

    @property
    def n_warnings(self) -> int:
        return sum(self.warning_counts.values())

    def to_json(self) -> dict[str, Any]:
        def listed(problems: tuple[Problem, ...]) -> list[dict[str, Any]]:
            return [
                {k: v for k, v in dataclasses.asdict(p).items() if v is not None}
                for p in problems
            ]

        return {
            "path": self.path,
            "ok": self.ok,
            "n_errors": self.n_errors,
            "n_warnings": self.n_warnings,
            "error_counts": self.error_counts,
            "warning_counts": self.warning_counts,
            "errors": listed(self.errors),
            "warnings": listed(self.warnings),
            "checks": list(self.checks),
            "skipped": self.skipped,
            "summary": self.summary,
            "config": dataclasses.asdict(self.config),
        }

    def one_line(self) -> str:
        """A one-line summary (counts per check and the first error)."""
        if self.ok:
            return (
                f"{self.path}: ok ({self.summary.get('n_molecules', 0)} molecules, "
                f"{self.n_warnings} warning(s))"
            )
        counts = ", ".join(f"{k}: {v}" for k, v in self.error_counts.items())
        first = self.errors[0].message.removeprefix(f"{self.path}: ")
        return f"{self.path}: {self.n_errors} error(s) ({counts}); first: {first}"

    def problem_lines(self, written: str | Path) -> list[str]:
        """One line per check with problems, errors first: ``warning:
        energy_outlier (3 in all, see validation.json): <the first message>`` (the
        count and the report file ``written`` only when there are several), for
        the stage's log."""
        lines = []
        for level, problems, counts in (
            ("error", self.errors, self.error_counts),
            ("warning", self.warnings, self.warning_counts),
        ):
            for check, count in counts.items():
                listed = [p.message for p in problems if p.check == check]
                first = listed[0] if listed else "(none listed)"
                more = f" ({count} in all, see {written})" if count > 1 else ""
                lines.append(f"{level}: {check}{more}: {first}")
        return lines


class Collector:
    """Collects problems per check: exact counts, at most ``cap`` listed."""

    def __init__(self, cap: int):
        self.cap = cap
        self.listed: dict[str, list[Problem]] = {"error": [], "warning": []}
        self.counts: dict[str, dict[str, int]] = {"error": {}, "warning": {}}

    def add(
        self,
        check: str,
        message: str,
        *,
        molecule: int | None = None,
        file: str | None = None,
        level: str = "error",
    ) -> None:
        counts = self.counts[level]
        if counts.get(check, 0) < self.cap:
            self.listed[level].append(Problem(check, message, molecule, file))
        counts[check] = counts.get(check, 0) + 1

    def add_molecules(
        self,
        check: str,
        molecules: np.ndarray,
        template: str,
        *values: np.ndarray,
        level: str = "error",
    ) -> None:
        """One problem per molecule of ``molecules`` (int array, global indices).

        The k-th message is ``template.format(molecules[k], *(v[k] for v in
        values))``, built only for the problems that are listed."""
        counts = self.counts[level]
        seen = counts.get(check, 0)
        for k in range(min(len(molecules), max(self.cap - seen, 0))):
            text = template.format(molecules[k], *(v[k] for v in values))
            self.listed[level].append(Problem(check, text, molecule=int(molecules[k])))
        if len(molecules):
            counts[check] = seen + len(molecules)

    def has_errors(self, *checks: str) -> bool:
        return any(self.counts["error"].get(c, 0) for c in checks)


def report_from_json(data: dict[str, Any], source: str | Path) -> ValidationReport:
    """A report written by :meth:`ValidationReport.to_json` (``source``: its file,
    for messages). Raises InputError when it is not one."""
    try:
        return ValidationReport(
            path=str(data["path"]),
            errors=tuple(Problem(**p) for p in data["errors"]),
            warnings=tuple(Problem(**p) for p in data["warnings"]),
            error_counts=dict(data["error_counts"]),
            warning_counts=dict(data["warning_counts"]),
            summary=dict(data["summary"]),
            checks=tuple(data["checks"]),
            skipped=dict(data["skipped"]),
            config=cfg.ValidateConfig(**data["config"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{source}: not a validation report ({exc!r})") from exc


def failed_report_path(output: Path) -> Path:
    """Where the report goes when validation fails (never at ``output`` itself, so
    that the workflow sees the stage fail): ``validation.json`` →
    ``validation.failed.json``."""
    return output.with_name(f"{output.stem}.failed{output.suffix or '.json'}")


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """Write ``data`` as JSON to a temporary sibling, then rename it to ``path``."""
    with StagedOutputs() as staged:
        staged.file(path).write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_report(report: ValidationReport, output: Path) -> Path:
    """Write the report to ``output`` when ok, else to :func:`failed_report_path`
    (removing any stale ``output``); returns the path written."""
    failed = failed_report_path(output)
    target = output if report.ok else failed
    write_json_atomic(report.to_json(), target)
    (failed if report.ok else output).unlink(missing_ok=True)
    return target


def read_report(path: Path) -> ValidationReport:
    """The report in the JSON file ``path``; InputError when it is unreadable or
    not a report."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable validation report ({exc})") from exc
    return report_from_json(data, path)
