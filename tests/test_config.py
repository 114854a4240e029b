"""Config sections: schema and dataclasses agree, and bad values are refused early."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT
from physpack import config as cfg
from physpack.errors import ConfigError
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def schema_defaults() -> dict:
    """The config that the schema's defaults alone produce."""
    conf: dict = {}
    validate(conf, schema=str(SCHEMA), set_default=True)
    return conf


def test_schema_defaults_equal_dataclass_defaults():
    defaults = schema_defaults()
    assert set(defaults) == set(cfg.SECTIONS)
    for name, cls in cfg.SECTIONS.items():
        from_dataclass = dataclasses.asdict(cls())
        assert defaults[name] == from_dataclass, name


def test_every_schema_key_is_a_dataclass_field():
    schema = yaml.safe_load(SCHEMA.read_text())
    for name, cls in cfg.SECTIONS.items():
        keys = set(schema["properties"][name]["properties"])
        assert keys == {f.name for f in dataclasses.fields(cls)}, name


def test_shipped_config_validates_and_builds_sections():
    conf = yaml.safe_load((ROOT / "config.yaml").read_text())
    validate(conf, schema=str(SCHEMA), set_default=True)
    for name, cls in cfg.SECTIONS.items():
        cfg.section_from_mapping(cls, conf[name], name)


@pytest.mark.parametrize(
    "section, patch",
    [
        ("split", {"group_by": "element"}),
        ("split", {"valid": 1.5}),
        ("loader", {"batch_size": 0}),
        ("train", {"optimizer": "sgd"}),
        ("train", {"devices": 0}),
        ("data", {"energy_unit": "furlong"}),
        ("model", {"nonsense": 1}),
    ],
)
def test_schema_rejects_bad_values(section, patch):
    conf = {section: patch}
    with pytest.raises(WorkflowError):
        validate(conf, schema=str(SCHEMA), set_default=True)


def test_section_from_mapping_names_the_bad_key():
    with pytest.raises(ConfigError, match="split: unknown key"):
        cfg.section_from_mapping(cfg.SplitConfig, {"seeed": 1}, "split")
    with pytest.raises(ConfigError, match=r"loader\.batch_size: got 'x'"):
        cfg.section_from_mapping(cfg.LoaderConfig, {"batch_size": "x"}, "loader")


def test_flags_override_json():
    parser = argparse.ArgumentParser()
    cfg.add_section_arguments(parser, cfg.SplitConfig, "split")
    args = parser.parse_args(["--config", '{"seed": 3, "test": 0.2}', "--seed", "7"])
    section = cfg.section_from_args(cfg.SplitConfig, args, "split")
    assert (section.seed, section.test, section.valid) == (7, 0.2, 0.1)


def test_cli_unknown_step_fails():
    proc = subprocess.run(
        [sys.executable, "-m", "physpack", "frobnicate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "unknown step 'frobnicate'" in proc.stderr
