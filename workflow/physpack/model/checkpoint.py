"""Model checkpoints (``best.ckpt``) and resumable training states.

Both are single msgpack files written with :mod:`flax.serialization` (nested dicts
of numpy arrays, numbers, strings and ``None``), atomically: written to a
temporary sibling, flushed to disk, then renamed, so a file that exists is
complete.

A checkpoint is self-describing; its top-level keys are::

    format            "physpack-checkpoint"
    format_version    int (this module reads up to FORMAT_VERSION)
    physpack_version  version of the package that wrote it
    created_utc       ISO 8601 time stamp
    model_config      the ``model:`` config section (ModelConfig fields)
    constants         reference_energies float64 (max_atomic_number+1,) eV,
                      scale (eV), elements int32 (k,) seen in training
    units             canonical units of every quantity (eV, Angstrom, ...)
    metrics           validation metrics of the saved epoch (floats, labelled units)
    training          epoch, step, train/loader config, dataset fingerprint
    dispersion        the D3 term subtracted from the training data (the packed
                      manifest's record: damping, functional, label,
                      dftd3_version), which predictions must add back; ``None``
                      when the data had none (:mod:`physpack.dispersion`)
    params            the model parameters (flax ``params`` pytree, float32)

Load one with :func:`load`; ``load(path).predict(batch)`` gives energies, forces
(and dipoles) for a packed batch.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from physpack import __version__
from physpack.atomic import atomic_write_bytes
from physpack.config import ModelConfig, section_from_mapping
from physpack.dispersion import settings_of
from physpack.errors import ConfigError, InputError
from physpack.model.physnet import (
    EnergyConstants,
    Params,
    PhysNet,
    model_from_config,
    predict,
)
from physpack.units import CANONICAL_UNITS

FORMAT_NAME = "physpack-checkpoint"
FORMAT_VERSION = 3
#: the oldest checkpoint format this module reads: version 1 held the parameters
#: of the simplified model that preceded the published PhysNet (other names)
OLDEST_FORMAT_VERSION = 2
#: model keys that version 2 did not know, with the values that give the model
#: it held (a version-2 checkpoint is read as that model, whatever today's
#: schema defaults are)
VERSION_2_MODEL = {
    "radial_basis": "exponential",
    "angular_degree": 0,
    "angular_features": 16,
    "angular_interactions": 1,
}
STATE_FORMAT_NAME = "physpack-train-state"
STATE_FORMAT_VERSION = 1
STATE_FILE = "state.msgpack"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A trained model: parameters, architecture and energy constants.

    Attributes:
        params: flax parameter pytree (numpy float32 arrays).
        model_config: the architecture.
        constants: reference energies and scale (see :class:`EnergyConstants`).
        metrics: validation metrics of the saved epoch, e.g.
            ``valid_forces_mae_eV_per_A``.
        units: canonical unit of each quantity.
        training: epoch, step, train/loader config, dataset fingerprint.
        dispersion: D3 record of the training data (``None``: none); the network
            predicts energies and forces without it.
        format_version, physpack_version, created_utc: provenance.
    """

    params: Params
    model_config: ModelConfig
    constants: EnergyConstants
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    units: dict[str, str] = dataclasses.field(
        default_factory=lambda: dict(CANONICAL_UNITS)
    )
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    dispersion: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    physpack_version: str = __version__
    created_utc: str = ""

    @property
    def model(self) -> PhysNet:
        """The flax module of :attr:`model_config`."""
        return model_from_config(self.model_config)

    def predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:func:`physpack.model.physnet.predict` with this checkpoint's model and
        params.

        Raises:
            InputError: two atoms of a molecule coincide (named; the model would
                give NaN energies and forces).
        """
        return predict(self.params, batch, self.model, self.constants)


def save(path: str | os.PathLike, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically; returns the path."""
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "physpack_version": __version__,
        "created_utc": ckpt.created_utc or _now(),
        "model_config": dataclasses.asdict(ckpt.model_config),
        "constants": ckpt.constants.to_dict(),
        "units": dict(ckpt.units),
        "metrics": {k: float(v) for k, v in ckpt.metrics.items()},
        "training": _plain(ckpt.training),
        "dispersion": _plain(ckpt.dispersion),
        "params": _numpy_tree(ckpt.params),
    }
    return atomic_write_bytes(path, serialization.msgpack_serialize(payload))


def load(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save`.

    Raises:
        InputError: missing, truncated or foreign file, or a newer format version.
    """
    path = Path(path)
    payload = _read_msgpack(path, FORMAT_NAME, FORMAT_VERSION, "checkpoint")
    if payload["format_version"] < OLDEST_FORMAT_VERSION:
        raise InputError(
            f"{path}: checkpoint format_version {payload['format_version']} holds a "
            "model of an older physpack (before the published PhysNet); retrain it "
            "with this version"
        )
    try:
        saved_model = dict(payload["model_config"])
        if payload["format_version"] == 2:
            if saved_model.get("max_degree", 0) > 0:
                raise InputError(
                    f"{path}: a max_degree {saved_model['max_degree']} model of "
                    "checkpoint format 2, whose equivariant features never trained "
                    "(they started at a saddle of zero gradient); retrain it with "
                    "this version"
                )
            saved_model = {**VERSION_2_MODEL, **saved_model}
        model_config = section_from_mapping(ModelConfig, saved_model, "model")
        constants = EnergyConstants.from_dict(payload["constants"])
        params = payload["params"]
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise InputError(f"{path}: incomplete checkpoint ({exc})") from exc
    if constants.reference_energies.shape != (model_config.max_atomic_number + 1,):
        raise InputError(
            f"{path}: constants.reference_energies has shape "
            f"{constants.reference_energies.shape}, expected "
            f"({model_config.max_atomic_number + 1},)"
        )
    return Checkpoint(
        params=params,
        model_config=model_config,
        constants=constants,
        metrics=dict(payload.get("metrics", {})),
        units=dict(payload.get("units", CANONICAL_UNITS)),
        training=dict(payload.get("training", {})),
        dispersion=_dispersion(path, payload.get("dispersion")),
        format_version=int(payload["format_version"]),
        physpack_version=str(payload.get("physpack_version", "")),
        created_utc=str(payload.get("created_utc", "")),
    )


def _dispersion(path: Path, record: Any) -> dict[str, Any] | None:
    """The checkpoint's D3 record, checked (InputError naming the file)."""
    if record is None:
        return None
    try:
        settings_of(record)
    except (ConfigError, TypeError) as exc:
        raise InputError(f"{path}: key dispersion: {exc}") from exc
    return dict(record)


def save_state(state_dir: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write a resumable training state (a dict of pytrees and plain values) to
    ``state_dir/state.msgpack`` atomically."""
    payload = {
        "format": STATE_FORMAT_NAME,
        "format_version": STATE_FORMAT_VERSION,
        "physpack_version": __version__,
        "created_utc": _now(),
        **_plain(dict(state)),
    }
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(
        Path(state_dir) / STATE_FILE, serialization.msgpack_serialize(payload)
    )


def load_state(state_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The state saved by :func:`save_state`, or ``None`` if there is none.

    Raises:
        InputError: the state file exists but is unreadable or of another format.
    """
    path = Path(state_dir) / STATE_FILE
    if not path.exists():
        return None
    return _read_msgpack(
        path, STATE_FORMAT_NAME, STATE_FORMAT_VERSION, "training state"
    )


def _read_msgpack(path: Path, name: str, version: int, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
    except Exception as exc:  # msgpack raises a variety of errors on bad bytes
        raise InputError(
            f"{path}: unreadable {what} (truncated or not msgpack: {exc})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != name:
        raise InputError(f"{path}: not a {what} (no format {name!r})")
    found = payload.get("format_version")
    if not isinstance(found, int) or found > version:
        raise InputError(
            f"{path}: {what} format_version {found!r} is newer than this physpack "
            f"reads ({version}); upgrade physpack"
        )
    return payload


def _numpy_tree(tree: Any) -> Any:
    """A pytree's leaves as numpy arrays (device arrays fetched to the host)."""
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _plain(value: Any) -> Any:
    """Values msgpack can store: tuples → lists, numpy scalars → Python numbers,
    device arrays → numpy; dict keys as strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, jax.Array):
        return np.asarray(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
