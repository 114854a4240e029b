"""The report's data page (``results/reports/data.html``): is the data sound, and
what does it look like. Run by the rule ``report_data``
(``python data_report.py VALIDATION_JSON PACKING_STATS_MD OUTPUT_HTML``);
standard library only.

Input: ``validation.json`` (``physpack validate``) and ``packing_stats.md``
(``physpack stats``). Output: one self-contained HTML page with the validation
result per check, the problems listed, the plausibility figures (units in the
labels), and the packing-statistics tables.
"""

from __future__ import annotations

import html
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 70em; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
.ok { color: #1a7f37; font-weight: bold; }
.bad { color: #b42318; font-weight: bold; }
.warn { color: #9a6700; font-weight: bold; }
"""

#: what each validation check looks at, for readers of the report
CHECKS = {
    "manifest": "manifest.json present and readable",
    "offsets": "offsets.npy consistent with the number of atoms",
    "files": "every array file has the size its shape and dtype need",
    "checksum": "sha256 of every file equals the manifest's",
    "atomic_numbers": "atomic numbers are elements (1–118), no padding zeros",
    "finite": "positions, energies, forces are finite numbers",
    "min_distance": "no two atoms of a molecule closer than validate.min_distance",
    "energy_outlier": "energies far from the per-element fit (robust z-score)",
    "force_outlier": "force components far from the rest (robust z-score)",
    "plausible_energies": "fitted per-element energies on atomic scales (units)",
    "plausible_distances": "nearest-neighbour distances of bonds, 0.6–2 Å (units)",
    "plausible_forces": "force magnitudes of molecules (units)",
}


def esc(value: Any) -> str:
    return html.escape(str(value))


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return esc(value)


def validation_html(report: dict[str, Any]) -> str:
    """The validation result: verdict, one row per check, problems, figures."""
    ok = report.get("ok", False)
    verdict = (
        '<span class="ok">passed</span>' if ok else '<span class="bad">FAILED</span>'
    )
    n_err, n_warn = report.get("n_errors", 0), report.get("n_warnings", 0)
    parts = [
        "<h2>Validation</h2>",
        (
            f"<p>Validation of <code>{esc(report.get('path', ''))}</code>: {verdict}, "
            f"{n_err} error(s), {n_warn} warning(s). Warnings do not stop the "
            "workflow; they point to molecules or units worth inspecting.</p>"
        ),
    ]
    errors = report.get("error_counts", {})
    warnings = report.get("warning_counts", {})
    skipped = report.get("skipped", {})
    rows = []
    for check in [
        *report.get("checks", []),
        *[c for c in skipped if c not in report.get("checks", [])],
    ]:
        if check in skipped:
            status = f'<span class="warn">skipped</span>: {esc(skipped[check])}'
        elif errors.get(check):
            status = f'<span class="bad">{errors[check]} error(s)</span>'
        elif warnings.get(check):
            status = f'<span class="warn">{warnings[check]} warning(s)</span>'
        else:
            status = '<span class="ok">passed</span>'
        rows.append([f"<code>{esc(check)}</code>", esc(CHECKS.get(check, "")), status])
    parts.append(table(["check", "what it looks at", "result"], rows))
    for kind in ("errors", "warnings"):
        problems = report.get(kind, [])
        if problems:
            listed = [
                [
                    f"<code>{esc(p.get('check', ''))}</code>",
                    esc(p.get("molecule", p.get("file", ""))),
                    esc(p.get("message", "")),
                ]
                for p in problems
            ]
            parts.append(f"<h3>{kind.capitalize()} (first {len(problems)})</h3>")
            parts.append(table(["check", "molecule / file", "message"], listed))
    parts.append(summary_html(report.get("summary", {})))
    return "\n".join(parts)


def summary_html(summary: dict[str, Any]) -> str:
    """The dataset figures the validation computed (units in the labels)."""
    rows = []
    for key in ("n_molecules", "n_atoms_total", "max_atoms"):
        if key in summary:
            rows.append([esc(key.replace("_", " ")), _fmt(summary[key])])
    units = summary.get("stored_units") or summary.get("units") or {}
    if units:
        rows.append(["units", esc(", ".join(f"{k}: {v}" for k, v in units.items()))])
    if "median_nearest_neighbour_A" in summary:
        rows.append(
            [
                "median nearest-neighbour distance [Å]",
                _fmt(summary["median_nearest_neighbour_A"]),
            ]
        )
    force = summary.get("force_magnitude_eV_per_A")
    if isinstance(force, dict) and "median" in force:
        rows.append(["median atomic force magnitude [eV/Å]", _fmt(force["median"])])
    resid = summary.get("energy_residual_eV_per_atom")
    if isinstance(resid, dict) and "mad" in resid:
        rows.append(
            [
                "energy residual after the per-element fit, MAD [eV/atom]",
                _fmt(resid["mad"]),
            ]
        )
    parts = ["<h3>Dataset figures</h3>", table(["quantity", "value"], rows)]
    refs = summary.get("element_reference_energy_eV")
    if isinstance(refs, dict) and refs:
        parts.append("<p>Fitted per-element reference energies [eV]:</p>")
        parts.append(
            table(
                ["element", "E_ref [eV]"], [[esc(k), _fmt(v)] for k, v in refs.items()]
            )
        )
    return "\n".join(parts)


def markdown_html(text: str) -> str:
    """The subset of Markdown that ``physpack stats`` writes: headings, pipe
    tables, paragraphs, inline code."""

    def inline(s: str) -> str:
        return re.sub(r"`([^`]*)`", r"<code>\1</code>", esc(s))

    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i].strip())
                i += 1
            cells = [
                _split_row(r) for r in block if not re.fullmatch(r"\|[-:| ]+\|", r)
            ]
            out.append(table(cells[0], [[inline(c) for c in r] for r in cells[1:]]))
            continue
        elif line:
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    return "\n".join(out)


def _split_row(row: str) -> list[str]:
    # a cell may hold "|F|" (force magnitude): split on " | " only
    return [c.strip() for c in row.strip().strip("|").split(" | ")]


def data_page(validation: dict[str, Any], stats_md: str) -> str:
    body = validation_html(validation) + "\n<h2>Packing statistics</h2>\n"
    body += markdown_html(re.sub(r"^# .*\n", "", stats_md, count=1))
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>Data</title><style>{STYLE}</style></head><body>\n"
        "<h1>Data: what the model was trained on, and is it sound</h1>\n"
        f"{body}\n</body></html>\n"
    )


def write(validation: str, stats_md: str, output: str) -> None:
    page = data_page(
        json.loads(Path(validation).read_text()), Path(stats_md).read_text()
    )
    tmp = Path(f"{output}.tmp-{os.getpid()}")
    tmp.write_text(page)
    tmp.replace(output)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: data_report.py VALIDATION_JSON PACKING_STATS_MD OUTPUT_HTML")
    write(*sys.argv[1:])
