"""Config sections: schema and dataclasses agree, and bad values are refused early."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, make_workdir, snakemake
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
    assert defaults.pop("runs") == {}  # named runs: none unless configured
    assert set(defaults) == set(cfg.SECTIONS)
    for name, cls in cfg.SECTIONS.items():
        # as JSON: a list default is a tuple in the (immutable) dataclass
        from_dataclass = json.loads(json.dumps(dataclasses.asdict(cls())))
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
    with pytest.raises(ConfigError, match=r"loader\.batch_size: 'x' is not of type"):
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


# --------------------------------------------------------------------------------
# The schema is the one definition of every key


def test_every_key_has_a_field_and_a_description():
    """Each schema key is a dataclass field and vice versa, and each key says what
    it means (the CLI help and README are made from these descriptions)."""
    schema = yaml.safe_load(SCHEMA.read_text())
    assert set(schema["properties"]) == {*cfg.SECTIONS, "runs"}
    assert str(schema["properties"]["runs"]["description"]).strip()
    for name, cls in cfg.SECTIONS.items():
        keys = schema["properties"][name]["properties"]
        assert set(keys) == {f.name for f in dataclasses.fields(cls)}, name
        for key, spec in keys.items():
            assert str(spec.get("description", "")).strip(), f"{name}.{key}"
            assert "default" in spec, f"{name}.{key}"


def test_dataclass_defaults_come_from_the_schema():
    """A field takes the schema's default; one spelling out a different default
    is refused when the class is made."""
    schema = yaml.safe_load(SCHEMA.read_text())
    assert (
        cfg.SplitConfig().seed
        == schema["properties"]["split"]["properties"]["seed"]["default"]
    )
    with pytest.raises(ConfigError, match=r"split\.seed"):

        @dataclasses.dataclass(frozen=True)
        @cfg.schema_section("split")
        class Drifted:
            seed: int = -1

    with pytest.raises(ConfigError, match=r"split\.nonsense"):

        @dataclasses.dataclass(frozen=True)
        @cfg.schema_section("split")
        class Unknown:
            nonsense: int


def test_cli_help_is_the_schema_description():
    proc = subprocess.run(
        [sys.executable, "-m", "physpack", "split", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    help_text = " ".join(proc.stdout.split())
    spec = yaml.safe_load(SCHEMA.read_text())["properties"]["split"]["properties"]
    for key in ("seed", "group_by", "valid"):
        description = " ".join(spec[key]["description"].split())
        assert description in help_text, key
    assert "[default: 42]" in help_text


@pytest.mark.parametrize(
    ("unit_key", "value"),
    [("energy_unit", "kcal_mol"), ("energy_unit", "ha"), ("length_unit", "bohr")],
)
def test_cli_and_schema_agree_on_unit_names(unit_key, value):
    """A unit spelling the workflow's schema refuses is refused by the command
    line too (both check the same schema), and every name the schema lists is
    one the converter knows."""
    with pytest.raises(WorkflowError):
        validate({"data": {unit_key: value}}, schema=str(SCHEMA))
    with pytest.raises(ConfigError, match=rf"data\.{unit_key}"):
        cfg.section_from_mapping(cfg.DataConfig, {unit_key: value}, "data")


def test_every_schema_unit_is_known_to_the_converter():
    from physpack import units

    spec = yaml.safe_load(SCHEMA.read_text())["properties"]["data"]["properties"]
    factors = {
        "energy_unit": units.ENERGY_TO_EV,
        "length_unit": units.LENGTH_TO_ANGSTROM,
        "dipole_unit": units.DIPOLE_TO_E_ANGSTROM,
    }
    for key, table in factors.items():
        assert {u for u in spec[key]["enum"] if u is not None} == set(table), key


def test_nested_command_line_overrides_are_coerced():
    """`--config train='{"epochs": 20}'` reaches the Snakefile as strings; values
    the schema refuses as strings but accepts as YAML are parsed, the rest kept."""
    overrides = {
        "train": {"epochs": "20", "max_minutes": "null", "devices": "2"},
        "split": {"group_by": "formula", "valid": "0.25"},
        "data": {"npz": "123"},
    }
    conf = {name: dict(section) for name, section in overrides.items()}
    cfg.check_workflow_config(conf, overrides)
    assert conf["train"] == {"epochs": 20, "max_minutes": None, "devices": 2}
    assert conf["split"] == {"group_by": "formula", "valid": 0.25}
    assert conf["data"] == {"npz": "123"}  # a string the schema accepts as it is
    bad = {"train": {"epochs": "twenty"}}
    with pytest.raises(ConfigError, match=r"^train\.epochs: 'twenty' is not of"):
        cfg.check_workflow_config({"train": dict(bad["train"])}, bad)


def test_config_file_values_are_not_coerced():
    """Only command-line overrides are coerced: a quoted number in a config file
    is a mistake that is reported."""
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        cfg.check_workflow_config({"train": {"epochs": "20"}}, overrides={})


def test_quoted_number_names_its_config_file(tmp_path):
    """A value from a config file is checked as written; the one-line error names
    the key, the value and the file that set it (the last one, as Snakemake
    merges them), and says how to write a number."""
    first, user = tmp_path / "base.yaml", tmp_path / "user.yaml"
    first.write_text("train:\n  epochs: 3\n")
    user.write_text('train:\n  epochs: "20"\n')
    conf = {"train": {"epochs": "20"}}
    with pytest.raises(ConfigError) as info:
        cfg.check_workflow_config(conf, overrides={}, files=[first, user])
    assert str(info.value) == (
        f"train.epochs: '20' is not of type 'integer' (in {user}; a number in "
        "quotes is a string: write epochs: 20)"
    )
    bad = {"train": {"epochs": -3}}  # from the command line: said so
    with pytest.raises(ConfigError, match=r"minimum of 1 \(in --config\)$"):
        cfg.check_workflow_config({"train": {"epochs": -3}}, bad, files=[user])


def test_missing_input_names_the_key_and_path(tmp_path):
    (tmp_path / "here.npz").write_bytes(b"")
    cfg.check_input_paths({"npz": "here.npz", "packed": None}, tmp_path)
    with pytest.raises(ConfigError, match=r"^data\.npz: no such file 'gone\.npz'"):
        cfg.check_input_paths({"npz": "gone.npz"}, tmp_path)
    with pytest.raises(ConfigError, match=r"^data\.packed: no such directory"):
        cfg.check_input_paths({"packed": "here.npz"}, tmp_path)


def test_workflow_config_error_is_one_line(tmp_path):
    """A bad value stops Snakemake with one line naming the key, not a dump of the
    schema."""
    wd = make_workdir(tmp_path / "wf")
    proc = snakemake(wd, "--dry-run", "--config", "train={'epochs': -3}", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    (line,) = [ln for ln in output.splitlines() if "train.epochs" in ln]
    assert line.startswith("config: train.epochs: -3 is less than the minimum"), line
    assert "properties" not in output and "additionalProperties" not in output


def test_config_error_is_one_line_for_any_value():
    with pytest.raises(ConfigError) as info:
        cfg.section_from_mapping(cfg.SplitConfig, {"group_by": "a\nb\nc"}, "split")
    assert "\n" not in str(info.value) and str(info.value).startswith("split.group_by")


def test_physnet_defaults_are_the_schemas():
    """PhysNet's attributes are ModelConfig's fields, each defaulting to
    ModelConfig()'s value (the schema's), never to a number written in the model
    (read from the source: no JAX needed)."""
    import ast

    source = (ROOT / "workflow/physpack/model/physnet.py").read_text()
    (physnet,) = [
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef) and node.name == "PhysNet"
    ]
    fields = {}
    for node in physnet.body:
        if isinstance(node, ast.AnnAssign):
            fields[node.target.id] = ast.unparse(node.value)
    model = {f.name for f in dataclasses.fields(cfg.ModelConfig)}
    assert set(fields) == model
    assert all(value == f"_DEFAULTS.{name}" for name, value in fields.items()), fields
    assert "_DEFAULTS = ModelConfig()" in source


def test_a_flag_given_null_sets_null() -> None:
    """``--patience null`` over a section that sets a number means null (no early
    stop); it was dropped as if the flag were absent. An absent flag changes
    nothing."""
    import argparse

    parser = argparse.ArgumentParser()
    cfg.add_section_arguments(parser, cfg.TrainConfig, "train")
    given = parser.parse_args(["--config", '{"patience": 5}', "--patience", "null"])
    assert cfg.section_from_args(cfg.TrainConfig, given, "train").patience is None
    absent = parser.parse_args(["--config", '{"patience": 5}'])
    assert cfg.section_from_args(cfg.TrainConfig, absent, "train").patience == 5
