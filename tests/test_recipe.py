"""The measured recipe is the schema's default: a user's own config (given with
``--configfile``) trains as the demo does, and the demo's ``config.yaml`` holds only
what is specific to the demo data (its path and units, its time budget).

The workflow-level check (an empty user config and the demo's config without its
budget plan the same stages with the same settings) is
``test_workflow.py::test_an_empty_user_config_gets_the_demo_recipe``.
"""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT, TINY_CONFIG
from physpack.config import ConfigError, load_schema, with_defaults
from snakemake.utils import validate

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
#: the demo's own keys: its data and its time budget
DEMO_KEYS = {"data", "train.epochs", "train.max_minutes"}


def _shipped() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.mark.parametrize(
    "config",
    [
        _shipped(),
        yaml.safe_load(TINY_CONFIG.read_text()),
        {"data": {"npz": "x.npz"}},
    ],
    ids=["demo", "tiny", "npz only"],
)
def test_with_defaults_is_what_the_workflow_sees(config: dict) -> None:
    """:func:`physpack.config.with_defaults` fills in what Snakemake's validation
    fills in for the workflow."""
    expected = yaml.safe_load(yaml.safe_dump(config))
    validate(expected, schema=str(SCHEMA), set_default=True)
    assert with_defaults(config) == expected
    assert "train" not in config or config["train"] is not expected["train"]


def test_with_defaults_checks_first() -> None:
    with pytest.raises(ConfigError, match="train.learning_rate"):
        with_defaults({"train": {"learning_rate": -1.0}})


def test_the_demo_config_restates_no_default() -> None:
    """Every key of config.yaml outside the demo's data and budget would be a
    second definition of a default; there is none."""
    props = load_schema()["properties"]
    restated = []
    for name, section in _shipped().items():
        if name == "data":
            continue
        for key in section:
            if f"{name}.{key}" not in DEMO_KEYS:
                restated.append(f"{name}.{key}")
    assert restated == [], restated
    assert _shipped()["train"]["max_minutes"] is not None
    assert props["train"]["properties"]["max_minutes"]["default"] is None


def test_the_recipe_defaults_are_the_measured_ones() -> None:
    """The values BENCHMARKS.md measured (peak rate 0.01 on a cosine schedule,
    EMA 0.999, decoupled weight decay 0.002, batches of 16, no early stop) are
    what a config that says nothing gets."""
    train = with_defaults({})["train"]
    assert train["learning_rate"] == 0.01
    assert train["schedule"] == "cosine"
    assert train["ema_decay"] == 0.999
    assert train["weight_decay"] == 0.002
    assert train["patience"] is None
    assert with_defaults({})["loader"]["batch_size"] == 16
