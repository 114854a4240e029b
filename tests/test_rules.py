"""The rule files say each thing once: one definition of each rule, one of each
conda environment and of each data-stage resource request (read as text; the
workflow's behaviour is tested in test_workflow.py)."""

from __future__ import annotations

import re
from collections import Counter

from conftest import ROOT

RULE_FILES = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
TEXT = {p.name: p.read_text() for p in RULE_FILES}


def test_every_rule_is_defined_once() -> None:
    names = Counter(
        name
        for text in TEXT.values()
        for name in re.findall(r"^\s*rule (\w+):", text, re.MULTILINE)
    )
    assert names and max(names.values()) == 1, names


def test_the_data_stages_say_their_environment_and_resources_once() -> None:
    data = TEXT["data.smk"]
    assert "envs/" not in data and "threads:" not in data
    assert data.count("mem_mb=") == 2  # DATA_JOB and SMALL_JOB
    n_rules = len(re.findall(r"^\s*rule \w+:", data, re.MULTILINE))
    assert data.count("PHYSPACK_ENV") == n_rules
    uses = re.findall(r"^\s+\*\*(.+),$", data, re.MULTILINE)
    assert len(uses) == n_rules and set(uses) <= {
        "DATA_JOB",
        "SMALL_JOB",
        "(SMALL_JOB if SHARDS else DATA_JOB)",
    }, uses


def test_the_cpu_environment_is_named_once() -> None:
    named = sum(text.count('"../../envs/physpack.yaml"') for text in TEXT.values())
    assert named == 1
