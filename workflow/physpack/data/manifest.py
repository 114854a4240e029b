"""The one reader of a packed directory's ``manifest.json``.

Every stage reads the manifest through :func:`read_manifest`, which checks it
against the JSON schema shipped with the package (``schemas/manifest.schema.json``,
with :mod:`jsonschema`) before anything uses it: a manifest that is not JSON, of a
newer format version, or of the wrong shape (``"arrays": []``, an entry that is not
an object, a string ``n_molecules``) is refused with one line naming the file and
the key, never a traceback further down.
"""

from __future__ import annotations

import functools
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from physpack.errors import InputError

MANIFEST = "manifest.json"
FORMAT_NAME = "physpack-packed"
FORMAT_VERSION = 1


@functools.cache
def manifest_schema() -> dict[str, Any]:
    """The manifest's JSON schema (format version :data:`FORMAT_VERSION`)."""
    text = (
        resources.files("physpack.data")
        .joinpath("schemas/manifest.schema.json")
        .read_text()
    )
    return json.loads(text)


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def check_manifest(manifest: Any, mpath: Path) -> dict[str, Any]:
    """``manifest`` (parsed JSON) if it is a valid manifest, else InputError.

    Args:
        manifest: the parsed content of ``mpath``.
        mpath: the file, for messages.
    """
    if not isinstance(manifest, dict):
        raise InputError(f"{mpath}: not a JSON object (got {type(manifest).__name__})")
    version = manifest.get("format_version")
    integer = isinstance(version, int) and not isinstance(version, bool)
    if integer and version > FORMAT_VERSION:
        raise InputError(
            f"{mpath}: format_version {version} is not supported (this physpack "
            f"reads up to {FORMAT_VERSION}; a newer physpack wrote it)"
        )
    validator = jsonschema.Draft202012Validator(manifest_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(manifest))
    if error is not None:
        raise InputError(f"{mpath}: key {_where(error)}: {error.message}")
    files = [entry["file"] for entry in manifest["arrays"].values()]
    if len(set(files)) != len(files):
        raise InputError(f"{mpath}: key arrays: a file is listed twice ({files})")
    if (
        manifest.get("dispersion") is not None
        and "E_dispersion" not in manifest["arrays"]
    ):
        raise InputError(
            f"{mpath}: key dispersion: set, but arrays lists no E_dispersion (the "
            "D3 energies subtracted from E)"
        )
    return manifest


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The checked manifest of the packed directory ``path``; ``None`` when the
    directory has no ``manifest.json`` (older tooling).

    Raises:
        InputError: unreadable, not JSON, newer format version or invalid against
            the schema; one line naming the file and the key.
    """
    mpath = Path(path) / MANIFEST
    if not mpath.exists():
        return None
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{mpath}: unreadable manifest ({exc})") from exc
    return check_manifest(manifest, mpath)
