"""The training state: what a run carries from step to step, and what a resumed
run needs to continue exactly.

* :class:`TrainState`: the device-side pytree the jitted train step maps to a new
  one (parameters, optimiser state, EMA, step counters, learning-rate schedule,
  learning-rate factor).
* :class:`TrainingRecord`: the host-side record of the run (history rows, best
  epoch, patience, sums of the epoch in progress), plain values; saved under the
  state file's key ``"progress"``.
* The resumable state file (``state_dir/state.msgpack``,
  :func:`physpack.model.checkpoint.save_state`) holds both, the config sections,
  the dataset and code fingerprints and the loader position; :func:`check_resumable`
  decides whether a saved state may be continued and names every key that differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from physpack.config import LoaderConfig, ModelConfig, TrainConfig
from physpack.data.packed import PackedDataset
from physpack.errors import ConfigError
from physpack.model.physnet import Params
from physpack.sources import stage_files
from physpack.training.optim import Schedule

#: Config keys that do not change the trained parameters: a state saved with other
#: values of these is resumed.
RESUMABLE_ACROSS = {
    "train": {"max_minutes", "state_every_steps", "max_nonfinite_steps"},
    "loader": {"prefetch", "num_atoms"},
}
#: Keys that may be raised to continue a run that stopped on them.
EXTENDABLE = {"epochs": "epochs", "max_minutes": "max_minutes"}
#: Package folders whose modules, as far as the train stage runs them, make a saved
#: state foreign when edited: the model, what the batches hold and in which order,
#: and all of the training code.
CODE_FOLDERS = ("data/", "model/", "training/")


def code_files() -> list[str]:
    """The package files (relative paths) of :func:`code_fingerprint`: the modules
    of :data:`CODE_FOLDERS` that ``physpack train`` runs, read from the imports
    (:func:`physpack.sources.stage_files`), so a module split off another is never
    left out."""
    return [f for f in stage_files("train") if f.startswith(CODE_FOLDERS)]


@struct.dataclass
class TrainState:
    """What the train step maps to a new value (a pytree; replicated on devices).

    Attributes:
        params: model parameters (float32 pytree).
        opt_state: optax state of :func:`physpack.training.optim.make_optimizer`.
        ema: exponential moving average of ``params`` (validation, checkpoints).
        step: int32 () steps taken, rejected ones included.
        accepted: int32 () accepted steps: the learning-rate schedule's counter.
        schedule: the cosine's horizon and anchor, and the late energy stage's
            first step (:class:`physpack.training.optim.Schedule`).
        lr_scale: float32 () factor on the learning rate (plateau schedule; else 1).
    """

    params: Params
    opt_state: Any
    ema: Params
    step: jax.Array
    accepted: jax.Array
    schedule: Schedule
    lr_scale: jax.Array


def create_train_state(
    params: Params, tx: optax.GradientTransformation, schedule: Schedule
) -> TrainState:
    """The state before the first step: EMA = params, counters 0, scale 1."""
    return TrainState(
        params=params,
        opt_state=tx.init(params),
        ema=jax.tree.map(jnp.copy, params),  # own buffers: the state is donated
        step=jnp.zeros((), jnp.int32),
        accepted=jnp.zeros((), jnp.int32),
        schedule=schedule,
        lr_scale=jnp.ones((), jnp.float32),
    )


def new_epoch_sums() -> dict[str, float]:
    """Running sums of the epoch in progress (saved with the state): loss ×
    molecules and molecules of accepted steps; molecules and seconds of timed steps
    (all but the one that compiled); steps, rejected steps, Σ gradient norm, its
    maximum, clipped steps (accepted ones)."""
    return {
        "loss_sum": 0.0,
        "n_mol": 0.0,
        "timed_mol": 0.0,
        "timed_steps": 0.0,
        "time": 0.0,
        "steps": 0.0,
        "rejected": 0.0,
        "grad_norm_sum": 0.0,
        "grad_norm_max": 0.0,
        "clipped": 0.0,
    }


@dataclasses.dataclass
class TrainingRecord:
    """The host-side record of a run, saved with the resumable state (plain values,
    under the state file's key ``"progress"``).

    ``len(history)`` is the number of finished epochs (validated and recorded);
    the loader's epoch may be one ahead, when a state was saved after an epoch's
    last step and before its end was recorded: a resumed run then records it first.
    """

    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    best_epoch: int = 0  # 1-based; 0: none yet
    best_loss: float = math.inf
    best_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    best_ema: Any = None
    bad_epochs: int = 0  # epochs since the last improvement
    elapsed_s: float = 0.0  # training time of earlier processes of this run
    epoch_sums: dict[str, float] = dataclasses.field(default_factory=new_epoch_sums)
    consecutive_rejected: int = 0
    plateau: dict[str, float] | None = None  # reduce_on_plateau state (plateau)
    finished: bool = False
    stop_reason: str = "epochs"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainingRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["epoch_sums"] = new_epoch_sums() | dict(values.get("epoch_sums", {}))
        return cls(**values)


# --------------------------------------------------------------------------------
# Fingerprints


def config_sections(
    model: ModelConfig, train: TrainConfig, loader: LoaderConfig
) -> dict[str, dict[str, Any]]:
    """The config sections as plain JSON values (stored in the state; tuples
    become lists, as they come back from the file)."""
    return json.loads(
        json.dumps(
            {
                "model": dataclasses.asdict(model),
                "train": dataclasses.asdict(train),
                "loader": dataclasses.asdict(loader),
            }
        )
    )


def config_hash(model: ModelConfig, train: TrainConfig, loader: LoaderConfig) -> str:
    """sha256 of the config sections, without the fields in
    :data:`RESUMABLE_ACROSS` (they do not change the trained parameters)."""
    sections = config_sections(model, train, loader)
    for name, skip in RESUMABLE_ACROSS.items():
        for key in skip:
            sections[name].pop(key, None)
    text = json.dumps(sections, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def config_differences(
    saved: Mapping[str, Mapping[str, Any]], mine: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, Any, Any]]:
    """``(section.key, saved value, this value)`` of every key that differs and
    matters (not in :data:`RESUMABLE_ACROSS`), in order."""
    out = []
    for section in sorted(set(saved) | set(mine)):
        a, b = saved.get(section, {}), mine.get(section, {})
        skip = RESUMABLE_ACROSS.get(section, set())
        for key in sorted(set(a) | set(b)):
            if key not in skip and a.get(key, "(unset)") != b.get(key, "(unset)"):
                out.append(
                    (f"{section}.{key}", a.get(key, "(unset)"), b.get(key, "(unset)"))
                )
    return out


def code_fingerprint() -> str:
    """sha256 of the sources that decide the trained parameters (model, loss,
    optimiser, steps, batch order) and of the versions of the numerical libraries:
    a state written by other code is not resumed (results would silently mix)."""
    import e3x
    import flax

    h = hashlib.sha256()
    package = Path(__file__).parent.parent
    for name in code_files():
        h.update(name.encode())
        h.update((package / name).read_bytes())
    for mod in (jax, flax, e3x, optax, np):
        h.update(f"{mod.__name__} {mod.__version__};".encode())
    return h.hexdigest()


def dataset_fingerprint(
    dataset: PackedDataset, train_idx: np.ndarray, valid_idx: np.ndarray
) -> str:
    """sha256 over the dataset's contents (the manifest's per-file checksums, or
    offsets and energies for directories without one) and the split's subsets."""
    h = hashlib.sha256()
    checksums = dataset.checksums()
    if checksums is not None:
        h.update(json.dumps(checksums, sort_keys=True).encode())
    else:
        for digest in dataset.content_digests():
            h.update(digest.encode())
    h.update(np.ascontiguousarray(train_idx, "<i8").tobytes())
    h.update(b"|")
    h.update(np.ascontiguousarray(valid_idx, "<i8").tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------
# Deciding about a saved state


@dataclasses.dataclass(frozen=True)
class ResumeDecision:
    """What to do with a saved state.

    Attributes:
        resume: continue from it (else start a new run).
        extended: ``section.key: old → new`` of the keys raised to continue a run
            that had stopped on them (empty otherwise).
    """

    resume: bool
    extended: tuple[str, ...] = ()


def _fmt_change(key: str, old: Any, new: Any) -> str:
    return f"{key}: {old} → {new}"


def check_resumable(
    saved: Mapping[str, Any] | None,
    state_file: Path,
    sections: Mapping[str, Mapping[str, Any]],
    dataset: str,
    code: str,
) -> ResumeDecision:
    """Whether the state ``saved`` (from ``state_file``) continues this run.

    * same config (up to :data:`RESUMABLE_ACROSS`), data and code: resume;
    * a finished run that stopped on ``epochs`` or ``max_minutes``, where only
      those keys were raised: resume and continue it;
    * a finished run whose ``max_minutes`` was lowered (it may have trained longer
      than the new budget allows), and any other finished run: start a new one;
    * an unfinished run of other settings: refuse.

    Raises:
        ConfigError: an unfinished state of other settings, naming every key that
            differs (``train.epochs: 150 → 200``), or the data or code.
    """
    if saved is None:
        return ResumeDecision(False)
    record = saved.get("progress", {})  # a TrainingRecord as a dict
    finished = bool(record.get("finished", False))
    saved_sections = saved.get("config") or {}
    differences = config_differences(saved_sections, sections) if saved_sections else []
    other = []
    if not saved_sections:
        other.append("different config (a state without its config sections)")
    if saved.get("dataset") != dataset:
        other.append("different dataset or split")
    if saved.get("code") != code:
        other.append("different code (physpack or JAX library versions)")
    changes = [_fmt_change(*d) for d in differences]
    if not differences and not other:
        extended = _raised_budget(saved_sections, sections, record)
        if finished and extended:
            return ResumeDecision(True, extended)
        if finished and _lowered_budget(saved_sections, sections):
            return ResumeDecision(False)
        return ResumeDecision(True)
    if finished:
        reason = record.get("stop_reason")
        only_raised = (
            not other
            and len(differences) == 1
            and differences[0][0] == f"train.{EXTENDABLE.get(reason, '')}"
            and _larger(differences[0][2], differences[0][1])
        )
        if only_raised:
            return ResumeDecision(True, tuple(changes))
        return ResumeDecision(False)
    what = "; ".join(changes + other)
    raise ConfigError(
        f"{state_file}: unfinished training state of other settings ({what}); "
        f"restore them to resume, or delete {state_file.parent} to start over"
    )


def _larger(new: Any, old: Any) -> bool:
    if old is None:
        return False
    return new is None or float(new) > float(old)


def _raised_budget(
    saved: Mapping[str, Mapping[str, Any]],
    mine: Mapping[str, Mapping[str, Any]],
    record: Mapping[str, Any],
) -> tuple[str, ...]:
    """``max_minutes`` is not part of the config hash; a run that stopped on it is
    continued when it was raised."""
    if record.get("stop_reason") != "max_minutes":
        return ()
    old, new = _budgets(saved, mine)
    if _larger(new, old):
        return (_fmt_change("train.max_minutes", old, new),)
    return ()


def _lowered_budget(
    saved: Mapping[str, Mapping[str, Any]], mine: Mapping[str, Mapping[str, Any]]
) -> bool:
    """Whether ``train.max_minutes`` is now lower than the saved run's (``None``:
    no limit)."""
    old, new = _budgets(saved, mine)
    return _larger(old, new)


def _budgets(
    saved: Mapping[str, Mapping[str, Any]], mine: Mapping[str, Mapping[str, Any]]
) -> tuple[Any, Any]:
    """``train.max_minutes`` of the saved run and of this one."""
    return (
        saved.get("train", {}).get("max_minutes"),
        mine.get("train", {}).get("max_minutes"),
    )


_ORPHAN = re.compile(r"^\..+\.tmp-(\d+)$")


def remove_orphans(*directories: str | os.PathLike) -> list[Path]:
    """Delete temporary files (``.<name>.tmp-<pid>``) of atomic writes whose process
    no longer runs, in ``directories``; returns what was removed."""
    removed = []
    for d in directories:
        d = Path(d)
        if not d.is_dir():
            continue
        for path in d.iterdir():
            m = _ORPHAN.match(path.name)
            if m is None or not path.is_file() or _alive(int(m.group(1))):
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of this process's own earlier, failed write
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
