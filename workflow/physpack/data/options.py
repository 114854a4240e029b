"""The loader's options as the configuration gives them.

``workflow/schemas/config.schema.yaml`` is the one definition of the ``loader``
section: :class:`~physpack.config.LoaderConfig` takes its defaults from it and
:func:`check_option` its ranges, so a loader made from Python accepts exactly what
the workflow does. :func:`pair_options` resolves ``loader.pairs`` for a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema
import numpy as np

from physpack.config import ModelConfig, section_schema
from physpack.errors import ConfigError

#: the loader section of the configuration schema, by key
SCHEMA = section_schema("loader")["properties"]


def expected(schema: Mapping[str, Any]) -> str:
    """What a schema entry accepts, in words: ``int >= 1``, ``int >= 1 or None``."""
    if "oneOf" in schema:
        return ", ".join(expected(option) for option in schema["oneOf"])
    if "enum" in schema:
        return " or ".join(map(str, schema["enum"]))
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    words = []
    for t in types:
        if t == "null":
            words.append("None")
        elif t == "integer":
            low = schema.get("minimum")
            words.append("int" if low is None else f"int >= {low}")
        else:
            words.append(t)
    return " or ".join(words)


def check_option(name: str, value: Any) -> None:
    """Refuse ``value`` for ``loader.<name>`` outside the schema's type and range.

    Raises:
        ConfigError: naming the key, the value and what the schema accepts.
    """
    plain_value = int(value) if isinstance(value, np.integer) else value
    errors = jsonschema.Draft202012Validator(SCHEMA[name]).iter_errors(plain_value)
    if next(errors, None) is not None:
        raise ConfigError(
            f"loader.{name}: got {value!r}, expected {expected(SCHEMA[name])}"
        )


def pair_options(pairs: str, model: ModelConfig | None) -> dict[str, Any]:
    """The loader's ``pairs``/``cutoff`` for ``loader.pairs`` and the model.

    ``auto``: pairs within ``model.cutoff`` unless the model has charges (its
    Coulomb term needs every pair), all pairs without a model; ``cutoff``: within
    ``model.cutoff`` (refused for a model with charges); ``all``: every pair.

    Raises:
        ConfigError: ``cutoff`` with a model that has charges.
    """
    if pairs == "all" or (pairs == "auto" and (model is None or model.charges)):
        return {"pairs": "all"}
    if model is None:
        return {"pairs": pairs}  # the caller gives the cutoff
    if model.charges:
        raise ConfigError(
            "loader.pairs: cutoff with model.charges: the Coulomb term needs every "
            "atom pair; set loader.pairs to auto or all"
        )
    return {"pairs": "cutoff", "cutoff": float(model.cutoff)}
